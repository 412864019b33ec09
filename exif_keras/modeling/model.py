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
    with :class:`backbones.BackboneWeightsError` when offline), a path to a weights file (the Keras
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
from typing import Mapping, Optional, Sequence

import keras

from exif_keras.data import patches
from exif_keras.modeling import backbones, layers, losses, optimizers, regularizers

NORMALIZATIONS = ("auto", "vgg", "dataset")
PATCH_MODES = ("folded", "time_distributed")
HEAD_KERNELS = (1, 2, 3, 2)  # paper 4.1: 1x1, 2x2, 3x3, 2x2

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
    shorthand for one classification head named "probabilities".

    It is also the model section of the training configuration (``TrainConfig.model``, as
    big_vision passes ``config.model``): the fields with a ``help`` in their metadata are train
    flags (``training/config.py`` generates them); the heads, the dataset's mean/std and the
    patch geometry (the data section's) are filled in with ``dataclasses.replace`` when training
    builds the model. A section has no heads yet: :func:`build_model` needs at least one."""

    num_classes: Optional[int] = None
    heads: tuple = ()
    num_patches: int = patches.NUM_PATCHES
    patch_size: int = patches.PATCH_SIZE
    backbone: str = dataclasses.field(default="vgg16", metadata=dict(
        choices=backbones.BACKBONES,
        help="vgg16: frozen ImageNet VGG16 trunk; scratch: trainable layers."))
    trunk_layer: str = dataclasses.field(default="block3_conv3", metadata=dict(
        help="Last VGG16 layer of the trunk."))
    # "imagenet" | path | None/"none" (random); vgg16 only
    backbone_weights: Optional[str] = dataclasses.field(default="imagenet", metadata=dict(
        help="imagenet (Keras download and cache), a path to vgg16_weights_tf_dim_ordering_tf_"
             "kernels_notop.h5, or none (random; for tests and benchmarks).",
        from_flag=lambda v: None if v.lower() in ("", "none") else v))
    filters: int = dataclasses.field(default=64, metadata=dict(
        help="Filters F of the four head convolutions."))
    dense_units: int = 256
    l2: float = dataclasses.field(default=1e-3, metadata=dict(
        help="L2 weight of the head's kernels."))
    normalization: str = dataclasses.field(default="auto", metadata=dict(
        choices=NORMALIZATIONS,
        help="auto: VGG16's preprocessing for vgg16, the dataset's mean/std (manifest) for "
             "scratch."))
    mean: tuple = (127.5,) * 3  # per channel, RGB, 0..255 scale ("dataset" normalisation)
    std: tuple = (64.0,) * 3
    patch_mode: str = dataclasses.field(default="folded", metadata=dict(
        choices=PATCH_MODES, help="How patches run through the per-patch network."))
    dropout: float = 0.0  # after the averaged ReLU, before the output layer
    # scratch trunk: VGG16's filters per layer divided by this
    scratch_width_divisor: int = dataclasses.field(default=2, metadata=dict(
        help="The scratch backbone has VGG16's filters per layer divided by this (2: half as "
             "wide).", lower_bound=1))
    # Keras' default; lower it (0.9) for runs of few steps
    batchnorm_momentum: float = dataclasses.field(default=0.99, metadata=dict(
        help="Momentum of the moving statistics of batch normalisation; 0.9 suits short runs, "
             "whose statistics would otherwise lag the weights at evaluation."))

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
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        if self.num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {self.num_patches}")
        if self.backbone not in backbones.BACKBONES:
            raise ValueError(
                f"backbone must be one of {backbones.BACKBONES}, got {self.backbone!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.patch_mode not in PATCH_MODES:
            raise ValueError(f"patch_mode must be one of {PATCH_MODES}, got {self.patch_mode!r}")
        if self.trunk_layer not in dict(backbones.VGG16_LAYERS):
            raise ValueError(
                f"trunk_layer {self.trunk_layer!r} is not a VGG16 layer; expected one of "
                + ", ".join(name for name, _ in backbones.VGG16_LAYERS)
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
        min_size = 2 ** backbones.downsampling_of(self.trunk_layer)
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


# --------------------------------------------------------------------------------------------
# Sub-models


def build_head(config: ModelConfig, feature_shape: Sequence[int]) -> keras.Model:
    """The per-patch head, a keras.Model named "head": feature map -> [dense_units], linear."""
    regularizer = regularizers.L2(config.l2) if config.l2 else None
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
        x = layers.FusedBatchNormalization(
            momentum=config.batchnorm_momentum, name=f"head_bn{i}"
        )(x)
        x = keras.layers.ReLU(name=f"head_relu{i}")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(config.dense_units, kernel_regularizer=regularizer, name="head_dense")(x)
    return keras.Model(inputs, x, name="head")


def build_per_patch(config: ModelConfig) -> keras.Model:
    """trunk + head as one keras.Model named "per_patch": [P, P, 3] normalised -> [dense_units]."""
    trunk = backbones.build_trunk(config)
    head = build_head(config, trunk.output.shape[1:])
    inputs = keras.Input((config.patch_size, config.patch_size, 3), name="patch")
    frozen = not trunk.trainable
    features = trunk(inputs, training=False) if frozen else trunk(inputs)
    return keras.Model(inputs, head(features), name="per_patch")


def build_model(config: ModelConfig) -> keras.Model:
    """The uncompiled model: [B, k, P, P, 3] uint8 patches -> [B, R] float32 probabilities."""
    if not config.heads:
        raise ValueError("a model needs at least one head (num_classes or heads)")
    k, p = config.num_patches, config.patch_size
    regularizer = regularizers.L2(config.l2) if config.l2 else None
    if config.resolved_normalization == "vgg":
        normalize = layers.PatchNormalization(backbones.VGG_MEAN_BGR, (1.0, 1.0, 1.0), True,
                                              name="normalize")
    else:
        normalize = layers.PatchNormalization(config.mean, config.std, False, name="normalize")

    inputs = keras.Input((k, p, p, 3), dtype="uint8", name="patches")
    x = normalize(inputs)
    per_patch = build_per_patch(config)
    if config.patch_mode == "folded":
        x = layers.FoldPatches(name="fold_patches")(x)
        x = per_patch(x)
        x = layers.UnfoldPatches(k, name="unfold_patches")(x)
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
        return layers.Destandardize(head.mean, head.std, name=head.name)(x)
    x = keras.layers.Dense(head.num_classes, kernel_regularizer=regularizer,
                           name=f"{head.name}_logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=head.name)(x)


def calibrated(model: keras.Model, temperatures: Optional[Mapping[str, float]]) -> keras.Model:
    """The model whose classification heads listed in ``temperatures`` ({head name: T}, the run
    folder's ``run_folder.CALIBRATION``) return ``softmax(logits / T)`` (temperature scaling):
    a new functional model over the same layers and weights, each such head's logits going
    through a :class:`layers.Temperature` (``<head>_temperature``) into a new float32 softmax
    (named as the head, the old one left out of the graph). ``model`` itself when no head has a
    temperature other than 1, so an uncalibrated run's model is exactly as before.

    Applied after the weights are loaded (``run_folder.load_model``, the exporter): the new
    layers hold no variable, but Keras 3 saves weights by the graph's layer order, which they
    change, so weights always load into the model of :func:`build_model`."""
    wanted = {name: float(t) for name, t in (temperatures or {}).items() if float(t) != 1.0}
    if not wanted:
        return model
    unknown = sorted(n for n in wanted if n not in model.output or is_regression_output(model, n))
    if unknown:
        raise ValueError(f"temperatures for heads that are not classification heads: {unknown}")
    outputs = {}
    for name, out in model.output.items():
        if name not in wanted:
            outputs[name] = out
            continue
        logits = layers.Temperature(wanted[name], name=f"{name}_temperature")(
            model.get_layer(f"{name}_logits").output)
        outputs[name] = keras.layers.Activation("softmax", dtype="float32", name=name)(logits)
    return keras.Model(model.input, outputs, name=model.name)


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
    """Adam (:class:`optimizers.Adam`, Keras' Adam with its large updates fused;
    ``learning_rate``: a float or a Keras schedule), and per head a masked loss and
    metric (labels -1 / NaN count for nothing).

    Classification heads: cross-entropy on integer class ids (``[B]`` or ``[B, 1]``), metric
    "accuracy" (:class:`losses.MaskedAccuracy`). Without smoothing or ordinal spread
    the loss is Keras' SparseCategoricalCrossentropy with ``ignore_class=-1``; otherwise
    :class:`losses.MaskedOrdinalCrossentropy`, whose target spreads over neighbouring
    classes (``ordinal_sigma``, in classes; for fine tasks, whose classes are ordered stops) and
    is smoothed, built inside the loss, so the input pipeline is the same either way.
    Regression heads: :class:`losses.MaskedStandardizedMSE`,
    metric "mae_stops". ``loss_weights``: {head name: weight} (default 1 each). The L2 penalties
    of the head are added by Keras. Extra keyword arguments go to ``model.compile`` (e.g.
    ``jit_compile``, ``steps_per_execution``).
    """
    loss_fns, metrics = {}, {}
    for name in output_names(model):
        if is_regression_output(model, name):
            std = model.get_layer(name).std
            loss_fns[name] = losses.MaskedStandardizedMSE(std)
            metrics[name] = [losses.MaskedMeanAbsoluteError(name="mae_stops")]
        else:
            loss_fns[name] = (losses.MaskedOrdinalCrossentropy(ordinal_sigma, label_smoothing)
                            if label_smoothing or ordinal_sigma else
                            keras.losses.SparseCategoricalCrossentropy(ignore_class=-1))
            metrics[name] = [losses.MaskedAccuracy(name="accuracy")]
    unknown = sorted(set(loss_weights or {}) - set(loss_fns))
    if unknown:
        raise ValueError(f"loss weights for unknown heads {unknown}; heads: {sorted(loss_fns)}")
    model.compile(
        optimizer=optimizers.Adam(learning_rate),
        loss=loss_fns,
        loss_weights={name: float((loss_weights or {}).get(name, 1.0)) for name in loss_fns},
        metrics=metrics,
        **compile_kwargs,
    )
