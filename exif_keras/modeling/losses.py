"""The losses and metrics of the model's heads, every one masked: a photo without a field's label
(class -1, or NaN in stops) counts for nothing in that field's loss and metric, so a joint model
never drops a photo for a missing field.

Classification: the paper's further work (section 7.1), "penalize nearby class predictions less
than those that are completely wrong" plus label smoothing (``ordinal_targets``,
``MaskedOrdinalCrossentropy``), and ``MaskedAccuracy``. Regression (the value in stops):
``MaskedStandardizedMSE`` and ``MaskedMeanAbsoluteError``. All registered under "exif_keras", so
their serialized names are the ones saved before they moved here.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

# -------------------------------------------------------------- classification: ordinal loss

def ordinal_targets(labels, num_classes: int, sigma: float,
                    label_smoothing: float = 0.0) -> tf.Tensor:
    """Soft targets [B, R] float32 from integer class ids [B] (or [B, 1]); -1 = no label.

    A fine class is a value in stops rounded to a whole stop. The target of class y is the
    probability that a value drawn from a Gaussian centred on y with standard deviation ``sigma``
    (in classes, i.e. stops) rounds into each class: Phi((j + 1/2 - y) / sigma) -
    Phi((j - 1/2 - y) / sigma), restricted to the R classes and renormalised to sum 1. A prediction
    one class off therefore costs less than one five classes off (the paper's section 7.1), and
    sigma 0 is exactly one-hot (plain cross-entropy). Label smoothing then mixes in the uniform
    distribution as Keras does: y * (1 - ls) + ls / R.

    Rows whose id is outside [0, R) (NO_LABEL) are all zeros: their cross-entropy and its
    gradient are exactly 0. ``sigma`` and ``label_smoothing`` are Python numbers (hyperparameters
    fixed when the graph is built); everything else is TensorFlow ops.
    """
    sigma = float(sigma)
    label_smoothing = float(label_smoothing)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"ordinal sigma must be a finite number >= 0 (in classes); "
                         f"received sigma={sigma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); received {label_smoothing}")
    num_classes = int(num_classes)
    ids = tf.reshape(tf.cast(tf.round(tf.cast(labels, tf.float32)), tf.int32), [-1])
    valid = (ids >= 0) & (ids < num_classes)
    if sigma == 0:
        target = tf.one_hot(ids, num_classes, dtype=tf.float32)  # zeros for ids out of range
    else:
        centre = tf.cast(ids, tf.float32)[:, None]                          # [B, 1]
        edges = tf.range(num_classes + 1, dtype=tf.float32)[None, :] - 0.5  # [1, R + 1]
        z = (edges - centre) / (sigma * math.sqrt(2.0))                     # [B, R + 1]
        lo, hi = z[:, :-1], z[:, 1:]                                        # each class's edges
        # 0.5 (erf(hi) - erf(lo)), written with erfc on the side away from the centre so the
        # tails keep their relative precision in float32 instead of cancelling to 0.
        mass = 0.5 * tf.where(lo >= 0, tf.math.erfc(lo) - tf.math.erfc(hi),
                              tf.where(hi <= 0, tf.math.erfc(-hi) - tf.math.erfc(-lo),
                                       tf.math.erf(hi) - tf.math.erf(lo)))  # [B, R]
        target = tf.math.divide_no_nan(mass, tf.reduce_sum(mass, axis=-1, keepdims=True))
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.where(valid[:, None], target, tf.zeros_like(target))


@keras.saving.register_keras_serializable(package="exif_keras")
class MaskedOrdinalCrossentropy(keras.losses.Loss):
    """Cross-entropy of ``ordinal_targets`` against predicted probabilities, labels -1 masked.

    ``y_true``: integer class ids [B] or [B, 1], -1 where the photo has no label for this field;
    ``y_pred``: probabilities [B, R] (the model's softmax). A masked photo contributes exactly 0
    to the loss and to its gradient, and the batch mean is over the labelled photos only (0, not
    NaN, for a batch without any), the way Keras' ``SparseCategoricalCrossentropy(ignore_class=-1)``
    reduces, so a field that few photos carry is not diluted by the photos without it. A
    ``sample_weight`` multiplies as usual. With sigma 0 and no smoothing this is exactly that
    Keras loss.
    """

    def __init__(self, sigma=0.0, label_smoothing=0.0, name="masked_ordinal_crossentropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.sigma = float(sigma)
        self.label_smoothing = float(label_smoothing)
        ordinal_targets(tf.zeros([1], tf.int32), 2, self.sigma, self.label_smoothing)  # validates

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The mask enters as a sample weight through the public Loss API; for the mean
        # reductions it is scaled by batch / labelled, so "sum over batch size" becomes "sum over
        # the labelled photos" (the scaling Keras applies to a loss's mask).
        ids = tf.reshape(tf.convert_to_tensor(y_true), [-1])
        valid = tf.cast((ids >= 0) & (ids < tf.cast(tf.shape(y_pred)[-1], ids.dtype)), tf.float32)
        weight = valid
        if self.reduction in ("sum_over_batch_size", "mean"):
            batch = tf.cast(tf.size(valid), tf.float32)
            weight = weight * tf.math.divide_no_nan(batch, tf.reduce_sum(valid))
        if sample_weight is not None:
            sample_weight = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32)
            weight = weight * tf.reshape(sample_weight, tf.shape(weight))
        return super().__call__(y_true, y_pred, sample_weight=weight)

    def call(self, y_true, y_pred):
        num_classes = y_pred.shape[-1]
        if num_classes is None:
            raise ValueError("MaskedOrdinalCrossentropy needs a static number of classes "
                             f"(last axis of y_pred); received shape {y_pred.shape}")
        target = ordinal_targets(y_true, num_classes, self.sigma, self.label_smoothing)
        return keras.losses.categorical_crossentropy(tf.cast(target, y_pred.dtype), y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(sigma=self.sigma, label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package="exif_keras")
class MaskedAccuracy(keras.metrics.Mean):
    """Sparse categorical accuracy over the photos that have a label (id >= 0): an unlabelled
    photo is neither right nor wrong. 0 until some labelled photo has been seen."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        ids = tf.reshape(tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int64), [-1])
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
        matches = tf.cast(tf.equal(ids, predicted), tf.float32)
        weight = tf.cast(ids >= 0, tf.float32)
        if sample_weight is not None:
            weight = weight * tf.reshape(tf.cast(sample_weight, tf.float32), tf.shape(weight))
        return super().update_state(matches, sample_weight=weight)


# ---------------------------------------------------------------------------------- regression

@keras.saving.register_keras_serializable(package="exif_keras")
class MaskedStandardizedMSE(keras.losses.Loss):
    """Mean squared error of a regression head in units of the target's std (so the loss is
    comparable across fields); NaN targets (no EXIF value) count for nothing."""

    def __init__(self, std=1.0, name="standardized_mse", **kwargs):
        super().__init__(name=name, reduction="sum", **kwargs)
        self.std = float(std)

    def call(self, y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        mask = ops.cast(ops.isfinite(y_true), "float32")
        error = (ops.cast(ops.reshape(y_pred, (-1,)), "float32")
                 - ops.where(mask > 0, y_true, 0.0)) / self.std
        return ops.square(error) * mask / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(std=self.std)
        config.pop("reduction", None)
        return config


@keras.saving.register_keras_serializable(package="exif_keras")
class MaskedMeanAbsoluteError(keras.metrics.Metric):
    """Mean absolute error in stops over the examples with a finite target."""

    def __init__(self, name="mae_stops", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        mask = ops.cast(ops.isfinite(y_true), "float32")
        error = ops.abs(ops.cast(ops.reshape(y_pred, (-1,)), "float32")
                        - ops.where(mask > 0, y_true, 0.0))
        self.total.assign_add(ops.sum(error * mask))
        self.count.assign_add(ops.sum(mask))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)
