"""Temperature scaling, ECE and the consistency measurements (training/calibration.py) on
hand-made cases, and the trainer's calibration step on made-up predictions (no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from exif_keras.common import figures, stops
from exif_keras.modeling import run_folder
from exif_keras.training import calibration, trainer
from exif_keras.training import config as config_lib


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sampled(n=4000, r=5, true_temperature=2.5, seed=0):
    """Labels drawn from softmax(z) while the 'model' says softmax(z * true_temperature): an
    overconfident model whose right temperature is true_temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, r))
    truth = softmax(z)
    labels = np.array([rng.choice(r, p=p) for p in truth])
    return labels, softmax(z * true_temperature)


def test_overconfident_probabilities_get_a_temperature_above_one_and_a_lower_nll():
    labels, probabilities = sampled()
    labels[::10] = -1                                     # masked
    temperature = calibration.fit_temperature(labels, probabilities)
    assert temperature > 1.0 and temperature == pytest.approx(2.5, rel=0.15)
    before = calibration.nll(labels, probabilities)
    after = calibration.nll(labels, calibration.scale(probabilities, temperature))
    assert after < before
    # it is the minimum: a little either way is worse
    for other in (temperature * 0.9, temperature * 1.1):
        assert calibration.nll(labels, calibration.scale(probabilities, other)) > after
    assert calibration.ece(labels, calibration.scale(probabilities, temperature)) < \
        calibration.ece(labels, probabilities)
    # deterministic, and argmax never changes
    assert calibration.fit_temperature(labels, probabilities) == temperature
    np.testing.assert_array_equal(calibration.scale(probabilities, temperature).argmax(-1),
                                  probabilities.argmax(-1))


def test_underconfident_probabilities_get_a_temperature_below_one():
    labels, probabilities = sampled(true_temperature=0.5, seed=1)
    assert calibration.fit_temperature(labels, probabilities) < 1.0
    assert calibration.fit_temperature([-1, -1], probabilities[:2]) == 1.0   # nothing labelled


def test_scale_is_softmax_of_logits_over_t():
    z = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(calibration.scale(softmax(z), 1.7), softmax(z / 1.7), atol=1e-12)
    np.testing.assert_allclose(calibration.scale(softmax(z), 1.0), softmax(z), atol=1e-12)


def test_ece_on_known_bins():
    # top confidences 0.95 (bin 15), 0.95, 0.55 (bin 9), 0.55; right, wrong, right, right
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    y = np.array([0, 1, 0, 1])
    table = calibration.reliability(y, p)
    assert table["count"][14] == 2 and table["count"][8] == 2 and sum(table["count"]) == 4
    assert table["accuracy"][14] == 0.5 and table["confidence"][14] == pytest.approx(0.95)
    assert table["accuracy"][8] == 1.0 and table["confidence"][8] == pytest.approx(0.55)
    assert table["accuracy"][0] is None
    assert calibration.ece(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    # a confidence exactly on an edge belongs to the bin below it ((b/15, (b+1)/15])
    edge = np.array([[2 / 15, 13 / 15]])
    assert calibration.reliability([1], edge)["count"][12] == 1
    assert calibration.ece([-1], p[:1]) is None
    assert calibration.nll(y, p) == pytest.approx(-np.mean(np.log([0.95, 0.05, 0.55, 0.55])))


def test_the_interval_mass_level_is_fitted_to_cover_the_promise():
    # 100 photos, each with its true class at 0.9 (4 classes, the rest 0.1 spread): calibrated
    # only if 90% are right; here 84 are. At level 0.8 every interval is the top class alone and
    # covers 0.84; the promise of 0.8 needs ceil(101 * 0.8) / 100 = 0.81 of them: any level up to
    # 0.9 gives one class, so the smallest level tried is chosen
    rng = np.random.default_rng(5)
    top = rng.integers(0, 4, 100)
    p = np.full((100, 4), 0.1 / 3)
    p[np.arange(100), top] = 0.9
    y = np.where(np.arange(100) < 84, top, (top + 2) % 4)
    level = calibration.fit_interval_mass(y, p, 0.8)
    assert level == calibration.MASS_LEVELS[0]
    # a promise above the accuracy needs two classes or more: the level rises past 0.9
    level = calibration.fit_interval_mass(y, p, 0.9)
    assert 0.9 < level <= 1.0
    lo, hi = stops.interval_classes(p, level)
    assert np.mean((lo <= y) & (y <= hi)) >= math.ceil(101 * 0.9) / 100
    assert calibration.fit_interval_mass([-1], p[:1], 0.8) == 0.8        # nothing labelled


def test_roc_auc():
    assert calibration.roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert calibration.roc_auc([3, 4], [0, 1]) == 0.0
    assert calibration.roc_auc([1, 1], [1, 1]) == 0.5                  # ties count one half
    assert calibration.roc_auc([0, 2], [1, 3]) == pytest.approx(0.75)
    assert calibration.roc_auc([], [1]) is None


def test_consistency_metrics_false_alarms_detections_and_dropped_shifts():
    # ISO (5 classes): every photo sure of its true class; a shift lands on probability 0
    y = np.array([0, 1, 2, 3, 4, -1])
    p = np.eye(5)[np.maximum(y, 0)] * 0.96 + 0.01
    out = calibration.consistency_metrics({"iso": y}, {"iso": p}, threshold=0.05)
    assert out["false_alarms"]["iso"] == 0.0 and out["photos"] == 5
    assert out["shifts_past_the_classes"] == "dropped"
    plus2 = out["fields"]["iso"]["+2"]
    assert plus2["count"] == 3 and plus2["detection_rate"] == 1.0 and plus2["auc"] == 1.0
    assert out["fields"]["iso"]["-3"]["count"] == 2 and out["fields"]["iso"]["+3"]["count"] == 2
    # a flat model flags nothing and cannot tell an edit from the truth
    flat = calibration.consistency_metrics({"iso": y}, {"iso": np.full((6, 5), 0.2)})
    assert flat["false_alarms"]["iso"] == 0.0
    assert flat["fields"]["iso"]["+2"]["detection_rate"] == 0.0
    assert flat["fields"]["iso"]["+2"]["auc"] == 0.5


def _config(**overrides):
    return config_lib.TrainConfig.from_flat(field="all", task="fine", **overrides)


def _predictions():
    labels, probabilities = sampled(n=300, r=5, true_temperature=3.0, seed=2)
    y = {"iso": labels}
    p = {"iso": probabilities.astype(np.float32)}
    return {"validation": (y, dict(p)), "test": ({"iso": labels[:100]},
                                                {"iso": p["iso"][:100].copy()})}


class _Head:
    name, field, task = "iso", "iso", "fine"


def test_the_trainer_calibrates_on_validation_and_writes_calibration_json(tmp_path):
    predictions = _predictions()
    raw_test = predictions["test"][1]["iso"].copy()
    out = trainer._calibrate(_config(), [_Head()], predictions, str(tmp_path))
    temperature = out["iso"]["temperature"]
    assert temperature > 1.5
    assert run_folder.read_temperatures(str(tmp_path)) == {"iso": temperature}
    saved = json.loads((tmp_path / run_folder.CALIBRATION).read_text())
    assert saved["calibrate"] is True and saved["fitted_on"] == "validation"
    assert saved["interval"] == 0.8 and saved["interval_masses"] == {
        "iso": out["iso"]["interval_mass"]}
    assert numbers_ok(out["iso"]["splits"]["validation"])
    # the predictions are now what the calibrated model answers; the raw ones are kept
    np.testing.assert_allclose(predictions["test"][1]["iso"],
                               calibration.scale(raw_test, temperature), atol=1e-6)
    np.testing.assert_array_equal(out["_raw"]["test"][1]["iso"], raw_test)
    numbers = out["iso"]["splits"]["test"]
    for key in ("nll", "ece", "interval_coverage", "interval_width_stops"):
        assert numbers[f"{key}_before"] is not None and numbers[f"{key}_after"] is not None, key
    assert numbers["nll_after"] < numbers["nll_before"]
    # overconfident intervals are too narrow; calibration widens them
    assert numbers["interval_width_stops_after"] > numbers["interval_width_stops_before"]
    trainer._write_reliability(str(tmp_path), [_Head()], out, step=1)
    png = tmp_path / run_folder.RELIABILITY_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / run_folder.LOG_DIR).rglob("events.out.tfevents.*"))


def numbers_ok(numbers):
    """The validation intervals at the fitted level cover the promise (0.8, n = 300)."""
    return numbers["interval_coverage_after"] >= math.ceil(301 * 0.8) / 300


def test_nocalibrate_leaves_the_temperature_at_one(tmp_path):
    predictions = _predictions()
    raw = predictions["test"][1]["iso"].copy()
    out = trainer._calibrate(_config(calibrate=False), [_Head()], predictions, str(tmp_path))
    assert out["iso"]["temperature"] == 1.0
    np.testing.assert_array_equal(predictions["test"][1]["iso"], raw)
    assert run_folder.read_temperatures(str(tmp_path)) == {"iso": 1.0}
    assert out["iso"]["interval_mass"] == 0.8             # no level fitted either
    numbers = out["iso"]["splits"]["test"]
    assert numbers["nll_before"] == numbers["nll_after"]


def test_reliability_diagram_is_an_image():
    labels, probabilities = sampled(n=200, seed=3)
    table = dict(calibration.reliability(labels, probabilities), ece=0.1, label="before")
    empty = dict(calibration.reliability([-1], probabilities[:1]), ece=None, label="after")
    image = figures.reliability_diagram(table, empty, title="iso")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0


def test_the_flags_are_generated_from_the_config():
    config = config_lib.TrainConfig.from_flat(field="iso")
    assert config.calibration.calibrate is True and config.calibration.interval == 0.8
    assert config.calibration.consistency_threshold == stops.DEFAULT_CONSISTENCY_THRESHOLD
    assert {"calibrate", "interval", "consistency_threshold"} <= set(config_lib.flag_names())
    from absl import flags

    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["prog", "--field=iso", "--nocalibrate", "--interval=0.9"])
    parsed = config_lib.TrainConfig.from_flags(values)
    assert parsed.calibration.calibrate is False and parsed.calibration.interval == 0.9
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--field=iso", "--interval=1.5"])
    assert math.isclose(parsed.to_flat()["interval"], 0.9)
