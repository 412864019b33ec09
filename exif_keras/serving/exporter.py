r"""Export a training run for TensorFlow Serving: one SavedModel version folder, loaded as it is::

    models/
      models.config                     model_config_list naming every model under models/
      exif_shutter/
        1/
          saved_model.pb, variables/    signature "serving_default" (serving/signature.py)
          assets.extra/
            tf_serving_warmup_requests  TFRecord of PredictionLog protos (model warmup)
            exif_keras.json             field, task, class names, grouping, k, P, max_pixels,
                                        temperatures, interval

Decisions (the signature's own, preprocessing and the image checks: ``serving/signature.py``):

* **Keras 3's export path**: ``keras.export.ExportArchive`` with one endpoint named
  ``serving_default`` whose function returns a dict (dict keys become the signature's output
  names). The exported model is a fresh float32 copy of the trained one (same weights): an export
  does not depend on the training run's dtype policy (mixed_float16, mixed_bfloat16) or
  distribution strategy, and serves anywhere at full precision. ``--export_precision=bfloat16``
  (or ``float16``) exports the copy under ``mixed_bfloat16`` (``mixed_float16``) instead, for
  serving hardware that computes those faster; its inputs and outputs stay the same (float32
  probabilities), and ``assets.extra/exif_keras.json`` records the precision.
* **Calibrated probabilities.** The heads' temperatures (``calibration.json`` of the run folder,
  fitted on the validation split by train; T = 1 for a run without) are put into the graph by
  ``modeling.model.calibrated`` after the weights are loaded, so every served probability,
  estimate and interval is calibrated; exif_keras.json records them.
* **A version appears whole or not at all.** The SavedModel, its assets.extra and a check that the
  written model loads and answers its own warmup requests go into a hidden temporary folder beside
  the version folder (``.tmp-<version>-<random>``; TensorFlow Serving only loads folders named by a
  number), which is then renamed to ``<version>``. An existing version is never overwritten. A
  crash leaves at most such a ``.tmp-*`` folder, safe to delete. (Local file systems: renaming a
  folder is not atomic on object stores such as GCS.)
* **Versions**: ``--version`` defaults to one more than the largest numeric folder in the export
  dir (1 when there is none).
* **models.config** (beside the model folders, i.e. in the export dir's parent) is rewritten after
  every export: one ``config { name base_path model_platform }`` per folder that holds at least one
  complete version. ``base_path`` is the path *inside the serving container*, ``/models/<name>``
  by default (``--serving_base_path``), matching ``docker run -v "$PWD/models:/models"``; the file
  is generated, so hand edits are lost on the next export.
* **Warmup**: ``assets.extra/tf_serving_warmup_requests`` holds PredictRequests for a few small
  sample images (generated here with Pillow when ``warmup_images`` is not given): each image alone,
  then all of them in one batch, so that TensorFlow Serving traces and initialises the graph before
  the first real request. The records are TensorFlow Serving's own ``PredictionLog`` messages
  (``tensorflow_serving.apis``, from the ``tensorflow-serving-api`` package), and models.config is
  its ``ModelServerConfig`` written with protobuf's ``text_format``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import re
import uuid
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from exif_keras import __version__
from exif_keras.common import files, labels
from exif_keras.common.errors import ServingError
from exif_keras.common.images import DEFAULT_MAX_PIXELS
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import signature

ASSETS_EXTRA = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "exif_keras.json"
MODELS_CONFIG = "models.config"
DEFAULT_SERVING_BASE_PATH = "/models"
DEFAULT_INTERVAL = signature.DEFAULT_INTERVAL   # --interval: the served intervals' mass
MODEL_NAME_PREFIX = run_folder.MODEL_NAME_PREFIX
TMP_PREFIX = ".tmp-"

ImageSource = Union[bytes, str, os.PathLike]


class ExportError(ServingError):
    """A problem the user can fix (missing run folder, existing version): no traceback."""


# -------------------------------------------------------------------------------------- versions

def version_numbers(export_dir: str) -> list[int]:
    """Sorted numbers of the numeric subfolders (complete or not) of an export dir."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(export_dir)
                  if name.rstrip("/").isdigit())


def is_complete_version(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def next_version(export_dir: str) -> int:
    versions = version_numbers(export_dir)
    return versions[-1] + 1 if versions else 1


def latest_version_dir(export_dir: str) -> Optional[str]:
    """The highest-numbered complete version folder, or None."""
    for number in reversed(version_numbers(export_dir)):
        path = os.path.join(export_dir, str(number))
        if is_complete_version(path):
            return path
    return None


def default_export_dir(field) -> str:
    """models/exif_<fields>: exif_shutter, exif_shutter_iso, exif_all."""
    return os.path.join("models", MODEL_NAME_PREFIX + labels.fields_name(field))


# ------------------------------------------------------------------------------------ the model

EXPORT_PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16",
                     "float16": "mixed_float16"}  # --export_precision -> Keras dtype policy


def _serving_copy(model, config: model_lib.ModelConfig, precision: str = "float32"):
    """A model built from ``config`` (no weight download) holding ``model``'s weights, computing
    in ``precision`` (float32 unless asked; variables float32 always)."""
    import keras

    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"--export_precision must be one of {', '.join(EXPORT_PRECISIONS)}, "
                          f"got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(EXPORT_PRECISIONS[precision])
    try:
        copy = model_lib.build_model(dataclasses.replace(config, backbone_weights=None))
    finally:
        keras.config.set_dtype_policy(previous)
    if model is not None:
        try:
            copy.set_weights(model.get_weights())
        except ValueError as e:
            raise ExportError(f"the model to export does not match its {run_folder.MODEL_CONFIG}"
                              f": {e}") from e
    return copy


# ---------------------------------------------------------------------------------- warmup

def sample_images(patch_size: int, count: int = 3, seed: int = 0) -> list[bytes]:
    """Small JPEGs for warmup: landscape, portrait, smaller than a patch (then repeats)."""
    from PIL import Image

    p = int(patch_size)
    sizes = [(p + p // 2, 2 * p), (2 * p, p + p // 2), (max(p // 2, 1), max(p // 2 + 3, 1))]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([yy * 255 // max(height - 1, 1), xx * 255 // max(width - 1, 1),
                         np.full_like(yy, 40 * i % 256)], axis=-1)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        array = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def prediction_log(model_name: str, images: Sequence[bytes],
                   signature_name: str = signature.SIGNATURE_NAME
                   ) -> prediction_log_pb2.PredictionLog:
    """A ``PredictionLog`` holding one PredictRequest of ``images`` (input ``image_bytes``)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs[signature.INPUT_NAME].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name: str, images: Sequence[bytes]) -> list[bytes]:
    """Serialized PredictionLogs: each image alone, then all images in one batch."""
    batches = [[image] for image in images]
    if len(images) > 1:
        batches.append(list(images))
    return [prediction_log(model_name, batch).SerializeToString(deterministic=True)
            for batch in batches]


def write_warmup(path: str, records: Iterable[bytes]) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def read_warmup(path: str) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLogs of a warmup file."""
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def _read_images(images: Sequence[ImageSource]) -> list[bytes]:
    out = []
    for image in images:
        if isinstance(image, (bytes, bytearray)):
            out.append(bytes(image))
        else:
            with tf.io.gfile.GFile(os.fspath(image), "rb") as f:
                out.append(f.read())
    return out


# --------------------------------------------------------------------------------- models.config

MODELS_CONFIG_HEADER = ("# Written by exif_keras.export: every model folder under this directory.\n"
                        "# Regenerated on each export; base_path is the path inside the serving "
                        "container.\n")


def models_config(entries: Sequence[tuple[str, str]]) -> model_server_config_pb2.ModelServerConfig:
    """TensorFlow Serving's ModelServerConfig for (name, base_path) pairs."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in entries:
        config.model_config_list.config.add(name=name, base_path=base_path,
                                            model_platform="tensorflow")
    return config


def models_config_text(entries: Sequence[tuple[str, str]]) -> str:
    """:func:`models_config` in protobuf's text format (what ``--model_config_file`` reads)."""
    return MODELS_CONFIG_HEADER + text_format.MessageToString(models_config(entries))


def exported_models(models_dir: str) -> list[str]:
    """Sorted names of the subfolders of ``models_dir`` that hold a complete version."""
    if not tf.io.gfile.isdir(models_dir):
        return []
    names = []
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(models_dir)):
        path = os.path.join(models_dir, name)
        if (re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not name.startswith(".")
                and tf.io.gfile.isdir(path) and latest_version_dir(path)):
            names.append(name)
    return names


def write_models_config(models_dir: str,
                        serving_base_path: str = DEFAULT_SERVING_BASE_PATH) -> str:
    """Rewrites ``models_dir/models.config`` (atomically) naming every exported model."""
    base = serving_base_path.rstrip("/")
    entries = [(name, f"{base}/{name}") for name in exported_models(models_dir)]
    path = os.path.join(models_dir, MODELS_CONFIG)
    files.write_text_atomic(path, models_config_text(entries))
    return path


# ---------------------------------------------------------------------------------------- export

def export_model(model_dir: str, export_dir: Optional[str] = None, version: Optional[int] = None,
                 model=None, warmup_images: Optional[Sequence[ImageSource]] = None, *,
                 serving_base_path: str = DEFAULT_SERVING_BASE_PATH,
                 write_config: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                 precision: str = "float32", interval: Optional[float] = None) -> str:
    """Exports the run in ``model_dir`` as ``export_dir/<version>``; returns that folder's path.

    ``model``: the trained Keras model (its weights are exported); None rebuilds it from
    ``model_config.json`` (no backbone download) and loads ``best.weights.h5``.
    ``export_dir``: default ``models/exif_<field>``. ``version``: default the next number there.
    ``warmup_images``: encoded images (bytes) or paths for the warmup requests; default a few
    generated JPEGs. ``write_config``: rewrite ``models.config`` in the export dir's parent.
    ``max_pixels``: the served model refuses a photo whose header gives more pixels than this
    (InvalidArgument naming it) before decoding anything; recorded in exif_keras.json.
    ``precision``: the serving model's compute precision (EXPORT_PRECISIONS), float32 by default.
    ``interval``: the coverage promised by the served intervals of fine heads (``<field>_low``,
    ``<field>_high``, ``exif_range_text``; ``stops.tf_intervals``); None: the run's
    (calibration.json), else DEFAULT_INTERVAL. When it is the coverage the run's calibration
    fitted mass levels for, each field's intervals use its fitted level; otherwise (another
    coverage, or an older run) the level is the coverage itself, not checked on held-out photos.
    Both are recorded in exif_keras.json ("interval", "interval_masses").
    Raises ExportError for user errors (missing run, existing version).
    """
    import keras

    try:
        run = run_folder.read(model_dir, need_weights=model is None)
    except run_folder.RunFolderError as e:
        raise ExportError(str(e)) from e
    config, heads = run.config, run.heads
    export_dir = export_dir or default_export_dir([h.field for h in heads])
    if version is None:
        version = next_version(export_dir)
    elif int(version) < 1:
        raise ExportError(f"--version must be a positive integer, got {version}")
    version = int(version)
    if int(max_pixels) < 1:
        raise ExportError(f"--max_pixels must be a positive integer, got {max_pixels}")
    max_pixels = int(max_pixels)
    if interval is None:
        interval = run.interval if run.interval is not None else DEFAULT_INTERVAL
    if not 0.0 < float(interval) <= 1.0:
        raise ExportError(f"--interval must be in (0, 1], got {interval}")
    interval = float(interval)
    fitted = run.interval is not None and abs(run.interval - interval) < 1e-9
    masses = {h.field: float(run.interval_masses.get(h.field, interval) if fitted else interval)
              for h in heads if h.task == "fine"}
    final = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(final):
        raise ExportError(f"version {version} already exists: {final} (versions are never "
                          f"overwritten; omit --version to write version "
                          f"{next_version(export_dir)})")

    serving_model = _serving_copy(model, config, precision)
    if model is None:
        try:
            serving_model.load_weights(run.weights_path)
        except (ValueError, OSError) as e:
            raise ExportError(f"cannot load {run.weights_path}: {e}") from e
    # The heads' temperatures (calibration.json; none in older runs: T = 1) go into the graph.
    serving_model = model_lib.calibrated(serving_model, run.temperatures)
    images = _read_images(warmup_images) if warmup_images else sample_images(config.patch_size)

    archive = keras.export.ExportArchive()
    archive.track(serving_model)
    fn = archive.add_endpoint(
        signature.SIGNATURE_NAME,
        signature.make_serving_fn(serving_model, heads, config.num_patches, config.patch_size,
                                  max_pixels, masses or interval),
        input_signature=signature.input_signature())
    try:
        expected = fn(tf.constant(images))
    except tf.errors.InvalidArgumentError as e:
        raise ExportError(f"a warmup image cannot be served: {first_line(e.message)}") from e

    tf.io.gfile.makedirs(export_dir)
    tmp = os.path.join(export_dir, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, ASSETS_EXTRA)
        tf.io.gfile.makedirs(extra)
        write_warmup(os.path.join(extra, WARMUP_FILENAME), warmup_requests(run.model_name, images))
        metadata = {
            "format": 1,
            "model_name": run.model_name,
            "heads": [dict(h.to_json(), fine_class_names=list(
                labels.field_spec(h.field).class_names),
                **({"train_class_counts": run.train_class_counts[h.name]}
                   if h.name in run.train_class_counts else {})) for h in heads],
            "num_patches": config.num_patches,
            "patch_size": config.patch_size,
            "max_pixels": max_pixels,
            "precision": precision,
            # calibration.json's temperatures (T = 1 for heads without) and the served
            # intervals' probability mass (fine heads)
            "temperatures": {h.name: float(run.temperatures.get(h.name, 1.0))
                             for h in heads if h.task != "regression"},
            "interval": interval,
            "interval_masses": masses,
            "signature": {"name": signature.SIGNATURE_NAME, "input": signature.INPUT_NAME,
                          "outputs": sorted(expected)},
            "version": version,
            "model_config": dataclasses.asdict(config),
            "source_model_dir": os.path.abspath(model_dir) if "://" not in model_dir
            else model_dir,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "exif_keras_version": __version__,
        }
        files.write_json_atomic(os.path.join(extra, METADATA_FILENAME), metadata)
        _verify(tmp, images, expected)
        if tf.io.gfile.exists(final):  # another export took this number meanwhile
            raise ExportError(f"version {version} appeared in {export_dir} during the export")
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    if write_config:
        write_models_config(os.path.dirname(os.path.abspath(export_dir))
                            if "://" not in export_dir else os.path.dirname(export_dir.rstrip("/")),
                            serving_base_path)
    return final


_NOISE = re.compile(r"^(Graph execution error:|Detected at node |<stack traces unavailable>|\[\[|"
                    r"File \".*\", line \d+)")   # the last: the traceback of "Detected at node"


def first_line(message: str) -> str:
    """The reason in a TensorFlow error message, without the graph/op context: e.g.
    ``image_bytes[1] is not a JPEG or PNG image`` or ``jpeg::Uncompress failed. Invalid JPEG data
    or crop window.``"""
    for line in (message or "").splitlines():
        line = line.strip()
        if not line or _NOISE.match(line):
            continue
        line = re.sub(r"\s*\[\[\{\{.*$|\s*\[Op:[^\]]*\]$", "", line)
        line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
        return re.sub(r"^assertion failed: \[(.*)\]$", r"\1", line)
    return (message or "").strip()


def _verify(path: str, images: Sequence[bytes], expected: Mapping[str, tf.Tensor]) -> None:
    """Loads the written SavedModel and checks its answers to the warmup images."""
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures[signature.SIGNATURE_NAME]
    got = serve(**{signature.INPUT_NAME: tf.constant(images)})
    if sorted(got) != sorted(expected):
        raise RuntimeError(f"exported signature has outputs {sorted(got)}, "
                           f"expected {sorted(expected)}")
    for name, value in expected.items():
        if value.dtype.is_floating:
            np.testing.assert_allclose(got[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=name)


