"""A trained model taken apart (the paper's figure 6): what ``python -m exif_keras.explain`` draws.

:class:`Explainer` splits the model into its pieces (the evaluation grid's patches, each patch's
256-unit ``per_patch`` features, the layers after ``mean_over_patches``, a head layer's
activations), :func:`render` draws one photo's figure and :func:`run` does it for every photo under
some paths. The figure itself is described in the command's docstring (``exif_keras/explain.py``).

A patch's own prediction runs the model's per-patch path on that patch alone: its 256-unit
``per_patch`` features take the place of the mean over the k patches and go through the layers
that follow ``mean_over_patches`` (ReLU, the output layer(s)), found in the model's graph, so it
works for one output and for one output per EXIF field. The mean of the k patches' features is the
model's own ``mean_over_patches`` output. The run folder is read through
:mod:`exif_keras.modeling.run_folder`, as the export reads it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from exif_keras.common import figures, stops
from exif_keras.common.errors import AnalysisError
from exif_keras.data import patches
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import predictor

DEFAULT_LAYER = "head_conv1"
MAX_MAPS = 64  # filters drawn at most (F = 128 would make maps too small to see)
MAX_TITLE_CLASSES = 4  # classes named in the title (a fine shutter head has 20)


class ExplainError(AnalysisError):
    """A usage problem (no run folder, unknown field or layer): no traceback, exit status 2."""


# ------------------------------------------------------------------------------------ the model

@dataclasses.dataclass
class Explanation:
    """What one photo's figure shows. Probabilities per field: whole photo [R], patches [k, R]."""

    image: np.ndarray  # uint8 [H, W, 3], as decoded
    boxes: list  # (y, x, size) of each patch on the photo (may reach past its edge when padded)
    patches: np.ndarray  # uint8 [k, P, P, 3]
    features: np.ndarray  # [k, 256] per-patch features
    whole: dict  # field -> [R]
    per_patch: dict  # field -> [k, R]
    field: str
    predicted: int  # the whole photo's class of ``field``
    best_patch: int  # the patch with the highest probability of that class
    activations: np.ndarray  # [h, w, F] of the layer on the best patch
    layer: str


class Explainer:
    """A trained model taken apart: per-patch features, per-patch predictions, activations."""

    def __init__(self, model, class_names: Mapping[str, Sequence[str]], num_patches: int,
                 patch_size: int, layer: str = DEFAULT_LAYER):
        import keras

        self.model, self.num_patches, self.patch_size = model, num_patches, patch_size
        self.normalize = model.get_layer("normalize")
        self.per_patch = model_lib.per_patch_of(model)
        trunk, head = self.per_patch.get_layer("trunk"), self.per_patch.get_layer("head")
        try:
            target = head.get_layer(layer)
        except ValueError as e:
            raise ExplainError(f"--layer={layer}: the head has no such layer; it has "
                               f"{', '.join(sub.name for sub in head.layers[1:])}") from e
        self.layer = layer
        self._activations = keras.Sequential(
            [trunk, keras.Model(head.input, target.output)], name="to_" + layer)
        pooled = model.get_layer("mean_over_patches").output
        self._after_mean = keras.Model(pooled, model.output, name="after_mean")
        self._mean = keras.Model(model.input, pooled, name="to_mean")
        self.fields = [f for f in model_lib.output_names(model)
                       if not model_lib.is_regression_output(model, f)]
        if not self.fields:
            raise ExplainError("explain shows class predictions; this model has regression "
                               "heads only")
        self.class_names = {f: list(class_names.get(f) or []) for f in self.fields}
        for field in self.fields:
            if not self.class_names[field]:
                count = int(model.output[field].shape[-1])
                self.class_names[field] = [f"class {i}" for i in range(count)]

    @classmethod
    def load(cls, model_dir: str, layer: str = DEFAULT_LAYER) -> "Explainer":
        """The run folder's model with its best weights (float32, no weight download)."""
        try:
            run = run_folder.read(model_dir)
            model = run_folder.load_model(run)
        except run_folder.RunFolderError as e:
            raise ExplainError(str(e)) from e
        config = run.config
        return cls(model, {h.name: list(h.class_names) for h in run.heads}, config.num_patches,
                   config.patch_size, layer)

    # -- the pieces, each testable on its own

    def patches(self, image: np.ndarray) -> tuple[np.ndarray, list]:
        """uint8 [k, P, P, 3] of the evaluation grid and each patch's (y, x, P) on the photo."""
        image = tf.convert_to_tensor(image, tf.uint8)
        crops = patches.extract_patches(image, self.num_patches, self.patch_size, False)
        height, width = int(image.shape[0]), int(image.shape[1])
        padded_h, padded_w = max(height, self.patch_size), max(width, self.patch_size)
        ys, xs = patches.grid_offsets(padded_h, padded_w, self.num_patches, self.patch_size)
        top, left = (padded_h - height) // 2, (padded_w - width) // 2
        boxes = [(int(y) - top, int(x) - left, self.patch_size)
                 for y, x in zip(ys.numpy(), xs.numpy())]
        return crops.numpy(), boxes

    def features(self, crops: np.ndarray) -> np.ndarray:
        """[k, 256]: the per_patch sub-model's features of each patch alone."""
        return np.asarray(self.per_patch(self.normalize(crops), training=False), np.float32)

    def mean_features(self, crops: np.ndarray) -> np.ndarray:
        """[256]: the model's own mean_over_patches output for these k patches."""
        return np.asarray(self._mean(crops[None], training=False), np.float32)[0]

    def predict_from_features(self, features: np.ndarray) -> dict:
        """field -> [N, R]: the layers after mean_over_patches applied to [N, 256] features."""
        out = dict(self._after_mean(np.asarray(features, np.float32), training=False))
        return {f: np.asarray(v, np.float32) for f, v in out.items()}

    def predict(self, crops: np.ndarray) -> dict:
        """field -> [R]: the whole photo's prediction (the model on its k patches)."""
        out = dict(self.model(crops[None], training=False))
        return {f: np.asarray(v, np.float32)[0] for f, v in out.items()}

    def activations(self, patch: np.ndarray) -> np.ndarray:
        """[h, w, F]: the chosen head layer's output on one uint8 patch [P, P, 3]."""
        return np.asarray(self._activations(self.normalize(patch[None]), training=False),
                          np.float32)[0]

    def explain(self, image: np.ndarray, field: Optional[str] = None) -> Explanation:
        field = field or self.fields[0]
        if field not in self.fields:
            raise ExplainError(f"--field={field}: the model predicts {', '.join(self.fields)}")
        crops, boxes = self.patches(image)
        features = self.features(crops)
        whole = self.predict(crops)
        per_patch = self.predict_from_features(features)
        predicted = int(np.argmax(whole[field]))
        best = int(np.argmax(per_patch[field][:, predicted]))
        return Explanation(np.asarray(image), boxes, crops, features, whole, per_patch, field,
                           predicted, best, self.activations(crops[best]), self.layer)


# ------------------------------------------------------------------------------------ the figure

def top_classes(names: Sequence[str], probabilities, most: int = MAX_TITLE_CLASSES) -> str:
    """'1/60 s 0.33, 1/125 s 0.28, ...': the most probable classes first, at most ``most`` of
    them, so that a fine head's 13 or 20 classes do not run off the figure."""
    probabilities = np.asarray(probabilities)
    order = np.argsort(-probabilities, kind="stable")[:most]
    text = ", ".join(f"{names[i]} {probabilities[i]:.2f}" for i in order)
    rest = len(names) - len(order)
    return text + (f", {rest} more classes" if rest > 0 else "")


def render(explanation: Explanation, class_names: Sequence[str], path: str,
           title: str = "") -> str:
    """Writes the figure of one photo (see the module docstring)."""
    return figures.save_figure(draw(explanation, class_names, title), path)


def draw(explanation: Explanation, class_names: Sequence[str], title: str = ""):
    """The figure of one photo (see the module docstring), on its own Agg canvas: what
    :func:`render` writes (the page takes its pixels from the canvas)."""
    from matplotlib.patches import Rectangle

    e = explanation
    maps = e.activations.shape[-1]
    shown = min(maps, MAX_MAPS)
    columns = min(shown, 16)
    map_rows = -(-shown // columns)
    height, width = e.image.shape[:2]
    photo_h = 5.0
    photo_w = min(9.0, photo_h * width / max(height, 1))
    fig_w = max(photo_w + 4.0, 0.75 * columns)
    figure = figures.new_figure(fig_w, photo_h + 0.9 + 0.8 * map_rows * max(1.0, fig_w / 12))
    grid = figure.add_gridspec(2, 2, width_ratios=[photo_w, 3.6],
                               height_ratios=[photo_h, 0.8 * map_rows * max(1.0, fig_w / 12)])

    names = [figures.short_name(c) for c in class_names]
    probabilities = e.whole[e.field]
    ax = figure.add_subplot(grid[0, 0])
    ax.imshow(e.image)
    for i, (y, x, size) in enumerate(e.boxes):
        p = e.per_patch[e.field][i]
        cls = int(np.argmax(p))
        color = f"C{cls % 10}"
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, edgecolor=color,
                               linewidth=3.0 if i == e.best_patch else 1.5,
                               linestyle="-" if i == e.best_patch else "--"))
        # the label just below the box, so that a small patch on a large photo stays visible
        ax.text(x, y + size + 2, f"{i}: {names[cls]} {p[cls]:.2f}", color="white", fontsize=7,
                va="top", bbox=dict(facecolor=color, alpha=0.75, pad=1.0, edgecolor="none"))
    ax.set_xlim(min(-0.5, min(x for _, x, _ in e.boxes) - 0.5),
                max(width - 0.5, max(x + s for _, x, s in e.boxes) - 0.5))
    ax.set_ylim(max(height - 0.5, max(y + s for y, _, s in e.boxes) - 0.5),
                min(-0.5, min(y for y, _, _ in e.boxes) - 0.5))
    ax.set_axis_off()
    whole = top_classes(names, probabilities)
    ax.set_title((f"{title}\n" if title else "")
                 + f"photo: {class_names[e.predicted]} ({whole})\n"
                 f"{len(e.boxes)} patches, each with its own prediction", fontsize=9)

    ax = figure.add_subplot(grid[0, 1])
    ax.imshow(e.patches[e.best_patch], interpolation="nearest")
    ax.set_axis_off()
    p = e.per_patch[e.field][e.best_patch]
    ax.set_title(f"patch {e.best_patch}: speaks most for \"{names[e.predicted]}\"\n"
                 f"({p[e.predicted]:.2f} alone; {e.patches.shape[1]}x{e.patches.shape[2]} px)",
                 fontsize=9)

    sub = grid[1, :].subgridspec(map_rows, columns, wspace=0.05, hspace=0.05)
    for f in range(shown):
        ax = figure.add_subplot(sub[f // columns, f % columns])
        ax.imshow(e.activations[..., f], cmap="viridis", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if f == 0:
            h, w = e.activations.shape[:2]
            ax.set_title(f"{e.layer} on patch {e.best_patch}: {maps} filters"
                         f"{f' (first {shown})' if shown < maps else ''}, {h}x{w} each",
                         fontsize=9, loc="left")
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.02, wspace=0.08,
                           hspace=0.25)
    return figure


# ------------------------------------------------------------------------------------- photos

def output_path(output_dir: str, photo: str, taken: set) -> str:
    stem = os.path.splitext(os.path.basename(photo))[0] or "photo"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return os.path.join(output_dir, name + ".png")


def _exif_text(field: str, data_bytes: bytes) -> str:
    settings = predictor.read_settings(data_bytes)
    key = stops.SETTINGS.get(field)
    if not settings or key is None or settings.get(key) is None:
        return ""
    return f"EXIF {predictor.format_value(field, settings[key])}"


def run(paths: Sequence[str], model_dir: str, output_dir: str, field: Optional[str] = None,
        layer: str = DEFAULT_LAYER, err=None) -> tuple[list[str], list[tuple[str, str]]]:
    """(PNGs written, [(path, reason)] skipped)."""
    err = err or sys.stderr
    explainer = Explainer.load(model_dir, layer)
    if field is not None and field not in explainer.fields:
        raise ExplainError(f"--field={field}: the model predicts {', '.join(explainer.fields)}")
    files, failed = predictor.find_images(paths)
    for path, reason in failed:
        print(f"{path}: skipped: {reason}", file=err)
    os.makedirs(output_dir, exist_ok=True)
    written, taken = [], set()
    for path in files:
        try:
            with open(path, "rb") as f:
                content = f.read()
        except OSError as e:
            failed.append((path, f"cannot read: {e.strerror or e}"))
            print(f"{path}: skipped: {failed[-1][1]}", file=err)
            continue
        problem = predictor.image_problem(content)
        if problem is None:
            try:
                image = patches.decode_image(tf.constant(content)).numpy()
            except tf.errors.InvalidArgumentError as e:
                problem = f"cannot decode: {e.message.splitlines()[0]}"
        if problem is not None:
            failed.append((path, problem))
            print(f"{path}: skipped: {problem}", file=err)
            continue
        explanation = explainer.explain(image, field)
        names = explainer.class_names[explanation.field]
        exif = _exif_text(explanation.field, content)
        title = f"{os.path.basename(path)} ({explanation.field}{'; ' + exif if exif else ''})"
        written.append(render(explanation, names, output_path(output_dir, path, taken), title))
        print(f"{path}: {names[explanation.predicted]} "
              f"({explanation.whole[explanation.field][explanation.predicted]:.2f}) -> "
              f"{written[-1]}")
    return written, failed
