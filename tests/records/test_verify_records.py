"""`manifest.verify_records`: shards checked against the manifest's record counts and checksums
before training, so a damaged shard is named at once instead of failing mid-epoch."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from exif_keras.records import features, writer
from exif_keras.records import manifest as records_manifest
from exif_keras.training import config as config_lib
from exif_keras.training import trainer

import mirflickr_fixtures as mf


def _jpeg(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (140, 180, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture()
def records(tmp_path) -> pathlib.Path:
    root = tmp_path / "m"
    (root / "meta" / "exif").mkdir(parents=True)
    for n in range(1, 31):
        (root / f"im{n}.jpg").write_bytes(_jpeg(n))
        mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt",
                            exposure_time=[1 / 1000, 1 / 8][n % 2], f_number=4.0, iso=100)
    out = tmp_path / "records"
    writer.run(str(root), str(out), workers=1, progress=False, shard_size=6)
    return out


def _shards(records: pathlib.Path, split: str = "train") -> list[pathlib.Path]:
    manifest = json.loads((records / features.MANIFEST).read_text())
    return [records / name for name in manifest["shards"][split]]


def test_whole_records_pass(records):
    manifest = json.loads((records / features.MANIFEST).read_text())
    listed = sum(len(v) for v in manifest["shards"].values())
    assert records_manifest.verify_records(str(records), checksums=True) == listed >= 5
    assert records_manifest.count_records(str(_shards(records)[0])) == \
        manifest["shards"]["train"][_shards(records)[0].name]["records"]


def test_truncated_shard_is_named(records):
    victim = _shards(records)[1]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) - 100])
    with pytest.raises(records_manifest.DamagedRecordsError) as e:
        records_manifest.verify_records(str(records))
    message = str(e.value)
    assert f"{victim.name}: truncated" in message and "make_records" in message
    assert sum(s.name in message for s in _shards(records)) == 1, "only the damaged shard"
    # train stops before building anything, naming the shard.
    config = config_lib.TrainConfig.from_flat(field="shutter", data_dir=str(records),
                                              model_dir=str(records.parent / "run"),
                                              backbone="scratch")
    with pytest.raises(trainer.TrainError, match=victim.name):
        trainer.train(config)
    assert not (records.parent / "run").exists()


def test_missing_altered_and_unlisted_shards(records):
    first, second = _shards(records)[:2]
    first.unlink()
    data = bytearray(second.read_bytes())
    data[40] ^= 0xFF  # inside the first record's data: the count still matches
    second.write_bytes(bytes(data))
    stray = records / "train-00000-of-00099.tfrecord"
    stray.write_bytes(b"")
    with pytest.raises(records_manifest.DamagedRecordsError) as e:
        records_manifest.verify_records(str(records))
    assert f"{first.name}: missing" in str(e.value) and stray.name in str(e.value)
    assert second.name not in str(e.value)  # counts alone cannot see it...
    with pytest.raises(records_manifest.DamagedRecordsError, match=f"{second.name}: its sha256"):
        records_manifest.verify_records(str(records), checksums=True)  # ...the checksum does


def test_a_shard_with_records_added_or_removed(records):
    victim, donor = _shards(records)[:2]
    victim.write_bytes(victim.read_bytes() + donor.read_bytes())  # whole records, more of them
    with pytest.raises(records_manifest.DamagedRecordsError, match=f"{victim.name}: holds"):
        records_manifest.verify_records(str(records))


def test_an_older_manifest_is_not_checked(records):
    manifest = json.loads((records / features.MANIFEST).read_text())
    manifest["shards"] = {s: list(v) for s, v in manifest["shards"].items()}  # names only
    (records / features.MANIFEST).write_text(json.dumps(manifest))
    _shards(records)[0].write_bytes(b"")
    assert records_manifest.verify_records(str(records)) == 0
