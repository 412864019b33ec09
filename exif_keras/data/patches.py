"""Image -> patches: what serving shares with training.

JPEG decoding (:func:`decode_image`), the evaluation grid (:func:`grid_shape`,
:func:`grid_offsets`), padding of small images (:func:`pad_to_min_size`) and the crops
(:func:`extract_patches`). The input pipeline (``data/pipeline.py``) calls them on records; the
serving export and ``explain`` call the same functions, so their pixels and patches are exactly
the evaluation ones. The decisions behind each (DCT method, zero padding, the grid's layout, the
training crops) are in ``pipeline.py``'s module docstring.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import tensorflow as tf

DCT_METHOD = "INTEGER_ACCURATE"
NUM_PATCHES = 8     # k patches per image: the default of --num_patches (and of the model)
PATCH_SIZE = 128    # patch side P in pixels: the default of --patch_size (and of the model)


# --------------------------------------------------------------------------------------- decoding

def decode_image(encoded: tf.Tensor, dct_method: Optional[str] = None) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> uint8 [H, W, 3]. JPEG with ``dct_method`` (None:
    ``DCT_METHOD``); else (PNG, GIF's first frame, BMP) through ``tf.io.decode_image``.
    Greyscale/RGBA become RGB."""
    def _jpeg():
        return decode_jpeg(encoded, dct_method)

    def _other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), _jpeg, _other)
    image.set_shape([None, None, 3])
    return image


def decode_jpeg(encoded: tf.Tensor, dct_method: Optional[str] = None) -> tf.Tensor:
    """JPEG bytes (scalar string) -> uint8 [H, W, 3], as :func:`decode_image` decodes a JPEG
    (``dct_method`` None: ``DCT_METHOD``), without its format switch: for bytes known to be a
    JPEG (the input pipeline checks a whole batch at once)."""
    dct_method = DCT_METHOD if dct_method is None else dct_method
    return tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)


# -------------------------------------------------------------------------------------- patches

def grid_shape(num_patches: int) -> tuple[int, int]:
    """(short side count, long side count) of the evaluation grid: the most square factorisation."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    short = max(d for d in range(1, math.isqrt(num_patches) + 1) if num_patches % d == 0)
    return short, num_patches // short


@functools.lru_cache(maxsize=None)
def _grid_table(num_patches: int) -> np.ndarray:
    """The evaluation grid of k patches as constants, computed once so that the graph does the
    least work per image: int32 [2 orientations, 3 (a, b, g), k, 3 axes (y, x, channel)] such that
    a patch's offset along an axis of slack D is ``(a * D + b) // g`` (the channel axis: 0).
    Orientation 0 is landscape (fewer rows than columns), 1 portrait.

    Along an axis with n patches, patch i in the first half is at ``floor(i D / (n - 1))`` (a, b,
    g = i, 0, n - 1); in the second half, mirrored, at ``D - floor((n - 1 - i) D / (n - 1))``,
    which equals ``floor((i D + n - 2) / (n - 1))`` (a, b, g = i, n - 2, n - 1: for integers,
    D - floor(q / g) = ceil((g D - q) / g) and ceil(p / g) = floor((p + g - 1) / g)); a lone
    patch (n = 1) at ``floor(D / 2)`` (1, 0, 2), the centre (which also covers k = 1 and a prime
    k's 1 x k strip)."""
    short, long = grid_shape(num_patches)
    table = np.zeros([2, 3, num_patches, 3], np.int32)
    table[:, 2, :, 2] = 1   # channel axis: (0 * D + 0) // 1 = 0
    for orientation, (rows, cols) in enumerate(((short, long), (long, short))):
        for axis, (index, n) in enumerate(((np.repeat(np.arange(rows), cols), rows),
                                           (np.tile(np.arange(cols), rows), cols))):
            if n == 1:
                a, b, g = np.ones_like(index), 0, 2
            else:
                a, b, g = index, np.where(2 * index <= n - 1, 0, n - 2), n - 1
            table[orientation, :, :, axis] = np.broadcast_arrays(a, b, g)
    return table


def _grid_begins(shape: tf.Tensor, num_patches: int, patch_size: int) -> tf.Tensor:
    """int32 [k, 3]: the (y, x, 0) corner of each patch of the evaluation grid on an image of
    ``shape`` int32 [3] = (height, width, channels), see :func:`grid_offsets` and
    :func:`_grid_table` (a handful of ops per image)."""
    slack = shape - tf.constant([patch_size, patch_size, 0])       # (D_y, D_x, C)
    # argmin is 1 only when width < height: portrait; ties (square) give 0, landscape
    a, b, g = tf.unstack(tf.gather(tf.constant(_grid_table(num_patches)),
                                   tf.argmin(shape[:2], output_type=tf.int32)))
    return (a * slack + b) // g


def grid_offsets(height, width, num_patches: int, patch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-left (y, x) int32 [k] offsets of the evaluation grid on a (padded) height x width image,
    in raster order. height/width are the sizes *after* padding (each >= patch_size)."""
    shape = tf.stack([tf.convert_to_tensor(height, tf.int32),
                      tf.convert_to_tensor(width, tf.int32), 0])
    begins = _grid_begins(shape, num_patches, patch_size)
    return begins[:, 0], begins[:, 1]


def pad_to_min_size(image: tf.Tensor, min_size: int) -> tf.Tensor:
    """Zero-pads [H, W, C] symmetrically so that H, W >= min_size (no-op for large images)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    pad_h = tf.maximum(min_size - height, 0)
    pad_w = tf.maximum(min_size - width, 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
    return tf.pad(image, paddings)


def _random_begins(size: tf.Tensor, num_patches: int, patch_size: int,
                   seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """int32 [2, k] (y row, x row): k uniform top-left offsets (y in [0, H-P], x in [0, W-P]) on
    a (padded) image of ``size`` int32 [2] = (H, W), the training crops of
    :func:`extract_patches`.

    ``seed``: shape-[2] integer tensor for stateless sampling; None uses the stateful
    ``tf.random.uniform`` (repeatable only under ``tf.random.set_seed`` and a serial pipeline).
    """
    slack = size - patch_size
    if seed is None:
        unit = tf.random.uniform([2, num_patches], dtype=tf.float32)
    else:
        unit = tf.random.stateless_uniform([2, num_patches], seed=seed, dtype=tf.float32)
    # floor(u * (D + 1)) is uniform on {0..D}; the minimum guards against u * (D + 1) rounding up.
    span = tf.cast(slack + 1, tf.float32)[:, None]
    return tf.minimum(tf.cast(tf.floor(unit * span), tf.int32), slack[:, None])


def patch_slices(image: tf.Tensor, num_patches: int, patch_size: int, is_training: bool,
                 seed: Optional[tf.Tensor] = None, pad: bool = True) -> list[tf.Tensor]:
    """The k patches of :func:`extract_patches` as a list of k uint8 [P, P, 3] tensors, not yet
    stacked (the input pipeline stacks a whole batch of them at once)."""
    if num_patches < 1 or patch_size < 1:
        raise ValueError(f"need num_patches >= 1 and patch_size >= 1, "
                         f"got {num_patches} and {patch_size}")
    image = tf.convert_to_tensor(image)
    if pad:  # False only where every image is known to be large enough (see make_dataset)
        image = pad_to_min_size(image, patch_size)
    shape = tf.shape(image, out_type=tf.int32)
    if is_training:
        begins = tf.pad(tf.transpose(_random_begins(shape[:2], num_patches, patch_size, seed)),
                        [[0, 0], [0, 1]])
    else:
        begins = _grid_begins(shape, num_patches, patch_size)
    # k static slices (one op each; fewer ops than a gather, and per-op cost is what counts)
    begins = tf.unstack(begins, num=num_patches)
    return [tf.slice(image, begin, [patch_size, patch_size, -1]) for begin in begins]


def extract_patches(image: tf.Tensor, num_patches: int, patch_size: int, is_training: bool,
                    seed: Optional[tf.Tensor] = None, pad: bool = True) -> tf.Tensor:
    """Decoded uint8 [H, W, 3] (any H, W) -> uint8 [num_patches, P, P, 3].

    Training: uniform random crops (stateless from ``seed`` when given). Otherwise: the
    deterministic evaluation grid (:func:`grid_offsets`), also used by the serving export.
    Images smaller than P in a dimension are zero-padded first (:func:`pad_to_min_size`);
    ``pad=False`` skips that step for images known to be at least P on each side.
    """
    patches = tf.stack(patch_slices(image, num_patches, patch_size, is_training, seed, pad))
    return tf.ensure_shape(patches, [num_patches, patch_size, patch_size, 3])
