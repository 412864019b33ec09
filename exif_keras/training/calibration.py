"""Calibration after training: temperature scaling, its measures, the intervals' coverage and the
EXIF consistency check measured on a split (numpy; the model applies the temperature itself).

* **Temperature scaling** (Guo et al., 2017, "On Calibration of Modern Neural Networks"): one
  temperature T per classification head, ``softmax(logits / T)``, fitted on the *validation*
  split by minimising the negative log likelihood of its labels (labels -1 masked). The search is
  one-dimensional over log T: a grid, then a golden-section refinement around the best grid point,
  deterministic for the same inputs. From the model's float32 probabilities p the logits are
  known up to a constant per row, ``log p``, so ``softmax(log p / T)`` (:func:`scale`) is the
  model's ``softmax(logits / T)`` (``modeling.layers.Temperature``) up to float rounding.
* **Measures**: :func:`nll`; :func:`ece`, the expected calibration error over 15 equal-width bins
  of the top-class confidence (bin b holds confidences in (b/15, (b+1)/15], the first also 0), the
  count-weighted mean of |accuracy - mean confidence| per bin; :func:`reliability`, the bins
  themselves for the diagram (``common/figures.reliability_diagram``).
* **Intervals** (:func:`fit_interval_mass`): the mass level of each fine field's intervals,
  fitted on the validation split after the temperature so that the intervals cover ``--interval``
  of the photos (split conformal prediction); see its docstring for why the level is not simply
  0.8.
* **Consistency** (:func:`consistency_metrics`): on a split whose EXIF is true, the false alarms
  (claims flagged ``unlikely``) per field, then the same photos with one field's claimed class
  moved by +-2 and +-3 stops (a simulated edit): the detection rate (moved claims flagged) and the
  ROC AUC of the photo's score (the sum of -log p over its fields) between the edited photos and
  the true ones. A move past the field's first or last class is dropped (not clipped: a clipped
  claim could land on the true class); ``count`` says how many photos remained.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from exif_keras.common import stops

ECE_BINS = 15
# log T searched in [LOG_T_MIN, LOG_T_MAX]: T from 0.05 to 20
LOG_T_MIN, LOG_T_MAX = math.log(0.05), math.log(20.0)
SHIFTS = (-3, -2, 2, 3)


def _log_probabilities(probabilities) -> np.ndarray:
    """log p in float64, p floored at the smallest normal float32 (an underflowed 0)."""
    return np.log(np.maximum(np.asarray(probabilities, np.float64),
                             np.finfo(np.float32).tiny))


def scale(probabilities, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: probabilities rescaled by a temperature (float64 [N, R])."""
    z = _log_probabilities(probabilities) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _labelled(labels, probabilities):
    y = np.asarray(labels, np.int64).reshape(-1)
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities must be [N, R] for N = {len(y)} labels; received shape "
                         f"{p.shape}")
    known = y >= 0
    return y[known], p[known]


def nll(labels, probabilities) -> Optional[float]:
    """Mean negative log likelihood (nats) of the labels (-1: none) under the probabilities;
    None without a labelled row."""
    y, p = _labelled(labels, probabilities)
    if not len(y):
        return None
    return float(-np.mean(_log_probabilities(p[np.arange(len(y)), y])))


def reliability(labels, probabilities, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of the top-class confidence: ``count``, ``confidence`` (mean) and
    ``accuracy`` (None for an empty bin), and ``edges`` [bins + 1]."""
    y, p = _labelled(labels, probabilities)
    confidence = p.max(axis=-1) if len(y) else np.zeros([0])
    correct = (p.argmax(axis=-1) == y) if len(y) else np.zeros([0], bool)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = {"edges": np.linspace(0.0, 1.0, bins + 1).tolist(), "count": [], "confidence": [],
           "accuracy": []}
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out["count"].append(n)
        out["confidence"].append(float(confidence[inside].mean()) if n else None)
        out["accuracy"].append(float(correct[inside].mean()) if n else None)
    return out


def ece(labels, probabilities, bins: int = ECE_BINS) -> Optional[float]:
    """Expected calibration error: sum over bins of (bin count / N) |accuracy - confidence|;
    None without a labelled row."""
    table = reliability(labels, probabilities, bins)
    total = sum(table["count"])
    if not total:
        return None
    return float(sum(n / total * abs(a - c) for n, a, c in zip(
        table["count"], table["accuracy"], table["confidence"]) if n))


def fit_temperature(labels, probabilities, grid: int = 61, iterations: int = 40) -> float:
    """The temperature minimising :func:`nll` of the labelled rows: the best of ``grid`` points
    evenly spaced in log T over [0.05, 20], refined by golden-section search between its
    neighbours. 1.0 without a labelled row."""
    y, p = _labelled(labels, probabilities)
    if not len(y):
        return 1.0
    log_p = _log_probabilities(p)

    def loss(log_t):
        z = log_p / math.exp(log_t)
        z = z - z.max(axis=-1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=-1)) - z[np.arange(len(y)), y]))

    points = np.linspace(LOG_T_MIN, LOG_T_MAX, grid)
    values = [loss(t) for t in points]
    best = int(np.argmin(values))
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    candidates = [(values[best], points[best]), (fc, c), (fd, d)]
    return float(math.exp(min(candidates)[1]))


# The levels tried for an interval's mass (fit_interval_mass): 0.005, 0.010, ..., 1.0
MASS_LEVELS = np.round(np.arange(1, 201) / 200.0, 3)


def fit_interval_mass(labels, probabilities, coverage: float = stops.DEFAULT_INTERVAL) -> float:
    """The mass level m of a field's intervals (the shortest run of classes holding at least m of
    the calibrated probability) that makes them cover ``coverage`` of the labelled photos: the
    smallest level of MASS_LEVELS whose intervals hold the true class for at least
    ceil((n + 1) coverage) / n of the n labelled photos (split conformal prediction's
    finite-sample quantile, Vovk et al. 2005; Angelopoulos and Bates 2021). ``coverage`` itself
    without a labelled photo.

    Why not m = coverage: the classes are whole stops, so an interval holds *at least* m and
    usually more (a photo whose top class holds 0.95 gets that one class, 0.95 > 0.8): even
    perfectly calibrated, the intervals of m = 0.8 cover their mean mass, 0.93 for the demo's ISO
    head (BUILD.md). Fitted on the validation split, like the temperature, and checked on test."""
    y, p = _labelled(labels, probabilities)
    coverage = float(coverage)
    if not len(y):
        return coverage
    need = min(1.0, math.ceil((len(y) + 1) * coverage) / len(y))
    for level in MASS_LEVELS:
        lo, hi = stops.interval_classes(p, float(level))
        if np.mean((lo <= y) & (y <= hi)) >= need - 1e-12:
            return float(level)
    return 1.0


def head_calibration(labels, probabilities, temperature: float, task: str,
                     mass: float = stops.DEFAULT_INTERVAL, field: Optional[str] = None,
                     fitted_mass: Optional[float] = None) -> dict:
    """One head on one split: ``nll`` and ``ece`` before (the model's own probabilities) and after
    (rescaled by ``temperature``), and for a fine head the intervals' ``interval_coverage``,
    ``interval_width_stops`` and ``interval_mass`` (the probability they hold on average: the
    coverage a calibrated model promises) before (T = 1, mass ``mass``), with the temperature
    alone (``_temperature``: mass ``mass``) and after (the temperature and ``fitted_mass``, the
    level :func:`fit_interval_mass` chose; ``mass`` when None)."""
    after = (scale(probabilities, temperature)
             if temperature != 1.0 and len(np.asarray(probabilities)) else probabilities)
    out = {"nll_before": nll(labels, probabilities), "nll_after": nll(labels, after),
           "ece_before": ece(labels, probabilities), "ece_after": ece(labels, after)}
    if task == "fine":
        level = mass if fitted_mass is None else fitted_mass
        for suffix, p, m in (("_before", probabilities, mass), ("_temperature", after, mass),
                             ("_after", after, level)):
            for key, value in stops.interval_metrics(field, labels, p, m).items():
                out[key + suffix] = value
    return out


# ----------------------------------------------------------------------------- consistency

def roc_auc(negative_scores, positive_scores) -> Optional[float]:
    """The probability that a positive scores above a negative (ties count one half): the area
    under the ROC curve, by ranks (Mann-Whitney U). None when either side is empty."""
    neg = np.asarray(negative_scores, np.float64).reshape(-1)
    pos = np.asarray(positive_scores, np.float64).reshape(-1)
    if not len(neg) or not len(pos):
        return None
    scores = np.concatenate([neg, pos])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def consistency_metrics(labels: Mapping[str, np.ndarray], probabilities: Mapping[str, np.ndarray],
                        threshold: float = stops.DEFAULT_CONSISTENCY_THRESHOLD,
                        shifts: Sequence[int] = SHIFTS) -> dict:
    """The consistency check measured on one split of true EXIF (field -> labels [N], -1 none;
    field -> calibrated probabilities [N, R]): see the module docstring."""
    fields = [f for f in stops.FIELDS if f in labels and f in probabilities]
    true = stops.consistency(probabilities, {f: labels[f] for f in fields}, threshold)
    claims = true["fields"] > 0
    out = {"threshold": float(threshold), "shifts_past_the_classes": "dropped",
           "photos": int(claims.sum()),
           "false_alarms": {f: _share(true["unlikely"][f], np.asarray(labels[f]) >= 0)
                            for f in fields},
           "false_alarms_any": _share(true["unlikely_any"], claims),
           "fields": {}}
    negatives = true["score"][claims]
    for field in fields:
        y = np.asarray(labels[field], np.int64)
        r = np.asarray(probabilities[field]).shape[-1]
        per_shift = {}
        for shift in shifts:
            moved = y + shift
            keep = (y >= 0) & (moved >= 0) & (moved < r)
            edited = stops.consistency(probabilities, {**{f: labels[f] for f in fields},
                                                       field: np.where(keep, moved, -1)},
                                       threshold)
            per_shift[f"{shift:+d}"] = {
                "count": int(keep.sum()),
                "detection_rate": _share(edited["unlikely"][field], keep),
                "auc": roc_auc(negatives, edited["score"][keep]),
            }
        out["fields"][field] = per_shift
    return out


def _share(flags, among) -> Optional[float]:
    among = np.asarray(among, bool)
    return float(np.mean(np.asarray(flags, bool)[among])) if among.any() else None
