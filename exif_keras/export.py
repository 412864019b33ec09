r"""Export for TensorFlow Serving: python -m exif_keras.export --model_dir=runs/<field>
                                    [--export_dir=models/exif_<field>] [--version=N]
                                    [--max_pixels=64000000] [--interval=0.8]

Writes one SavedModel version folder (``<export_dir>/<version>``) that TensorFlow Serving loads
as it is, and rewrites ``models.config`` beside the model folders. What is written and why:
``exif_keras/serving/exporter.py``; the signature and its image checks:
``exif_keras/serving/signature.py``.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags

from exif_keras.common.images import DEFAULT_MAX_PIXELS
from exif_keras.serving import exporter

# allow_override on the names other commands define too (train, explain, predict, make_records):
# a run loads one command, but the tests import them all into one process, where the command
# imported last owns the name.
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Run folder of exif_keras.train (model_config.json, run_config.json, best.weights.h5).",
    allow_override=True)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Model folder that receives the version folders; default "
    "models/exif_<field>.", allow_override=True)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number to write (export) / load (predict); default: the next "
    "one (export), the latest (predict).", allow_override=True)
_SERVING_BASE_PATH = flags.DEFINE_string(
    "serving_base_path", exporter.DEFAULT_SERVING_BASE_PATH,
    "Where the models folder is mounted in the TensorFlow Serving container; models.config's "
    "base_path is <this>/<model name>.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", DEFAULT_MAX_PIXELS,
    "The served model refuses a photo whose header gives more pixels (width x height) than this, "
    "before decoding it (decompression bombs); make_records' default.", allow_override=True)
_EXPORT_PRECISION = flags.DEFINE_enum(
    "export_precision", "float32", list(exporter.EXPORT_PRECISIONS),
    "Compute precision of the exported model: float32 (serves anywhere) or bfloat16/float16 "
    "(mixed: float32 variables and outputs) for hardware that computes those faster.")

_INTERVAL = flags.DEFINE_float(
    "interval", None,
    "Fine heads: the coverage of the served intervals (<field>_low, <field>_high, "
    "exif_range_text), each the shortest run of classes holding a share of the calibrated "
    "probability. Default: the run's (train --interval, 0.8), served with the mass level per field "
    "that training fitted on the validation split to cover it; another value is used as the mass "
    "level itself. Recorded in assets.extra/exif_keras.json.", lower_bound=1e-6, upper_bound=1.0,
    allow_override=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _MODEL_DIR.value:
        print("export: error: --model_dir is required (e.g. --model_dir=runs/shutter)",
              file=sys.stderr)
        return 2
    try:
        path = exporter.export_model(_MODEL_DIR.value, _EXPORT_DIR.value, _VERSION.value,
                                     serving_base_path=_SERVING_BASE_PATH.value,
                                     max_pixels=_MAX_PIXELS.value,
                                     precision=_EXPORT_PRECISION.value,
                                     interval=_INTERVAL.value)
    except exporter.ExportError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported: {path}")
    models_dir = os.path.dirname(os.path.abspath(os.path.dirname(path)))
    print(f"models config: {os.path.join(models_dir, exporter.MODELS_CONFIG)}")
    return 0


if __name__ == "__main__":
    app.run(main)
