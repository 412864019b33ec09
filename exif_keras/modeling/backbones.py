"""The per-patch trunk: VGG16 (frozen, ImageNet weights) or the scratch baseline of the same shape.

The VGG16 layer table (:data:`VGG16_LAYERS`), the trunk of either backbone (:func:`build_trunk`),
and the ImageNet weights: Keras' own file, from its cache or downloaded into it, failing fast and
clearly (:class:`BackboneWeightsError`) when offline. ``model.py``'s module docstring says what each
backbone is and why.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

import keras

from exif_keras.common.errors import ModelError
from exif_keras.modeling.layers import FusedBatchNormalization

# Keras' own VGG16 no-top weights: file name, origin and md5, as in keras.applications.vgg16.
VGG16_NOTOP_FILENAME = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_NOTOP_FILENAME
)
VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"
# VGG16's caffe-mode preprocessing: BGR channel order, ImageNet means subtracted, no scaling.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)

BACKBONES = ("vgg16", "scratch")
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



class BackboneWeightsError(ModelError):
    """The backbone's weights could not be obtained (offline, or a bad/missing weights file)."""


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
# The trunk


def build_trunk(config) -> keras.Model:
    """The per-patch trunk, a keras.Model named "trunk": [P, P, 3] float -> feature map, from a
    ModelConfig's backbone, trunk_layer, backbone_weights, patch_size, scratch_width_divisor and
    batchnorm_momentum."""
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
