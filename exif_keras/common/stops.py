"""EXIF settings in stops: targets, estimates, camera notation, metrics, errors.

(The losses on these classes, the ordinal loss among them, are ``modeling/losses.py``'s.)

Why stops. Shutter time, f-number and ISO each act on the exposure multiplicatively, and a
photographer reasons in *stops* (factors of 2 of light): 1/125 s is one stop from 1/250 s and
seven from 1/2 s. The paper's fine classes (``labels.py``) are already one stop wide, so a class
index is a position on a log2 scale and ``labels.CLASS_STOPS`` gives each class its value:

  ========  =======================  ===============  ====================
  field     unit ("stops")           class i          setting
  ========  =======================  ===============  ====================
  shutter   log2(t / 1 s)            i - 13           exposure_time (s)
  aperture  APEX Av = 2 log2(N)      i                f_number
  iso       log2(ISO / 100)          i (100..1600)    iso
  ========  =======================  ===============  ====================

One unit is one stop in every field, so "within one stop" is "within one class" everywhere, and
errors of different fields are comparable. Positive means more exposure time, a *narrower*
aperture (larger f-number) and a higher ISO: each field's own direction, not total exposure.

What is here (numpy/Python for evaluation and ``predict``; ``tf_*`` graph versions, pure
TensorFlow ops, for the input pipeline and the serving signature, since TensorFlow
Serving cannot run Python):

  * conversions stops <-> seconds / f-number / ISO, the regression targets from raw EXIF values
    (NaN when unknown): ``value_to_stops``, ``stops_to_value``;
  * the estimate, the probability-weighted mean of the class values in stops
    (``expected_stops``, ``estimates``), written as a camera writes it, at the nearest standard
    third-stop value (``standard_text``, ``exif_text``:
    ``1/125 s, f/5.6, ISO 400``);
  * metrics in stops (``field_metrics``, ``regression_metrics``) and the signed error of an
    estimate against a photo's own EXIF (``stop_error``, ``format_stop_error``);
  * intervals: the shortest run of classes holding a share of the calibrated probability
    (``interval_classes``, ``interval_values``, ``interval_text``, ``in_interval``,
    ``interval_metrics``; graph: ``tf_intervals``), and the EXIF consistency check
    (``claimed_class``, ``consistency``).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

from exif_keras.common import labels

FIELDS = labels.FIELDS
# The EXIF setting each field estimates, in the unit cameras write (also the serving output names).
SETTINGS = {"shutter": "exposure_time", "aperture": "f_number", "iso": "iso"}
# stops = STOPS_PER_DOUBLING * log2(value / REFERENCE): Av counts half-doublings of the f-number
# because light goes with the aperture's area, (1/N)^2.
REFERENCE = {"shutter": 1.0, "aperture": 1.0, "iso": 100.0}
STOPS_PER_DOUBLING = {"shutter": 1.0, "aperture": 2.0, "iso": 1.0}


def _check_field(field: str) -> None:
    if field not in SETTINGS:
        raise ValueError(f"unknown field {field!r}; expected one of {', '.join(FIELDS)}")


def class_values(field: str) -> np.ndarray:
    """float64 [R]: the value in stops of each fine class of ``field`` (labels.CLASS_STOPS)."""
    _check_field(field)
    return np.asarray(labels.class_stops(field), np.float64)


# ------------------------------------------------------------------------ conversions (numpy)

def value_to_stops(value, field: str):
    """Seconds / f-number / ISO -> stops of ``field``; NaN where the value is unknown (None, NaN,
    inf or <= 0, the records' -1 included). Scalar in, float out; array in, float64 array out."""
    _check_field(field)
    scalar = value is None or np.ndim(value) == 0
    v = np.asarray(np.nan if value is None else value, np.float64)
    usable = np.isfinite(v) & (v > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(usable, STOPS_PER_DOUBLING[field] * np.log2(
            np.where(usable, v, 1.0) / REFERENCE[field]), np.nan)
    return float(out) if scalar else out


def stops_to_value(stops, field: str):
    """Stops of ``field`` -> seconds / f-number / ISO (the inverse of ``value_to_stops``)."""
    _check_field(field)
    s = np.asarray(stops, np.float64)
    out = REFERENCE[field] * np.exp2(s / STOPS_PER_DOUBLING[field])
    return float(out) if np.ndim(stops) == 0 else out


# ----------------------------------------------------------------------- conversions (graph)

def tf_value_to_stops(values, field: str) -> tf.Tensor:
    """Graph version of ``value_to_stops`` (float32): NaN where the value is not finite or <= 0,
    as the records store an unknown value (-1)."""
    _check_field(field)
    v = tf.cast(values, tf.float32)
    usable = tf.math.is_finite(v) & (v > 0)
    safe = tf.where(usable, v, tf.ones_like(v))  # no log of <= 0, even in the unused branch
    stops = STOPS_PER_DOUBLING[field] * tf.math.log(safe / REFERENCE[field]) / math.log(2.0)
    return tf.where(usable, stops, tf.fill(tf.shape(v), float("nan")))


def tf_stops_to_value(stops, field: str) -> tf.Tensor:
    """Graph version of ``stops_to_value`` (float32)."""
    _check_field(field)
    s = tf.cast(stops, tf.float32)
    return REFERENCE[field] * tf.math.pow(2.0, s / STOPS_PER_DOUBLING[field])


# ------------------------------------------------------------- camera notation (third stops)

# The standard third-stop values as cameras write them, from the first third-stop position on:
# entry j sits at exactly (FIRST + j) / 3 stops; its name is the rounded figure cameras show
# (1/125 for 2^-7 s, f/5.6 for 2^2.5, ISO 125 for 100 * 2^(1/3)). The tables reach beyond the
# fine classes (1/8000 s ... 64 s, f/1 ... f/64, ISO 100 ... 1600) so an estimate, which stays
# within the classes, never sits at a table's end; values past an end go to that end.
_STANDARD = {
    "shutter": (-45, (
        "1/32000", "1/25000", "1/20000", "1/16000", "1/13000", "1/10000",
        "1/8000", "1/6400", "1/5000", "1/4000", "1/3200", "1/2500", "1/2000", "1/1600", "1/1250",
        "1/1000", "1/800", "1/640", "1/500", "1/400", "1/320", "1/250", "1/200", "1/160",
        "1/125", "1/100", "1/80", "1/60", "1/50", "1/40", "1/30", "1/25", "1/20", "1/15", "1/13",
        "1/10", "1/8", "1/6", "1/5", "1/4", "0.3", "0.4", "0.5", "0.6", "0.8",
        "1", "1.3", "1.6", "2", "2.5", "3.2", "4", "5", "6", "8", "10", "13", "15", "20", "25",
        "30", "40", "50", "60", "80", "100", "120")),
    "aperture": (0, (
        "1.0", "1.1", "1.2", "1.4", "1.6", "1.8", "2", "2.2", "2.5", "2.8", "3.2", "3.5", "4",
        "4.5", "5", "5.6", "6.3", "7.1", "8", "9", "10", "11", "13", "14", "16", "18", "20", "22",
        "25", "29", "32", "36", "40", "45", "51", "57", "64")),
    "iso": (-6, (
        "25", "32", "40", "50", "64", "80", "100", "125", "160", "200", "250", "320", "400",
        "500", "640", "800", "1000", "1250", "1600", "2000", "2500", "3200", "4000", "5000",
        "6400", "8000", "10000", "12800", "16000", "20000", "25600", "32000", "40000", "51200",
        "64000", "80000", "102400", "128000", "160000", "204800", "256000", "320000", "409600")),
}
_TEXT = {"shutter": "{} s", "aperture": "f/{}", "iso": "ISO {}"}


def _nominal(name: str) -> float:
    numerator, _, denominator = name.partition("/")
    return float(numerator) / float(denominator or 1)


def standard_positions(field: str) -> np.ndarray:
    """float32 [T]: the exact position in stops of each standard value of ``field``."""
    _check_field(field)
    first, names = _STANDARD[field]
    return (np.arange(first, first + len(names), dtype=np.float64) / 3.0).astype(np.float32)


def standard_texts(field: str) -> tuple[str, ...]:
    """The standard values of ``field`` as text (``1/125 s``, ``f/5.6``, ``ISO 400``)."""
    _check_field(field)
    return tuple(_TEXT[field].format(name) for name in _STANDARD[field][1])


def _standard_index(stops, field: str) -> np.ndarray:
    """Index of the nearest standard value, by argmin of |stops - position| in float32 (the same
    arithmetic as the graph version, so both pick the same entry)."""
    s = np.asarray(stops, np.float32)
    distance = np.abs(s[..., None] - standard_positions(field))
    return np.argmin(np.where(np.isnan(distance), np.float32(np.inf), distance), axis=-1)


def standard_text(stops, field: str):
    """Stops -> the nearest standard value's text; "" where stops is not finite. Scalar in, str
    out; array in, numpy array of str out."""
    texts = np.array(standard_texts(field), dtype=object)
    out = np.where(np.isfinite(np.asarray(stops, np.float32)), texts[_standard_index(stops, field)],
                   "")
    return str(out) if np.ndim(stops) == 0 else out


def exif_text(stops: Mapping[str, object], separator: str = ", "):
    """``1/125 s, f/5.6, ISO 400``: the fields present in ``stops`` (field -> stops), in the order
    shutter, aperture, ISO. Scalars give a str; [B] arrays a list of B strings."""
    fields = [f for f in FIELDS if f in stops]
    if not fields:
        raise ValueError(f"exif_text needs at least one of {', '.join(FIELDS)}")
    parts = [standard_text(stops[f], f) for f in fields]
    if all(isinstance(p, str) for p in parts):
        return separator.join(parts)
    return [separator.join(str(p) for p in row) for row in zip(*np.broadcast_arrays(*parts))]


# --------------------------------------------------------------------------- estimates (numpy)

def expected_stops(probabilities, field: str) -> np.ndarray:
    """The estimate in stops: the probability-weighted mean of the class values, float64 [N]
    (or a float for one [R] vector). Unlike the argmax class it moves continuously between
    classes, so a model torn between 1/60 s and 1/125 s answers about 1/90 s."""
    values = class_values(field)
    p = np.asarray(probabilities, np.float64)
    if p.shape[-1:] != values.shape:
        raise ValueError(f"{field} probabilities need {len(values)} classes on the last axis; "
                         f"received shape {p.shape}")
    out = (p @ values) / p.sum(axis=-1)
    return float(out) if p.ndim == 1 else out


def estimates(probabilities: Mapping[str, object]) -> dict:
    """Per field present in ``probabilities`` (field -> [N, R]): its setting (``exposure_time``
    in seconds, ``f_number``, ``iso``; float64 [N]), ``stops`` (field -> [N]) and ``exif_text``
    (N strings). The numpy twin of ``tf_estimates``."""
    stops = {f: expected_stops(p, f) for f, p in probabilities.items()}
    out = {SETTINGS[f]: stops_to_value(s, f) for f, s in stops.items()}
    out["stops"] = stops
    out["exif_text"] = exif_text(stops)
    return out


# --------------------------------------------------------------------------- estimates (graph)

def tf_expected_stops(probabilities, field: str) -> tf.Tensor:
    """Graph version of ``expected_stops``: [B, R] -> float32 [B]."""
    values = class_values(field).astype(np.float32)
    p = tf.cast(probabilities, tf.float32)
    if p.shape.rank is not None and p.shape[-1] is not None and p.shape[-1] != len(values):
        raise ValueError(f"{field} probabilities need {len(values)} classes on the last axis; "
                         f"received shape {p.shape}")
    return (tf.reduce_sum(p * tf.constant(values), axis=-1) / tf.reduce_sum(p, axis=-1))


def tf_standard_text(stops, field: str) -> tf.Tensor:
    """Graph version of ``standard_text``: float [B] stops -> string [B], by argmin of the
    |difference| to a constant table of positions and a gather from a constant table of names."""
    s = tf.cast(stops, tf.float32)
    distance = tf.abs(s[..., None] - tf.constant(standard_positions(field)))
    index = tf.argmin(distance, axis=-1)
    text = tf.gather(tf.constant(standard_texts(field)), index)
    return tf.where(tf.math.is_finite(s), text, tf.fill(tf.shape(text), ""))


def tf_exif_text(stops: Mapping[str, tf.Tensor], separator: str = ", ") -> tf.Tensor:
    """Graph version of ``exif_text``: field -> stops [B] to string [B]."""
    fields = [f for f in FIELDS if f in stops]
    if not fields:
        raise ValueError(f"tf_exif_text needs at least one of {', '.join(FIELDS)}")
    return tf.strings.join([tf_standard_text(stops[f], f) for f in fields], separator=separator)


def tf_estimates(probabilities: Mapping[str, tf.Tensor],
                 known_stops: Optional[Mapping[str, tf.Tensor]] = None) -> dict:
    """The serving outputs of the estimate: per field present (field -> probabilities [B, R])
    its setting (``exposure_time`` seconds, ``f_number``, ``iso``: float32 [B]) and
    ``exif_text`` (string [B], e.g. ``1/125 s, f/5.6, ISO 400``). TensorFlow ops only.
    ``known_stops`` (field -> float32 [B]) adds fields estimated in stops already (a regression
    head's output)."""
    stops = {f: tf_expected_stops(p, f) for f, p in probabilities.items()}
    stops.update(known_stops or {})
    out = {SETTINGS[f]: tf_stops_to_value(s, f) for f, s in stops.items()}
    out["exif_text"] = tf_exif_text(stops)
    return out


# ------------------------------------------------------------------------------------ metrics

def majority_class(train_counts) -> int:
    """The training split's most frequent class (the first of equals): the constant answer every
    estimate is measured against (``majority_mae_stops``)."""
    return int(np.argmax(np.asarray(train_counts)))


def field_metrics(field: str, true_classes, probabilities, train_counts) -> dict:
    """Metrics in stops of one field over the photos that have a label (true class >= 0).

    * ``accuracy``: argmax == true class; ``within_one_stop``: |argmax - true| <= 1 class (one
      class is one stop in every field);
    * ``mae_stops``: mean |expected_stops - true class value|, the error of the estimate served;
    * ``majority_mae_stops``: the same for always answering ``majority_class``, the most frequent
      class of the training split (``train_counts`` [R]): the bar an estimate must clear;
    * ``binary_accuracy``: the paper's binary task read off the fine prediction (the summed
      probabilities of each binary group's fine classes compared; group 1 must be strictly
      larger), over the ``binary_count`` photos whose true class is in one of the two groups,
      so a fine or joint model compares with the paper's binary models on the same photos.

    Metrics without a photo to count are None (JSON null); ``count`` is the labelled photos.
    """
    values = class_values(field)
    r = len(values)
    y = np.asarray(true_classes, np.int64).reshape(-1)
    p = np.asarray(probabilities, np.float64)
    counts = np.asarray(train_counts, np.int64).reshape(-1)
    if p.ndim != 2 or p.shape != (len(y), r):
        raise ValueError(f"{field}: probabilities must be [N, {r}] for N = {len(y)} labels; "
                         f"received shape {p.shape}")
    if counts.shape != (r,) or counts.sum() <= 0:
        raise ValueError(f"{field}: train_counts must be {r} class counts of the training split, "
                         f"not all zero; received {counts.tolist()}")
    if np.any(y >= r):
        raise ValueError(f"{field}: class ids must be -1 or in [0, {r}); "
                         f"received {int(y.max())}")
    majority = majority_class(counts)
    labelled = y >= 0
    y, p = y[labelled], p[labelled]
    groups = labels.task_spec(field, "binary").fine_to_target
    group_of = np.array(groups, np.int64)[y] if len(y) else np.zeros([0], np.int64)
    in_groups = group_of >= 0
    out = {"count": int(len(y)), "majority_class": majority, "binary_count": int(in_groups.sum()),
           "accuracy": None, "within_one_stop": None, "mae_stops": None,
           "majority_mae_stops": None, "binary_accuracy": None}
    if len(y):
        predicted = np.argmax(p, axis=-1)
        out["accuracy"] = float(np.mean(predicted == y))
        out["within_one_stop"] = float(np.mean(np.abs(predicted - y) <= 1))
        out["mae_stops"] = float(np.mean(np.abs(expected_stops(p, field) - values[y])))
        out["majority_mae_stops"] = float(np.mean(np.abs(values[majority] - values[y])))
    if in_groups.any():
        mass = [p[in_groups][:, [i for i in range(r) if groups[i] == g]].sum(axis=-1)
                for g in (0, 1)]
        predicted_group = (mass[1] > mass[0]).astype(np.int64)
        out["binary_accuracy"] = float(np.mean(predicted_group == group_of[in_groups]))
    return out


def regression_metrics(pred_stops, true_stops, train_mean: float) -> dict:
    """Errors in stops of continuous estimates against true values (NaN true values skipped).

    ``mean_baseline_*`` are the errors of always answering ``train_mean`` (the training split's
    mean in stops), the bar to clear. ``prediction_std_ratio`` = std(pred) / std(true): well below
    1 means the estimates shrink towards the mean (a model that hedges), above 1 that they spread
    more than the truth. Values without a photo (or, for the ratio, without spread) are None."""
    pred = np.asarray(pred_stops, np.float64).reshape(-1)
    true = np.asarray(true_stops, np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"pred_stops and true_stops differ in length: {pred.shape} vs "
                         f"{true.shape}")
    keep = np.isfinite(true) & np.isfinite(pred)
    pred, true = pred[keep], true[keep]
    out = {"count": int(len(true)), "mae_stops": None, "rmse_stops": None,
           "mean_baseline_mae_stops": None, "mean_baseline_rmse_stops": None,
           "prediction_std_ratio": None}
    if len(true):
        error, baseline = pred - true, float(train_mean) - true
        out.update(mae_stops=float(np.mean(np.abs(error))),
                   rmse_stops=float(np.sqrt(np.mean(error ** 2))),
                   mean_baseline_mae_stops=float(np.mean(np.abs(baseline))),
                   mean_baseline_rmse_stops=float(np.sqrt(np.mean(baseline ** 2))))
        if np.std(true) > 0:
            out["prediction_std_ratio"] = float(np.std(pred) / np.std(true))
    return out


# ----------------------------------------------------------------------------- stop errors

def stop_error(field: str, predicted_value, exif_value) -> Optional[float]:
    """Signed error in stops of an estimate (seconds / f-number / ISO) against the photo's own
    EXIF value: positive when the estimate is longer, narrower (larger f-number) or a higher ISO.
    None when either value is unknown (None, NaN, <= 0)."""
    error = value_to_stops(predicted_value, field) - value_to_stops(exif_value, field)
    return None if math.isnan(error) else float(error)


def format_stop_error(field: str, error: Optional[float]) -> str:
    """``shutter +1.3 stops``, ``iso -0.7 stops``, ``aperture 0.0 stops`` (one decimal, the
    precision of third stops); ``shutter: no EXIF`` for None."""
    _check_field(field)
    if error is None or not math.isfinite(error):
        return f"{field}: no EXIF"
    rounded = round(float(error), 1)
    return f"{field} {'0.0' if rounded == 0 else f'{rounded:+.1f}'} stops"


# ------------------------------------------------------------- intervals (fine classes, numpy)
#
# An interval is the shortest run of consecutive fine classes whose (calibrated) probabilities add
# up to at least ``mass``; among runs of that length the one of the largest mass, then the lowest.
# Masses within INTERVAL_TOLERANCE count as equal, so float32 rounding (a softmax summing to
# 0.99999994, a cumulative sum in another order) neither misses a run nor changes the choice
# between numpy and the graph. Its ends in the field's units are the class edges, half a stop
# below the first class and half a stop above the last (each class is one stop wide), so an
# interval of n classes is n stops wide.

INTERVAL_TOLERANCE = 1e-6
DEFAULT_INTERVAL = 0.8


def _check_mass(mass: float) -> float:
    if not 0.0 < float(mass) <= 1.0:
        raise ValueError(f"an interval's probability mass must be in (0, 1], got {mass}")
    return float(mass)


def interval_classes(probabilities, mass: float = DEFAULT_INTERVAL):
    """(lo, hi): the first and last fine class of the shortest run of consecutive classes holding
    at least ``mass`` of the probability (see above). [N, R] in: two int64 [N] arrays; one [R]
    vector in: two ints."""
    mass = _check_mass(mass)
    p = np.asarray(probabilities, np.float32)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    n, r = p.shape
    sums = np.concatenate([np.zeros((n, 1), np.float32), np.cumsum(p, axis=-1, dtype=np.float32)],
                          axis=-1)
    window = sums[:, None, 1:] - sums[:, :-1, None]          # [N, lo, hi]: mass of lo..hi
    lo_index, hi_index = np.arange(r)[:, None], np.arange(r)[None, :]
    length = hi_index - lo_index + 1
    valid = (length >= 1) & (window >= np.float32(mass - INTERVAL_TOLERANCE))
    valid |= (lo_index == 0) & (hi_index == r - 1)            # every class, whatever the rounding
    best = np.where(valid, length, r + 1).min(axis=(1, 2))
    chosen = valid & (length == best[:, None, None])
    heaviest = np.where(chosen, window, -np.inf).max(axis=(1, 2))
    chosen &= window >= (heaviest - INTERVAL_TOLERANCE)[:, None, None]
    lo = np.where(chosen, lo_index, r).min(axis=(1, 2)).astype(np.int64)
    hi = (lo + best - 1).astype(np.int64)
    return (int(lo[0]), int(hi[0])) if single else (lo, hi)


def interval_values(field: str, lo, hi):
    """(low, high) in the field's units (seconds, f-number, ISO) of the interval of classes lo..hi:
    the class edges, half a stop below class lo and half a stop above class hi. Ints in: floats;
    arrays in: float64 arrays."""
    values = class_values(field)
    return (stops_to_value(values[np.asarray(lo)] - 0.5, field),
            stops_to_value(values[np.asarray(hi)] + 0.5, field))


def interval_classes_of_values(field: str, low, high):
    """The inverse of ``interval_values``: (lo, hi) classes of an interval given by its ends in the
    field's units (the served ``<field>_low/high``). Ints for scalars, int64 arrays for arrays."""
    first = class_values(field)[0]
    lo = np.rint(value_to_stops(np.asarray(low, np.float64), field) + 0.5 - first)
    hi = np.rint(value_to_stops(np.asarray(high, np.float64), field) - 0.5 - first)
    if np.ndim(low) == 0:
        return int(lo), int(hi)
    return lo.astype(np.int64), hi.astype(np.int64)


def interval_width_stops(lo, hi):
    """The width in stops of the interval of classes lo..hi (one class is one stop)."""
    return np.asarray(hi, np.float64) - np.asarray(lo, np.float64) + 1.0


def in_interval(field: str, value, low, high) -> Optional[bool]:
    """Whether a value in the field's units (a photo's own EXIF) lies in [low, high] (an interval's
    ends in the same units, as ``interval_values`` or the served ``<field>_low/high``), compared in
    stops; None when the value is unknown."""
    s = value_to_stops(value, field)
    if value is None or math.isnan(s):
        return None
    return bool(value_to_stops(low, field) - 1e-6 <= s <= value_to_stops(high, field) + 1e-6)


def interval_metrics(field: str, true_classes, probabilities,
                     mass: float = DEFAULT_INTERVAL) -> dict:
    """Over the photos with a label (true class >= 0): ``interval_coverage``, the share whose true
    class lies in the interval of ``mass``, ``interval_width_stops``, the intervals' mean width,
    and ``interval_mass``, the mean probability they hold (what a calibrated model's coverage
    would be; at least ``mass``, more where whole classes overshoot). None without a labelled
    photo."""
    y = np.asarray(true_classes, np.int64).reshape(-1)
    p = np.asarray(probabilities, np.float64)
    known = y >= 0
    if not known.any():
        return {"interval_coverage": None, "interval_width_stops": None, "interval_mass": None}
    lo, hi = interval_classes(p[known], mass)
    sums = np.concatenate([np.zeros((known.sum(), 1)), np.cumsum(p[known], axis=-1)], axis=-1)
    rows = np.arange(known.sum())
    return {"interval_coverage": float(np.mean((lo <= y[known]) & (y[known] <= hi))),
            "interval_width_stops": float(np.mean(interval_width_stops(lo, hi))),
            "interval_mass": float(np.mean(sums[rows, hi + 1] - sums[rows, lo]))}


_RANGE_TEXT = {"shutter": "{}-{} s", "aperture": "f/{}-{}", "iso": "ISO {}-{}"}


def _standard_names(field: str) -> tuple[str, ...]:
    return _STANDARD[field][1]


def interval_text(field: str, lo, hi):
    """The interval as a range of the classes' camera values, ``1/250-1/30 s``, ``f/4-8``,
    ``ISO 200-800`` (one class: as ``standard_text``, ``1/125 s``). Ints in: a str; arrays in: a
    numpy array of str."""
    values = class_values(field)
    names = np.array(_standard_names(field), dtype=object)
    first = names[_standard_index(values[np.asarray(lo)], field)]
    last = names[_standard_index(values[np.asarray(hi)], field)]
    one = np.array(standard_texts(field), dtype=object)[_standard_index(values[np.asarray(lo)],
                                                                        field)]
    pattern = _RANGE_TEXT[field]
    out = np.where(np.asarray(lo) == np.asarray(hi), one,
                   np.vectorize(pattern.format, otypes=[object])(first, last))
    return str(out) if np.ndim(lo) == 0 else out


def exif_range_text(intervals: Mapping[str, tuple], separator: str = ", "):
    """``1/250-1/30 s, f/4-8, ISO 200-800``: per field present in ``intervals`` (field -> (lo,
    hi) classes) its ``interval_text``, in the order shutter, aperture, ISO. Ints give a str; [B]
    arrays a list of B strings."""
    fields = [f for f in FIELDS if f in intervals]
    if not fields:
        raise ValueError(f"exif_range_text needs at least one of {', '.join(FIELDS)}")
    parts = [interval_text(f, *intervals[f]) for f in fields]
    if all(isinstance(p, str) for p in parts):
        return separator.join(parts)
    return [separator.join(str(p) for p in row) for row in zip(*np.broadcast_arrays(*parts))]


# ------------------------------------------------------------------------- intervals (graph)

def tf_interval_classes(probabilities, mass: float = DEFAULT_INTERVAL):
    """Graph version of ``interval_classes``: [B, R] -> (lo, hi), int64 [B] each."""
    mass = _check_mass(mass)
    p = tf.cast(probabilities, tf.float32)
    r = p.shape[-1]
    sums = tf.concat([tf.zeros_like(p[:, :1]), tf.cumsum(p, axis=-1)], axis=-1)
    window = sums[:, None, 1:] - sums[:, :-1, None]
    lo_index = np.arange(r)[:, None]
    length = tf.constant(np.arange(r)[None, :] - lo_index + 1, tf.int64)
    whole = tf.constant((lo_index == 0) & (np.arange(r)[None, :] == r - 1))
    valid = ((length >= 1) & (window >= mass - INTERVAL_TOLERANCE)) | whole
    best = tf.reduce_min(tf.where(valid, length, tf.constant(r + 1, tf.int64)), axis=[1, 2])
    chosen = valid & tf.equal(length, best[:, None, None])
    heaviest = tf.reduce_max(tf.where(chosen, window, tf.fill(tf.shape(window), -np.inf)),
                             axis=[1, 2])
    chosen = chosen & (window >= (heaviest - INTERVAL_TOLERANCE)[:, None, None])
    lo = tf.reduce_min(tf.where(chosen, tf.constant(np.broadcast_to(lo_index, (r, r)), tf.int64),
                                tf.constant(r, tf.int64)), axis=[1, 2])
    return lo, lo + best - 1


def tf_interval_values(field: str, lo, hi):
    """Graph version of ``interval_values``: float32 [B] low and high in the field's units."""
    values = tf.constant(class_values(field).astype(np.float32))
    return (tf_stops_to_value(tf.gather(values, lo) - 0.5, field),
            tf_stops_to_value(tf.gather(values, hi) + 0.5, field))


def tf_interval_text(field: str, lo, hi) -> tf.Tensor:
    """Graph version of ``interval_text``: string [B]."""
    values = tf.constant(class_values(field).astype(np.float32))
    names = tf.constant(_standard_names(field))
    first_stops, last_stops = tf.gather(values, lo), tf.gather(values, hi)

    def index(s):
        return tf.argmin(tf.abs(s[..., None] - tf.constant(standard_positions(field))), axis=-1)

    before, _, after = _RANGE_TEXT[field].partition("{}-{}")
    ranged = tf.strings.join([before, tf.gather(names, index(first_stops)), "-",
                              tf.gather(names, index(last_stops)), after])
    return tf.where(tf.equal(lo, hi), tf_standard_text(first_stops, field), ranged)


def tf_intervals(probabilities: Mapping[str, tf.Tensor], mass=DEFAULT_INTERVAL) -> dict:
    """The serving outputs of the intervals: per fine field present (field -> calibrated
    probabilities [B, R]) ``<field>_low`` and ``<field>_high`` (float32 [B], the field's units)
    and ``exif_range_text`` (string [B], ``1/250-1/30 s, f/4-8, ISO 200-800``). ``mass``: one
    level for every field, or {field: level} (the levels calibration fitted)."""
    fields = [f for f in FIELDS if f in probabilities]
    if not fields:
        raise ValueError(f"tf_intervals needs at least one of {', '.join(FIELDS)}")
    out, texts = {}, []
    for field in fields:
        level = mass.get(field, DEFAULT_INTERVAL) if isinstance(mass, Mapping) else mass
        lo, hi = tf_interval_classes(probabilities[field], level)
        out[f"{field}_low"], out[f"{field}_high"] = tf_interval_values(field, lo, hi)
        texts.append(tf_interval_text(field, lo, hi))
    out["exif_range_text"] = tf.strings.join(texts, separator=", ")
    return out


# ----------------------------------------------------------------- EXIF consistency (numpy)
#
# Is the EXIF a file claims plausible for its pixels? Per field, the calibrated probability of the
# claimed class; below the threshold the claim is "unlikely". The photo's score is the sum over
# the fields it claims of -log p (its surprise, in nats; p floored at PROBABILITY_FLOOR).

DEFAULT_CONSISTENCY_THRESHOLD = 0.05
PROBABILITY_FLOOR = 1e-12
CONSISTENT, UNLIKELY = "consistent", "unlikely"


def claimed_class(field: str, value) -> int:
    """The fine class whose one-stop bin holds a claimed value (seconds, f-number, ISO), rounding
    half up as ``labels`` does (so ISO 320 claims the ISO 400 class); -1 when the value is unknown
    or outside the classes (1/16000 s)."""
    s = value_to_stops(value, field)
    if value is None or math.isnan(s):
        return labels.NO_LABEL
    index = int(math.floor(s - class_values(field)[0] + 0.5 + 1e-9))
    return index if 0 <= index < len(class_values(field)) else labels.NO_LABEL


def consistency(probabilities: Mapping[str, object], claimed: Mapping[str, object],
                threshold: float = DEFAULT_CONSISTENCY_THRESHOLD) -> dict:
    """The consistency check of claimed classes against calibrated probabilities.

    ``probabilities``: field -> [N, R] (or one [R] vector); ``claimed``: field -> [N] class ids
    (or one int), -1 where a photo claims nothing for that field. Returns per field
    ``probability`` (the claimed class's; NaN where none) and ``unlikely`` (probability below
    ``threshold``), and per photo ``score`` (the sum of -log p over the fields it claims; NaN when
    it claims none), ``fields`` (how many it claims) and ``unlikely_any``. Arrays for [N] inputs,
    Python scalars for one photo."""
    fields = [f for f in FIELDS if f in claimed and f in probabilities]
    if not fields:
        raise ValueError("consistency needs a field with both probabilities and a claimed class")
    single = np.ndim(claimed[fields[0]]) == 0
    per_field, unlikely = {}, {}
    score = count = any_unlikely = None
    for field in fields:
        p = np.atleast_2d(np.asarray(probabilities[field], np.float64))
        c = np.atleast_1d(np.asarray(claimed[field], np.int64))
        if len(c) != len(p) or np.any(c >= p.shape[-1]):
            raise ValueError(f"{field}: claimed classes must be -1 or in [0, {p.shape[-1]}), one "
                             f"per row of probabilities")
        has = c >= 0
        prob = np.where(has, p[np.arange(len(c)), np.where(has, c, 0)], np.nan)
        surprise = np.where(has, -np.log(np.maximum(np.nan_to_num(prob), PROBABILITY_FLOOR)), 0.0)
        per_field[field] = prob
        unlikely[field] = has & (np.nan_to_num(prob, nan=1.0) < threshold)
        score = surprise if score is None else score + surprise
        count = has.astype(np.int64) if count is None else count + has
        any_unlikely = unlikely[field] if any_unlikely is None else any_unlikely | unlikely[field]
    score = np.where(count > 0, score, np.nan)
    out = {"probability": per_field, "unlikely": unlikely, "score": score, "fields": count,
           "unlikely_any": any_unlikely}
    if single:
        out = {"probability": {f: float(v[0]) for f, v in per_field.items()},
               "unlikely": {f: bool(v[0]) for f, v in unlikely.items()},
               "score": float(score[0]), "fields": int(count[0]),
               "unlikely_any": bool(any_unlikely[0])}
    return out
