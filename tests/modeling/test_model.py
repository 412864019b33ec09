"""Tests of exif_keras.modeling (model, layers, losses, backbones): the paper's architecture
(section 4.1), frozen trunk, weights, modes.

Never touches the network: VGG16 weights come from files saved here from a random VGG16, and the
ImageNet download is made to fail. Tiny shapes (P=32, k=2, F=4) except where the paper's
32x32x256 trunk output at P=128 is checked.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.error

import h5py
import keras
import numpy as np
import pytest

from exif_keras.modeling import backbones, layers, losses, run_folder
from exif_keras.modeling import model as model_lib
from exif_keras.modeling.backbones import BackboneWeightsError
from exif_keras.modeling.model import (
    ModelConfig,
    build_model,
    compile_model,
    trunk_of,
)

P, K, F, R = 32, 2, 4, 3


def tiny(**overrides) -> ModelConfig:
    values = dict(
        num_classes=R, num_patches=K, patch_size=P, filters=F, backbone_weights=None,
    )
    values.update(overrides)
    return ModelConfig(**values)


def patches(batch=3, k=K, p=P, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, k, p, p, 3), dtype=np.uint8)


def weights_by_path(layer):
    return {w.path: np.array(w.numpy()) for w in layer.weights}


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def random_vgg16():
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(P, P, 3))


def save_vgg_weights(vgg, path):
    if str(path).endswith(".weights.h5"):
        vgg.save_weights(path)
    else:  # the legacy layout of Keras' own vgg16_..._notop.h5
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, vgg)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Architecture


def test_layer_sequence_matches_paper():
    config = tiny()
    model = build_model(config)
    assert model.name.startswith("exif_")
    assert model.input.shape == (None, K, P, P, 3) and model.input.dtype == "uint8"
    assert model.output["probabilities"].shape == (None, R)

    top = [layer.name for layer in model.layers]
    assert top == [
        "patches", "normalize", "fold_patches", "per_patch", "unfold_patches",
        "mean_over_patches", "pooled_relu", "probabilities_logits", "probabilities",
    ]
    per_patch = model.get_layer("per_patch")
    assert [layer.name for layer in per_patch.layers] == ["patch", "trunk", "head"]

    head = per_patch.get_layer("head")
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.InputLayer)]
    convs = layers[0:12:3]
    assert [c.kernel_size for c in convs] == [(1, 1), (2, 2), (3, 3), (2, 2)]
    for i, conv in enumerate(convs):
        assert isinstance(conv, keras.layers.Conv2D)
        assert conv.filters == F and conv.padding == "same"
        assert isinstance(conv.kernel_regularizer, keras.regularizers.L2)
        assert conv.kernel_regularizer.l2 == pytest.approx(1e-3)
        assert isinstance(layers[3 * i + 1], keras.layers.BatchNormalization)
        assert isinstance(layers[3 * i + 2], keras.layers.ReLU)
    flatten, dense = layers[12:]
    assert isinstance(flatten, keras.layers.Flatten)
    assert isinstance(dense, keras.layers.Dense) and dense.units == 256
    assert dense.activation is keras.activations.linear  # ReLU comes after the average
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2)

    assert isinstance(model.get_layer("mean_over_patches"), keras.layers.GlobalAveragePooling1D)
    assert isinstance(model.get_layer("pooled_relu"), keras.layers.ReLU)
    logits = model.get_layer("probabilities_logits")
    assert logits.units == R and logits.activation is keras.activations.linear
    assert isinstance(logits.kernel_regularizer, keras.regularizers.L2)
    softmax = model.get_layer("probabilities")
    assert softmax.activation is keras.activations.softmax
    assert softmax.dtype_policy.compute_dtype == "float32"

    probs = model(patches())["probabilities"]
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)


def test_dense_outputs_averaged_over_patches_then_relu():
    model = build_model(tiny())
    x = patches()
    per_patch_out = keras.Model(model.input, model.get_layer("unfold_patches").output)(x)
    pooled = keras.Model(model.input, model.get_layer("pooled_relu").output)(x)
    np.testing.assert_allclose(pooled, np.maximum(np.mean(per_patch_out, axis=1), 0), atol=1e-5)
    # Each patch is independent: permuting the patches of an image changes nothing.
    np.testing.assert_allclose(model(x[:, ::-1])["probabilities"], model(x)["probabilities"],
                               atol=1e-6)


def test_trunk_output_is_32x32x256_for_128_patches():
    model = build_model(tiny(patch_size=128))
    trunk = trunk_of(model)
    assert trunk.layers[-1].name == "block3_conv3"
    assert trunk.output.shape == (None, 32, 32, 256)
    assert model.output["probabilities"].shape == (None, R)
    # The scratch trunk downsamples the same way (half VGG's width).
    scratch = trunk_of(build_model(tiny(patch_size=128, backbone="scratch")))
    assert scratch.output.shape == (None, 32, 32, 128)


def test_trunk_layer_selectable_by_name():
    trunk = trunk_of(build_model(tiny(trunk_layer="block2_pool")))
    assert trunk.layers[-1].name == "block2_pool"
    assert trunk.output.shape == (None, P // 4, P // 4, 128)
    with pytest.raises(ValueError, match="not a VGG16 layer"):
        tiny(trunk_layer="block9_conv1")


def test_only_head_weights_are_trainable():
    model = build_model(tiny())
    trunk = trunk_of(model)
    assert not trunk.trainable
    assert trunk.weights and not trunk.trainable_weights
    trunk_ids = {id(w) for w in trunk.weights}
    trainable = model.trainable_weights
    assert trainable and not trunk_ids & {id(w) for w in trainable}
    assert all(w.path.startswith(("head_", "probabilities_logits")) for w in trainable), [
        w.path for w in trainable
    ]


@pytest.mark.parametrize("patch_mode", model_lib.PATCH_MODES)
def test_training_step_leaves_trunk_bit_identical(patch_mode):
    model = build_model(tiny(patch_mode=patch_mode))
    compile_model(model, learning_rate=1e-2)
    trunk_before = weights_by_path(trunk_of(model))
    head_before = weights_by_path(model_lib.head_of(model))
    logits_before = model.get_layer("probabilities_logits").kernel.numpy()
    x, y = patches(batch=4), np.array([0, 1, 2, 1])
    for _ in range(2):
        logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    for path, value in weights_by_path(trunk_of(model)).items():
        assert np.array_equal(value, trunk_before[path]), path
    head_after = weights_by_path(model_lib.head_of(model))
    for path in ("head_conv1/kernel", "head_conv4/kernel", "head_dense/kernel"):
        assert not np.array_equal(head_after[path], head_before[path]), path
    assert not np.array_equal(model.get_layer("probabilities_logits").kernel.numpy(), logits_before)


def test_folded_and_time_distributed_give_identical_outputs():
    folded = build_model(tiny())
    distributed = build_model(tiny(patch_mode="time_distributed"))
    assert isinstance(distributed.get_layer("per_patch_td"), keras.layers.TimeDistributed)
    rng = np.random.default_rng(1)
    # Non-trivial BatchNorm statistics, so that inference mode really uses them.
    weights = [
        w.numpy() + (rng.uniform(0.1, 0.5, w.shape) if "moving" in w.path else 0)
        for w in folded.weights
    ]
    folded.set_weights(weights)
    distributed.set_weights(weights)
    x = patches(batch=4)
    np.testing.assert_allclose(
        folded.predict(x, verbose=0)["probabilities"],
        distributed.predict(x, verbose=0)["probabilities"], rtol=1e-5, atol=1e-6
    )
    assert trunk_of(distributed).trainable is False


def test_scratch_backbone_is_trainable():
    config = tiny(backbone="scratch")
    assert config.resolved_normalization == "dataset"
    model = build_model(config)
    trunk = trunk_of(model)
    assert trunk.trainable
    assert all(layer.trainable for layer in trunk.layers)
    assert trunk.output.shape == (None, P // 4, P // 4, 128)
    assert [layer.name for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)] == [
        "block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
        "block3_conv1", "block3_conv2", "block3_conv3",
    ]
    # Only BatchNorm moving statistics are non-trainable.
    assert all("moving" in w.path for w in model.non_trainable_weights)
    compile_model(model)
    before = weights_by_path(trunk)
    model.train_on_batch(patches(batch=4), np.array([0, 1, 2, 1]))
    after = weights_by_path(trunk)
    assert not np.array_equal(after["block1_conv1/kernel"], before["block1_conv1/kernel"])


# ---------------------------------------------------------------------------------------------
# Normalisation, precision


def _normalized(model, x):
    return keras.Model(model.input, model.get_layer("normalize").output)(x).numpy()


def test_vgg_normalization_matches_keras_preprocess_input():
    config = tiny()
    assert config.resolved_normalization == "vgg"
    x = patches()
    expected = keras.applications.vgg16.preprocess_input(x.astype(np.float32))
    model = build_model(config)
    np.testing.assert_allclose(_normalized(model, x), expected, atol=1e-4)
    # Float input holding the same pixel values gives the same result.
    np.testing.assert_allclose(model(x.astype(np.float32))["probabilities"],
                               model(x)["probabilities"], atol=1e-6)


def test_dataset_normalization_uses_mean_and_std():
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    model = build_model(tiny(normalization="dataset", mean=mean, std=std))
    x = patches()
    expected = (x.astype(np.float32) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(_normalized(model, x), expected, atol=1e-5)


@pytest.mark.dtype_policy("mixed_float16")
def test_mixed_float16_outputs_float32(mixed_float16):
    model = build_model(tiny())
    assert model.output["probabilities"].dtype == "float32"
    assert model_lib.head_of(model).get_layer("head_conv1").compute_dtype == "float16"
    assert trunk_of(model).get_layer("block1_conv1").compute_dtype == "float16"
    assert model.get_layer("normalize").compute_dtype == "float32"
    probs = model(patches())["probabilities"]
    assert probs.dtype == "float32"
    compile_model(model)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logs = model.train_on_batch(patches(batch=4), np.array([0, 1, 2, 1]), return_dict=True)
    assert np.isfinite(logs["loss"])


# ---------------------------------------------------------------------------------------------
# Backbone weights


@pytest.mark.parametrize(
    "filename", ["vgg16.weights.h5", backbones.VGG16_NOTOP_FILENAME], ids=["keras3", "legacy"]
)
def test_loads_vgg_weights_from_path(tmp_path, random_vgg16, filename, no_network):
    path = save_vgg_weights(random_vgg16, tmp_path / filename)
    model = build_model(tiny(backbone_weights=path))
    trunk = trunk_of(model)
    for name in ("block1_conv1", "block3_conv3"):
        saved = random_vgg16.get_layer(name).get_weights()
        loaded = trunk.get_layer(name).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(saved, loaded)), name


def test_missing_weights_path_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere" / backbones.VGG16_NOTOP_FILENAME)
    with pytest.raises(BackboneWeightsError, match="not found") as info:
        build_model(tiny(backbone_weights=missing))
    assert missing in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(BackboneWeightsError, match="bad.weights.h5"):
        build_model(tiny(backbone_weights=str(bad)))


def _fail_get_file(*args, **kwargs):
    raise Exception(
        f"URL fetch failure on {backbones.VGG16_NOTOP_URL}: None -- "
        "[Errno -2] Name or service not known"
    )


def _fail_urlretrieve(*args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.mark.parametrize("how", ["get_file", "urlretrieve"])
def test_imagenet_offline_error(tmp_path, monkeypatch, no_network, how):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    if how == "get_file":
        monkeypatch.setattr(keras.utils, "get_file", _fail_get_file)
    else:  # Keras' real get_file, its download failing
        from keras.src.utils import file_utils

        monkeypatch.setattr(file_utils, "urlretrieve", _fail_urlretrieve)
    timeout = socket.getdefaulttimeout()
    assert backbones.cached_imagenet_weights() is None
    with pytest.raises(BackboneWeightsError) as info:
        build_model(tiny(backbone_weights="imagenet"))
    message = str(info.value)
    assert f"--backbone_weights=/path/to/{backbones.VGG16_NOTOP_FILENAME}" in message
    assert "--backbone=scratch" in message
    assert socket.getdefaulttimeout() == timeout


def test_imagenet_weights_come_from_keras_cache(tmp_path, monkeypatch, random_vgg16, no_network):
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    save_vgg_weights(random_vgg16, home / "models" / backbones.VGG16_NOTOP_FILENAME)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(keras.utils, "get_file", _fail_get_file)
    model = build_model(tiny(backbone_weights="imagenet"))
    saved = random_vgg16.get_layer("block2_conv1").get_weights()[0]
    assert np.array_equal(trunk_of(model).get_layer("block2_conv1").get_weights()[0], saved)


# ---------------------------------------------------------------------------------------------
# Config, loss, saving


def test_config_json_round_trip(tmp_path):
    config = tiny(backbone="scratch", mean=[1, 2, 3], std=(4, 5, 6), dropout=0.25)
    again = model_lib.config_from_json(model_lib.config_to_json(config))
    assert again == config and isinstance(again.mean, tuple)
    run_folder.save_model_config(config, str(tmp_path / "model_dir"))
    assert run_folder.load_model_config(str(tmp_path / "model_dir")) == config
    assert ModelConfig(num_classes=2, backbone_weights="None").backbone_weights is None
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        model_lib.config_from_json('{"num_classes": 2, "bogus": 1}')
    for bad in (dict(backbone="resnet"), dict(patch_mode="loop"), dict(normalization="x"),
                dict(std=(1, 0, 1)), dict(num_classes=1), dict(patch_size=16)):
        with pytest.raises(ValueError):
            dataclasses.replace(tiny(), **bad)


def test_label_smoothing_loss_matches_one_hot_crossentropy():
    loss = losses.MaskedOrdinalCrossentropy(sigma=0.0, label_smoothing=0.1)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    y_true = np.array([0, 1])
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        np.eye(3, dtype=np.float32)[y_true], y_pred
    )
    np.testing.assert_allclose(loss(y_true, y_pred), expected, rtol=1e-6)
    np.testing.assert_allclose(loss(y_true[:, None], y_pred), expected, rtol=1e-6)


def test_saved_model_file_round_trip(tmp_path):
    model = build_model(tiny(dropout=0.1))
    compile_model(model, label_smoothing=0.1)
    model.train_on_batch(patches(batch=4), np.array([0, 1, 2, 1]))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = patches()
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["probabilities"],
                               model.predict(x, verbose=0)["probabilities"], atol=1e-6)
    assert not trunk_of(loaded).trainable


# ---------------------------------------------------------------------------------------------
# Learning


def _blur_or_sharp(n, k, p, rng):
    """Class 1: white noise; class 0: the same noise box-blurred. Same mean and std."""
    labels = rng.integers(0, 2, n)
    noise = rng.normal(size=(n, k, p + 2, p + 2, 3))
    blurred = sum(
        noise[:, :, i : i + p, j : j + p] for i in range(3) for j in range(3)
    ) / 9.0
    sharp = noise[:, :, 1 : p + 1, 1 : p + 1]
    x = np.where(labels[:, None, None, None, None] == 1, sharp, blurred)
    x = (x - x.mean(axis=(2, 3, 4), keepdims=True)) / x.std(axis=(2, 3, 4), keepdims=True)
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8), labels


def test_tiny_scratch_model_learns_blur_versus_sharp():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    p, k = 16, 2
    x_train, y_train = _blur_or_sharp(256, k, p, rng)
    x_test, y_test = _blur_or_sharp(128, k, p, rng)
    config = ModelConfig(
        num_classes=2, num_patches=k, patch_size=p, backbone="scratch", trunk_layer="block1_pool",
        filters=8, dense_units=32, mean=(128.0,) * 3, std=(40.0,) * 3,
        # 64 steps only: with Keras' default momentum 0.99 the BatchNorm moving statistics
        # would still be far from the batch statistics, and inference mode near chance.
        batchnorm_momentum=0.9,
    )
    model = build_model(config)
    compile_model(model, learning_rate=1e-3)
    model.fit(x_train, y_train, batch_size=16, epochs=4, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy > 0.85, accuracy


def test_fused_batch_normalization_matches_keras():
    """The fused layer is a drop-in for keras.layers.BatchNormalization: outputs, moving
    statistics, inference and gradients agree."""
    import tensorflow as tf

    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 8, 8, 5)).astype("float32")
    reference = keras.layers.BatchNormalization(momentum=0.5)
    fused = layers.FusedBatchNormalization(momentum=0.5)
    reference.build(x.shape)
    fused.build(x.shape)
    for _ in range(2):
        np.testing.assert_allclose(fused(x, training=True), reference(x, training=True),
                                   atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), reference.moving_mean.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(),
                               reference.moving_variance.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused(x, training=False), reference(x, training=False),
                               atol=1e-5)
    weights = np.arange(5, dtype="float32")
    with tf.GradientTape(persistent=True) as tape:
        loss_ref = tf.reduce_mean(reference(x, training=True) ** 2 * weights)
        loss_fused = tf.reduce_mean(fused(x, training=True) ** 2 * weights)
    for a, b in zip(tape.gradient(loss_ref, reference.trainable_variables),
                    tape.gradient(loss_fused, fused.trainable_variables)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_several_heads_mask_missing_labels():
    """A joint model: one output per head; an image without a label for a head (-1, or NaN for
    a regression head) adds nothing to that head's loss nor to its gradient."""
    heads = (model_lib.HeadConfig("shutter", 3), model_lib.HeadConfig("iso", 2),
             model_lib.HeadConfig("aperture", kind="regression", mean=5.0, std=2.0))
    model = build_model(tiny(num_classes=None, heads=heads, l2=0.0))
    assert model_lib.output_names(model) == ("shutter", "iso", "aperture")
    x = patches(batch=4)
    out = model(x)
    assert out["shutter"].shape == (4, 3) and out["iso"].shape == (4, 2)
    assert out["aperture"].shape == (4,) and out["aperture"].dtype == "float32"
    compile_model(model, learning_rate=1e-2, loss_weights={"shutter": 1.0, "iso": 0.5})
    iso_before = model.get_layer("iso_logits").kernel.numpy()
    y = {"shutter": np.array([0, 1, 2, -1]), "iso": np.array([-1, -1, -1, -1]),
         "aperture": np.array([4.0, np.nan, 6.0, 5.0], np.float32)}
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["iso_loss"] == 0.0 and np.isfinite(logs["loss"]) and logs["shutter_loss"] > 0
    np.testing.assert_array_equal(model.get_layer("iso_logits").kernel.numpy(), iso_before)
    with pytest.raises(ValueError, match="unknown heads"):
        compile_model(model, loss_weights={"focus": 1.0})
    again = model_lib.config_from_json(model_lib.config_to_json(tiny(num_classes=None,
                                                                        heads=heads)))
    assert again.heads == heads


def test_learning_rate_schedules():
    assert model_lib.learning_rate_schedule("constant", 3e-3, total_steps=100) == 3e-3
    cosine = model_lib.learning_rate_schedule("cosine", 1e-3, total_steps=100)
    assert float(cosine(0)) == pytest.approx(1e-3)
    assert float(cosine(50)) == pytest.approx(5e-4, rel=1e-4)  # half way down the cosine
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, {"shutter": keras.layers.Dense(2, activation="softmax",
                                                               name="shutter")(inputs)})
    model_lib.compile_model(model, learning_rate=cosine)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="at least one step"):
        model_lib.learning_rate_schedule("cosine", 1e-3, total_steps=0)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        model_lib.learning_rate_schedule("step", 1e-3, total_steps=10)
