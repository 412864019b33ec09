"""Tests of explain (the paper's figure 6) on a tiny run folder with random weights."""

from __future__ import annotations

import io
import os

import keras
import numpy as np
import pytest
from PIL import Image

from exif_keras import explain
from exif_keras.analysis import explainer
from exif_keras.common import labels
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder

K, P, F = 4, 32, 6
NAMES = list(labels.task_spec("shutter", "binary").class_names)


def make_run(model_dir: str, **overrides) -> model_lib.ModelConfig:
    """A run folder as exif_keras.train leaves it, with random weights (nothing trained)."""
    config = model_lib.ModelConfig(**{**dict(
        heads=(model_lib.HeadConfig("shutter", 2),), num_patches=K, patch_size=P,
        backbone="scratch", backbone_weights=None, filters=F, dense_units=16, scratch_width_divisor=8), **overrides})
    os.makedirs(model_dir, exist_ok=True)
    run_folder.save_model_config(config, model_dir)
    run_folder.save_run_config(run_folder.run_config(
        [labels.task_spec("shutter", "binary")], {"field": "shutter", "task": "binary"}), model_dir)
    keras.utils.set_random_seed(4)
    model = model_lib.build_model(config)
    # moving statistics that amplify (random weights with 0/1 statistics fade to zero features)
    for layer in model_lib.per_patch_of(model).get_layer("head").layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, -0.01, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.01, np.float32))
    model.save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))
    return config


def jpeg(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("explain_run"))
    make_run(path)
    return path


@pytest.fixture(scope="module")
def taken_apart(run_dir):
    return explainer.Explainer.load(run_dir)


def test_per_patch_features_average_to_the_models_mean_over_patches(taken_apart):
    image = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    patches, boxes = taken_apart.patches(image)
    assert patches.shape == (K, P, P, 3) and len(boxes) == K
    features = taken_apart.features(patches)
    assert features.shape == (K, 16)
    assert np.std(features, axis=0).max() > 1e-3, "patches must give different features"
    np.testing.assert_allclose(features.mean(axis=0), taken_apart.mean_features(patches),
                               rtol=1e-4, atol=1e-5)
    # the layers after the mean, applied to the mean, are the model's own prediction
    whole = taken_apart.predict(patches)["shutter"]
    from_mean = taken_apart.predict_from_features(features.mean(axis=0, keepdims=True))["shutter"]
    np.testing.assert_allclose(from_mean[0], whole, rtol=1e-4, atol=1e-6)
    # and each patch alone gets its own, valid, distribution
    per_patch = taken_apart.predict_from_features(features)["shutter"]
    assert per_patch.shape == (K, 2)
    np.testing.assert_allclose(per_patch.sum(axis=1), 1.0, rtol=1e-5)


def test_boxes_are_the_evaluation_grid_on_the_photo(taken_apart):
    image = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    patches, boxes = taken_apart.patches(image)
    for patch, (y, x, size) in zip(patches, boxes):
        assert size == P and 0 <= y <= 70 - P and 0 <= x <= 100 - P
        np.testing.assert_array_equal(patch, image[y:y + P, x:x + P])
    small = np.full((20, 25, 3), 200, np.uint8)  # smaller than a patch: zero-padded around
    patches, boxes = taken_apart.patches(small)
    y, x, _ = boxes[0]
    assert (y, x) == (-6, -3)
    np.testing.assert_array_equal(patches[0][6:26, 3:28], small)


def test_explanation_picks_the_patch_that_speaks_most(taken_apart):
    image = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    e = taken_apart.explain(image)
    assert e.predicted == int(np.argmax(e.whole["shutter"]))
    assert e.best_patch == int(np.argmax(e.per_patch["shutter"][:, e.predicted]))
    assert e.activations.shape == (P // 4, P // 4, F)  # head_conv1 after two 2x2 pools
    assert e.layer == "head_conv1"


def test_dict_outputs_one_per_field():
    """A model whose outputs are a dict keyed by field (the multi-field layout) works the same."""
    config = model_lib.ModelConfig(num_classes=2, num_patches=2, patch_size=P,
                                   backbone="scratch", backbone_weights=None, filters=4,
                                   dense_units=8, scratch_width_divisor=8)
    base = model_lib.build_model(config)
    relu = base.get_layer("pooled_relu").output
    outputs = {"shutter": keras.layers.Dense(2, activation="softmax", name="shutter")(relu),
               "iso": keras.layers.Dense(5, activation="softmax", name="iso")(relu)}
    model = keras.Model(base.input, outputs)
    taken_apart = explainer.Explainer(model, {"shutter": NAMES}, 2, P)
    assert sorted(taken_apart.fields) == ["iso", "shutter"]
    assert taken_apart.class_names["iso"] == [f"class {i}" for i in range(5)]
    image = np.random.default_rng(3).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    e = taken_apart.explain(image, field="iso")
    assert e.per_patch["iso"].shape == (2, 5) and e.per_patch["shutter"].shape == (2, 2)
    np.testing.assert_allclose(e.features.mean(axis=0),
                               taken_apart.mean_features(e.patches), rtol=1e-4, atol=1e-5)
    with pytest.raises(explainer.ExplainError, match="predicts"):
        taken_apart.explain(image, field="aperture")


def test_title_names_the_most_probable_classes_first():
    """A fine head's 20 classes would run off the figure: the title keeps the top ones."""
    names = [f"c{i}" for i in range(20)]
    probabilities = np.full(20, 0.01)
    probabilities[[7, 3, 12, 5, 9]] = [0.33, 0.28, 0.10, 0.05, 0.04]
    assert explainer.top_classes(names, probabilities) == (
        "c7 0.33, c3 0.28, c12 0.10, c5 0.05, 16 more classes")
    assert explainer.top_classes(["fast", "slow"], [0.2, 0.8]) == "slow 0.80, fast 0.20"


def test_cli_writes_readable_pngs_and_skips_bad_files(run_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(jpeg(60, 90, 0))
    (photos / "b.jpg").write_bytes(jpeg(90, 50, 1))
    good = jpeg(60, 90, 2)
    (photos / "c_truncated.jpg").write_bytes(good[: len(good) // 3])
    (photos / "d_notes.jpg").write_bytes(b"not a photo")
    out = tmp_path / "out"
    written, failed = explainer.run([str(photos), str(tmp_path / "missing.jpg")], run_dir, str(out))
    assert sorted(os.path.basename(p) for p in written) == ["a.png", "b.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
            assert len(set(image.convert("L").getdata())) > 20  # a drawing, not a blank page
    reasons = dict((os.path.basename(p), r) for p, r in failed)
    assert reasons["d_notes.jpg"] == "not a JPEG or PNG image"
    assert reasons["c_truncated.jpg"].startswith("cannot decode")
    assert reasons["missing.jpg"] == "no such file or folder"
    err = capsys.readouterr().err
    assert "d_notes.jpg: skipped: not a JPEG or PNG image" in err


def test_usage_errors(run_dir, tmp_path):
    with pytest.raises(explainer.ExplainError, match="does not exist"):
        explainer.Explainer.load(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(explainer.ExplainError, match="not a finished training run"):
        explainer.Explainer.load(str(tmp_path / "empty"))
    with pytest.raises(explainer.ExplainError, match="no such layer"):
        explainer.Explainer.load(run_dir, layer="conv_nowhere")


def test_main_exit_status(run_dir, tmp_path, capsys):
    from absl import flags
    from absl.testing import flagsaver

    def main(argv):
        with flagsaver.flagsaver():
            rest = flags.FLAGS(argv, known_only=True)
            try:
                return explain.main(rest)
            finally:
                flags.FLAGS.unparse_flags()

    (tmp_path / "a.jpg").write_bytes(jpeg(50, 70, 5))
    (tmp_path / "bad.jpg").write_bytes(b"nothing")
    out = tmp_path / "out"
    assert main(["explain", f"--model_dir={run_dir}", f"--output_dir={out}",
                 str(tmp_path / "a.jpg")]) == 0
    assert (out / "a.png").exists()
    assert main(["explain", f"--model_dir={run_dir}", f"--output_dir={out}",
                 str(tmp_path / "bad.jpg")]) == 1
    assert main(["explain", f"--output_dir={out}", str(tmp_path / "a.jpg")]) == 2
    assert main(["explain", f"--model_dir={run_dir}"]) == 2
    assert main(["explain", f"--model_dir={tmp_path / 'none'}", str(tmp_path / "a.jpg")]) == 2
    err = capsys.readouterr().err
    assert "--model_dir is required" in err and "does not exist" in err
