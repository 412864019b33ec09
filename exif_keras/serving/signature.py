r"""The serving graph: what TensorFlow Serving runs for one request, graph ops only.

Signature ``serving_default`` (method ``tensorflow/serving/predict``)::

    inputs:  image_bytes    DT_STRING  [-1]      encoded JPEG (PNG accepted too)
    outputs: probabilities  DT_FLOAT   [-1, R]   softmax over the task's classes
             class_ids      DT_INT64   [-1]      argmax
             class_names    DT_STRING  [-1]      e.g. "fast: 1/250 s or shorter"

(a single binary head; every other model names its outputs per head and adds the estimates,
see :func:`make_serving_fn`).

Decisions:

* **Preprocessing is the evaluation's, in the graph.** Each image is decoded on the CPU with
  :func:`exif_keras.data.patches.decode_image` and cut into the k patches of the deterministic grid
  with :func:`exif_keras.data.patches.extract_patches` (``is_training=False``; images smaller than a
  patch are zero-padded); normalisation is inside the Keras model. The same bytes give the same
  numbers as ``model(extract_patches(decode_image(bytes)))`` (tested), and an image's result does
  not depend on the other images of its batch (BatchNorm runs on its moving statistics).
* **Bad bytes fail the request, not the server.** Every element must start with the JPEG (FF D8 FF)
  or PNG signature; otherwise the request fails with InvalidArgument ``image_bytes[i] is not a JPEG
  or PNG image``. Bytes with a valid signature that do not decode (truncated, corrupt) fail with the
  decoder's InvalidArgument. Either way the loaded model serves the next request. The graph holds
  no Python op (``tf.py_function`` etc.): TensorFlow Serving cannot run them.
* **Bounded decoding.** Before anything is decoded, each image's width and height are read from
  its header (JPEG: ``tf.image.extract_jpeg_shape``, libjpeg's header parser, the one the decoder
  uses; PNG: the IHDR's big-endian width and height at bytes 16..24), and a request holding an
  image of more than ``--max_pixels`` pixels (default: make_records' ``--max_pixels``, recorded in
  exif_keras.json) fails with InvalidArgument ``image_bytes[i] has 20000x20000 = 400000000
  pixels, over the limit of 64000000 pixels (export --max_pixels)``. A header-only decompression
  bomb (a few hundred bytes claiming 20000x20000) so costs a header parse, not gigabytes.
* **The estimates are** :func:`exif_keras.common.stops.tf_estimates`, the one graph version of the
  probability-weighted mean in stops and its camera notation; **the intervals**
  :func:`exif_keras.common.stops.tf_intervals`, the graph twin of ``stops.interval_classes``.
  The probabilities are the model's, calibrated inside it (``modeling.model.calibrated``).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.common.images import DEFAULT_MAX_PIXELS, JPEG_MAGIC, PNG_MAGIC
from exif_keras.data import patches

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image_bytes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS_IDS = "class_ids"
OUTPUT_CLASS_NAMES = "class_names"
OUTPUT_STOPS = "stops"            # a regression head's output (``<field>_stops``)
OUTPUT_EXIF_TEXT = "exif_text"    # the estimates as cameras write them
OUTPUT_LOW = "low"                # a fine head's interval, ``<field>_low`` .. ``<field>_high``
OUTPUT_HIGH = "high"
OUTPUT_EXIF_RANGE_TEXT = "exif_range_text"   # the intervals as camera values
DEFAULT_INTERVAL = stops.DEFAULT_INTERVAL    # the intervals' probability mass (export --interval)

NOT_AN_IMAGE = "not a JPEG or PNG image"   # the served error: "image_bytes[i] is " + this
# Why a photo over the pixel limit is refused: width, height, pixels, limit (str.format and
# tf.strings.format alike); the served model's error is "image_bytes[i] has " + this.
TOO_MANY_PIXELS = "{}x{} = {} pixels, over the limit of {} pixels (export --max_pixels)"


# ----------------------------------------------------------------------------- the image checks

def check_image_bytes(image_bytes: tf.Tensor) -> tf.Operation:
    """Assert op: every element starts with the JPEG or PNG signature. Fails with InvalidArgument
    ``image_bytes[i] is not a JPEG or PNG image`` (i: the first bad element)."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_MAGIC)), PNG_MAGIC)
    ok = tf.logical_or(is_jpeg, is_png)
    index = tf.range(tf.size(ok, out_type=tf.int64), dtype=tf.int64)
    first_bad = tf.reduce_min(tf.where(ok, tf.int64.max, index))
    message = tf.strings.format(INPUT_NAME + "[{}] is " + NOT_AN_IMAGE, first_bad)
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def _png_size(encoded: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] from a PNG's IHDR (big-endian width, height at bytes 16..24); zeros
    when the bytes are too short (the decoder then rejects them)."""
    header = tf.strings.substr(tf.strings.join([encoded, b"\0" * 24]), 16, 8)
    octets = tf.reshape(tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64), [2, 4])
    width, height = tf.unstack(tf.reduce_sum(octets * [2 ** 24, 2 ** 16, 2 ** 8, 1], axis=1))
    return tf.stack([height, width])


def image_sizes(image_bytes: tf.Tensor) -> tf.Tensor:
    """[N] JPEG or PNG bytes -> int64 [N, 2] (height, width) read from the headers, without
    decoding: ``tf.image.extract_jpeg_shape`` (libjpeg's header parser, the one the decoder uses)
    or the PNG's IHDR. A JPEG whose header does not parse fails with the decoder's
    InvalidArgument."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def _one(encoded):
        return tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64),
            lambda: _png_size(encoded))

    return tf.map_fn(_one, image_bytes, fn_output_signature=tf.TensorSpec([2], tf.int64))


def check_pixels(sizes: tf.Tensor, max_pixels: int) -> tf.Operation:
    """Assert op: no image has more than ``max_pixels`` pixels. Fails with InvalidArgument
    ``image_bytes[i] has WxH = n pixels, over the limit of m pixels (export --max_pixels)`` (i:
    the first such image)."""
    sizes = tf.convert_to_tensor(sizes, tf.int64)
    # float64 is exact below 2**53; anything that large is far over any limit anyway.
    pixels = tf.reduce_prod(tf.cast(sizes, tf.float64), axis=1)
    over = pixels > float(max_pixels)
    count = tf.size(over, out_type=tf.int64)
    first = tf.minimum(tf.reduce_min(tf.where(over, tf.range(count, dtype=tf.int64), count)),
                       count)   # count (a row of zeros below) when none is over, or no image
    height, width = tf.unstack(tf.gather(tf.concat([sizes, tf.zeros([1, 2], tf.int64)], 0), first))
    message = tf.strings.format(INPUT_NAME + "[{}] has " + TOO_MANY_PIXELS, (
        first, width, height, height * width, tf.constant(max_pixels, tf.int64)))
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(over)), [message])


# ------------------------------------------------------------------------------- the signature

def preprocess(image_bytes: tf.Tensor, num_patches: int, patch_size: int,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """[N] encoded images -> uint8 [N, k, P, P, 3] as in evaluation, computed on the CPU.

    Before anything is decoded: every element must be a JPEG or PNG (:func:`check_image_bytes`)
    whose header gives at most ``max_pixels`` pixels (:func:`check_pixels`)."""
    with tf.device("/cpu:0"):
        image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
        with tf.control_dependencies([check_image_bytes(image_bytes)]):
            image_bytes = tf.identity(image_bytes)
        with tf.control_dependencies([check_pixels(image_sizes(image_bytes), max_pixels)]):
            image_bytes = tf.identity(image_bytes)

        def _one(encoded):
            image = patches.decode_image(encoded)
            return patches.extract_patches(image, num_patches, patch_size, is_training=False)

        return tf.map_fn(_one, image_bytes, fn_output_signature=tf.TensorSpec(
            [num_patches, patch_size, patch_size, 3], tf.uint8))


def plain_signature(heads: Sequence[labels.TaskSpec]) -> bool:
    """A single binary head keeps the first signature: probabilities, class_ids, class_names.
    Every other model names its outputs per head and adds the estimates (see module doc)."""
    return len(heads) == 1 and heads[0].task == "binary"


def make_serving_fn(model, heads: Sequence[labels.TaskSpec], num_patches: int, patch_size: int,
                    max_pixels: int = DEFAULT_MAX_PIXELS, interval=DEFAULT_INTERVAL):
    """fn(image_bytes [N] string) -> dict of outputs (graph ops only):

    * a single binary head: ``probabilities``, ``class_ids``, ``class_names``;
    * otherwise, per classification head ``<field>_probabilities``, ``<field>_class_ids``,
      ``<field>_class_names``, per regression head ``<field>_stops``, and for every fine or
      regression head the estimate as cameras write it: ``exposure_time`` (seconds),
      ``f_number``, ``iso`` and ``exif_text`` (e.g. "1/125 s, f/5.6, ISO 400"), from the
      probability-weighted mean over the classes in stops (:func:`stops.tf_estimates`);
    * per fine head its interval, the shortest run of classes holding ``interval`` (one mass
      level, or {field: level}: the levels calibration fitted) of the (calibrated) probability: ``<field>_low`` and ``<field>_high`` (float32, the field's units,
      at the class edges) and, for them all, ``exif_range_text`` (``1/250-1/30 s, f/4-8, ISO
      200-800``; :func:`stops.tf_intervals`). The other outputs are unchanged by it."""
    plain = plain_signature(heads)

    def serving_default(image_bytes):
        crops = preprocess(image_bytes, num_patches, patch_size, max_pixels)
        # An empty batch gets empty outputs: BatchNorm's CPU kernels reject a batch of 0, so it
        # runs one all-zero image (only then) whose result is dropped.
        count = tf.shape(crops)[0]
        padding = tf.zeros(tf.stack([tf.maximum(1 - count, 0), num_patches, patch_size,
                                     patch_size, 3]), tf.uint8)
        raw = model(tf.concat([crops, padding], axis=0), training=False)
        outputs, probabilities, known_stops = {}, {}, {}
        for head in heads:
            value = tf.cast(raw[head.name], tf.float32)[:count]
            prefix = "" if plain else f"{head.name}_"
            if head.task == "regression":
                outputs[prefix + OUTPUT_STOPS] = value
                known_stops[head.field] = value
                continue
            class_ids = tf.argmax(value, axis=-1, output_type=tf.int64)
            outputs[prefix + OUTPUT_PROBABILITIES] = value
            outputs[prefix + OUTPUT_CLASS_IDS] = class_ids
            outputs[prefix + OUTPUT_CLASS_NAMES] = tf.gather(
                tf.constant(list(head.class_names), tf.string), class_ids)
            if head.task == "fine":
                probabilities[head.field] = value
        if probabilities or known_stops:
            outputs.update(stops.tf_estimates(probabilities, known_stops))
        if probabilities:
            outputs.update(stops.tf_intervals(probabilities, interval))
        return outputs

    return serving_default


def input_signature() -> list:
    return [tf.TensorSpec([None], tf.string, name=INPUT_NAME)]
