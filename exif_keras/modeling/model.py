"""The paper's network (section 4.1) as a Keras 3 functional model.

Input: ``[B, k, P, P, 3]`` patches, uint8 RGB 0..255 as cropped from the decoded JPEG (float input
is accepted and cast to uint8, so it should hold whole numbers 0..255). Everything from there to
the class probabilities lives inside the graph, normalisation included, so training, evaluation
and serving cannot disagree about preprocessing::

    patches [B,k,P,P,3] uint8
      -> normalize            (float32; "vgg": RGB->BGR minus ImageNet means, as VGG16's
                               caffe-mode preprocess_input; "dataset": (x - mean) / std per channel)
      -> per_patch            (one keras.Model, weights shared by all k patches)
           trunk: VGG16 block1..block3_conv3, frozen -> [P/4, P/4, 256]   (32x32x256 at P=128)
           head:  Conv 1x1, 2x2, 3x3, 2x2 (F filters, "same"), each + BatchNorm + ReLU,
                  Flatten, Dense(256) linear
      -> mean_over_patches    [B, 256]   (the paper averages the penultimate dense layer)
      -> ReLU (-> Dropout when dropout > 0)
      -> one output per head (``ModelConfig.heads``), a dict keyed by head name (the field):
           classification: <name>_logits Dense(R) -> <name> softmax, float32 even under
                           mixed_float16
           regression:     <name>_standardized Dense(1) -> <name> = mean + std * x, in stops
                           (float32, shape [B])

A single-field model is the one-key case: ``model(x)`` returns ``{"shutter": [B, R]}``; batches
carry their labels as the same dict, and -1 marks a missing label (masked in losses and
metrics), so a joint model of several fields trains on photos that lack some fields.

The patch axis is handled one of two ways with identical weights (``patch_mode``):
  * "folded": reshape to ``[B*k, P, P, 3]``, run ``per_patch`` once, reshape back to
    ``[B, k, 256]``. BatchNorm sees all B*k patches of the batch at once.
  * "time_distributed": ``keras.layers.TimeDistributed(per_patch)``. Keras 3 unrolls a static
    patch axis into k calls, so BatchNorm normalises (and updates its moving statistics) k times
    per step over B patches each. Inference outputs are identical to "folded".
"folded" is the default: BatchNorm statistics over all patches of the batch, one moving-average
update per step, one large batched op per layer (what accelerators and XLA prefer), and on CPU it
was 1.13x faster per training step (``python -m exif_keras.benchmark --sections=patch_modes``;
figures in BUILD.md).

Backbones:
  * "vgg16": ``keras.applications.VGG16(include_top=False)`` sliced at ``trunk_layer`` by layer
    name, all of it frozen (``trainable = False``, called with ``training=False``).
    Weights: "imagenet" (Keras' own download and cache under KERAS_HOME, failing fast and clearly
    with :class:`BackboneWeightsError` when offline), a path to a weights file (the Keras
    ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``, or a ``*.weights.h5`` saved from
    ``VGG16(include_top=False).save_weights``), or None/"none" for random initialisation.
  * "scratch": the paper's no-transfer baseline, trainable. It mirrors VGG16's block structure
    layer for layer up to ``trunk_layer`` (same number of 3x3 "same" convolutions per block, the
    same 2x2 max pools, so the same spatial downsampling and the same layer names), but lighter:
    VGG's widths divided by ``scratch_width_divisor`` (default 2: 32, 64, 128, 256, 256 filters
    for blocks 1..5; the demo uses 4), no conv bias, and a
    BatchNorm + ReLU after every convolution so it trains from random initialisation.

Under ``keras.config.set_dtype_policy("mixed_float16")`` (set by the caller before
``build_model``) the normalisation and the final softmax run in float32, everything else computes
in float16 with float32 variables, and ``compile_model`` gets Keras' automatic loss scaling.

Keras 3 note on ``training=False``: a functional model passes its own ``training`` value down to
every nested layer, overriding a ``training=False`` recorded at graph construction. The frozen
VGG trunk is convolutions and max pools only, which behave the same in both modes, and a Keras 3
BatchNormalization with ``trainable = False`` always uses its moving statistics; so the frozen
trunk is in inference behaviour whatever the caller passes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Optional, Sequence

import keras
from keras import ops

from exif_keras.common import stops

# Keras' own VGG16 no-top weights: file name, origin and md5, as in keras.applications.vgg16.
VGG16_NOTOP_FILENAME = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_NOTOP_FILENAME
)
VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"
# VGG16's caffe-mode preprocessing: BGR channel order, ImageNet means subtracted, no scaling.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)

BACKBONES = ("vgg16", "scratch")
NORMALIZATIONS = ("auto", "vgg", "dataset")
PATCH_MODES = ("folded", "time_distributed")
HEAD_KERNELS = (1, 2, 3, 2)  # paper 4.1: 1x1, 2x2, 3x3, 2x2
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation while fetching the ImageNet weights

# VGG16 (include_top=False) layer sequence: (name, filters or None for a pool).
_VGG16_WIDTHS = (64, 128, 256, 512, 512)
_VGG16_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
VGG16_LAYERS: tuple[tuple[str, Optional[int]], ...] = tuple(
    item
    for block, (width, convs) in enumerate(zip(_VGG16_WIDTHS, _VGG16_CONVS_PER_BLOCK), start=1)
    for item in (
        *((f"block{block}_conv{i}", width) for i in range(1, convs + 1)),
        (f"block{block}_pool", None),
    )
)



class BackboneWeightsError(ValueError):
    """The backbone's weights could not be obtained (offline, or a bad/missing weights file)."""


# --------------------------------------------------------------------------------------------
# Configuration


HEAD_KINDS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """One output of the model: its name (the field), and what it predicts."""

    name: str
    num_classes: int = 0          # classification: R classes
    kind: str = "classification"  # or "regression": one value in stops
    mean: float = 0.0             # regression: the output is mean + std * (linear unit)
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.kind == "classification" and self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.kind == "regression" and not self.std > 0:
            raise ValueError(f"a regression head needs std > 0, got {self.std}")


@dataclasses.dataclass
class ModelConfig:
    """Everything to rebuild the model. ``heads`` are its outputs; ``num_classes=R`` alone is
    shorthand for one classification head named "probabilities"."""

    num_classes: Optional[int] = None
    heads: tuple = ()
    num_patches: int = 8
    patch_size: int = 128
    backbone: str = "vgg16"  # "vgg16" | "scratch"
    trunk_layer: str = "block3_conv3"
    backbone_weights: Optional[str] = "imagenet"  # "imagenet" | path | None/"none"; vgg16 only
    filters: int = 64
    dense_units: int = 256
    l2: float = 1e-3
    normalization: str = "auto"  # "auto" | "vgg" | "dataset"
    mean: tuple = (127.5,) * 3  # per channel, RGB, 0..255 scale ("dataset" normalisation)
    std: tuple = (64.0,) * 3
    patch_mode: str = "folded"  # "folded" | "time_distributed"
    dropout: float = 0.0  # after the averaged ReLU, before the output layer
    scratch_width_divisor: int = 2  # scratch trunk: VGG16's filters per layer divided by this
    batchnorm_momentum: float = 0.99  # Keras' default; lower it (0.9) for runs of few steps

    def __post_init__(self):
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if isinstance(self.backbone_weights, str) and self.backbone_weights.lower() == "none":
            self.backbone_weights = None
        if self.num_classes is not None:
            if self.heads:
                raise ValueError("give either num_classes or heads, not both")
            self.heads = (HeadConfig("probabilities", int(self.num_classes)),)
            self.num_classes = None
        self.heads = tuple(h if isinstance(h, HeadConfig) else HeadConfig(**h)
                           for h in self.heads)
        if not self.heads:
            raise ValueError("a model needs at least one head (num_classes or heads)")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        if self.num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {self.num_patches}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.patch_mode not in PATCH_MODES:
            raise ValueError(f"patch_mode must be one of {PATCH_MODES}, got {self.patch_mode!r}")
        if self.trunk_layer not in dict(VGG16_LAYERS):
            raise ValueError(
                f"trunk_layer {self.trunk_layer!r} is not a VGG16 layer; expected one of "
                + ", ".join(name for name, _ in VGG16_LAYERS)
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must each have 3 values (R, G, B)")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.scratch_width_divisor < 1:
            raise ValueError(
                f"scratch_width_divisor must be at least 1, got {self.scratch_width_divisor}")
        if not 0.0 <= self.batchnorm_momentum < 1.0:
            raise ValueError(f"batchnorm_momentum must be in [0, 1), got {self.batchnorm_momentum}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        min_size = 2 ** downsampling_of(self.trunk_layer)
        if self.patch_size < max(min_size, 32 if self.backbone == "vgg16" else 1):
            raise ValueError(
                f"patch_size {self.patch_size} is too small for backbone {self.backbone!r} "
                f"at {self.trunk_layer!r} (VGG16 needs at least 32)"
            )

    @property
    def resolved_normalization(self) -> str:
        """"vgg" or "dataset": "auto" is vgg for the pretrained VGG16, dataset for scratch."""
        if self.normalization != "auto":
            return self.normalization
        return "vgg" if self.backbone == "vgg16" else "dataset"

    @property
    def model_name(self) -> str:
        outputs = "_".join(f"{h.name}{h.num_classes}" if h.kind == "classification"
                           else f"{h.name}reg" for h in self.heads)
        return f"exif_{self.backbone}_{self.trunk_layer}_{outputs}_k{self.num_patches}_p{self.patch_size}"

    def to_json(self) -> str:
        return config_to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return config_from_json(text)


def config_to_json(config: ModelConfig) -> str:
    data = dataclasses.asdict(config)
    del data["num_classes"]  # shorthand, already turned into heads
    return json.dumps(data, indent=2, sort_keys=True)


def config_from_json(text: str) -> ModelConfig:
    data = json.loads(text)
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
    return ModelConfig(**data)


def downsampling_of(trunk_layer: str) -> int:
    """Number of 2x2 max pools up to and including ``trunk_layer`` (block3_conv3: 2, so P/4)."""
    pools = 0
    for name, filters in VGG16_LAYERS:
        if filters is None:
            pools += 1
        if name == trunk_layer:
            return pools
    raise ValueError(f"unknown trunk layer {trunk_layer!r}")


# --------------------------------------------------------------------------------------------
# Custom layers (registered, so saved .keras models load without custom_objects)


@keras.saving.register_keras_serializable(package="exif_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel (one op forward,
    one backward) for 4-D channels-last maps.

    Keras 3 normalises with separate moment, subtract and scale ops and differentiates each: on
    the CPU the head's four batch normalisations then cost about as much as its convolutions, and
    the training step fell short of 0.8x the frozen trunk's forward rate (0.78x; 0.83x fused,
    ``python -m exif_keras.benchmark --sections=train``, BUILD.md). Same variables and the same moving-average update (population variance, as
    Keras keeps it; TensorFlow's kernel returns the Bessel-corrected one, undone here), so weights
    load either way. Other backends, masks, renorm or other shapes use Keras' implementation.
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


# --------------------------------------------------------------------------------------------
# Backbone weights


def _keras_home_candidates() -> list[str]:
    """Where Keras' get_file caches: $KERAS_HOME (read now, not at import, unlike keras'
    own constant) or ~/.keras; also /tmp/.keras when that is not writable."""
    if "KERAS_HOME" in os.environ:
        home = os.path.expanduser(os.environ["KERAS_HOME"])
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    if os.path.isdir(home) and not os.access(home, os.W_OK):
        return [home, os.path.join("/tmp", ".keras")]  # get_file's fallback for a read-only home
    return [home]


def cached_imagenet_weights() -> Optional[str]:
    """Path of the cached VGG16 no-top ImageNet weights, or None if not downloaded yet."""
    for home in _keras_home_candidates():
        path = os.path.join(home, "models", VGG16_NOTOP_FILENAME)
        if os.path.isfile(path):
            return path
    return None


def _offline_message(cause: BaseException) -> str:
    return (
        "Could not obtain the ImageNet VGG16 weights "
        f"({VGG16_NOTOP_FILENAME}): not in the Keras cache "
        f"({os.path.join(_keras_home_candidates()[0], 'models')}) and the download from "
        f"{VGG16_NOTOP_URL} failed ({type(cause).__name__}: {cause}). Without network access, "
        f"download that file elsewhere and pass "
        f"--backbone_weights=/path/to/{VGG16_NOTOP_FILENAME} (or copy it into the cache), or "
        "train the no-transfer baseline with --backbone=scratch."
    )


def imagenet_weights_path(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> str:
    """The ImageNet weights file: from the Keras cache, else downloaded by Keras into it.

    The download uses ``keras.utils.get_file`` with the same file name, origin and md5 as
    ``keras.applications.VGG16(weights="imagenet")``, into the cache that honours KERAS_HOME at
    call time, with a short socket timeout so that an offline machine fails at once.
    """
    cached = cached_imagenet_weights()
    if cached:
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return keras.utils.get_file(
            VGG16_NOTOP_FILENAME,
            VGG16_NOTOP_URL,
            cache_subdir="models",
            file_hash=VGG16_NOTOP_MD5,
            cache_dir=_keras_home_candidates()[0],
        )
    except Exception as e:  # URLError, "URL fetch failure ...", timeouts, hash mismatch
        raise BackboneWeightsError(_offline_message(e)) from e
    finally:
        socket.setdefaulttimeout(previous)


def _resolve_backbone_weights(weights: Optional[str]) -> Optional[str]:
    """None (random init) or a local/gfile path that exists."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return imagenet_weights_path()
    path = os.fspath(weights)
    if "://" in path:
        import tensorflow as tf

        found = tf.io.gfile.exists(path)
    else:
        path = os.path.expanduser(path)
        found = os.path.isfile(path)
    if not found:
        raise BackboneWeightsError(
            f"backbone weights file not found: {path!r}. Expected Keras' "
            f"{VGG16_NOTOP_FILENAME} (or a *.weights.h5 saved from "
            "keras.applications.VGG16(include_top=False)); "
            "use --backbone=scratch to train without pretrained weights."
        )
    return path


# --------------------------------------------------------------------------------------------
# Sub-models


def build_trunk(config: ModelConfig) -> keras.Model:
    """The per-patch trunk, a keras.Model named "trunk": [P, P, 3] float -> feature map."""
    shape = (config.patch_size, config.patch_size, 3)
    if config.backbone == "vgg16":
        weights = _resolve_backbone_weights(config.backbone_weights)
        try:
            vgg = keras.applications.VGG16(include_top=False, weights=weights, input_shape=shape)
        except Exception as e:
            if weights is None:
                raise
            raise BackboneWeightsError(
                f"could not load VGG16 weights from {weights!r}: {type(e).__name__}: {e}. "
                f"Expected Keras' {VGG16_NOTOP_FILENAME}, or a *.weights.h5 saved from "
                "keras.applications.VGG16(include_top=False)."
            ) from e
        trunk = keras.Model(vgg.inputs, vgg.get_layer(config.trunk_layer).output, name="trunk")
        trunk.trainable = False
        return trunk

    inputs = keras.Input(shape, name="trunk_input")
    x = inputs
    for name, width in VGG16_LAYERS:
        block, kind = name.split("_")
        if width is None:
            x = keras.layers.MaxPooling2D(2, strides=2, name=name)(x)
        else:
            index = kind[len("conv"):]
            x = keras.layers.Conv2D(
                max(1, width // config.scratch_width_divisor), 3, padding="same", use_bias=False,
                name=name
            )(x)
            x = FusedBatchNormalization(
                momentum=config.batchnorm_momentum, name=f"{block}_bn{index}"
            )(x)
            x = keras.layers.ReLU(name=f"{block}_relu{index}")(x)
        if name == config.trunk_layer:
            break
    return keras.Model(inputs, x, name="trunk")


def build_head(config: ModelConfig, feature_shape: Sequence[int]) -> keras.Model:
    """The per-patch head, a keras.Model named "head": feature map -> [dense_units], linear."""
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    inputs = keras.Input(tuple(feature_shape), name="head_input")
    x = inputs
    for i, kernel in enumerate(HEAD_KERNELS, start=1):
        x = keras.layers.Conv2D(
            config.filters,
            kernel,
            padding="same",
            use_bias=False,  # followed by BatchNormalization, whose beta is the bias
            kernel_regularizer=regularizer,
            name=f"head_conv{i}",
        )(x)
        x = FusedBatchNormalization(
            momentum=config.batchnorm_momentum, name=f"head_bn{i}"
        )(x)
        x = keras.layers.ReLU(name=f"head_relu{i}")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(config.dense_units, kernel_regularizer=regularizer, name="head_dense")(x)
    return keras.Model(inputs, x, name="head")


def build_per_patch(config: ModelConfig) -> keras.Model:
    """trunk + head as one keras.Model named "per_patch": [P, P, 3] normalised -> [dense_units]."""
    trunk = build_trunk(config)
    head = build_head(config, trunk.output.shape[1:])
    inputs = keras.Input((config.patch_size, config.patch_size, 3), name="patch")
    frozen = not trunk.trainable
    features = trunk(inputs, training=False) if frozen else trunk(inputs)
    return keras.Model(inputs, head(features), name="per_patch")


def build_model(config: ModelConfig) -> keras.Model:
    """The uncompiled model: [B, k, P, P, 3] uint8 patches -> [B, R] float32 probabilities."""
    k, p = config.num_patches, config.patch_size
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    if config.resolved_normalization == "vgg":
        normalize = PatchNormalization(VGG_MEAN_BGR, (1.0, 1.0, 1.0), True, name="normalize")
    else:
        normalize = PatchNormalization(config.mean, config.std, False, name="normalize")

    inputs = keras.Input((k, p, p, 3), dtype="uint8", name="patches")
    x = normalize(inputs)
    per_patch = build_per_patch(config)
    if config.patch_mode == "folded":
        x = FoldPatches(name="fold_patches")(x)
        x = per_patch(x)
        x = UnfoldPatches(k, name="unfold_patches")(x)
    else:
        x = keras.layers.TimeDistributed(per_patch, name="per_patch_td")(x)
    x = keras.layers.GlobalAveragePooling1D(name="mean_over_patches")(x)
    x = keras.layers.ReLU(name="pooled_relu")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = {head.name: _build_head_output(head, x, regularizer) for head in config.heads}
    return keras.Model(inputs, outputs, name=config.model_name)


def _build_head_output(head: HeadConfig, x, regularizer):
    """One output of the model from the pooled features: a float32 softmax or value in stops."""
    if head.kind == "regression":
        x = keras.layers.Dense(1, kernel_regularizer=regularizer,
                               name=f"{head.name}_standardized")(x)
        return Destandardize(head.mean, head.std, name=head.name)(x)
    x = keras.layers.Dense(head.num_classes, kernel_regularizer=regularizer,
                           name=f"{head.name}_logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=head.name)(x)


def output_names(model: keras.Model) -> tuple[str, ...]:
    """The model's head names, in the order of ModelConfig.heads."""
    return tuple(model.output.keys())


def is_regression_output(model: keras.Model, name: str) -> bool:
    return len(model.output[name].shape) == 1


def per_patch_of(model: keras.Model) -> keras.Model:
    """The shared per-patch sub-model (unwrapped from TimeDistributed if need be)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.TimeDistributed):
            layer = layer.layer
        if layer.name == "per_patch":
            return layer
    raise ValueError(f"model {model.name!r} has no 'per_patch' sub-model")


def trunk_of(model: keras.Model) -> keras.Model:
    """The (for vgg16: frozen) trunk sub-model."""
    return per_patch_of(model).get_layer("trunk")


def head_of(model: keras.Model) -> keras.Model:
    return per_patch_of(model).get_layer("head")


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(kind: str, learning_rate: float, total_steps: int):
    """The optimizer's learning rate: a float (constant), or a Keras schedule of the optimizer's
    step count, which Keras saves with the optimizer, so a resumed run continues the schedule."""
    if kind == "constant":
        return float(learning_rate)
    if kind == "cosine":
        if total_steps < 1:
            raise ValueError(f"a cosine schedule needs at least one step, got {total_steps}")
        return keras.optimizers.schedules.CosineDecay(float(learning_rate), total_steps)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; choose from {LR_SCHEDULES}")


def compile_model(
    model: keras.Model, learning_rate=1e-3, label_smoothing: float = 0.0,
    loss_weights: Optional[dict] = None, ordinal_sigma: float = 0.0, **compile_kwargs
) -> None:
    """Adam (``learning_rate``: a float or a Keras schedule), and per head a masked loss and
    metric (labels -1 / NaN count for nothing).

    Classification heads: cross-entropy on integer class ids (``[B]`` or ``[B, 1]``), metric
    "accuracy" (:class:`exif_keras.common.stops.MaskedAccuracy`). Without smoothing or ordinal spread
    the loss is Keras' SparseCategoricalCrossentropy with ``ignore_class=-1``; otherwise
    :class:`exif_keras.common.stops.MaskedOrdinalCrossentropy`, whose target spreads over neighbouring
    classes (``ordinal_sigma``, in classes; for fine tasks, whose classes are ordered stops) and
    is smoothed, built inside the loss, so the input pipeline is the same either way.
    Regression heads: :class:`MaskedStandardizedMSE`,
    metric "mae_stops". ``loss_weights``: {head name: weight} (default 1 each). The L2 penalties
    of the head are added by Keras. Extra keyword arguments go to ``model.compile`` (e.g.
    ``jit_compile``, ``steps_per_execution``).
    """
    losses, metrics = {}, {}
    for name in output_names(model):
        if is_regression_output(model, name):
            std = model.get_layer(name).std
            losses[name] = MaskedStandardizedMSE(std)
            metrics[name] = [MaskedMeanAbsoluteError(name="mae_stops")]
        else:
            losses[name] = (stops.MaskedOrdinalCrossentropy(ordinal_sigma, label_smoothing)
                            if label_smoothing or ordinal_sigma else
                            keras.losses.SparseCategoricalCrossentropy(ignore_class=-1))
            metrics[name] = [stops.MaskedAccuracy(name="accuracy")]
    unknown = sorted(set(loss_weights or {}) - set(losses))
    if unknown:
        raise ValueError(f"loss weights for unknown heads {unknown}; heads: {sorted(losses)}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=losses,
        loss_weights={name: float((loss_weights or {}).get(name, 1.0)) for name in losses},
        metrics=metrics,
        **compile_kwargs,
    )
