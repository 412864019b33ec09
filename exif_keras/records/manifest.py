"""Reading back what the converter wrote: ``manifest.json`` and the shards it lists.

`read_manifest` loads the manifest (`exif_keras.records.writer.build_manifest` writes it);
`verify_records` checks every listed shard against its record count (and sha256) before training
reads it; `dataset_mean_std` gives the training pixels' statistics the model normalises with.
Any file system ``tf.io.gfile`` knows.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf
from absl import logging

from exif_keras.common.errors import RecordsError
from exif_keras.records import features


def read_manifest(data_dir: str) -> dict:
    """manifest.json of a records directory; FileNotFoundError naming it when missing."""
    path = os.path.join(data_dir, features.MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"no {features.MANIFEST} in {data_dir!r}: not a records directory "
                                f"(write one with `python -m exif_keras.make_records`)")
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


class DamagedRecordsError(RecordsError):
    """A shard listed in manifest.json is missing, truncated or altered, or one is not listed."""


def count_records(path: str) -> int:
    """Records in a TFRecord file, from its framing alone (8-byte length, 4-byte CRC, data, 4-byte
    CRC per record: one seek per record, the data is not read). ValueError when the file ends
    inside a record, i.e. it was cut."""
    size = tf.io.gfile.stat(path).length
    count, offset = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset < size:
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"it ends inside the header of record {count + 1}")
            offset += 8 + 4 + int.from_bytes(header, "little") + 4
            if offset > size:
                raise ValueError(f"it ends inside record {count + 1} ({size} bytes, record "
                                 f"{count + 1} needs {offset})")
            f.seek(offset)
            count += 1
    return count


def verify_records(data_dir: str, checksums: bool = False,
                   manifest: Optional[dict] = None) -> int:
    """Checks the shards of ``data_dir`` against its manifest before they are read: every listed
    shard exists and holds the recorded number of records (and, with ``checksums``, has the
    recorded sha256: a full read), and no unlisted shard would be read with them. Returns the
    number of shards checked; raises DamagedRecordsError naming every damaged shard and saying
    what to do. A manifest written before per-shard counts existed is only logged."""
    manifest = read_manifest(data_dir) if manifest is None else manifest
    listed = manifest.get("shards")
    if not isinstance(listed, dict) or not all(
            isinstance(v, dict) and all(isinstance(e, dict) and "records" in e for e in v.values())
            for v in listed.values()):
        logging.warning("%s in %s lists no per-shard record counts (written by an older "
                        "make_records): the shards are not checked", features.MANIFEST, data_dir)
        return 0
    problems = []
    for split, shards in listed.items():
        for name, entry in shards.items():
            path = os.path.join(data_dir, name)
            if not tf.io.gfile.exists(path):
                problems.append(f"{name}: missing")
                continue
            try:
                count = count_records(path)
            except ValueError as e:
                problems.append(f"{name}: truncated, {e}")
                continue
            if count != entry["records"]:
                problems.append(f"{name}: holds {count} records, the manifest says "
                                f"{entry['records']}")
            elif checksums and "sha256" in entry and features.file_sha256(path) != entry["sha256"]:
                problems.append(f"{name}: its sha256 is not the one in the manifest (altered)")
        names = set(shards)
        for path in tf.io.gfile.glob(features.shard_glob(data_dir, split)):
            if os.path.basename(path) not in names:
                problems.append(f"{os.path.basename(path)}: not listed in {features.MANIFEST} "
                                f"(left by another conversion) but would be read as {split}")
    if problems:
        raise DamagedRecordsError(
            f"damaged records in {data_dir!r}:\n  " + "\n  ".join(problems) +
            f"\nRe-run the conversion that wrote them (python -m exif_keras.make_records "
            f"--output_dir={data_dir} with the same --input_dir and flags; source: "
            f"{manifest.get('source', 'unknown')}): it rewrites every shard and the manifest.")
    return sum(len(v) for v in listed.values())


def dataset_mean_std(manifest: dict) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of the training pixels, 0..255 scale, from manifest["pixel_stats"]."""
    try:
        stats = manifest["pixel_stats"]["train"]
        mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (KeyError, TypeError) as e:
        raise ValueError('manifest has no pixel_stats.train.{mean,std}') from e
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"pixel_stats.train must hold 3 means and 3 stds, got {mean} and {std}")
    return mean, std
