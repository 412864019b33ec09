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
    estimate against a photo's own EXIF (``stop_error``, ``format_stop_error``).
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
