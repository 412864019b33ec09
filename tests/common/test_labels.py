"""Binning edges of the paper's classes and the task groupings."""

import math

import pytest

from exif_keras.common import labels


@pytest.mark.parametrize("t,index,name", [
    (1 / 8000, 0, "1/8000 s"), (1 / 8192, 0, "1/8000 s"), (1 / 4000, 1, "1/4000 s"),
    (1 / 125, 6, "1/125 s"), (1 / 60, 7, "1/60 s"), (1 / 250, 5, "1/250 s"), (1 / 30, 8, "1/30 s"),
    (1.0, 13, "1 s"), (2.0, 14, "2 s"), (30.0, 18, "30 s"), (64.0, 19, "64 s"),
])
def test_shutter_classes(t, index, name):
    assert labels.shutter_class(t) == index
    assert labels.FIELD_SPECS["shutter"].class_names[index] == name


def test_shutter_edges():
    # Halfway in the log domain rounds up (towards the slower class), tolerant to float noise.
    assert labels.shutter_class(2 ** -5.5) == 8
    assert labels.shutter_class(2 ** -5.5 * (1 - 1e-15)) == 8
    assert labels.shutter_class(2 ** -5.51) == 7
    assert labels.shutter_class(2 ** -13.49) == 0
    assert labels.shutter_class(2 ** -13.51) == labels.NO_LABEL  # faster than 1/8000
    assert labels.shutter_class(2 ** 6.49) == 19
    assert labels.shutter_class(2 ** 6.5) == labels.NO_LABEL      # slower than 64 s
    for bad in (None, 0.0, -1.0, math.inf, math.nan):
        assert labels.shutter_class(bad) == labels.NO_LABEL


@pytest.mark.parametrize("n,av", [
    (1.0, 0), (1.4, 1), (2.0, 2), (2.8, 3), (3.5, 4), (4.0, 4), (5.6, 5), (6.3, 5), (7.1, 6),
    (8.0, 6), (11, 7), (16, 8), (22, 9), (32, 10), (45, 11), (64, 12),
])
def test_aperture_classes(n, av):
    assert labels.aperture_class(n) == av


def test_aperture_edges():
    assert labels.aperture_class(2 ** -0.24) == 0      # f/0.85 still rounds to Av 0
    assert labels.aperture_class(2 ** -0.26) == labels.NO_LABEL
    assert labels.aperture_class(2 ** 6.24) == 12
    assert labels.aperture_class(2 ** 6.26) == labels.NO_LABEL
    assert labels.FIELD_SPECS["aperture"].class_names[labels.aperture_class(8.0)] == "f/8"


def test_iso_is_exact():
    assert [labels.iso_class(v) for v in (100, 200, 400, 800, 1600)] == [0, 1, 2, 3, 4]
    for other in (50, 64, 80, 125, 160, 320, 3200, 399.9, 0, None, -100):
        assert labels.iso_class(other) == labels.NO_LABEL
    assert labels.FIELD_SPECS["iso"].class_names == ("ISO 100", "ISO 200", "ISO 400", "ISO 800",
                                                     "ISO 1600")


def test_binary_groupings_leave_out_the_middle():
    shutter = labels.task_spec("shutter", "binary")
    assert shutter.class_names == ("fast: 1/250 s or shorter", "slow: 1/30 s or longer")
    assert shutter.target(labels.shutter_class(1 / 250)) == 0
    assert shutter.target(labels.shutter_class(1 / 125)) == labels.NO_LABEL
    assert shutter.target(labels.shutter_class(1 / 60)) == labels.NO_LABEL
    assert shutter.target(labels.shutter_class(1 / 30)) == 1
    assert shutter.target(labels.NO_LABEL) == labels.NO_LABEL
    aperture = labels.task_spec("aperture", "binary")
    assert [aperture.target(labels.aperture_class(n)) for n in (1.8, 2.8, 4, 5.6, 8, 22)] == \
        [0, 0, -1, -1, 1, 1]
    iso = labels.task_spec("iso", "binary")
    assert [iso.target(i) for i in range(5)] == [0, -1, -1, 1, -1]
    fine = labels.task_spec("aperture", "fine")
    assert fine.num_classes == 13 and fine.target(7) == 7


def test_unknown_field_and_task():
    with pytest.raises(ValueError, match="unknown field"):
        labels.task_spec("focal", "binary")
    with pytest.raises(ValueError, match="unknown task"):
        labels.task_spec("iso", "ternary")
