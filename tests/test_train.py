"""Training end to end on tiny records: the CLI, metrics.json, resume after a crash, clear errors,
and a two-replica MirroredStrategy step on the CPU."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from exif_keras import make_records, sample, train

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """~48 sample images converted to records (the same path as `make demo`, only smaller)."""
    root = tmp_path_factory.mktemp("train_data")
    sample.generate_sample(str(root / "sample"), count=48, seed=3, workers=2, progress=False)
    make_records.run(str(root / "sample"), str(root / "records"), workers=2, progress=False)
    return root / "records"


def tiny_config(records, model_dir, **overrides) -> train.TrainConfig:
    base = dict(field="shutter", task="binary", data_dir=str(records), model_dir=str(model_dir),
                epochs=2, batch_size=8, num_patches=2, patch_size=32, backbone="scratch",
                filters=4, export=False, verbose=0, eval_train=False, seed=1)
    base.update(overrides)
    return train.TrainConfig(**base)


def test_train_writes_metrics_checkpoint_and_logs(records, tmp_path):
    metrics = train.train(tiny_config(records, tmp_path / "run"))
    run = tmp_path / "run"
    saved = json.loads((run / train.METRICS).read_text())
    for key in ("field", "task", "class_names", "test_accuracy", "val_accuracy", "num_train",
                "num_val", "num_test", "confusion_matrix", "epochs", "wall_seconds"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(metrics))
    assert saved["class_names"] == ["fast: 1/250 s or shorter", "slow: 1/30 s or longer"]
    assert saved["epochs"] == 2 and saved["num_train"] > 0
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == saved["num_test"]
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert (run / train.BEST_WEIGHTS).exists()
    assert (run / train.CONFUSION_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "model_config.json").exists()
    flags_used = json.loads((run / train.RUN_CONFIG).read_text())
    assert flags_used["train"]["num_patches"] == 2 and flags_used["task"]["task"] == "binary"
    with open(run / train.CSV_LOG) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert list((run / train.LOG_DIR).rglob("events.out.tfevents.*"))
    assert not (run / train.BACKUP_DIR).exists(), "a finished run removes its backup"
    assert "fast: 1/250 s or shorter" in train.summary(metrics)


def test_resume_after_a_crash_ends_with_the_same_epochs(records, tmp_path, monkeypatch):
    config = tiny_config(records, tmp_path / "run", epochs=3)
    real = keras.callbacks.CSVLogger.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(config)
    assert (tmp_path / "run" / train.BACKUP_DIR / "training_metadata.json").exists()
    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", real)

    resumed_epochs = []
    real_begin = keras.callbacks.CSVLogger.on_epoch_begin

    def record_begin(self, epoch, logs=None):
        resumed_epochs.append(epoch)
        return real_begin(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_begin", record_begin)
    metrics = train.train(config)
    assert resumed_epochs == [2], "the second run must only run the missing third epoch"
    with open(tmp_path / "run" / train.CSV_LOG) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    assert metrics["epochs"] == 3


def test_no_labelled_example_is_a_clear_error(records, tmp_path):
    manifest = json.loads((records / "manifest.json").read_text())
    # Pretend no training image has a shutter class in the binary groups.
    manifest["counts"]["train"]["shutter"] = {"6": 3, "7": 2}
    empty = tmp_path / "records"
    empty.mkdir()
    for shard in records.glob("*.tfrecord"):
        (empty / shard.name).symlink_to(shard)
    (empty / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(train.TrainError, match="no training example"):
        train.train(tiny_config(empty, tmp_path / "run"))
    with pytest.raises(train.TrainError, match="make_records"):
        train.train(tiny_config(tmp_path / "nowhere", tmp_path / "run"))
    with pytest.raises(train.TrainError, match="patch_size 16 is too small"):
        train.train(tiny_config(records, tmp_path / "run", backbone="vgg16", patch_size=16,
                                backbone_weights=None))


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "exif_keras.train", *args], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)


def test_cli_bad_flags_and_missing_data_are_clear(tmp_path):
    done = _cli("--field=focal_length")
    assert done.returncode != 0 and "field" in done.stderr and "Traceback" not in done.stderr
    done = _cli("--field=iso", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "make_records" in done.stderr and "Traceback" not in done.stderr


def test_cli_with_flagfile_and_two_replica_mirrored_strategy(records, tmp_path):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join([
        "--field=shutter", f"--data_dir={records}", f"--model_dir={tmp_path / 'run'}",
        "--epochs=1", "--batch_size=8", "--num_patches=2", "--patch_size=32",
        "--backbone=scratch", "--filters=4", "--export=false", "--verbose=0",
        "--strategy=mirrored", "--logical_cpus=2"]) + "\n")
    done = _cli(f"--flagfile={flagfile}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "test accuracy" in done.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    assert metrics["mixed_precision"] is False  # auto: no GPU here
