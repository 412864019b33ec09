"""Tiny fake inputs shared by the tests: textured pixels, JPEG bytes (with EXIF when asked), a
split of records written straight from arrays. On sys.path through tests/conftest.py."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image, TiffImagePlugin

from exif_keras.records import features


def textured(height: int, width: int, seed: int, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if grey else (height, width, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def exif_photo(seed: int, exposure=None, f_number=None, iso=None) -> bytes:
    """A 64x48 textured JPEG whose EXIF says ``exposure`` and ``f_number`` ((numerator,
    denominator)) and ``iso``, each where given."""
    array = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    if exposure:
        ifd[0x829A] = TiffImagePlugin.IFDRational(*exposure)
    if f_number:
        ifd[0x829D] = TiffImagePlugin.IFDRational(*f_number)
    if iso:
        ifd[0x8827] = iso
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def write_split(data_dir, split: str, records: list[tuple[np.ndarray, dict]], shards: int = 1):
    """records: (image array, {field: fine label}); source_id = position in ``records``."""
    writers = [tf.io.TFRecordWriter(os.path.join(
        data_dir, features.SHARD_PATTERN.format(split=split, index=i, count=shards)))
        for i in range(shards)]
    for n, (array, fine) in enumerate(records):
        ex = features.make_example(encoded=jpeg(array), height=array.shape[0],
                                   width=array.shape[1], source_id=str(n), exposure_time=None,
                                   f_number=None, iso=None, labels=fine)
        writers[n % shards].write(ex.SerializeToString())
    for w in writers:
        w.close()
