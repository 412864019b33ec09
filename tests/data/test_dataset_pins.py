"""Literal pins of the input pipeline's pixel-level decisions (dataset.py's docstring): the
evaluation grid of square images and JPEG decoding with libjpeg's accurate IDCT. Each test fails on
a plausible one-word regression that comparisons of two code paths with each other cannot see."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from exif_keras.data import patches


def test_square_images_get_the_landscape_grid():
    # 8 patches: 2 rows x 4 columns (portrait would be 4 x 2); slack 172 split 0, 57, 115, 172.
    y, x = patches.grid_offsets(300, 300, 8, 128)
    assert y.numpy().tolist() == [0, 0, 0, 0, 172, 172, 172, 172]
    assert x.numpy().tolist() == [0, 57, 115, 172, 0, 57, 115, 172]
    y, x = patches.grid_offsets(256, 256, 6, 128)   # 2 x 3
    assert y.numpy().tolist() == [0, 0, 0, 128, 128, 128]
    assert x.numpy().tolist() == [0, 64, 128, 0, 64, 128]
    # extract_patches takes the same grid: its second patch starts at (0, 57).
    image = tf.reshape(tf.range(300 * 300 * 3) % 251, [300, 300, 3])
    crops = patches.extract_patches(tf.cast(image, tf.uint8), 8, 128, is_training=False)
    np.testing.assert_array_equal(crops[1], tf.cast(image, tf.uint8)[0:128, 57:185])


def _photo_like_jpeg(subsampling: int) -> bytes:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:120, 0:160]
    array = np.stack([x * 255 // 160, y * 255 // 120, (3 * x + 2 * y) % 256], -1)
    array = np.clip(array + rng.integers(-25, 26, array.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90, subsampling=subsampling)
    return out.getvalue()


def test_decode_image_gives_pillows_pixels_exactly():
    """INTEGER_ACCURATE (libjpeg's ISLOW IDCT, Pillow's too) to the last bit; INTEGER_FAST (TF's
    default) changes most pixels by a few levels, where sensor noise lives."""
    for subsampling in (0, 2):   # 4:4:4 and 4:2:0 (fancy upsampling in both decoders)
        data = _photo_like_jpeg(subsampling)
        pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        decoded = patches.decode_image(tf.constant(data)).numpy()
        assert decoded.dtype == np.uint8 and decoded.shape == (120, 160, 3)
        np.testing.assert_array_equal(decoded, pillow)
        fast = patches.decode_image(tf.constant(data), dct_method="INTEGER_FAST").numpy()
        assert (fast != pillow).mean() > 0.1, "the test image must tell the two IDCTs apart"
    grey = io.BytesIO()
    Image.fromarray(pillow[..., 0]).save(grey, format="JPEG", quality=90)
    decoded = patches.decode_image(tf.constant(grey.getvalue())).numpy()
    np.testing.assert_array_equal(decoded, np.repeat(
        np.asarray(Image.open(io.BytesIO(grey.getvalue())))[..., None], 3, axis=-1))
