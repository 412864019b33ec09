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

from exif_keras import train
from exif_keras.common import stops
from exif_keras.modeling import run_folder
from exif_keras.training import config as config_lib
from exif_keras.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def records(sample_records):
    """~48 sample images converted to records (the same path as `make demo`, only smaller)."""
    return sample_records


def tiny_config(records, model_dir, **overrides) -> config_lib.TrainConfig:
    base = dict(field="shutter", task="binary", data_dir=str(records), model_dir=str(model_dir),
                epochs=2, batch_size=8, num_patches=2, patch_size=32, backbone="scratch",
                filters=4, export=False, verbose=0, eval_train=False, seed=1)
    base.update(overrides)
    return config_lib.TrainConfig.from_flat(**base)


def test_train_writes_metrics_checkpoint_and_logs(records, tmp_path):
    metrics = trainer.train(tiny_config(records, tmp_path / "run"))
    run = tmp_path / "run"
    saved = json.loads((run / run_folder.METRICS).read_text())
    for key in ("field", "task", "class_names", "test_accuracy", "val_accuracy", "num_train",
                "num_val", "num_test", "confusion_matrix", "epochs", "wall_seconds"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(metrics))
    assert saved["class_names"] == ["fast: 1/250 s or shorter", "slow: 1/30 s or longer"]
    assert saved["epochs"] == 2 and saved["num_train"] > 0
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == saved["num_test"]
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert (run / run_folder.BEST_WEIGHTS).exists()
    assert (run / run_folder.CONFUSION_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "model_config.json").exists()
    flags_used = json.loads((run / run_folder.RUN_CONFIG).read_text())
    assert flags_used["train"]["num_patches"] == 2 and flags_used["task"]["task"] == "binary"
    with open(run / run_folder.CSV_LOG) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert list((run / run_folder.LOG_DIR).rglob("events.out.tfevents.*"))
    assert not (run / run_folder.BACKUP_DIR).exists(), "a finished run removes its backup"
    assert "fast: 1/250 s or shorter" in trainer.summary(metrics)
    # a binary model is calibrated too: its temperature, nll and ece, a reliability diagram
    calibrated = saved["fields"]["shutter"]["calibration"]
    assert calibrated["temperature"] == run_folder.read_temperatures(str(run))["shutter"]
    assert saved["fields"]["shutter"]["splits"]["test"]["ece"] == \
        calibrated["splits"]["test"]["ece_after"]
    assert "interval_coverage_after" not in calibrated["splits"]["test"]
    assert (run / run_folder.RELIABILITY_PNG).exists() and saved["consistency"] is None


def test_resume_after_a_crash_ends_with_the_same_epochs(records, tmp_path, monkeypatch):
    config = tiny_config(records, tmp_path / "run", epochs=3)
    real = keras.callbacks.CSVLogger.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config)
    assert (tmp_path / "run" / run_folder.BACKUP_DIR / "training_metadata.json").exists()
    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", real)

    resumed_epochs = []
    real_begin = keras.callbacks.CSVLogger.on_epoch_begin

    def record_begin(self, epoch, logs=None):
        resumed_epochs.append(epoch)
        return real_begin(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_begin", record_begin)
    metrics = trainer.train(config)
    assert resumed_epochs == [2], "the second run must only run the missing third epoch"
    with open(tmp_path / "run" / run_folder.CSV_LOG) as f:
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
    with pytest.raises(trainer.TrainError, match="no training example"):
        trainer.train(tiny_config(empty, tmp_path / "run"))
    with pytest.raises(trainer.TrainError, match="make_records"):
        trainer.train(tiny_config(tmp_path / "nowhere", tmp_path / "run"))
    with pytest.raises(trainer.TrainError, match="patch_size 16 is too small"):
        trainer.train(tiny_config(records, tmp_path / "run", backbone="vgg16", patch_size=16,
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


# ------------------------------------------------------------------ resume, finished, retrain

class _KillAfter(keras.callbacks.Callback):
    """Stands for kill -9 right after an epoch's end (after BackupAndRestore saved it)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")


class _EpochsRun(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


class _LearningRates(keras.callbacks.Callback):
    """The optimizer's learning rate at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def _weights(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _log(run):
    with open(run / run_folder.CSV_LOG) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_a_run_killed_between_epochs_ends_where_an_uninterrupted_one_does(records, tmp_path):
    # with the cosine schedule, which only ends the same if the optimizer's step count resumes
    rates = _LearningRates()
    straight = trainer.train(tiny_config(records, tmp_path / "straight", epochs=3,
                                       lr_schedule="cosine"), extra_callbacks=[rates])
    # cosine from --learning_rate to 0 over the whole run: 1/2 (1 + cos(pi e / 3)) after epoch e
    assert rates.rates == pytest.approx([0.75e-3, 0.25e-3, 0.0], abs=1e-9)
    config = tiny_config(records, tmp_path / "killed", epochs=3, lr_schedule="cosine")
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, extra_callbacks=[_KillAfter(1)])
    seen, rates = _EpochsRun(), _LearningRates()
    resumed = trainer.train(config, extra_callbacks=[seen, rates])
    assert seen.epochs == [2] and rates.rates == pytest.approx([0.0], abs=1e-9)
    # the same data order and crops after the restart: the same losses, weights and metrics
    for a, b in zip(_log(tmp_path / "straight"), _log(tmp_path / "killed"), strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    w1, w2 = _weights(tmp_path / "straight" / run_folder.BEST_WEIGHTS), \
        _weights(tmp_path / "killed" / run_folder.BEST_WEIGHTS)
    assert w1.keys() == w2.keys()
    for name in w1:
        np.testing.assert_allclose(w1[name], w2[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert resumed["splits"] == straight["splits"]
    assert resumed["best_epoch"] == straight["best_epoch"]


def test_a_resumed_run_keeps_the_best_validation_accuracy_so_far(records, tmp_path):
    config = tiny_config(records, tmp_path / "run", epochs=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, extra_callbacks=[_KillAfter(0)])
    best_bytes = (run / run_folder.BEST_WEIGHTS).read_bytes()
    # Make epoch 1's validation accuracy unbeatable: a resumed run that forgot it would save a
    # later (worse) epoch over the best checkpoint.
    rows = list(csv.DictReader(open(run / run_folder.CSV_LOG)))
    rows[0]["val_accuracy"] = "1.5"
    with open(run / run_folder.CSV_LOG, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = trainer.train(config)
    assert (run / run_folder.BEST_WEIGHTS).read_bytes() == best_bytes
    assert metrics["best_epoch"] == 1


def test_killed_after_fit_goes_straight_to_evaluation_and_a_finished_run_is_not_retrained(
        records, tmp_path, monkeypatch):
    config = tiny_config(records, tmp_path / "run", epochs=2)
    real = trainer._evaluate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the final evaluation")

    monkeypatch.setattr(trainer, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config)
    monkeypatch.setattr(trainer, "_evaluate", real)
    assert (tmp_path / "run" / run_folder.FIT_COMPLETE).exists()
    seen = _EpochsRun()
    metrics = trainer.train(config, extra_callbacks=[seen])
    assert seen.epochs == [] and [r["epoch"] for r in _log(tmp_path / "run")] == [0, 1]
    assert metrics["best_epoch"] in (1, 2) and "already_finished" not in metrics
    # run again once finished: says so, trains nothing, the same metrics
    again = trainer.train(config, extra_callbacks=[seen])
    assert again["already_finished"] is True and seen.epochs == []
    assert again["splits"] == metrics["splits"]
    # finished without an export: the rerun exports it once
    exported = trainer.train(config.replace(export=True,
                                            export_dir=str(tmp_path / "models" / "exif_x")),
                             export_fn=train.export_run)
    assert exported["export_path"].endswith("exif_x/1")
    assert trainer.train(config.replace(export=True, export_dir=str(
        tmp_path / "models" / "exif_x")), export_fn=train.export_run)["export_path"] \
        == exported["export_path"]
    # other flags on a finished run: a clear error, not a silent mix
    with pytest.raises(trainer.TrainError, match="--epochs: 2 there, 3 now.*--retrain"):
        trainer.train(config.replace(epochs=3))
    # --retrain starts over
    retrained = trainer.train(config.replace(retrain=True), extra_callbacks=[seen])
    assert seen.epochs == [0, 1] and "already_finished" not in retrained


# ----------------------------------------------------------------------- several fields, tasks

def test_joint_fine_model_of_all_fields(records, tmp_path):
    metrics = trainer.train(tiny_config(records, tmp_path / "run", field="all", task="fine",
                                      ordinal_sigma=0.7, eval_train=True,
                                      field_weights={"iso": 0.5}))
    assert list(metrics["fields"]) == ["shutter", "aperture", "iso"]
    for name, field in metrics["fields"].items():
        test = field["splits"]["test"]
        for key in ("accuracy", "within_one_stop", "mae_stops", "majority_mae_stops",
                    "binary_accuracy", "confusion_matrix"):
            assert key in test, (name, key)
        assert test["count"] == np.array(test["confusion_matrix"]).sum()
        assert test["within_one_stop"] >= test["accuracy"]
    # the training split's class counts travel with the run (to the export, for predict)
    recorded = json.loads((tmp_path / "run" / run_folder.RUN_CONFIG).read_text())["train_class_counts"]
    for name, field in metrics["fields"].items():
        assert sum(recorded[name]) == field["splits"]["train"]["count"]
        assert field["splits"]["test"]["majority_class"] == stops.majority_class(recorded[name])
    accuracies = [f["splits"]["test"]["accuracy"] for f in metrics["fields"].values()]
    assert metrics["test_accuracy"] == pytest.approx(np.mean(accuracies))
    header = open(tmp_path / "run" / run_folder.CSV_LOG).readline()
    assert "val_accuracy" in header and "val_iso_accuracy" in header
    for name in ("shutter", "aperture", "iso"):
        assert (tmp_path / "run" / f"confusion_matrix_{name}.png").exists()
    table = trainer.summary(metrics)
    assert "iso: mae_stops" in table and "mean over fields" in table
    # calibration (issue 17): a temperature per head fitted on the validation split, kept in the
    # run folder; nll/ece before and after, the intervals' coverage and width, the consistency
    temperatures = run_folder.read_temperatures(str(tmp_path / "run"))
    assert set(temperatures) == {"shutter", "aperture", "iso"}
    assert metrics["calibration"]["temperatures"] == temperatures
    for name, field in metrics["fields"].items():
        assert field["calibration"]["temperature"] == temperatures[name] > 0
        for split in ("train", "validation", "test"):
            numbers = field["calibration"]["splits"][split]
            for key in ("nll", "ece", "interval_coverage", "interval_width_stops"):
                assert numbers[f"{key}_before"] is not None, (name, split, key)
                assert field["splits"][split][key] == numbers[f"{key}_after"]
        validation = field["calibration"]["splits"]["validation"]
        assert validation["nll_after"] <= validation["nll_before"] + 1e-9  # fitted there
        assert (tmp_path / "run" / run_folder.reliability_png(name, True)).exists()
    masses = run_folder.read(str(tmp_path / "run"), need_weights=False).interval_masses
    assert set(masses) == {"shutter", "aperture", "iso"}
    assert metrics["calibration"]["interval_masses"] == masses
    for name, field in metrics["fields"].items():
        validation = field["calibration"]["splits"]["validation"]
        assert field["calibration"]["interval_mass"] == masses[name]
        # the fitted level makes the validation intervals cover 0.8 (finite-sample quantile)
        assert validation["interval_coverage_after"] >= 0.8
    consistency = metrics["consistency"]
    assert consistency["split"] == "test" and consistency["threshold"] == 0.05
    assert set(consistency["false_alarms"]) == {"shutter", "aperture", "iso"}
    assert set(consistency["fields"]["iso"]) == {"-3", "-2", "+2", "+3"}
    assert "iso: interval_coverage" in table and "iso: temperature" in table
    with pytest.raises(trainer.TrainError, match="ordinal_sigma"):
        trainer.train(tiny_config(records, tmp_path / "bad", ordinal_sigma=1.0))


def test_regression_baseline(records, tmp_path):
    metrics = trainer.train(tiny_config(records, tmp_path / "run", task="regression"))
    test = metrics["fields"]["shutter"]["splits"]["test"]
    for key in ("mae_stops", "rmse_stops", "mean_baseline_mae_stops", "mean_baseline_rmse_stops",
                "prediction_std_ratio", "accuracy"):
        assert test[key] is not None, key
    assert metrics["test_accuracy"] == test["accuracy"]
    config = json.loads((tmp_path / "run" / "model_config.json").read_text())
    head = config["heads"][0]
    assert head["kind"] == "regression" and head["std"] > 0
    assert "shutter: mae_stops" in trainer.summary(metrics)
