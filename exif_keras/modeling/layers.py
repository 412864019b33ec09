"""The model's custom Keras layers.

Registered under the package "exif_keras" (``keras.saving.register_keras_serializable``), so their
serialized names do not depend on the module they live in: saved models and run folders written
before they moved here load unchanged.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="exif_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel (one op forward,
    one backward) for 4-D channels-last maps.

    Keras 3 normalises with separate moment, subtract and scale ops and differentiates each: on
    the CPU the head's four batch normalisations then cost about as much as its convolutions, and
    the training step fell short of 0.8x the frozen trunk's forward rate (0.78x; 0.83x fused,
    ``python -m exif_keras.benchmark --sections=train``, BUILD.md). Same variables and the same
    moving-average update (population variance, as Keras keeps it; TensorFlow's kernel returns
    the Bessel-corrected one, undone here), so weights load either way. Other backends, masks,
    renorm or other shapes use Keras' implementation.
    """

    def call(self, inputs, training=None, mask=None):
        if (keras.backend.backend() != "tensorflow" or mask is not None or self.renorm
                or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                or not (self.center and self.scale)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
            variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False)
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="exif_keras")
class PatchNormalization(keras.layers.Layer):
    """Casts patches to float32, optionally reverses RGB->BGR, then ``(x - mean) / std``.

    Always computes in float32 (its dtype policy is fixed), also under mixed_float16.
    """

    def __init__(self, mean, std, reverse_channels=False, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.reverse_channels = bool(reverse_channels)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)
        x = x - ops.convert_to_tensor(self.mean, dtype="float32")
        if any(s != 1.0 for s in self.std):
            x = x / ops.convert_to_tensor(self.std, dtype="float32")
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            mean=list(self.mean), std=list(self.std), reverse_channels=self.reverse_channels
        )
        config.pop("dtype", None)
        return config


@keras.saving.register_keras_serializable(package="exif_keras")
class FoldPatches(keras.layers.Layer):
    """``[B, k, ...] -> [B*k, ...]``: the patch axis folded into the batch axis."""

    def call(self, inputs):
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        b, k = input_shape[0], input_shape[1]
        return (None if b is None or k is None else b * k, *input_shape[2:])


@keras.saving.register_keras_serializable(package="exif_keras")
class UnfoldPatches(keras.layers.Layer):
    """``[B*k, ...] -> [B, k, ...]``: the inverse of :class:`FoldPatches`."""

    def __init__(self, num_patches, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = int(num_patches)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.num_patches, *inputs.shape[1:]))

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        return (None if b is None else b // self.num_patches, self.num_patches, *input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update(num_patches=self.num_patches)
        return config


@keras.saving.register_keras_serializable(package="exif_keras")
class Destandardize(keras.layers.Layer):
    """``mean + std * x[..., 0]`` in float32: a regression head's unit output back in stops."""

    def __init__(self, mean=0.0, std=1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)

    def call(self, inputs):
        return self.mean + self.std * ops.cast(inputs[..., 0], "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        config.pop("dtype", None)
        return config


@keras.saving.register_keras_serializable(package="exif_keras")
class Temperature(keras.layers.Layer):
    """``logits / temperature`` in float32: temperature scaling (Guo et al., 2017) between a
    classification head's logits and its softmax, so ``softmax(logits / T)`` is what the model
    returns. T > 1 softens overconfident probabilities, T < 1 sharpens them; the class ranking
    (argmax) never changes. No variable: the temperature is configuration, fitted after training
    on the validation split (``training/calibration.py``) and stored in the run folder
    (``run_folder.CALIBRATION``), so weights saved before it was fitted load unchanged."""

    def __init__(self, temperature=1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"a temperature must be positive, got {temperature}")

    def call(self, inputs):
        return ops.cast(inputs, "float32") / self.temperature

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        config.pop("dtype", None)
        return config
