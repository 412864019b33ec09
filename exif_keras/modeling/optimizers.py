"""The training optimizer: Keras' Adam, its update of each large variable fused into one kernel.

Keras 3 updates a variable with a dozen separate TensorFlow ops (``m += (g - m)(1 - b1)``,
``v += (g^2 - v)(1 - b2)``, ``w -= m alpha / (sqrt(v) + eps)``, one op per operation), each a full
pass over the variable's memory. For the paper's head, whose Flatten(32x32x64) -> Dense(256)
kernel holds 16.8 M of its 16.9 M trainable parameters, that is ~2 GB of memory traffic per step
for an update that needs the seven arrays (g, m, v, w read; m, v, w written) once: on 2 CPU cores
it was a tenth of the frozen trunk's forward time. :class:`Adam` runs the same formula on such a
variable as one XLA-compiled function (one pass). XLA fuses multiplies and adds into fused
multiply-adds, so the numbers match Keras' to float32 rounding (a last-bit difference in some
elements), not bit for bit; variables below :data:`FUSED_MIN_SIZE` (every other variable of the
model), sparse gradients, ``amsgrad`` and distribution strategies keep Keras' own update. The
optimizer's variables (iterations, learning rate, m, v) are Keras' Adam's, so checkpoints of either
load in the other.
"""

from __future__ import annotations

import functools
import math

import keras
from keras import ops

FUSED_MIN_SIZE = 1 << 20   # variables with at least this many elements get the fused update


@functools.lru_cache(maxsize=None)
def _fused_update(beta_1: float, beta_2: float, epsilon: float):
    """keras.optimizers.Adam.update_step, operation for operation, as one XLA-compiled function
    of (variable, m, v, gradient, learning_rate, local_step); traced once per variable shape."""
    import tensorflow as tf

    @tf.function(jit_compile=True, autograph=False)
    def update(variable, m, v, gradient, learning_rate, local_step):
        dtype = variable.dtype
        beta_1_power = tf.pow(tf.cast(beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(beta_2, dtype), local_step)
        alpha = learning_rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m.assign_add(tf.multiply(tf.subtract(gradient, m), 1 - beta_1))
        v.assign_add(tf.multiply(tf.subtract(tf.square(gradient), v), 1 - beta_2))
        variable.assign_sub(tf.divide(tf.multiply(m, alpha), tf.add(tf.sqrt(v), epsilon)))

    return update


@keras.saving.register_keras_serializable(package="exif_keras")
class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments, variables and formula) whose update of each
    variable of at least :data:`FUSED_MIN_SIZE` elements is one XLA-compiled pass (see the
    module docstring). Other backends use Keras' update throughout."""

    def _fusable(self, gradient, variable) -> bool:
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return False
        import tensorflow as tf

        return (not tf.distribute.has_strategy() and isinstance(variable, tf.Variable)
                and not isinstance(gradient, tf.IndexedSlices)
                and variable.shape.is_fully_defined()
                and math.prod(variable.shape) >= FUSED_MIN_SIZE)

    def update_step(self, gradient, variable, learning_rate):
        if not self._fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        _fused_update(float(self.beta_1), float(self.beta_2), float(self.epsilon))(
            variable, getattr(m, "value", m), getattr(v, "value", v),
            ops.cast(gradient, variable.dtype), ops.cast(learning_rate, variable.dtype),
            ops.cast(self.iterations + 1, variable.dtype))
