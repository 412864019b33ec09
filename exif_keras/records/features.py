"""The record contract: feature keys and how each is stored, defined once.

Every `tf.train.Example` written by `make_records` holds exactly these features. Readers (the
input pipeline, the tests) parse with `FEATURE_SPEC`; the writer builds with `make_example` and
turns it into bytes with `serialize_example` only: ``Features`` is a protobuf map whose plain
serialisation order changes from process to process, so the same photos would give other bytes
each run; ``deterministic=True`` sorts the map by key and makes shards byte-identical whatever
the process or the number of workers. `file_sha256` is the checksum recorded per shard in the
manifest. TensorFlow is imported lazily so that worker processes of the converter stay light.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

IMAGE_ENCODED = "image/encoded"      # bytes: the JPEG, the original bytes whenever possible
IMAGE_FORMAT = "image/format"        # bytes: b"jpeg"
IMAGE_HEIGHT = "image/height"        # int64
IMAGE_WIDTH = "image/width"          # int64
IMAGE_SOURCE_ID = "image/source_id"  # bytes: MIRFLICKR image number, or path relative to input_dir
EXIF_EXPOSURE_TIME = "exif/exposure_time"  # float seconds, -1 when unknown
EXIF_F_NUMBER = "exif/f_number"            # float, -1 when unknown
EXIF_ISO = "exif/iso"                      # float, -1 when unknown
EXIF_KEYS = {                              # the raw value of each field (labels.FIELDS)
    "shutter": EXIF_EXPOSURE_TIME,
    "aperture": EXIF_F_NUMBER,
    "iso": EXIF_ISO,
}
LABEL_KEYS = {
    "shutter": "label/shutter",      # int64 fine class index, -1 when none
    "aperture": "label/aperture",
    "iso": "label/iso",
}

UNKNOWN_VALUE = -1.0
SPLITS = ("train", "validation", "test")
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
MANIFEST = "manifest.json"


def shard_glob(data_dir: str, split: str) -> str:
    """Glob of a split's shards, matching `SHARD_PATTERN`."""
    return os.path.join(data_dir, f"{split}-*-of-*.tfrecord")


def feature_spec() -> dict:
    """Parsing spec for `tf.io.parse_single_example` / `parse_example`."""
    import tensorflow as tf

    spec = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        EXIF_EXPOSURE_TIME: tf.io.FixedLenFeature([], tf.float32, default_value=UNKNOWN_VALUE),
        EXIF_F_NUMBER: tf.io.FixedLenFeature([], tf.float32, default_value=UNKNOWN_VALUE),
        EXIF_ISO: tf.io.FixedLenFeature([], tf.float32, default_value=UNKNOWN_VALUE),
    }
    for key in LABEL_KEYS.values():
        spec[key] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    return spec


def _or_unknown(value) -> float:
    return UNKNOWN_VALUE if value is None else float(value)


def make_example(*, encoded: bytes, height: int, width: int, source_id: str,
                 exposure_time, f_number, iso, labels: Mapping[str, int],
                 image_format: str = "jpeg"):
    """Builds the `tf.train.Example` of one image. None values are stored as -1."""
    import tensorflow as tf

    def _bytes(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def _float(v: float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))

    feature = {
        IMAGE_ENCODED: _bytes(encoded),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        IMAGE_HEIGHT: _int(height),
        IMAGE_WIDTH: _int(width),
        IMAGE_SOURCE_ID: _bytes(source_id.encode("utf-8")),
        EXIF_EXPOSURE_TIME: _float(_or_unknown(exposure_time)),
        EXIF_F_NUMBER: _float(_or_unknown(f_number)),
        EXIF_ISO: _float(_or_unknown(iso)),
    }
    for field, key in LABEL_KEYS.items():
        feature[key] = _int(labels.get(field, -1))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize_example(example) -> bytes:
    """The bytes of a record: the one place Examples are serialised (deterministically)."""
    return example.SerializeToString(deterministic=True)


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file (a shard), read in chunks; any filesystem tf.io.gfile knows."""
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
