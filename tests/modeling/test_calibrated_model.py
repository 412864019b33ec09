"""The temperature inside the model (modeling.model.calibrated, layers.Temperature): softmax of
the logits over T, the same weights, an uncalibrated model untouched."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from exif_keras.modeling import layers
from exif_keras.modeling import model as model_lib


def _model():
    config = model_lib.ModelConfig(
        heads=(model_lib.HeadConfig("shutter", 20), model_lib.HeadConfig("iso", 5),
               model_lib.HeadConfig("aperture", kind="regression", mean=4.0, std=2.0)),
        num_patches=2, patch_size=32, backbone="scratch", backbone_weights=None, filters=4,
        dense_units=8, scratch_width_divisor=8, trunk_layer="block1_conv2")
    keras.utils.set_random_seed(3)
    return model_lib.build_model(config)


def test_calibrated_heads_answer_softmax_of_logits_over_t():
    model = _model()
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 32, 32, 3)).astype("uint8")
    logits = keras.Model(model.input, model.get_layer("shutter_logits").output)(x).numpy()
    calibrated = model_lib.calibrated(model, {"shutter": 2.5, "iso": 1.0})
    out = {k: v.numpy() for k, v in calibrated(x).items()}
    z = logits / 2.5
    want = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(out["shutter"], want / want.sum(-1, keepdims=True), atol=1e-6)
    raw = {k: v.numpy() for k, v in model(x).items()}
    np.testing.assert_array_equal(out["iso"], raw["iso"])          # T = 1: untouched
    np.testing.assert_array_equal(out["aperture"], raw["aperture"])  # regression: no temperature
    assert list(calibrated.output) == list(model.output)
    assert len(calibrated.weights) == len(model.weights)            # the same variables
    assert model_lib.per_patch_of(calibrated) is model_lib.per_patch_of(model)
    assert model_lib.calibrated(model, {}) is model
    assert model_lib.calibrated(model, {"shutter": 1.0}) is model
    with pytest.raises(ValueError, match="classification"):
        model_lib.calibrated(model, {"aperture": 2.0})


def test_the_temperature_layer_round_trips_and_refuses_zero():
    layer = layers.Temperature(1.7, name="t")
    again = layers.Temperature.from_config(layer.get_config())
    assert again.temperature == 1.7 and again.name == "t"
    np.testing.assert_allclose(again(np.array([[1.7, -3.4]], np.float32)), [[1.0, -2.0]])
    with pytest.raises(ValueError, match="positive"):
        layers.Temperature(0.0)
