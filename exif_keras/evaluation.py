"""Evaluation: predictions over a split, confusion matrices, per-class accuracy, and their pictures
(a PNG beside metrics.json, the same image in TensorBoard)."""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np


_FORWARD = weakref.WeakKeyDictionary()  # model -> its compiled inference function


def _forward_fn(model):
    """One tf.function per model, so evaluating every epoch traces once, not every time."""
    import tensorflow as tf

    if model not in _FORWARD:
        ref = weakref.ref(model)  # the cache must not keep the model alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=False), reduce_retracing=True)
    return _FORWARD[model]


def predict_split(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Returns (labels [N], probabilities [N, R]) in dataset order, in one pass.

    Calls the model directly (one compiled function, on the default device) rather than
    `predict_on_batch`, which under MirroredStrategy splits short batches across replicas."""
    forward = _forward_fn(model)
    ys, ps = [], []
    for patches, y in dataset:
        ps.append(np.asarray(forward(patches), dtype=np.float32))
        ys.append(np.asarray(y))
    if not ys:
        return np.zeros([0], np.int64), np.zeros([0, model.output_shape[-1]], np.float32)
    return np.concatenate(ys).astype(np.int64), np.concatenate(ps)


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


def render_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                            title: str = "") -> np.ndarray:
    """The confusion matrix as an RGB uint8 image (see figures.confusion_matrix_figure)."""
    from exif_keras import figures

    return figures.confusion_matrix_figure(matrix, class_names, title)


def save_png(array: np.ndarray, path: str) -> None:
    from exif_keras import figures

    figures.save_png(array, path)


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
