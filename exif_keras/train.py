r"""Training: python -m exif_keras.train --field=shutter [--flagfile=pipelines/paper_shutter.flags]

Reads the records of make_records, trains the paper's patch model for one EXIF field (or several:
``--field=shutter,iso`` / ``--field=all``, one head per field on a shared trunk) and task, keeps
the best checkpoint by validation accuracy (the mean over heads), evaluates every split, writes
metrics.json and confusion-matrix PNGs, and exports the SavedModel for TensorFlow Serving.

Killed at any point, the same command resumes where it stopped and ends where an uninterrupted
run does: inside fit from the last completed epoch (Keras' BackupAndRestore; every epoch's data
order and crops are a function of (seed, epoch), see dataset.make_dataset), after fit straight to
evaluation and export. Run again once finished, it says so and prints the metrics (exporting only
if the run has no export yet); ``--retrain`` starts over.

The flags are generated from the training configuration (``exif_keras/training/config.py``), the
loop is ``exif_keras/training/trainer.py``; this command parses, trains, exports and prints.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags

from exif_keras.common import labels
from exif_keras.modeling import run_folder
from exif_keras.training import config as config_lib
from exif_keras.training import trainer

config_lib.define_flags()
flags.adopt_module_key_flags(config_lib)


def export_run(config: config_lib.TrainConfig, model_dir: str, model=None) -> str:
    """The end-of-training export (trainer.train's export_fn): the run's SavedModel in
    --export_dir (default models/exif_<fields>)."""
    from exif_keras.serving import exporter

    export_dir = config.runtime.export_dir or os.path.join(
        "models", run_folder.MODEL_NAME_PREFIX + labels.fields_name(config.field))
    return exporter.export_model(model_dir, export_dir, model=model,
                                 interval=config.calibration.interval)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_lib.TrainConfig.from_flags()
    except config_lib.FlagFormatError as e:
        raise app.UsageError(str(e)) from e
    except ValueError as e:  # a value the configuration refuses (e.g. --trunk_layer)
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        metrics = trainer.train(config, export_fn=export_run)
    except trainer.TrainError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)
    model_dir = config.resolved_model_dir()
    if not metrics.get("chief", True):
        print(f"worker done; the chief writes the metrics and the export ({model_dir})")
        return
    if metrics.get("already_finished"):
        print(f"{model_dir} holds a finished run; its metrics follow (--retrain starts over).")
    print(trainer.summary(metrics))
    print(f"test accuracy: {metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None
          else "test accuracy: n/a (no test example)")
    if metrics.get("export_path"):
        print(f"exported: {metrics['export_path']}")
    print(f"metrics: {os.path.join(model_dir, run_folder.METRICS)}")


if __name__ == "__main__":
    flags.mark_flag_as_required("field")
    app.run(main)
