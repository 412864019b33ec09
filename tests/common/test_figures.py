"""Tests of the matplotlib figures (exif_keras/figures.py): written, readable, and drawn from the
data they are given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exif_keras.common import figures

NAMES = ["fast: 1/250 s or shorter", "slow: 1/30 s or longer"]


def _readable_png(path) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.convert("RGB")


def test_confusion_matrix_image_for_tensorboard_and_png(tmp_path):
    image = figures.confusion_matrix_figure(np.array([[50, 10], [5, 35]]), NAMES, "test split")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.shape[1] > 300
    # shaded by the share of the row: a perfect matrix is drawn differently from a mixed one
    other = figures.confusion_matrix_figure(np.array([[60, 0], [0, 40]]), NAMES, "test split")
    assert other.shape == image.shape and np.abs(other.astype(int) - image).sum() > 0
    # the same matrix draws the same picture (the trainer calls figures directly)
    np.testing.assert_array_equal(
        figures.confusion_matrix_figure(np.array([[50, 10], [5, 35]]), NAMES, "test split"),
        image)
    figures.save_png(image, str(tmp_path / "cm.png"))
    np.testing.assert_array_equal(np.asarray(_readable_png(tmp_path / "cm.png")), image)


def test_confusion_matrix_many_classes_and_empty_rows():
    names = [f"1/{2 ** i} s" for i in range(20)]
    matrix = np.zeros((20, 20), np.int64)
    matrix[3, 4] = 7  # every other row empty: no division by zero
    image = figures.confusion_matrix_figure(matrix, names)
    assert image.shape[2] == 3 and image.shape[1] > 600
    with pytest.raises(ValueError, match="class names"):
        figures.confusion_matrix_figure(matrix, names[:3])


def test_training_curves_from_the_csv_log(tmp_path):
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,accuracy,loss,shutter_accuracy,shutter_loss,learning_rate,"
                   "val_accuracy,val_loss,val_shutter_accuracy,val_shutter_loss\n"
                   "0,0.6,0.9,0.6,0.8,0.001,0.55,1.0,0.55,0.9\n"
                   "1,0.7,0.7,0.7,0.6,0.001,0.65,0.8,0.65,0.7\n")
    columns = figures.read_training_log(str(log))
    assert figures._curve_groups(columns) == {"loss": ["loss", "shutter_loss"],
                                              "accuracy": ["accuracy", "shutter_accuracy"]}
    out = figures.training_curves(str(log), str(tmp_path / "curves.png"), "run")
    assert out == str(tmp_path / "curves.png")
    assert _readable_png(out).size[0] > 600  # two panels
    # other metrics get their own panel; a header-only log has nothing to draw
    log.write_text("epoch,loss,mae,val_loss,val_mae\n0,1.0,0.8,1.1,0.9\n")
    assert figures._curve_groups(figures.read_training_log(str(log))) == {
        "loss": ["loss"], "other": ["mae"]}
    assert figures.training_curves(str(log), str(tmp_path / "c2.png"))
    log.write_text("epoch,loss,accuracy\n")
    assert figures.training_curves(str(log), str(tmp_path / "c3.png")) is None
    assert figures.training_curves(str(tmp_path / "missing.csv"), str(tmp_path / "c4.png")) is None
    assert not (tmp_path / "c3.png").exists()


def test_study_figure_written_and_readable(tmp_path):
    series = [figures.StudySeries(
        "", ["1", "2", "4", "8"], [[0.8, 0.82], [0.85], [], [0.93, 0.95]],
        [[0.78, 0.8], [0.84], [], [0.94, 0.93]],
        paper={"2": {"validation": 72.03, "test": None},
               "8": {"validation": 79.44, "test": 70.66}},
        majority={"1": {"validation": 0.55, "test": 0.52}})]
    path = figures.study_figure(series, "num_patches", str(tmp_path / "f.png"), "demo")
    image = _readable_png(path)
    assert image.size[0] > 400 and len(set(image.convert("L").getdata())) > 20
    # two series (a second axis) and no paper point at all also draw
    two = [figures.StudySeries("l2=0.001", ["0.001", "0.01"], [[0.7], [0.6]], [[0.6], [0.5]]),
           figures.StudySeries("l2=0.01", ["0.001", "0.01"], [[0.65], [0.55]], [[0.6], [0.5]])]
    _readable_png(figures.study_figure(two, "learning_rate", str(tmp_path / "g.png")))


def test_cells_show_count_and_share_of_the_row():
    assert figures.cell_label(12, 0.63, many_classes=True) == "12\n63%"
    assert figures.cell_label(0, 0.0, many_classes=True) == "0"
    assert figures.cell_label(0, 0.0, many_classes=False) == "0\n0%"
