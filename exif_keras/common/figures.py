"""Figures, drawn with matplotlib (Agg, no display needed): the confusion matrix (a PNG beside
metrics.json and the same image in TensorBoard), training curves from Keras' CSVLogger file, and
a study's accuracy against its first axis (``exif_keras.study``).

Every figure is a ``matplotlib.figure.Figure`` on its own Agg canvas, never ``pyplot``: no global
state, no backend selection, safe inside training callbacks and tests. ``figure_to_array`` turns
one into an RGB uint8 array (what ``tf.summary.image`` takes); ``save_figure`` writes a PNG.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np

VALIDATION_COLOR = "tab:blue"
TEST_COLOR = "tab:orange"
PAPER_COLOR = "tab:red"


# ------------------------------------------------------------------------------------- plumbing

def new_figure(width: float, height: float, dpi: int = 100):
    """A Figure on its own Agg canvas (inches, dots per inch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure) -> np.ndarray:
    """RGB uint8 [H, W, 3] of the rendered figure."""
    figure.canvas.draw()
    return np.array(figure.canvas.buffer_rgba())[..., :3]


def save_figure(figure, path: str) -> str:
    """Writes the figure as a PNG (through a temporary name, so a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def save_png(array: np.ndarray, path: str) -> str:
    """Writes an RGB uint8 array as a PNG."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    Image.fromarray(np.asarray(array, np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def short_name(class_name: str) -> str:
    """"fast: 1/250 s or shorter" -> "fast" (the task's class names are "<name>: <range>")."""
    return class_name.split(":", 1)[0].strip()


# ----------------------------------------------------------------------------- confusion matrix

def cell_label(count: int, share: float, many_classes: bool) -> str:
    """A confusion-matrix cell: its count and its share of the row; with many classes an empty
    cell is a plain 0, so that the filled ones stand out."""
    return f"{count}\n{share:.0%}" if count or not many_classes else "0"


def confusion_matrix_figure(matrix, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """The confusion matrix as an RGB uint8 image: rows the true class, columns the predicted one,
    each cell with its count and its share of the row (the recall on the diagonal), shaded by that
    share; class names on both axes."""
    matrix = np.asarray(matrix, np.int64)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix of shape {matrix.shape} for {n} class names")
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)
    longest = max((len(c) for c in class_names), default=1)
    cell = 0.9 if n <= 6 else 0.55
    width = 2.0 + min(longest, 40) * 0.075 + n * cell
    height = 1.6 + min(longest, 40) * 0.045 + n * cell
    figure = new_figure(width, height)
    ax = figure.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    small = n > 6
    for i in range(n):
        for j in range(n):
            ax.text(j, i, cell_label(matrix[i, j], rates[i, j], small), ha="center", va="center", fontsize=5.5 if small else 9,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=30 if longest > 8 else 0, ha="right"
                  if longest > 8 else "center", fontsize=7 if small else 8)
    ax.set_yticks(range(n), [f"{c} ({int(t)})" for c, t in zip(class_names, totals[:, 0])],
                  fontsize=7 if small else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    caption = f"accuracy {accuracy:.1%} of {total}; cells: count and share of the row"
    ax.set_title(f"{title}\n{caption}" if title else caption, fontsize=9)
    figure.tight_layout()
    return figure_to_array(figure)


# ---------------------------------------------------------------------------- training curves

def read_training_log(csv_path: str) -> dict[str, list[float]]:
    """Columns of Keras' CSVLogger file as float lists (blank or non-numeric cells are NaN)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            columns.setdefault(key, []).append(number)
    return columns


def _curve_groups(columns: Mapping[str, list]) -> dict[str, list[str]]:
    """{"loss": [...], "accuracy": [...], "other": [...]} of the training-split column names."""
    names = [c for c in columns if c not in ("epoch", "learning_rate", "lr")]
    train = [c for c in names if not c.startswith("val_")]
    # a validation column without its training twin still gets drawn
    train += [c[4:] for c in names if c.startswith("val_") and c[4:] not in train]
    groups = {"loss": [c for c in train if c.endswith("loss")],
              "accuracy": [c for c in train if c.endswith("accuracy")]}
    groups["other"] = [c for c in train if c not in groups["loss"] + groups["accuracy"]]
    return {k: v for k, v in groups.items() if v}


def training_curves(csv_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), from the CSVLogger
    file; every ``*loss`` and ``*accuracy`` column (per-field ones such as ``shutter_accuracy``
    too; other metrics get a third panel). Returns png_path, or None when the log has no epoch."""
    if not os.path.exists(csv_path):
        return None
    columns = read_training_log(csv_path)
    length = max((len(v) for v in columns.values()), default=0)
    if not length:
        return None
    epochs = [int(e) + 1 if e == e else i + 1
              for i, e in enumerate(columns.get("epoch", range(length)))]
    groups = _curve_groups(columns)
    if not groups:
        return None
    figure = new_figure(4.6 * len(groups), 3.6)
    colors = {}
    for index, (group, names) in enumerate(groups.items()):
        ax = figure.add_subplot(1, len(groups), index + 1)
        for name in names:
            color = colors.setdefault(name, f"C{len(colors) % 10}")
            scale = 100.0 if group == "accuracy" else 1.0
            for key, style, label in ((name, "-", "training"), ("val_" + name, "--", "validation")):
                if key in columns:
                    values = [v * scale for v in columns[key]]
                    ax.plot(epochs[:len(values)], values, style, color=color, marker="o",
                            markersize=3, label=f"{label} {name}" if len(names) > 1 else label)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"accuracy": "accuracy (%)"}.get(group, group))
        ax.set_title(group)
        ax.grid(alpha=0.3)
        if length < 15:
            ax.set_xticks(epochs)
        ax.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, png_path)


# -------------------------------------------------------------------------------------- studies

@dataclasses.dataclass
class StudySeries:
    """One line of a study figure: accuracies (fractions) over seeds at each value of the x axis.

    ``validation[i]``/``test[i]``: the finished runs' accuracies at ``x_labels[i]`` (possibly
    empty). ``paper``: x label -> {"validation": %, "test": %} the paper reports there.
    ``majority``: x label -> {"validation": fraction, "test": fraction} of always answering the
    split's largest class."""

    label: str
    x_labels: Sequence[str]
    validation: Sequence[Sequence[float]]
    test: Sequence[Sequence[float]]
    paper: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    majority: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)


def _spread(values: Sequence[float]):
    values = [100.0 * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean, mean - min(values), max(values) - mean, values


def study_figure(series: Sequence[StudySeries], axis_name: str, png_path: str,
                 title: str = "", paper_source: str = "") -> str:
    """Validation and test accuracy against the study's first axis: per value the mean over seeds
    with a min-max bar and each seed as a dot; the paper's numbers as red stars (filled:
    validation, hollow: test); the majority-class
    accuracy of each split as a grey tick. x values are equally spaced in grid order (k = 1, 2,
    4, 8, 16 and learning rates 1e-4, 1e-3, 1e-2 read as the log scales they are)."""
    x_labels = []
    for s in series:
        x_labels += [x for x in s.x_labels if x not in x_labels]
    position = {x: i for i, x in enumerate(x_labels)}
    figure = new_figure(max(5.5, 1.1 * len(x_labels) + 3.0) + 2.6, 4.2)
    ax = figure.add_subplot()
    several = len(series) > 1
    width = 0.25 / max(1, len(series))
    drawn = set()

    def once(label):  # a legend entry the first time only
        if label in drawn:
            return None
        drawn.add(label)
        return label

    for si, s in enumerate(series):
        shift = (si - (len(series) - 1) / 2) * width
        for split, values, marker, style in (("validation", s.validation, "o", "-"),
                                             ("test", s.test, "s", "--")):
            color = f"C{si % 10}" if several else (
                VALIDATION_COLOR if split == "validation" else TEST_COLOR)
            xs, means, low, high = [], [], [], []
            offset = shift - 0.04 if split == "validation" else shift + 0.04
            for x, v in zip(s.x_labels, values):
                spread = _spread(v)
                if spread is None:
                    continue
                xs.append(position[x] + offset)
                means.append(spread[0])
                low.append(spread[1])
                high.append(spread[2])
                ax.plot([position[x] + offset] * len(spread[3]), spread[3], linestyle="none",
                        marker=".", color=color, alpha=0.45, markersize=5)
            if xs:
                ax.errorbar(xs, means, yerr=[low, high], color=color, marker=marker, capsize=3,
                            linestyle=style, label=f"{split}, {s.label}" if several else split)
        source = f" ({paper_source})" if paper_source else ""
        for x, numbers in s.paper.items():
            if x not in position:
                continue
            for split, face in (("validation", PAPER_COLOR), ("test", "none")):
                if numbers.get(split) is not None:
                    ax.plot(position[x], numbers[split], marker="*", markersize=14,
                            markerfacecolor=face, markeredgecolor=PAPER_COLOR, linestyle="none",
                            label=once(f"paper, {split}{source}"))
        for x, numbers in s.majority.items():
            if x not in position:
                continue
            for split in ("validation", "test"):
                if numbers.get(split) is not None:
                    ax.plot(position[x] + shift, 100.0 * numbers[split], marker="_",
                            markersize=18, color="grey", linestyle="none",
                            label=once("majority class (validation, test)"))
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_xlim(-0.5, len(x_labels) - 0.5)
    ax.set_xlabel(axis_name)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, png_path)


# -------------------------------------------------------------------------- reliability diagram

def reliability_diagram(before: Mapping, after: Mapping, title: str = "") -> np.ndarray:
    """Reliability diagrams of one head before and after calibration, side by side, as an RGB
    uint8 image: per equal-width confidence bin the accuracy (bars) against the diagonal of
    perfect calibration, the bin counts beneath, the ECE in each title. ``before``/``after``:
    ``training.calibration.reliability`` tables with an ``ece`` (None: no labelled photo) and a
    ``label`` (e.g. "before (T = 1)")."""
    figure = new_figure(8.0, 4.6)
    grid = figure.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.08)
    for column, table in enumerate((before, after)):
        edges = np.asarray(table["edges"], np.float64)
        width = edges[1] - edges[0]
        centres = edges[:-1] + width / 2
        counts = np.asarray(table["count"], np.int64)
        accuracy = np.array([np.nan if a is None else a for a in table["accuracy"]])
        confidence = np.array([np.nan if c is None else c for c in table["confidence"]])
        top = figure.add_subplot(grid[0, column])
        top.bar(centres, np.nan_to_num(accuracy), width=width * 0.95, color=VALIDATION_COLOR,
                edgecolor="black", linewidth=0.4, label="accuracy")
        top.plot(centres, confidence, "o", color=TEST_COLOR, markersize=3,
                 label="mean confidence")
        top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_xticklabels([])
        ece = table.get("ece")
        top.set_title(f"{table.get('label', '')}: ECE {'n/a' if ece is None else f'{ece:.3f}'}",
                      fontsize=9)
        if column == 0:
            top.set_ylabel("accuracy")
            top.legend(fontsize=7, loc="upper left")
        bottom = figure.add_subplot(grid[1, column])
        bottom.bar(centres, counts, width=width * 0.95, color="gray")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("top-class confidence")
        if column == 0:
            bottom.set_ylabel("photos")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.86 if title else 0.92, bottom=0.11,
                           wspace=0.18)
    return figure_to_array(figure)
