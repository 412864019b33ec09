"""Evaluation: predictions over a split, confusion matrices, per-class accuracy, the metrics in
stops, and the plain text table of the results (their pictures are common/figures.py's)."""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import numpy as np

_FORWARD = weakref.WeakKeyDictionary()  # model -> its compiled inference function


def _forward_fn(model):
    """One tf.function per model, so evaluating every epoch traces once, not every time."""
    import tensorflow as tf

    if model not in _FORWARD:
        ref = weakref.ref(model)  # the cache must not keep the model alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=False), reduce_retracing=True)
    return _FORWARD[model]


def predict_split(model, dataset) -> tuple[dict, dict]:
    """Returns ({head: labels [N]}, {head: outputs [N, R] or [N]}) in dataset order, in one pass.

    Calls the model directly (one compiled function, on the default device) rather than
    `predict_on_batch`, which under MirroredStrategy splits short batches across replicas."""
    forward = _forward_fn(model)
    ys, ps = {}, {}
    for patches, y in dataset:
        for name, out in forward(patches).items():
            ps.setdefault(name, []).append(np.asarray(out, dtype=np.float32))
            ys.setdefault(name, []).append(np.asarray(y[name]))
    if not ps:
        return ({name: np.zeros([0]) for name in model.output},
                {name: np.zeros([0, *out.shape[1:]], np.float32)
                 for name, out in model.output.items()})
    return ({name: np.concatenate(v) for name, v in ys.items()},
            {name: np.concatenate(v) for name, v in ps.items()})


def classification_results(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """accuracy, per-class accuracy, confusion matrix and count of one classification head,
    over the examples that have a label (-1: none)."""
    labelled = labels >= 0
    matrix = confusion_matrix(labels[labelled].astype(np.int64),
                              probabilities[labelled].argmax(-1), probabilities.shape[-1])
    return {"accuracy": accuracy(matrix), "per_class_accuracy": per_class_accuracy(matrix),
            "confusion_matrix": matrix.tolist(), "count": int(matrix.sum())}


def binary_threshold(field: str) -> float:
    """The paper's binary grouping as a threshold in stops: halfway across the classes it leaves
    out (shutter: between 1/250 s and 1/30 s), so a regression is read as "fast" or "slow"."""
    from exif_keras.common import labels

    groups = labels.field_spec(field).binary_groups
    values = labels.class_stops(field)
    return (values[max(groups[0])] + values[min(groups[1])]) / 2.0


def regression_results(field: str, true_stops: np.ndarray, predicted_stops: np.ndarray,
                       train_mean: float) -> dict:
    """A regression head's metrics over the examples with a target: stops.regression_metrics
    (MAE/RMSE, the training mean's, the prediction's std over the targets') and ``accuracy`` of
    the binary grouping obtained by thresholding the prediction (:func:`binary_threshold`), over
    the examples whose true value falls in one of the two groups, so a regression row sits in the
    same table as the binary classifiers."""
    from exif_keras.common import labels, stops

    true_stops = np.asarray(true_stops, np.float64)
    predicted_stops = np.asarray(predicted_stops, np.float64)
    known = np.isfinite(true_stops)
    out = stops.regression_metrics(predicted_stops[known], true_stops[known], train_mean)
    groups = labels.field_spec(field).binary_groups
    values = np.asarray(labels.class_stops(field))
    low, high = values[max(groups[0])], values[min(groups[1])]
    in_groups = known & ((true_stops <= low + 0.5) | (true_stops >= high - 0.5))
    threshold = binary_threshold(field)
    truth = true_stops[in_groups] > threshold
    out["accuracy"] = (float(np.mean((predicted_stops[in_groups] > threshold) == truth))
                       if in_groups.any() else None)
    out["binary_count"] = int(in_groups.sum())
    return out


def head_results(head, labels: np.ndarray, outputs: np.ndarray,
                 train_counts: Optional[Sequence[int]] = None,
                 train_mean: Optional[float] = None) -> dict:
    """Every metric of one head (a labels.TaskSpec) on one split: classification results, plus
    for a fine head its metrics in stops (within one stop, MAE of the estimate, the majority
    class's MAE, the binary task read off the fine prediction); regression_results for a
    regression head."""
    if head.task == "regression":
        return regression_results(head.field, labels, outputs, train_mean)
    out = classification_results(labels, outputs)
    if head.task == "fine":
        from exif_keras.common import stops

        out.update({k: v for k, v in stops.field_metrics(head.field, labels, outputs,
                                                           train_counts).items()
                    if k not in ("accuracy", "count")})
    return out


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros([num_classes, num_classes], np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> list:
    """Recall of each class; None for a class with no example."""
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(len(totals))]


def accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def format_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """A plain text table for terminals and logs."""
    cells = [[str(h) for h in header]] + [["" if c is None else
                                            (f"{c:.4f}" if isinstance(c, float) else str(c))
                                            for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
