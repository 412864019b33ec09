"""Promises of training, the model, its losses and the studies that no other test held: each test
here fails when its promise is broken by a one-line change (see tests/MUTATION.md)."""

from __future__ import annotations

import csv
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from absl.testing import flagsaver

from exif_keras import train
from exif_keras.analysis import studies
from exif_keras.common import labels, stops
from exif_keras.modeling import losses, run_folder
from exif_keras.modeling import model as model_lib
from exif_keras.training import config as config_lib
from exif_keras.training import evaluation, trainer


def tiny_config(records, model_dir, **overrides) -> config_lib.TrainConfig:
    base = dict(field="shutter", task="binary", data_dir=str(records), model_dir=str(model_dir),
                epochs=2, batch_size=8, num_patches=2, patch_size=32, backbone="scratch",
                filters=4, export=False, verbose=0, eval_train=False, seed=1)
    base.update(overrides)
    return config_lib.TrainConfig.from_flat(**base)


# ------------------------------------------------------------------ the regression loss (mask)

def test_regression_loss_ignores_a_photo_without_the_fields_value():
    loss = losses.MaskedStandardizedMSE(std=2.0)
    y_true = np.array([1.0, np.nan, -3.0, np.nan], np.float32)
    y_pred = np.array([3.0, 100.0, -3.0, -7.0], np.float32)
    # ((3 - 1) / 2)^2 = 1 and 0 over the 2 photos with a value: mean 0.5
    assert float(loss(y_true, y_pred)) == pytest.approx(0.5)
    # what is predicted for a photo without the value changes nothing, loss nor gradient
    other = y_pred.copy()
    other[[1, 3]] = [-50.0, 0.0]
    assert float(loss(y_true, other)) == pytest.approx(0.5)
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(tf.constant(y_true), pred)
    grad = tape.gradient(value, pred).numpy()
    assert np.all(np.isfinite(grad)) and grad[1] == 0 and grad[3] == 0
    assert grad[0] == pytest.approx(2 * 1.0 / 2.0 / 2)  # d/dp ((p - 1)/2)^2 / 2 at p = 3
    # the same as the loss over only the photos that have it
    assert float(loss(y_true[[0, 2]], y_pred[[0, 2]])) == pytest.approx(0.5)
    # a batch without any value costs nothing (not NaN)
    assert float(loss(np.full(3, np.nan, np.float32), np.ones(3, np.float32))) == 0.0


def test_regression_metric_ignores_a_photo_without_the_fields_value():
    metric = losses.MaskedMeanAbsoluteError()
    metric.update_state(np.array([1.0, np.nan, 2.0], np.float32),
                        np.array([2.0, 99.0, 0.5], np.float32))
    metric.update_state(np.array([np.nan], np.float32), np.array([7.0], np.float32))
    # |2-1| + |0.5-2| over 2 photos
    assert float(metric.result()) == pytest.approx(1.25)
    empty = losses.MaskedMeanAbsoluteError()
    empty.update_state(np.array([np.nan], np.float32), np.array([1.0], np.float32))
    assert float(empty.result()) == 0.0


def _joint_regression_model():
    config = model_lib.ModelConfig(
        heads=(model_lib.HeadConfig("shutter", kind="regression", mean=-6.0, std=2.0),
               model_lib.HeadConfig("iso", 2)),
        num_patches=1, patch_size=8, backbone="scratch", trunk_layer="block1_conv1",
        filters=2, dense_units=4, l2=0.0)
    return model_lib.build_model(config)


def test_compiled_regression_head_masks_nan_targets_and_reads_stops():
    keras.utils.set_random_seed(0)
    model = _joint_regression_model()
    model_lib.compile_model(model)
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8, 3)).astype(np.uint8)
    pred = model.predict(x, verbose=0)["shutter"]
    y = {"shutter": np.array([pred[0] + 2.0, np.nan, np.nan, pred[3]], np.float32),
         "iso": np.array([0, 1, -1, 0], np.int32)}
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    # MAE in stops over the two photos with a value: (2 + 0) / 2
    assert result["shutter_mae_stops"] == pytest.approx(1.0, abs=1e-4)
    # the regression loss in units of std: ((2 / 2)^2 + 0) / 2
    iso = keras.losses.SparseCategoricalCrossentropy(ignore_class=-1)(
        y["iso"], model.predict(x, verbose=0)["iso"])
    assert result["loss"] == pytest.approx(0.5 + float(iso), rel=1e-4)
    # the output is mean + std * (linear unit): in stops
    dense = model.get_layer("shutter_standardized")
    assert model.get_layer("shutter").mean == -6.0 and model.get_layer("shutter").std == 2.0
    features = keras.Model(model.input, dense.input)(x)
    np.testing.assert_allclose(pred, -6.0 + 2.0 * dense(features).numpy()[:, 0], rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------- a joint run: weights, best epoch

class _LossCheck(keras.callbacks.Callback):
    """Before the first step: the compiled loss of one batch, and its parts unweighted."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.found = batch, None

    def on_train_begin(self, logs=None):
        x, y = self.batch
        y_pred = self.model(x, training=False)
        total = float(self.model.compute_loss(x=x, y=y, y_pred=y_pred, training=False))
        reg = float(sum(self.model.losses)) if self.model.losses else 0.0
        parts = {name: float(keras.losses.SparseCategoricalCrossentropy(ignore_class=-1)(
            y[name], y_pred[name])) for name in y}
        self.found = {"total": total, "reg": reg, "parts": parts}


@pytest.fixture(scope="module")
def joint_run(sample_records, tmp_path_factory):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (6, 2, 32, 32, 3)).astype(np.uint8)
    y = {"shutter": np.array([0, 1, 0, 1, -1, 0], np.int32),
         "iso": np.array([1, 0, 0, -1, 1, 1], np.int32)}
    check = _LossCheck((x, y))
    run = tmp_path_factory.mktemp("joint") / "run"
    metrics = trainer.train(tiny_config(sample_records, run, field="shutter,iso", epochs=3,
                                      field_weights={"iso": 0.25}), extra_callbacks=[check])
    return run, metrics, check.found


def test_field_weights_reach_the_compiled_model_and_weigh_its_loss(joint_run):
    _, _, found = joint_run
    parts = found["parts"]
    assert parts["iso"] > 0.01 and parts["shutter"] > 0.01
    want = parts["shutter"] + 0.25 * parts["iso"] + found["reg"]
    assert found["total"] == pytest.approx(want, rel=1e-4)
    assert found["total"] != pytest.approx(parts["shutter"] + parts["iso"] + found["reg"],
                                           rel=1e-3)


def test_a_model_of_two_fields_keeps_its_best_epoch_by_the_mean_of_its_heads(joint_run):
    run, metrics, _ = joint_run
    with open(run / run_folder.CSV_LOG) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        mean = (float(row["val_shutter_accuracy"]) + float(row["val_iso_accuracy"])) / 2
        assert float(row["val_accuracy"]) == pytest.approx(mean, abs=1e-6)
    values = [float(r["val_accuracy"]) for r in rows]
    assert metrics["best_epoch"] == 1 + int(np.argmax(values))
    assert (run / run_folder.BEST_WEIGHTS).exists()
    fit = json.loads((run / run_folder.FIT_COMPLETE).read_text())
    assert fit["monitor"] == "val_accuracy"


def test_mean_over_heads_of_two_and_three_heads():
    for names in (["shutter", "iso"], ["shutter", "aperture", "iso"]):
        logs = {f"{p}{n}_accuracy": 0.1 * (i + 1) + (0.5 if p else 0.0)
                for i, n in enumerate(names) for p in ("", "val_")}
        trainer.MeanOverHeads(names).on_epoch_end(0, logs)
        assert logs["accuracy"] == pytest.approx(np.mean([0.1 * (i + 1)
                                                          for i in range(len(names))]))
        assert logs["val_accuracy"] == pytest.approx(logs["accuracy"] + 0.5)
    one = {"accuracy": 0.3, "val_accuracy": 0.2, "shutter_accuracy": 0.9}
    trainer.MeanOverHeads(["shutter"]).on_epoch_end(0, one)
    assert one["accuracy"] == 0.3 and one["val_accuracy"] == 0.2


# ----------------------------------------------------------------------- --seed: initial weights

class _InitialWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = None

    def on_train_begin(self, logs=None):
        self.weights = [w.numpy().copy() for w in self.model.trainable_weights]
        raise KeyboardInterrupt("seen the initial weights")


def _initial_weights(records, model_dir, seed):
    seen = _InitialWeights()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(records, model_dir, seed=seed), extra_callbacks=[seen])
    return seen.weights


def test_seed_decides_the_initial_weights(sample_records, tmp_path):
    a = _initial_weights(sample_records, tmp_path / "a", seed=3)
    keras.utils.set_random_seed(12345)  # whatever ran before: the seed alone decides
    np.random.default_rng().random(10)
    b = _initial_weights(sample_records, tmp_path / "b", seed=3)
    c = _initial_weights(sample_records, tmp_path / "c", seed=4)
    assert len(a) == len(b) == len(c) > 0
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    kernels = [i for i, w in enumerate(a) if w.ndim > 1]
    assert kernels and all(not np.array_equal(a[i], c[i]) for i in kernels)


# ------------------------------------------------------------- studies: a regression run's metrics

def _regression_metrics_as_train_writes_them():
    test = {"count": 10, "mae_stops": 1.25, "rmse_stops": 1.5, "mean_baseline_mae_stops": 1.75,
            "mean_baseline_rmse_stops": 2.0, "prediction_std_ratio": 0.05, "accuracy": 0.6}
    return {"field": "shutter", "task": "regression", "test_accuracy": 0.6,
            "val_accuracy": 0.7, "train_accuracy": None, "best_epoch": 2, "wall_seconds": 3.0,
            "splits": {"test": {"accuracy": 0.6, "count": 10},
                       "validation": {"accuracy": 0.7, "count": 8}},
            "fields": {"shutter": {"task": "regression", "class_names": [],
                                   "splits": {"test": test,
                                              "validation": dict(test, mae_stops=9.0)}}}}


def test_study_results_carry_a_regression_runs_metrics_as_the_run_writes_them(tmp_path):
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    (records_dir / "manifest.json").write_text(json.dumps({"counts": {}}))
    base = tmp_path / "base.flags"
    base.write_text(f"--field=shutter\n--task=regression\n--data_dir={records_dir}\n"
                    "--epochs=1\n--backbone=scratch\n--patch_size=32\n")

    def runner(run):
        with open(run.metrics_path, "w") as f:
            json.dump(_regression_metrics_as_train_writes_them(), f)
        return 0

    result = studies.run_study(base_flagfile=str(base), grid=["num_patches=1"], seeds=["0"],
                             study_dir=str(tmp_path / "study"), out=io.StringIO(), runner=runner)
    with open(result["paths"]["csv"]) as f:
        row = next(csv.DictReader(f))
    assert row["status"] == "ok"
    assert (row["mae_stops"], row["rmse_stops"], row["mean_baseline_mae_stops"],
            row["prediction_std_ratio"]) == ("1.25", "1.5", "1.75", "0.05")
    assert float(row["test_accuracy"]) == 0.6 and float(row["val_accuracy"]) == 0.7


# ----------------------------------------------------------------- the regression's binary reading

def test_regression_accuracy_reads_the_binary_group_by_the_threshold():
    # shutter: fast <= 1/250 s (class 5, -8 stops), slow >= 1/30 s (class 8, -5 stops)
    assert evaluation.binary_threshold("shutter") == pytest.approx(-6.5)
    true = np.array([-9.0, -4.0, -7.0, np.nan, -2.0])     # fast, slow, left out, none, slow
    pred = np.array([-8.0, -6.0, -3.0, 0.0, -6.9])        # fast, slow, -, -, fast
    out = evaluation.regression_results("shutter", true, pred, train_mean=-6.0)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["mae_stops"] == pytest.approx(np.mean([1.0, 2.0, 4.0, 4.9]))


# ------------------------------------------------------------------- the ordinal loss, masked

def test_ordinal_loss_in_a_compiled_model_ignores_a_photo_without_a_label():
    loss = losses.MaskedOrdinalCrossentropy(0.7, 0.1)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], np.float32)
    masked = float(loss(np.array([0, -1, 2], np.int32), y_pred))
    only = float(loss(np.array([0, 2], np.int32), y_pred[[0, 2]]))
    assert masked == pytest.approx(only, rel=1e-6)


# ------------------------------------------------------- the regression keeps its lowest val loss

def test_a_regression_keeps_its_best_epoch_by_the_lowest_validation_loss(sample_records, tmp_path):
    metrics = trainer.train(tiny_config(sample_records, tmp_path / "run", task="regression",
                                        epochs=3, learning_rate=0.05))
    with open(tmp_path / "run" / run_folder.CSV_LOG) as f:
        val_losses = [float(r["val_loss"]) for r in csv.DictReader(f)]
    assert len(val_losses) == 3 and len(set(val_losses)) == 3
    assert metrics["best_epoch"] == 1 + int(np.argmin(val_losses))
    fit = json.loads((tmp_path / "run" / run_folder.FIT_COMPLETE).read_text())
    assert fit["monitor"] == "val_loss" and fit["best_value"] == pytest.approx(min(val_losses))


# --------------------------------------------------------------- --field_weights: parsed, checked

def test_field_weights_flag_is_parsed_and_a_weight_for_no_head_is_an_error():
    parse = config_lib.parse_field_weights
    assert parse(["shutter=1", " iso = 0.5"]) == {"shutter": 1.0, "iso": 0.5}
    assert parse([]) is None
    for bad in (["shutter"], ["iso=half"]):
        with pytest.raises(config_lib.FlagFormatError, match="field=weight"):
            parse(bad)
    # the train command reads the flag through it, and a malformed item is a usage error
    with flagsaver.flagsaver():
        flags.FLAGS(["train", "--field=shutter,iso", "--field_weights=shutter=1,iso=0.5"],
                    known_only=True)
        assert config_lib.TrainConfig.from_flags().optim.field_weights == \
            {"shutter": 1.0, "iso": 0.5}
        for bad in ("shutter", "iso=half"):
            flags.FLAGS(["train", "--field=shutter,iso", f"--field_weights={bad}"],
                        known_only=True)
            with pytest.raises(app.UsageError, match="field=weight"):
                train.main(["train"])
    model = _joint_regression_model()
    with pytest.raises(ValueError, match="unknown heads.*aperture"):
        model_lib.compile_model(model, loss_weights={"aperture": 2.0})
    model_lib.compile_model(model, loss_weights={"iso": 2.0})


# -------------------------------------------------- metrics.json: every key, labels of any shape

FIELD_KEYS = ("count", "majority_class", "binary_count", "accuracy", "within_one_stop",
              "mae_stops", "majority_mae_stops", "binary_accuracy")
REGRESSION_KEYS = ("count", "mae_stops", "rmse_stops", "mean_baseline_mae_stops",
                   "mean_baseline_rmse_stops", "prediction_std_ratio")


def test_field_metrics_hold_every_key_even_without_a_labelled_photo():
    empty = stops.field_metrics("iso", [-1], np.full([1, 5], 0.2), [1, 0, 0, 0, 0])
    assert set(empty) == set(FIELD_KEYS)
    assert [empty[k] for k in FIELD_KEYS[3:]] == [None] * 5
    assert empty["count"] == 0 and empty["binary_count"] == 0


def test_field_metrics_take_labels_as_a_column_and_refuse_a_class_past_the_last():
    p = np.array([[0.1, 0.9, 0, 0, 0], [0, 0, 0, 0.2, 0.8]])
    flat = stops.field_metrics("iso", [1, 4], p, [0, 3, 0, 0, 1])
    column = stops.field_metrics("iso", np.array([[1], [4]]), p, np.array([[0], [3], [0], [0],
                                                                           [1]]))
    assert flat == column and flat["accuracy"] == 1.0 and flat["count"] == 2
    with pytest.raises(ValueError, match="class ids"):
        stops.field_metrics("iso", [5], np.full([1, 5], 0.2), [1, 0, 0, 0, 0])


def test_regression_metrics_hold_every_key_and_take_columns():
    empty = stops.regression_metrics([1.0], [np.nan], 0.0)
    assert set(empty) == set(REGRESSION_KEYS)
    assert [empty[k] for k in REGRESSION_KEYS[1:]] == [None] * 5
    flat = stops.regression_metrics([0.0, 1.0, 3.0], [1.0, 1.0, 4.0], 2.0)
    column = stops.regression_metrics(np.array([[0.0], [1.0], [3.0]]),
                                      np.array([[1.0], [1.0], [4.0]]), 2.0)
    assert flat == column and flat["count"] == 3
    # a spread under one stop still gives a ratio; no spread in the truth gives none
    assert stops.regression_metrics([0.0, 0.5], [1.0, 2.0], 0.0)["prediction_std_ratio"] == \
        pytest.approx(0.5)
    assert stops.regression_metrics([1.0, 2.0], [3.0, 3.0], 0.0)["prediction_std_ratio"] is None


# ------------------------------------------------- the ordinal loss and the accuracy: edge cases

def test_ordinal_target_of_a_class_past_the_last_is_all_zeros():
    for sigma in (0.0, 1.0):
        target = losses.ordinal_targets(tf.constant([5, 2, -1]), 5, sigma).numpy()
        assert target[0].tolist() == [0.0] * 5 and target[2].tolist() == [0.0] * 5
        assert target[1].sum() == pytest.approx(1.0)
    loss = losses.MaskedOrdinalCrossentropy(1.0)
    p = np.array([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.2, 0.1, 0.1, 0.1]], np.float32)
    # a class id past the last counts as no label: not in the mean either
    assert float(loss(np.array([5, 2]), p)) == pytest.approx(float(loss(np.array([2]), p[1:])))


def test_ordinal_loss_reductions_and_checked_hyperparameters():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], np.float32)
    y = np.array([0, -1, 2])
    each = [float(losses.MaskedOrdinalCrossentropy(0.7, reduction="sum")(y[[i]], p[[i]]))
            for i in (0, 2)]
    total = float(losses.MaskedOrdinalCrossentropy(0.7, reduction="sum")(y, p))
    assert total == pytest.approx(sum(each), rel=1e-6)
    mean = float(losses.MaskedOrdinalCrossentropy(0.7)(y, p))
    assert mean == pytest.approx(sum(each) / 2, rel=1e-6)            # over the labelled photos
    assert float(losses.MaskedOrdinalCrossentropy(0.7, reduction="mean")(y, p)) == \
        pytest.approx(mean, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.MaskedOrdinalCrossentropy(0.5, label_smoothing=1.5)
    with pytest.raises(ValueError, match="sigma"):
        losses.MaskedOrdinalCrossentropy(-1.0)


def test_masked_accuracy_with_sample_weights():
    metric = losses.MaskedAccuracy()
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    metric.update_state(np.array([0, 0, -1, 1]), p, sample_weight=np.array([3.0, 1.0, 5.0, 0.0]))
    # right (3), wrong (1), unlabelled, right but weighing nothing: 3 / 4
    assert float(metric.result()) == pytest.approx(0.75)
    assert metric.name == "accuracy"


def test_estimates_are_probability_weighted_means_in_stops():
    # unnormalised probabilities are normalised: the weighted mean of the class values
    p = np.zeros(5)
    p[[0, 2]] = [2.0, 2.0]        # ISO 100 (0 stops) and ISO 400 (2 stops)
    assert stops.expected_stops(p, "iso") == pytest.approx(1.0)
    assert isinstance(stops.expected_stops(p, "iso"), float)
    assert float(stops.tf_expected_stops(tf.constant([p], tf.float32), "iso")[0]) == \
        pytest.approx(1.0)
    out = stops.estimates({"iso": np.array([p / 4])})
    assert out["stops"]["iso"].tolist() == pytest.approx([1.0])
    assert out["iso"].tolist() == pytest.approx([200.0]) and list(out["exif_text"]) == ["ISO 200"]


def test_unknown_fields_are_named_with_the_known_ones():
    for call in (lambda: stops.value_to_stops(1.0, "focal"),
                 lambda: labels.field_spec("focal")):
        with pytest.raises(ValueError, match="expected one of shutter, aperture, iso"):
            call()
    with pytest.raises(ValueError, match="needs at least one of shutter, aperture, iso"):
        stops.exif_text({})
    with pytest.raises(ValueError, match="needs at least one of shutter, aperture, iso"):
        stops.tf_exif_text({})
