"""Tests of studies (exif_keras/analysis/studies.py and the command exif_keras/study.py): grid
expansion and validation against train's flags, resume of a killed study, results.csv /
results.md / figure.png on a tiny study with a fake trainer, and one real run through the training
command."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from exif_keras import study
from exif_keras.analysis import studies

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def base(tmp_path):
    """A base flagfile and a records folder holding only a manifest (for the majority class)."""
    records = tmp_path / "records"
    records.mkdir()
    # shutter fine class = round(log2 t) + 13: binary fast is index <= 5 (1/250 s or shorter),
    # slow >= 8 (1/30 s or longer); 6 and 7 (1/125 s, 1/60 s) are left out
    counts = {"validation": {"shutter": {"3": 6, "5": 1, "8": 3, "6": 50}},
              "test": {"shutter": {"4": 2, "9": 6}}}
    (records / "manifest.json").write_text(json.dumps({"counts": counts}))
    path = tmp_path / "base.flags"
    path.write_text(f"--field=shutter\n--task=binary\n--data_dir={records}\n--epochs=3\n"
                    "--num_patches=8\n--backbone=scratch\n--patch_size=64\n--filters=16\n")
    return path


class FakeTrainer:
    """Stands in for the training child: writes metrics.json from a table, or fails."""

    def __init__(self, accuracy=None, fail=(), interrupt_at=None):
        self.calls = []
        self.accuracy = accuracy or (lambda settings: {
            "val_accuracy": 0.5 + 0.05 * settings["num_patches"] / 8 + 0.01 * settings["seed"],
            "test_accuracy": 0.4 + 0.05 * settings["num_patches"] / 8 + 0.02 * settings["seed"]})
        self.fail, self.interrupt_at = fail, interrupt_at

    def __call__(self, run: studies.Run) -> int:
        self.calls.append(run.name)
        assert os.path.isdir(run.run_dir)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            # killed in the middle of training: the folder has a log, no metrics.json
            with open(os.path.join(run.run_dir, "training_log.csv"), "w") as f:
                f.write("epoch,accuracy\n0,0.5\n")
            raise KeyboardInterrupt
        if run.name in self.fail:
            with open(run.log_path, "a") as f:
                f.write("Traceback ...\ntrain: error: no training example has a label\n")
            return 2
        metrics = {**self.accuracy(run.settings), "train_accuracy": 0.9, "best_epoch": 2,
                   "wall_seconds": 1.5}
        with open(run.metrics_path, "w") as f:
            json.dump(metrics, f)
        return 0


def study_args(base, tmp_path, grid=("num_patches=1,2,8",), seeds=("0", "1")):
    return dict(base_flagfile=str(base), grid=list(grid), seeds=list(seeds),
                study_dir=str(tmp_path / "study"), out=io.StringIO())


# ------------------------------------------------------------------------------- the grid

def test_grid_is_the_product_of_the_axes_times_the_seeds(base, tmp_path):
    axes = [studies.parse_axis("num_patches=1,2"), studies.parse_axis("learning_rate=1e-3,0.01")]
    runs = studies.plan(str(base), axes, [0, 1, 2], str(tmp_path / "s"))
    assert len(runs) == 2 * 2 * 3
    assert runs[0].name == "num_patches=1_learning_rate=1e-3_seed=0"
    assert runs[0].args == [f"--flagfile={base}", "--num_patches=1", "--learning_rate=1e-3",
                            "--seed=0", f"--model_dir={tmp_path / 's' / runs[0].name}",
                            "--noexport"]
    assert runs[0].command()[1:3] == ["-m", "exif_keras.train"]
    # the settings are train's parsed flags: the base flagfile, then the axes
    last = runs[-1].settings
    assert (last["num_patches"], last["learning_rate"], last["seed"]) == (2, 0.01, 2)
    assert last["field"] == "shutter" and last["epochs"] == 3 and last["export"] is False
    assert {r.name for r in runs} == {
        f"num_patches={k}_learning_rate={lr}_seed={s}"
        for k in (1, 2) for lr in ("1e-3", "0.01") for s in (0, 1, 2)}


@pytest.mark.parametrize("grid, message", [
    ("num_patchez=1,2", "not a flag of exif_keras.train"),
    ("num_patches=1,two", "num_patches=two"),
    ("num_patches=0", "num_patches=0"),
    ("backbone=vgg16,resnet", "resnet"),
    ("seed=1,2", "--seeds"),
    ("model_dir=a,b", "cannot be an axis"),
    ("num_patches", "expected <training flag>=v1,v2"),
    ("num_patches=1,,2", "expected <training flag>=v1,v2"),
    ("num_patches=2,2", "repeated"),
])
def test_a_wrong_axis_is_a_clear_error_before_anything_trains(base, tmp_path, grid, message):
    trainer = FakeTrainer()
    with pytest.raises(studies.StudyError, match=message):
        studies.run_study(**study_args(base, tmp_path, grid=[grid]), runner=trainer)
    assert trainer.calls == [] and not (tmp_path / "study").exists()


def test_other_study_errors(base, tmp_path):
    trainer = FakeTrainer()
    with pytest.raises(studies.StudyError, match="no such file"):
        studies.run_study(**{**study_args(base, tmp_path), "base_flagfile": "nope.flags"},
                        runner=trainer)
    with pytest.raises(studies.StudyError, match="seeds"):
        studies.run_study(**study_args(base, tmp_path, seeds=["x"]), runner=trainer)
    with pytest.raises(studies.StudyError, match="given twice"):
        studies.run_study(**study_args(base, tmp_path, grid=["l2=0.1", "l2=0.2"]), runner=trainer)
    no_field = tmp_path / "nofield.flags"
    no_field.write_text("--epochs=1\n")
    with pytest.raises(studies.StudyError, match="no --field"):
        studies.run_study(**{**study_args(base, tmp_path), "base_flagfile": str(no_field)},
                        runner=trainer)
    # ... unless the grid gives it
    runs = studies.plan(str(no_field), [studies.parse_axis("field=iso,aperture")], [0],
                      str(tmp_path / "s"))
    assert [r.settings["field"] for r in runs] == ["iso", "aperture"]
    assert trainer.calls == []


def test_training_flags_given_to_the_study_itself_are_an_error(base, tmp_path, capsys):
    with flagsaver.flagsaver():
        rest = study.parse_flags(["study", f"--base_flagfile={base}", "--grid=num_patches=1",
                                  f"--study_dir={tmp_path / 's'}", "--num_patches=4"])
        try:
            assert study.main(rest) == 2
        finally:
            flags.FLAGS.unparse_flags()
    assert "--num_patches" in capsys.readouterr().err


# ------------------------------------------------------------------------- running, resuming

def test_killed_study_skips_finished_runs_and_resumes_the_interrupted_one(base, tmp_path):
    killer = FakeTrainer(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        studies.run_study(**study_args(base, tmp_path), runner=killer)
    finished, interrupted = killer.calls[:2], killer.calls[2]
    assert all((tmp_path / "study" / n / "metrics.json").exists() for n in finished)
    assert not (tmp_path / "study" / interrupted / "metrics.json").exists()
    # results so far are on disk, the rest pending
    with open(tmp_path / "study" / "results.csv") as f:
        statuses = {r["run_dir"].split(os.sep)[-1]: r["status"] for r in csv.DictReader(f)}
    assert [statuses[n] for n in finished] == ["ok", "ok"]
    assert statuses[interrupted] == "pending"

    dry = study_args(base, tmp_path)
    studies.run_study(**dry, dry_run=True, runner=FakeTrainer())
    listing = dry["out"].getvalue()
    assert f"done    {finished[0]}" in listing and f"resume  {interrupted}" in listing
    assert "6 runs: 2 done, 1 resume, 3 new" in listing

    again = FakeTrainer()
    result = studies.run_study(**study_args(base, tmp_path), runner=again)
    assert again.calls[0] == interrupted and len(again.calls) == 4
    assert not set(again.calls) & set(finished)
    assert all(o.status == "ok" for o in result["outcomes"].values())
    # a third time: nothing to do
    third = FakeTrainer()
    studies.run_study(**study_args(base, tmp_path), runner=third)
    assert third.calls == []


def test_a_finished_run_trained_with_other_flags_is_an_error(base, tmp_path):
    studies.run_study(**study_args(base, tmp_path, grid=["num_patches=1"], seeds=["0"]),
                    runner=FakeTrainer())
    base.write_text(base.read_text().replace("--epochs=3", "--epochs=4"))
    trainer = FakeTrainer()
    with pytest.raises(studies.StudyError, match="epochs: 3 then, 4 now"):
        studies.run_study(**study_args(base, tmp_path, grid=["num_patches=1"], seeds=["0"]),
                        runner=trainer)
    assert trainer.calls == []
    # an interrupted run would resume another configuration's training: the same error
    interrupted = {**study_args(base, tmp_path, grid=["num_patches=2"], seeds=["0"]),
                   "study_dir": str(tmp_path / "other")}
    with pytest.raises(KeyboardInterrupt):
        studies.run_study(**interrupted, runner=FakeTrainer(interrupt_at=1))
    base.write_text(base.read_text().replace("--epochs=4", "--epochs=5"))
    with pytest.raises(studies.StudyError, match="epochs: 4 then, 5 now"):
        studies.run_study(**interrupted, runner=trainer)
    assert trainer.calls == []


# ---------------------------------------------------------------------------------- results

def test_results_csv_markdown_and_figure(base, tmp_path):
    name_failed = "num_patches=1_seed=1"
    result = studies.run_study(**study_args(base, tmp_path),
                             runner=FakeTrainer(fail=(name_failed,)))
    paths = result["paths"]
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["num_patches", "seed", "status", "val_accuracy", "test_accuracy",
                             "train_accuracy", "best_epoch", "wall_seconds", "run_dir"]
    assert [(r["num_patches"], r["seed"]) for r in rows] == [
        ("1", "0"), ("1", "1"), ("2", "0"), ("2", "1"), ("8", "0"), ("8", "1")]
    by_name = {os.path.basename(r["run_dir"]): r for r in rows}
    assert by_name[name_failed]["status"].startswith(
        "failed: error: no training example has a label (log: ")
    assert by_name[name_failed]["val_accuracy"] == ""
    ok = by_name["num_patches=8_seed=1"]
    assert ok["status"] == "ok" and float(ok["val_accuracy"]) == pytest.approx(0.56)
    assert float(ok["test_accuracy"]) == pytest.approx(0.47)
    assert ok["best_epoch"] == "2" and float(ok["wall_seconds"]) == 1.5

    md = pathlib.Path(paths["markdown"]).read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    # k=8: validation 0.55 and 0.56 -> mean 55.50 (55.00-56.00); the paper's 79.44 / 70.66
    assert ("| 2/2 | 55.50 (55.00–56.00) | 46.00 (45.00–47.00) | 90.00 (90.00–90.00) |"
            in lines["8"])
    assert "79.44 / 70.66" in lines["8"]
    assert "72.03 / –" in lines["2"]
    # k=1: one of two runs failed; one value, no range
    assert "| 1/2 | 50.62 | 40.62 |" in lines["1"]
    # majority class from the manifest: validation fast 7 vs slow 3 (class 6 left out) -> 70%;
    # test fast 2 vs slow 6 -> 75%
    assert "70.00 / 75.00" in lines["1"]
    assert "§5.3, best model" in md and "§5.3, k = 2" in md
    assert "backbone=scratch (paper: vgg16)" in md and "patch_size=64 (paper: 128)" in md
    assert f"`{name_failed}`: error: no training example has a label" in md

    with Image.open(paths["figure"]) as image:
        assert image.format == "PNG" and image.size[0] > 400
        assert len(set(image.convert("L").getdata())) > 20


def test_regression_metrics_become_columns(base, tmp_path):
    def regression(settings):
        return {"val_accuracy": 0.6, "test_accuracy": 0.55,
                "splits": {"test": {"mae_stops": 1.25, "rmse_stops": 1.5,
                                    "mean_baseline_mae_stops": 1.3,
                                    "prediction_std_ratio": 0.05}}}

    result = studies.run_study(**study_args(base, tmp_path, grid=["num_patches=1"], seeds=["0"]),
                             runner=FakeTrainer(accuracy=regression))
    with open(result["paths"]["csv"]) as f:
        row = next(csv.DictReader(f))
    assert (row["mae_stops"], row["rmse_stops"], row["mean_baseline_mae_stops"],
            row["prediction_std_ratio"]) == ("1.25", "1.5", "1.3", "0.05")


def test_paper_numbers_match_on_axes_field_and_task():
    setup = dict(studies.PAPER_SETUP)
    assert studies.paper_number(setup, ["num_patches"]).validation == 79.44
    assert studies.paper_number({**setup, "num_patches": 2}, ["num_patches"]).validation == 72.03
    assert studies.paper_number({**setup, "num_patches": 4}, ["num_patches"]) is None
    assert studies.paper_number({**setup, "backbone": "scratch"}, ["backbone"]).validation == 71.11
    assert studies.paper_number({**setup, "field": "iso"}, ["field"]).text == "< 55 (val)"
    # base settings that are not axes do not matter (the demo runs on the sample)...
    demo = {**setup, "backbone": "scratch", "patch_size": 64, "filters": 16}
    assert studies.paper_number(demo, ["num_patches"]).validation == 79.44
    # ... but field and task always do
    assert studies.paper_number({**setup, "task": "fine"}, ["num_patches"]) is None
    assert studies.paper_number({**setup, "learning_rate": 0.01},
                              ["learning_rate", "l2"]) is None


def test_failure_reasons(tmp_path):
    run = studies.Run("r", (), 0, str(tmp_path), [], {})
    assert studies.failure_reason(run, -9).startswith("killed by signal 9")
    (tmp_path / studies.TRAIN_LOG).write_text("$ old\ntrain: error: old problem\n$ new\n"
                                            "Traceback\nValueError: boom\n")
    assert studies.failure_reason(run, 1).startswith("exit status 1: ValueError: boom")
    assert studies.failure_reason(run, 0).startswith("no metrics.json written")


# ------------------------------------------------------------------------------- one real run

@pytest.mark.slow
def test_one_real_run_through_the_training_command(tmp_path):
    """The real child command on tiny records: study -> train -> metrics.json -> results."""
    from exif_keras.records import sample, writer

    sample.generate_sample(str(tmp_path / "sample"), count=24, seed=5, workers=1, progress=False)
    writer.run(str(tmp_path / "sample"), str(tmp_path / "records"), workers=1, progress=False)
    base = tmp_path / "tiny.flags"
    base.write_text(f"--field=shutter\n--data_dir={tmp_path / 'records'}\n--epochs=1\n"
                    "--batch_size=8\n--patch_size=32\n--backbone=scratch\n--filters=4\n"
                    "--scratch_width_divisor=8\n--noeval_train\n--verbose=0\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "exif_keras.study", f"--base_flagfile={base}",
         "--grid=num_patches=1", "--seeds=0", f"--study_dir={tmp_path / 'study'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = tmp_path / "study" / "num_patches=1_seed=0"
    assert (run_dir / "metrics.json").exists() and (run_dir / "training_curves.png").exists()
    assert "--noexport" in (run_dir / "train.log").read_text()
    with open(tmp_path / "study" / "results.csv") as f:
        row = next(csv.DictReader(f))
    assert row["status"] == "ok" and 0.0 <= float(row["test_accuracy"]) <= 1.0
    assert f"figure: {tmp_path / 'study' / 'figure.png'}" in done.stdout
