"""Intervals in stops from class probabilities, and the EXIF consistency check (common/stops.py):
known probability vectors, their values and text, the graph twin, coverage and width, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from exif_keras.common import labels, stops


def _vector(r, mass_at):
    p = np.zeros(r, np.float64)
    for i, m in mass_at.items():
        p[i] = m
    return p


def test_one_peak_takes_its_neighbours_until_the_mass_is_reached():
    # ISO: 0.7 on ISO 400, 0.1 either side: 0.85 needs ISO 200..800 (0.9); 0.7 the peak alone
    p = _vector(5, {0: 0.05, 1: 0.1, 2: 0.7, 3: 0.1, 4: 0.05})
    assert stops.interval_classes(p, 0.85) == (1, 3)
    assert stops.interval_classes(p, 0.7) == (2, 2)
    assert stops.interval_classes(p, 0.8) == (1, 2)  # 1..2 and 2..3 hold 0.8 each: the lower
    assert stops.interval_text("iso", 1, 3) == "ISO 200-800"
    assert stops.interval_text("iso", 2, 2) == "ISO 400"


def test_two_peaks_span_the_gap_between_them():
    # shutter: 0.45 at 1/500 s (class 4), 0.45 at 1/30 s (class 8): 0.8 needs both, so the
    # shortest run is 4..8, five stops, the classes between included
    p = _vector(20, {4: 0.45, 8: 0.45, 12: 0.1})
    assert stops.interval_classes(p, 0.8) == (4, 8)
    assert stops.interval_width_stops(4, 8) == 5.0
    assert stops.interval_text("shutter", 4, 8) == "1/500-1/30 s"
    low, high = stops.interval_values("shutter", 4, 8)
    assert low == pytest.approx(2.0 ** -9.5) and high == pytest.approx(2.0 ** -4.5)
    # at most 0.45 in one class: the heavier of the two single classes is not enough
    assert stops.interval_classes(p, 0.4) == (4, 4)   # equal masses: the lower one


def test_a_flat_vector_needs_most_classes():
    p = np.full(13, 1 / 13)
    lo, hi = stops.interval_classes(p, 0.8)
    assert hi - lo + 1 == math.ceil(0.8 * 13) and lo == 0   # 11 classes; ties: the lowest
    assert stops.interval_classes(p, 1.0) == (0, 12)
    iso = np.full(5, 0.2, np.float32)                       # 4 x 0.2 may round below 0.8
    assert stops.interval_classes(iso, 0.8) == (0, 3)


def test_a_peak_at_the_field_edge_stays_inside_the_classes():
    p = _vector(20, {0: 0.75, 1: 0.2, 2: 0.05})             # 1/8000 s, the first class
    assert stops.interval_classes(p, 0.8) == (0, 1)
    low, high = stops.interval_values("shutter", 0, 1)
    assert low == pytest.approx(2.0 ** -13.5) and high == pytest.approx(2.0 ** -11.5)
    p = _vector(13, {12: 0.9, 11: 0.1})                       # f/64, the last aperture class
    assert stops.interval_classes(p, 0.8) == (12, 12)
    assert stops.interval_text("aperture", 12, 12) == "f/64"
    assert stops.interval_values("aperture", 12, 12)[1] == pytest.approx(2.0 ** 6.25)


def test_values_in_units_round_trip_to_classes_and_membership():
    lo, hi = stops.interval_classes(np.eye(5)[[1, 4]] * 0.5 + 0.1, 0.8)
    low, high = stops.interval_values("iso", lo, hi)
    back = stops.interval_classes_of_values("iso", low, high)
    np.testing.assert_array_equal(back[0], lo)
    np.testing.assert_array_equal(back[1], hi)
    assert stops.interval_classes_of_values("shutter", *stops.interval_values("shutter", 4, 8)) \
        == (4, 8)
    # 1/125 s lies in 1/250..1/30 s (classes 5..8, edges 2^-8.5 .. 2^-4.5); 1/1000 s does not
    low, high = stops.interval_values("shutter", 5, 8)
    assert stops.in_interval("shutter", 1 / 125, low, high) is True
    assert stops.in_interval("shutter", 1 / 1000, low, high) is False
    assert stops.in_interval("shutter", None, low, high) is None
    assert stops.in_interval("iso", 320, *stops.interval_values("iso", 1, 2)) is True


def test_graph_intervals_equal_numpy():
    rng = np.random.default_rng(0)
    for field in labels.FIELDS:
        r = labels.field_spec(field).num_classes
        p = rng.dirichlet(np.full(r, 0.4), size=64).astype(np.float32)
        p = np.concatenate([p, np.full((1, r), 1 / r, np.float32), np.eye(r, dtype=np.float32)])
        lo, hi = stops.interval_classes(p, 0.8)
        out = stops.tf_intervals({field: tf.constant(p)}, 0.8)
        np.testing.assert_allclose(out[f"{field}_low"].numpy(),
                                   stops.interval_values(field, lo, hi)[0], rtol=1e-5)
        np.testing.assert_allclose(out[f"{field}_high"].numpy(),
                                   stops.interval_values(field, lo, hi)[1], rtol=1e-5)
        assert [t.decode() for t in out["exif_range_text"].numpy()] == list(
            stops.interval_text(field, lo, hi))
    both = stops.tf_intervals({"shutter": tf.constant([_vector(20, {6: 1.0})], tf.float32),
                               "iso": tf.constant([[0.5, 0.5, 0, 0, 0]], tf.float32)})
    assert both["exif_range_text"].numpy()[0].decode() == "1/125 s, ISO 100-200"
    assert stops.exif_range_text({"shutter": (6, 6), "iso": (0, 1)}) == "1/125 s, ISO 100-200"


def test_coverage_and_width():
    # three labelled photos and one without a label; intervals 2..2, 1..3, 0..0
    p = np.array([[0, 0, 1, 0, 0], [0, 0.3, 0.4, 0.3, 0], [0.9, 0.1, 0, 0, 0],
                  [0.2] * 5])
    out = stops.interval_metrics("iso", [2, 0, 0, -1], p, 0.8)
    assert out["interval_coverage"] == pytest.approx(2 / 3)
    assert out["interval_width_stops"] == pytest.approx((1 + 3 + 1) / 3)
    assert stops.interval_metrics("iso", [-1], p[:1])["interval_coverage"] is None
    with pytest.raises(ValueError, match="mass"):
        stops.interval_classes(p, 0.0)


def test_claimed_class():
    assert stops.claimed_class("shutter", 1 / 125) == labels.shutter_class(1 / 125) == 6
    assert stops.claimed_class("iso", 320) == 2          # no class of its own: the bin of ISO 400
    assert stops.claimed_class("iso", 400) == 2
    assert stops.claimed_class("shutter", 1 / 16000) == -1   # outside the classes
    assert stops.claimed_class("aperture", None) == -1
    assert stops.claimed_class("aperture", 5.6) == labels.aperture_class(5.6) == 5


def test_consistency_verdict_and_score_on_known_cases():
    shutter = _vector(20, {6: 0.9, 7: 0.06, 9: 0.04})
    iso = _vector(5, {0: 0.5, 1: 0.5})
    one = stops.consistency({"shutter": shutter, "iso": iso}, {"shutter": 6, "iso": 1}, 0.05)
    assert one["unlikely"] == {"shutter": False, "iso": False} and not one["unlikely_any"]
    assert one["score"] == pytest.approx(-math.log(0.9) - math.log(0.5)) and one["fields"] == 2
    two = stops.consistency({"shutter": shutter, "iso": iso}, {"shutter": 9, "iso": -1}, 0.05)
    assert two["unlikely"]["shutter"] and two["unlikely_any"] and two["fields"] == 1
    assert math.isnan(two["probability"]["iso"]) and two["score"] == pytest.approx(-math.log(0.04))
    # a class of probability 0 gets the floor, not an infinite score
    zero = stops.consistency({"iso": iso}, {"iso": 4})
    assert zero["unlikely"]["iso"] and zero["score"] == pytest.approx(
        -math.log(stops.PROBABILITY_FLOOR))
    batch = stops.consistency({"iso": np.stack([iso, iso])}, {"iso": np.array([0, -1])})
    assert batch["unlikely"]["iso"].tolist() == [False, False]
    assert np.isnan(batch["score"][1]) and batch["fields"].tolist() == [1, 0]
