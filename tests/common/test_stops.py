"""Stops (exif_keras/stops.py): conversions, the ordinal target and masked loss, estimates in
camera notation (numpy and graph versions agree, and the graph version serves), metrics, errors."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.modeling import losses

NUM = {f: labels.field_spec(f).num_classes for f in labels.FIELDS}


def one_hot(field, index):
    p = np.zeros(NUM[field], np.float32)
    p[index] = 1.0
    return p


# ----------------------------------------------------------------------------- conversions

def test_class_values_are_the_binnings_stops():
    assert stops.class_values("shutter")[[0, 6, 13, 19]].tolist() == [-13, -7, 0, 6]
    assert stops.class_values("aperture").tolist() == list(range(13))
    assert stops.class_values("iso").tolist() == [0, 1, 2, 3, 4]
    # Each class value, turned back into seconds / f-number / ISO, bins into that same class.
    for field in labels.FIELDS:
        spec = labels.field_spec(field)
        for i, value in enumerate(stops.class_values(field)):
            assert spec.classify(stops.stops_to_value(value, field)) == i
    with pytest.raises(ValueError, match="unknown field"):
        stops.class_values("focal")


def test_value_to_stops_and_back():
    assert stops.value_to_stops(1 / 128, "shutter") == -7
    assert stops.value_to_stops(1 / 125, "shutter") == pytest.approx(-6.966, abs=1e-3)
    assert stops.value_to_stops(8.0, "aperture") == pytest.approx(6.0)
    assert stops.value_to_stops(5.6, "aperture") == pytest.approx(4.970, abs=1e-3)
    assert stops.value_to_stops(400, "iso") == pytest.approx(2.0)
    assert stops.value_to_stops(50, "iso") == pytest.approx(-1.0)
    for unknown in (None, -1.0, 0.0, math.nan, math.inf):
        assert math.isnan(stops.value_to_stops(unknown, "iso"))
    got = stops.value_to_stops(np.array([2.0, -1.0, 0.5]), "shutter")
    np.testing.assert_array_equal(np.isnan(got), [False, True, False])
    assert got[0] == 1 and got[2] == -1
    for field in labels.FIELDS:
        values = np.array([1 / 3, 1.7, 250.0])
        np.testing.assert_allclose(stops.stops_to_value(stops.value_to_stops(values, field), field),
                                   values)
    assert stops.stops_to_value(2.5, "aperture") == pytest.approx(2 ** 1.25)


def test_regression_targets_numpy_and_graph():
    """The regression targets from raw EXIF settings, as the input pipeline computes them (per
    field, value_to_stops of its setting; tf_value_to_stops in the graph)."""
    settings = {"exposure_time": np.array([1 / 250, -1.0], np.float32),
                "f_number": np.array([2.8, 16.0], np.float32),
                "iso": np.array([-1.0, 250.0], np.float32)}
    want = {f: stops.value_to_stops(settings[s], f) for f, s in stops.SETTINGS.items()}
    np.testing.assert_allclose(want["shutter"], [math.log2(1 / 250), np.nan], rtol=1e-6)
    np.testing.assert_allclose(want["aperture"], [2 * math.log2(2.8), 8.0], rtol=1e-6)
    np.testing.assert_allclose(want["iso"], [np.nan, math.log2(2.5)], rtol=1e-6)
    got = {f: stops.tf_value_to_stops(tf.constant(settings[s]), f)
           for f, s in stops.SETTINGS.items()}
    for field in labels.FIELDS:
        np.testing.assert_allclose(got[field].numpy(), want[field], rtol=1e-5)
    assert all(math.isnan(stops.value_to_stops(None, f)) for f in labels.FIELDS)


# ---------------------------------------------------------------------------- ordinal target

def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_ordinal_targets_sum_to_one_and_peak_at_the_true_class():
    ids = tf.constant([0, 3, 9, 19])
    target = losses.ordinal_targets(ids, 20, sigma=1.5).numpy()
    np.testing.assert_allclose(target.sum(axis=-1), 1.0, rtol=1e-6)
    assert target.argmax(axis=-1).tolist() == [0, 3, 9, 19]
    # Decreasing with the distance to the true class on both sides, symmetric inside the range.
    row = target[2]
    assert np.all(np.diff(row[:10]) > 0) and np.all(np.diff(row[9:]) < 0)
    np.testing.assert_allclose(row[9 - 3], row[9 + 3], rtol=1e-5)
    # The mass of a Gaussian that rounds into each class, renormalised over the classes.
    sigma = 1.5
    mass = [_phi((j + 0.5 - 9) / sigma) - _phi((j - 0.5 - 9) / sigma) for j in range(20)]
    np.testing.assert_allclose(row, np.array(mass) / sum(mass), atol=1e-6)
    assert row[9] == pytest.approx(2 * _phi(0.5 / sigma) - 1, abs=1e-5)


def test_ordinal_targets_sigma_zero_is_one_hot_and_smoothing_is_keras():
    ids = tf.constant([[2], [0]])  # [B, 1] as Keras hands labels over
    np.testing.assert_array_equal(losses.ordinal_targets(ids, 4, 0.0).numpy(),
                                  [[0, 0, 1, 0], [1, 0, 0, 0]])
    smoothed = losses.ordinal_targets(ids, 4, 0.0, label_smoothing=0.2).numpy()
    np.testing.assert_allclose(smoothed[0], [0.05, 0.05, 0.85, 0.05], rtol=1e-6)
    both = losses.ordinal_targets(ids, 4, 1.0, label_smoothing=0.2).numpy()
    plain = losses.ordinal_targets(ids, 4, 1.0).numpy()
    np.testing.assert_allclose(both, plain * 0.8 + 0.05, rtol=1e-6)
    np.testing.assert_allclose(both.sum(axis=-1), 1.0, rtol=1e-6)


def test_ordinal_targets_masked_rows_are_zero():
    target = losses.ordinal_targets(tf.constant([-1, 1, -1]), 5, 1.0, label_smoothing=0.1).numpy()
    assert np.all(target[[0, 2]] == 0) and target[1].sum() == pytest.approx(1.0)


def test_ordinal_targets_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="sigma"):
        losses.ordinal_targets(tf.constant([0]), 3, -1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.ordinal_targets(tf.constant([0]), 3, 0.0, label_smoothing=1.0)
    with pytest.raises(ValueError, match="sigma"):
        losses.MaskedOrdinalCrossentropy(sigma=math.nan)


# ------------------------------------------------------------------------------ masked loss

def _probs(rows):
    return tf.constant(rows, tf.float32)


def test_loss_sigma_zero_is_keras_sparse_crossentropy_with_ignore_class():
    y = tf.constant([2, -1, 0, 1])
    p = _probs([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    ours = losses.MaskedOrdinalCrossentropy()(y, p)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=-1)(y, p)
    want = -(math.log(0.7) + math.log(0.5) + math.log(0.3)) / 3  # mean over the 3 labelled
    assert float(ours) == pytest.approx(want, rel=1e-5)
    assert float(keras_loss) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("sigma,smoothing", [(0.0, 0.0), (1.0, 0.1)])
def test_a_masked_photo_adds_nothing_to_the_loss_or_its_gradient(sigma, smoothing):
    loss = losses.MaskedOrdinalCrossentropy(sigma=sigma, label_smoothing=smoothing)
    labelled = _probs([[0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25]])
    y = tf.constant([2, 0])
    with_masked = tf.Variable(tf.concat([labelled, _probs([[0.97, 0.01, 0.01, 0.01]])], 0))
    with tf.GradientTape() as tape:
        value = loss(tf.constant([2, 0, -1]), with_masked)
    grad = tape.gradient(value, with_masked).numpy()
    assert float(value) == pytest.approx(float(loss(y, labelled)), rel=1e-6)
    assert np.all(grad[2] == 0)
    assert np.any(grad[:2] != 0)


def test_an_all_masked_batch_gives_zero_not_nan():
    p = tf.Variable(_probs([[0.5, 0.5], [0.9, 0.1]]))
    with tf.GradientTape() as tape:
        value = losses.MaskedOrdinalCrossentropy(sigma=1.0)(tf.constant([-1, -1]), p)
    assert float(value) == 0.0
    assert np.all(tape.gradient(value, p).numpy() == 0)


def test_ordinal_loss_costs_a_near_miss_less_than_a_far_one():
    y = tf.constant([5])
    near = np.full([1, 13], 0.0, np.float32)
    near[0, 5], near[0, 6] = 0.5, 0.5
    far = np.full([1, 13], 0.0, np.float32)
    far[0, 5], far[0, 10] = 0.5, 0.5
    plain = losses.MaskedOrdinalCrossentropy(sigma=0.0)
    ordinal = losses.MaskedOrdinalCrossentropy(sigma=1.0)
    assert float(plain(y, near)) == pytest.approx(float(plain(y, far)))   # blind to distance
    assert float(ordinal(y, near)) < float(ordinal(y, far)) - 1.0


def test_loss_sample_weight_and_config_round_trip():
    loss = losses.MaskedOrdinalCrossentropy(sigma=0.7, label_smoothing=0.05, name="iso_loss")
    y = tf.constant([1, -1, 0])
    p = _probs([[0.2, 0.8], [0.5, 0.5], [0.6, 0.4]])
    per_photo = keras.losses.categorical_crossentropy(
        losses.ordinal_targets(y, 2, 0.7, 0.05), p).numpy()
    weighted = loss(y, p, sample_weight=tf.constant([2.0, 5.0, 1.0]))
    assert float(weighted) == pytest.approx((2 * per_photo[0] + per_photo[2]) / 2, rel=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(clone, losses.MaskedOrdinalCrossentropy)
    assert (clone.sigma, clone.label_smoothing, clone.name) == (0.7, 0.05, "iso_loss")
    assert float(clone(y, p)) == pytest.approx(float(loss(y, p)))


def test_masked_loss_and_accuracy_in_a_compiled_two_output_model():
    """The way a joint model uses them: one loss and metric per output, labels -1 where missing."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, {"shutter": keras.layers.Softmax(name="shutter")(inputs),
                                 "iso": keras.layers.Softmax(name="iso")(inputs[:, :2])})
    model.compile(loss={"shutter": losses.MaskedOrdinalCrossentropy(sigma=1.0),
                        "iso": losses.MaskedOrdinalCrossentropy()},
                  metrics={"shutter": [losses.MaskedAccuracy()], "iso": [losses.MaskedAccuracy()]})
    x = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    y = {"shutter": np.array([0, 2, -1, 0]), "iso": np.array([-1, -1, -1, -1])}
    got = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    p = keras.ops.convert_to_numpy(keras.activations.softmax(x))
    t = losses.ordinal_targets(y["shutter"], 3, 1.0).numpy()
    want = -np.sum(t * np.log(p), axis=-1)[[0, 1, 3]].mean()
    assert got["shutter_loss"] == pytest.approx(want, rel=1e-4)
    assert got["iso_loss"] == 0.0                       # a field nobody in the batch carries
    assert got["loss"] == pytest.approx(want, rel=1e-4)
    assert got["shutter_accuracy"] == pytest.approx(2 / 3)  # argmax 0, 1, 0 vs 0, 2, 0
    assert got["iso_accuracy"] == 0.0


def test_masked_accuracy_known_numbers():
    metric = losses.MaskedAccuracy()
    metric.update_state(tf.constant([[1], [-1], [0]]), _probs([[0.1, 0.9], [0.1, 0.9], [0.2, 0.8]]))
    assert float(metric.result()) == pytest.approx(0.5)
    metric.update_state(tf.constant([-1]), _probs([[0.1, 0.9]]))
    assert float(metric.result()) == pytest.approx(0.5)
    metric.reset_state()
    assert float(metric.result()) == 0.0


# ----------------------------------------------------------------------- camera notation

def _nearest_standard(value, field):
    """(text, position in stops) of the standard value nearest to a setting, by the live code:
    standard_text of its stops, and that text's entry in the table."""
    text = stops.standard_text(stops.value_to_stops(value, field), field)
    index = stops.standard_texts(field).index(text) if text else None
    return text, None if index is None else float(stops.standard_positions(field)[index])


def test_every_standard_value_is_its_own_nearest():
    for field in labels.FIELDS:
        positions = stops.standard_positions(field)
        assert np.all(np.diff(positions) > 0)
        for position, text in zip(positions, stops.standard_texts(field)):
            assert stops.standard_text(position, field) == text
            assert _nearest_standard(stops.stops_to_value(position, field), field)[0] == text


@pytest.mark.parametrize("field,value,text,written", [
    ("shutter", 1 / 128, "1/125 s", 1 / 125), ("shutter", 1 / 95, "1/100 s", 1 / 100),
    ("shutter", 0.75, "0.8 s", 0.8), ("shutter", 2.1, "2 s", 2.0), ("shutter", 1.2, "1.3 s", 1.3),
    ("shutter", 29.0, "30 s", 30.0), ("shutter", 1 / 8192, "1/8000 s", 1 / 8000),
    ("shutter", 1e-6, "1/32000 s", 1 / 32000), ("shutter", 1e4, "120 s", 120.0),
    ("aperture", 2 ** 2.5, "f/5.6", 5.6), ("aperture", 1.0, "f/1.0", 1.0),
    ("aperture", 6.5, "f/6.3", 6.3), ("aperture", 18.5, "f/18", 18.0), ("aperture", 64, "f/64", 64),
    ("iso", 3000, "ISO 3200", 3200), ("iso", 100, "ISO 100", 100), ("iso", 1100, "ISO 1000", 1000),
    ("iso", 60, "ISO 64", 64),
])
def test_nearest_standard(field, value, text, written):
    got_text, got_stops = _nearest_standard(value, field)
    assert got_text == text
    assert _nearest_standard(written, field)[0] == text  # the value as written is that entry
    inside = 1e-5 < value < 1e3   # 1e-6 s and 1e4 s lie past the table's ends
    assert abs(got_stops - stops.value_to_stops(value, field)) <= 1 / 6 or not inside


def test_nearest_standard_of_unknown_values_is_empty():
    assert _nearest_standard(-1.0, "iso") == ("", None)
    assert stops.standard_text(np.array([np.nan, 2.0]), "iso").tolist() == ["", "ISO 400"]


KNOWN = [  # (field, probabilities, stops, setting value, text)
    ("shutter", one_hot("shutter", 6), -7.0, 1 / 128, "1/125 s"),
    ("shutter", 1 / 3 * one_hot("shutter", 12) + 2 / 3 * one_hot("shutter", 13), -1 / 3,
     2 ** (-1 / 3), "0.8 s"),
    ("shutter", one_hot("shutter", 14), 1.0, 2.0, "2 s"),
    ("shutter", 0.4 * one_hot("shutter", 6) + 0.6 * one_hot("shutter", 7), -6.4, 2 ** -6.4,
     "1/80 s"),
    ("aperture", one_hot("aperture", 5), 5.0, 2 ** 2.5, "f/5.6"),
    ("aperture", 0.5 * one_hot("aperture", 4) + 0.5 * one_hot("aperture", 6), 5.0, 2 ** 2.5,
     "f/5.6"),
    ("iso", one_hot("iso", 2), 2.0, 400.0, "ISO 400"),
    ("iso", 0.2 * one_hot("iso", 3) + 0.8 * one_hot("iso", 4), 3.8, 100 * 2 ** 3.8, "ISO 1250"),
]


@pytest.mark.parametrize("field,probs,want_stops,want_value,text", KNOWN)
def test_estimate_on_known_probabilities(field, probs, want_stops, want_value, text):
    assert stops.expected_stops(probs, field) == pytest.approx(want_stops, abs=1e-6)
    numpy_out = stops.estimates({field: probs[None]})
    assert numpy_out[stops.SETTINGS[field]][0] == pytest.approx(want_value, rel=1e-6)
    assert numpy_out["exif_text"] == [text]
    graph_out = stops.tf_estimates({field: tf.constant(probs[None])})
    assert graph_out[stops.SETTINGS[field]].dtype == tf.float32
    assert graph_out[stops.SETTINGS[field]].numpy()[0] == pytest.approx(want_value, rel=1e-5)
    assert graph_out["exif_text"].numpy().tolist() == [text.encode()]


def test_exif_text_joins_the_fields_in_camera_order():
    per_field = {"iso": 5.0, "shutter": -7.0, "aperture": 5.0}
    assert stops.exif_text(per_field) == "1/125 s, f/5.6, ISO 3200"
    assert stops.exif_text(per_field, separator="  ") == "1/125 s  f/5.6  ISO 3200"
    assert stops.exif_text({"iso": 5.0}) == "ISO 3200"
    batch = {"shutter": np.array([-7.0, 1.0]), "iso": np.array([2.0, 5.0])}
    assert stops.exif_text(batch) == ["1/125 s, ISO 400", "2 s, ISO 3200"]
    graph = stops.tf_exif_text({k: tf.constant(v, tf.float32) for k, v in batch.items()})
    assert graph.numpy().tolist() == [b"1/125 s, ISO 400", b"2 s, ISO 3200"]
    assert stops.standard_text(math.nan, "iso") == ""
    assert stops.tf_standard_text(tf.constant([math.nan]), "iso").numpy().tolist() == [b""]
    with pytest.raises(ValueError, match="at least one"):
        stops.exif_text({})


def test_numpy_and_graph_texts_agree():
    for field in labels.FIELDS:
        # A fine grid across every table, offset so that no point sits on a boundary.
        grid = np.arange(-16.0, 13.0, 0.01, dtype=np.float64) + 0.003
        want = stops.standard_text(grid, field).tolist()
        got = [t.decode() for t in stops.tf_standard_text(tf.constant(grid, tf.float32),
                                                          field).numpy()]
        assert got == want
        assert len(set(want)) == len(stops.standard_texts(field))  # every entry reached
    rng = np.random.default_rng(0)
    probs = {f: rng.dirichlet(np.full(NUM[f], 0.3), size=300).astype(np.float32)
             for f in labels.FIELDS}
    want = stops.estimates(probs)
    got = stops.tf_estimates({f: tf.constant(p) for f, p in probs.items()})
    assert [t.decode() for t in got["exif_text"].numpy()] == want["exif_text"]
    for setting in stops.SETTINGS.values():
        np.testing.assert_allclose(got[setting].numpy(), want[setting], rtol=1e-5)


def test_graph_estimates_have_no_python_ops_and_serve_from_a_saved_model(tmp_path):
    specs = {f: tf.TensorSpec([None, NUM[f]], tf.float32, name=f) for f in labels.FIELDS}

    class Estimator(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, probabilities):
            return stops.tf_estimates(probabilities)

    module = Estimator()
    graph = module.serve.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert {"ArgMin", "GatherV2", "StringJoin"} <= op_types
    tf.saved_model.save(module, str(tmp_path / "estimator"),
                        signatures={"serving_default": module.serve})
    served = tf.saved_model.load(str(tmp_path / "estimator")).signatures["serving_default"]
    probs = {"shutter": one_hot("shutter", 6)[None], "aperture": one_hot("aperture", 5)[None],
             "iso": one_hot("iso", 2)[None]}
    out = served(**{f: tf.constant(p) for f, p in probs.items()})
    assert out["exif_text"].numpy().tolist() == [b"1/125 s, f/5.6, ISO 400"]
    assert set(out) == {"exposure_time", "f_number", "iso", "exif_text"}


def test_expected_stops_checks_the_number_of_classes():
    with pytest.raises(ValueError, match="13 classes"):
        stops.expected_stops(np.ones([2, 5]), "aperture")
    with pytest.raises(ValueError, match="5 classes"):
        stops.tf_expected_stops(tf.ones([2, 13]), "iso")


# ------------------------------------------------------------------------------------ metrics

def test_field_metrics_known_numbers():
    y = np.array([0, 3, 4, -1, 1, 3])
    p = np.array([
        [0.6, 0.4, 0.0, 0.0, 0.0],   # argmax 0 right; estimate 0.4 (err 0.4); binary 100 right
        [0.0, 0.0, 0.6, 0.4, 0.0],   # argmax 2, within one; 2.4 (0.6); binary 800 right
        [0.7, 0.0, 0.0, 0.0, 0.3],   # argmax 0, off by 4; 1.2 (2.8); 1600 in no binary group
        [0.0, 0.0, 0.0, 0.0, 1.0],   # no label: ignored
        [0.0, 0.0, 0.0, 1.0, 0.0],   # argmax 3, off by 2; 3.0 (2.0); 200 in no group
        [0.5, 0.0, 0.0, 0.3, 0.2],   # argmax 0, off by 3; 1.7 (1.3); binary: 0.5 > 0.3, wrong
    ])
    got = stops.field_metrics("iso", y, p, train_counts=[1, 5, 2, 0, 0])
    assert got["count"] == 5 and got["binary_count"] == 3 and got["majority_class"] == 1
    assert got["accuracy"] == pytest.approx(1 / 5)
    assert got["within_one_stop"] == pytest.approx(2 / 5)
    assert got["mae_stops"] == pytest.approx((0.4 + 0.6 + 2.8 + 2.0 + 1.3) / 5)
    assert got["majority_mae_stops"] == pytest.approx((1 + 2 + 3 + 0 + 2) / 5)
    assert got["binary_accuracy"] == pytest.approx(2 / 3)


def test_field_metrics_binary_grouping_of_shutter():
    # Fast = classes 0..5 (1/250 s and shorter), slow = 8..19; 1/125 s and 1/60 s left out.
    p = np.zeros([3, 20])
    p[0, [0, 1, 2, 9]] = [0.2, 0.2, 0.2, 0.4]   # fast mass 0.6 beats the likelier single class
    p[1, [5, 8, 9]] = [0.5, 0.25, 0.25]         # a tie of the groups counts as fast
    p[2, [6, 7, 13]] = [0.4, 0.4, 0.2]          # true 1/60 s: not in the binary task
    got = stops.field_metrics("shutter", [1, 9, 7], p, train_counts=np.eye(20)[6])
    assert got["binary_count"] == 2 and got["binary_accuracy"] == pytest.approx(0.5)
    assert got["accuracy"] == 0.0 and got["within_one_stop"] == pytest.approx(1 / 3)
    assert got["majority_mae_stops"] == pytest.approx((5 + 3 + 1) / 3)
    # Estimates -8.8, -6.25, -5.2 stops against -12, -4, -6.
    assert got["mae_stops"] == pytest.approx((3.2 + 2.25 + 0.8) / 3)


def test_field_metrics_without_labels_and_bad_input():
    got = stops.field_metrics("aperture", [-1, -1], np.full([2, 13], 1 / 13), np.ones(13))
    assert got["count"] == 0 and got["mae_stops"] is None and got["binary_accuracy"] is None
    with pytest.raises(ValueError, match=r"\[N, 13\]"):
        stops.field_metrics("aperture", [1, 2], np.ones([2, 5]), np.ones(13))
    with pytest.raises(ValueError, match="train_counts"):
        stops.field_metrics("aperture", [1], np.ones([1, 13]), np.zeros(13))
    with pytest.raises(ValueError, match="class ids"):
        stops.field_metrics("iso", [7], np.ones([1, 5]), np.ones(5))


def test_regression_metrics_known_numbers():
    got = stops.regression_metrics([0.0, 1.0, 2.0, 5.0], [1.0, 1.0, 4.0, np.nan], train_mean=2.0)
    assert got["count"] == 3
    assert got["mae_stops"] == pytest.approx(1.0)
    assert got["rmse_stops"] == pytest.approx(math.sqrt(5 / 3))
    assert got["mean_baseline_mae_stops"] == pytest.approx(4 / 3)
    assert got["mean_baseline_rmse_stops"] == pytest.approx(math.sqrt(2))
    assert got["prediction_std_ratio"] == pytest.approx(math.sqrt(1 / 3))
    empty = stops.regression_metrics([1.0], [np.nan], 0.0)
    assert empty["count"] == 0 and empty["mae_stops"] is None
    with pytest.raises(ValueError, match="differ"):
        stops.regression_metrics([1.0, 2.0], [1.0], 0.0)


# -------------------------------------------------------------------------------- stop errors

def test_stop_errors_against_the_files_exif():
    assert stops.stop_error("shutter", 1 / 50, 1 / 125) == pytest.approx(math.log2(2.5))
    assert stops.format_stop_error("shutter", stops.stop_error("shutter", 1 / 50, 1 / 125)) == \
        "shutter +1.3 stops"
    assert stops.stop_error("aperture", 4.0, 5.6) == pytest.approx(2 * math.log2(4 / 5.6))
    assert stops.format_stop_error("aperture", stops.stop_error("aperture", 4.0, 5.6)) == \
        "aperture -1.0 stops"
    assert stops.format_stop_error("iso", stops.stop_error("iso", 390.0, 400)) == "iso 0.0 stops"
    assert stops.stop_error("iso", 400.0, None) is None
    assert stops.stop_error("iso", 400.0, -1.0) is None
    assert stops.format_stop_error("iso", None) == "iso: no EXIF"
