"""The training step's speed-only replacements: optimizers.Adam (Keras' Adam, large updates fused)
and regularizers.L2 (Keras' L2, one-pass gradient)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from exif_keras.modeling import model as model_lib
from exif_keras.modeling import optimizers, regularizers


def _run(optimizer, shapes, steps: int = 6):
    """Variables of ``shapes`` after ``steps`` updates with fixed pseudo-random gradients."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype(np.float32) * 0.05) for s in shapes]
    grads = [[tf.constant(rng.normal(size=s).astype(np.float32) * 1e-2) for s in shapes]
             for _ in range(3)]
    optimizer.build(variables)
    apply = tf.function(lambda g: optimizer.apply(g, variables))
    for step in range(steps):
        apply(grads[step % 3])
    return variables, optimizer


def test_fused_update_matches_keras_adam_to_float32_rounding():
    shapes = [(optimizers.FUSED_MIN_SIZE // 256, 256), (64, 3)]   # one fused, one not
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, 10)
    calls = optimizers._fused_update.cache_info()
    ours, opt = _run(optimizers.Adam(schedule), shapes)
    after = optimizers._fused_update.cache_info()
    assert after.hits + after.misses > calls.hits + calls.misses   # the fused update ran
    theirs, ref = _run(keras.optimizers.Adam(schedule), shapes)
    big, small = ours
    np.testing.assert_allclose(big.numpy(), theirs[0].numpy(), rtol=0, atol=1e-6 * 0.3)
    np.testing.assert_array_equal(small.numpy(), theirs[1].numpy())  # Keras' own update
    assert len(opt.variables) == len(ref.variables)  # the same state, as checkpoints hold it
    for a, b in zip(opt.variables, ref.variables):
        assert a.shape == b.shape and a.dtype == b.dtype
        # fused multiply-adds: a few float32 units in the last place of the variable's scale
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0,
                                   atol=1e-6 * float(np.abs(b.numpy()).max()))


def test_compile_model_uses_it():
    model = model_lib.build_model(model_lib.ModelConfig(
        num_classes=2, num_patches=2, patch_size=32, backbone="scratch",
        scratch_width_divisor=16, filters=4, trunk_layer="block1_pool"))
    model_lib.compile_model(model)
    assert isinstance(model.optimizer, optimizers.Adam)
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_l2_value_and_gradient_are_keras_bit_for_bit():
    rng = np.random.default_rng(3)
    weights = keras.Variable(rng.normal(size=(300, 70)).astype(np.float32))
    upstream = tf.constant(0.37, tf.float32)
    results = []
    for regularizer in (regularizers.L2(1e-3), keras.regularizers.L2(1e-3)):
        with tf.GradientTape() as tape:
            penalty = regularizer(weights)
            loss = penalty * upstream
        results.append((penalty.numpy(), tape.gradient(loss, weights.value).numpy()))
    (ours, ours_grad), (theirs, theirs_grad) = results
    assert ours == theirs
    np.testing.assert_array_equal(ours_grad, theirs_grad)
    assert regularizers.L2(1e-3).get_config() == keras.regularizers.L2(1e-3).get_config()
