"""A run folder and an export written before the house rebuild (tests/fixtures/legacy_v0_1, commit
e303c1b) still load: predict reads the old export and gives the answer it gave then, and the
old run folder exports again to a model that gives that same answer."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from exif_keras.serving import exporter
from exif_keras.serving.predictor import Predictor
from exif_keras.serving.predictor import run as predict_run

LEGACY = pathlib.Path(__file__).parent / "fixtures" / "legacy_v0_1"
NAMES = ("binary_shutter", "joint_fine")


def _expected(name: str) -> dict:
    return json.loads((LEGACY / "expected_outputs.json").read_text())[name]


# Outputs added since (issue 17): a fine head's interval and the intervals as text. An old export
# lacks them; a new export of an old run folder adds them beside the old, unchanged outputs.
ADDED = {"shutter_low", "shutter_high", "aperture_low", "aperture_high", "iso_low", "iso_high",
         "exif_range_text"}


def _check(outputs: dict, expected: dict, added=()) -> None:
    assert sorted(outputs) == sorted(set(expected) | set(added))
    for key, want in expected.items():
        got = outputs[key]
        if got.dtype == object:
            assert [g.decode() for g in np.ravel(got)] == want, key
        else:
            np.testing.assert_allclose(got, np.array(want), rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_an_old_export_loads_in_predict_and_answers_as_before(name):
    predictor = Predictor.load(str(LEGACY / f"models_{name}"))
    assert predictor.heads, "exif_keras.json of the old export read"
    _check(predictor([(LEGACY / "photo.jpg").read_bytes()]), _expected(name))


@pytest.mark.parametrize("name", NAMES)
def test_an_old_run_folder_exports_to_the_same_answers(name, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / name, run)
    path = exporter.export_model(str(run), str(tmp_path / "models" / name), write_config=False)
    predictor = Predictor.load(path)
    # no calibration.json in an old run folder: every temperature is 1, the answers unchanged
    assert set(predictor.temperatures.values()) == {1.0}
    _check(predictor([(LEGACY / "photo.jpg").read_bytes()]), _expected(name),
           ADDED if name == "joint_fine" else ())


def test_an_old_joint_export_without_intervals_runs_in_predict(tmp_path, capsys):
    status = predict_run([str(LEGACY / "photo.jpg")], str(LEGACY / "models_joint_fine"),
                               as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0 and len(lines) == 2
    row = lines[0]
    assert all(e["interval"] is None for e in row["estimate"].values())
    assert "exif_range_text" not in row
    assert Predictor.load(str(LEGACY / "models_joint_fine")).interval is None
