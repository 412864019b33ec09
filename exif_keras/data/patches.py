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
    dct_method = DCT_METHOD if dct_method is None else dct_method

    def _jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)

    def _other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), _jpeg, _other)
    image.set_shape([None, None, 3])
    return image


# -------------------------------------------------------------------------------------- patches

def grid_shape(num_patches: int) -> tuple[int, int]:
    """(short side count, long side count) of the evaluation grid: the most square factorisation."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    short = max(d for d in range(1, math.isqrt(num_patches) + 1) if num_patches % d == 0)
    return short, num_patches // short


@functools.lru_cache(maxsize=None)
def _grid_tables(num_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Constants of the evaluation grid for k patches, computed once so that the graph does the
    least work per image (tf.data's cost grows with the number of ops per element):
    int32 [2 orientations, 2 (index i along the axis, gap count max(n - 1, 1)), 2 axes, k] and
    bool [2 orientations, 2 axes, k] (patch in the first half of its axis). Orientation 0 is
    landscape (fewer rows than columns), 1 portrait."""
    short, long = grid_shape(num_patches)
    counts = np.zeros([2, 2, 2, num_patches], np.int32)
    first_half = np.zeros([2, 2, num_patches], bool)
    for orientation, (rows, cols) in enumerate(((short, long), (long, short))):
        for axis, (index, n) in enumerate(((np.repeat(np.arange(rows), cols), rows),
                                           (np.tile(np.arange(cols), rows), cols))):
            counts[orientation, 0, axis] = index
            counts[orientation, 1, axis] = max(n - 1, 1)
            first_half[orientation, axis] = 2 * index <= n - 1
    return counts, first_half


def _grid_offsets(height: tf.Tensor, width: tf.Tensor, num_patches: int,
                  patch_size: int) -> tf.Tensor:
    """int32 [2, k] (y row, x row) offsets of the evaluation grid, see :func:`grid_offsets`."""
    counts, first_half = _grid_tables(num_patches)
    orientation = tf.cast(width < height, tf.int32)
    index, gaps = tf.unstack(tf.gather(tf.constant(counts), orientation))
    slack = tf.stack([height - patch_size, width - patch_size])[:, None]   # [2, 1]
    if num_patches == 1:  # the centre crop
        return slack // 2
    # Along an axis of slack D with n patches: floor(i D / (n - 1)) in the first half, mirrored
    # D - floor((n - 1 - i) D / (n - 1)) in the second, floor(D / 2) for a lone patch.
    first = (index * slack) // gaps
    mirrored = slack - ((gaps - index) * slack) // gaps
    offsets = tf.where(tf.gather(tf.constant(first_half), orientation), first, mirrored)
    short, _ = grid_shape(num_patches)
    if short == 1:  # a 1 x k strip (prime k): its single row (landscape) or column is centred
        lone = tf.gather(tf.constant([[[True], [False]], [[False], [True]]]), orientation)
        offsets = tf.where(lone, slack // 2, offsets)
    return offsets


def grid_offsets(height, width, num_patches: int, patch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-left (y, x) int32 [k] offsets of the evaluation grid on a (padded) height x width image,
    in raster order. height/width are the sizes *after* padding (each >= patch_size)."""
    offsets = _grid_offsets(tf.convert_to_tensor(height, tf.int32),
                            tf.convert_to_tensor(width, tf.int32), num_patches, patch_size)
    return offsets[0], offsets[1]


def pad_to_min_size(image: tf.Tensor, min_size: int) -> tf.Tensor:
    """Zero-pads [H, W, C] symmetrically so that H, W >= min_size (no-op for large images)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    pad_h = tf.maximum(min_size - height, 0)
    pad_w = tf.maximum(min_size - width, 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
    return tf.pad(image, paddings)


def _random_offsets(height, width, num_patches: int, patch_size: int,
                    seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """int32 [2, k] (y row, x row): k uniform top-left offsets (y in [0, H-P], x in [0, W-P]) on
    a (padded) image, the training crops of :func:`extract_patches`.

    ``seed``: shape-[2] integer tensor for stateless sampling; None uses the stateful
    ``tf.random.uniform`` (repeatable only under ``tf.random.set_seed`` and a serial pipeline).
    """
    slack = tf.stack([tf.convert_to_tensor(height, tf.int32) - patch_size,
                      tf.convert_to_tensor(width, tf.int32) - patch_size])
    if seed is None:
        unit = tf.random.uniform([2, num_patches], dtype=tf.float32)
    else:
        unit = tf.random.stateless_uniform([2, num_patches], seed=seed, dtype=tf.float32)
    # floor(u * (D + 1)) is uniform on {0..D}; the minimum guards against u * (D + 1) rounding up.
    span = tf.cast(slack + 1, tf.float32)[:, None]
    return tf.minimum(tf.cast(tf.floor(unit * span), tf.int32), slack[:, None])


def extract_patches(image: tf.Tensor, num_patches: int, patch_size: int, is_training: bool,
                    seed: Optional[tf.Tensor] = None, pad: bool = True) -> tf.Tensor:
    """Decoded uint8 [H, W, 3] (any H, W) -> uint8 [num_patches, P, P, 3].

    Training: uniform random crops (stateless from ``seed`` when given). Otherwise: the
    deterministic evaluation grid (:func:`grid_offsets`), also used by the serving export.
    Images smaller than P in a dimension are zero-padded first (:func:`pad_to_min_size`);
    ``pad=False`` skips that step for images known to be at least P on each side.
    """
    if num_patches < 1 or patch_size < 1:
        raise ValueError(f"need num_patches >= 1 and patch_size >= 1, "
                         f"got {num_patches} and {patch_size}")
    image = tf.convert_to_tensor(image)
    if pad:  # False only where every image is known to be large enough (see make_dataset)
        image = pad_to_min_size(image, patch_size)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    if is_training:
        offsets = _random_offsets(height, width, num_patches, patch_size, seed)
    else:
        offsets = _grid_offsets(height, width, num_patches, patch_size)
    # k static slices (one op each; fewer ops than a gather, and tf.data map cost is per op)
    begins = tf.unstack(tf.pad(tf.transpose(offsets), [[0, 0], [0, 1]]), num=num_patches)
    patches = tf.stack([tf.slice(image, begin, [patch_size, patch_size, -1]) for begin in begins])
    return tf.ensure_shape(patches, [num_patches, patch_size, patch_size, 3])
