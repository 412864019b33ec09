r"""Training: python -m exif_keras.train --field=shutter [--flagfile=pipelines/paper_shutter.flags]

Reads the records of make_records, trains the paper's patch model for one EXIF field and task,
keeps the best checkpoint by validation accuracy, evaluates every split, writes metrics.json and a
confusion-matrix PNG, and exports the SavedModel for TensorFlow Serving.

Killed at any point, the same command resumes where it stopped (Keras' BackupAndRestore) and ends
with the same number of epochs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from exif_keras import dataset as data
from exif_keras import evaluation, labels
from exif_keras import figures
from exif_keras import model as model_lib

FIELDS = list(labels.FIELDS)

_FIELD = flags.DEFINE_enum("field", None, FIELDS, "EXIF field to estimate.")
_TASK = flags.DEFINE_enum("task", "binary", list(labels.TASKS),
                          "binary: the paper's two groups; fine: every class.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/records", "Records written by make_records.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run folder; default runs/<field>.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.", lower_bound=1)
_NUM_PATCHES = flags.DEFINE_integer("num_patches", 8, "Patches k per image.", lower_bound=1)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 128, "Patch side P in pixels.", lower_bound=8)
_BACKBONE = flags.DEFINE_enum("backbone", "vgg16", ["vgg16", "scratch"],
                              "vgg16: frozen ImageNet VGG16 trunk; scratch: trainable layers.")
_TRUNK_LAYER = flags.DEFINE_string("trunk_layer", "block3_conv3", "Last VGG16 layer of the trunk.")
_BACKBONE_WEIGHTS = flags.DEFINE_string(
    "backbone_weights", "imagenet",
    "imagenet (Keras download and cache), a path to vgg16_weights_tf_dim_ordering_tf_kernels_"
    "notop.h5, or none (random; for tests and benchmarks).")
_FILTERS = flags.DEFINE_integer("filters", 64, "Filters F of the four head convolutions.")
_SCRATCH_WIDTH = flags.DEFINE_integer(
    "scratch_width_divisor", 2, "The scratch backbone has VGG16's filters per layer divided by "
    "this (2: half as wide).", lower_bound=1)
_L2 = flags.DEFINE_float("l2", 1e-3, "L2 weight of the head's kernels.")
_BN_MOMENTUM = flags.DEFINE_float(
    "batchnorm_momentum", 0.99, "Momentum of the moving statistics of batch normalisation; 0.9 "
    "suits short runs, whose statistics would otherwise lag the weights at evaluation.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_LABEL_SMOOTHING = flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing (0 = one-hot).")
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "auto", ["auto", "vgg", "dataset"],
    "auto: VGG16's preprocessing for vgg16, the dataset's mean/std (manifest) for scratch.")
_PATCH_MODE = flags.DEFINE_enum("patch_mode", "folded", ["folded", "time_distributed"],
                                "How patches run through the per-patch network.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", ["auto", "on", "off"],
    "auto: mixed_float16 when a GPU is visible, float32 otherwise.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", ["auto", "mirrored", "default"],
    "auto: MirroredStrategy when several GPUs are visible.")
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices (to run MirroredStrategy "
    "without GPUs); 0 leaves it whole.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and patch sampling.")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 1024, "Examples in the shuffle buffer.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 0,
                                        "0: one pass over the training split per epoch.")
_EVAL_TRAIN = flags.DEFINE_boolean("eval_train", True,
                                   "Evaluate the training split too for the final table.")
_EXPORT = flags.DEFINE_boolean("export", True, "Export the SavedModel at the end.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Default models/exif_<field>.")
_VERBOSE = flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 bar, 2 line.")


class TrainError(Exception):
    """A problem the user can fix (bad flags, missing data): printed without a traceback."""


@dataclasses.dataclass
class TrainConfig:
    field: str
    task: str = "binary"
    data_dir: str = "data/records"
    model_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 32
    num_patches: int = 8
    patch_size: int = 128
    backbone: str = "vgg16"
    trunk_layer: str = "block3_conv3"
    backbone_weights: Optional[str] = "imagenet"
    filters: int = 64
    scratch_width_divisor: int = 2
    l2: float = 1e-3
    batchnorm_momentum: float = 0.99
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    normalization: str = "auto"
    patch_mode: str = "folded"
    mixed_precision: str = "auto"
    strategy: str = "auto"
    logical_cpus: int = 0
    seed: int = 0
    shuffle_buffer: int = 1024
    steps_per_epoch: int = 0
    eval_train: bool = True
    export: bool = True
    export_dir: Optional[str] = None
    verbose: int = 1

    def resolved_model_dir(self) -> str:
        return self.model_dir or os.path.join("runs", self.field)

    @classmethod
    def from_flags(cls) -> "TrainConfig":
        weights = _BACKBONE_WEIGHTS.value
        return cls(field=_FIELD.value, task=_TASK.value, data_dir=_DATA_DIR.value,
                   model_dir=_MODEL_DIR.value, epochs=_EPOCHS.value,
                   batch_size=_BATCH_SIZE.value, num_patches=_NUM_PATCHES.value,
                   patch_size=_PATCH_SIZE.value, backbone=_BACKBONE.value,
                   trunk_layer=_TRUNK_LAYER.value,
                   backbone_weights=None if weights.lower() in ("", "none") else weights,
                   filters=_FILTERS.value, scratch_width_divisor=_SCRATCH_WIDTH.value,
                   l2=_L2.value,
                   batchnorm_momentum=_BN_MOMENTUM.value, learning_rate=_LEARNING_RATE.value,
                   label_smoothing=_LABEL_SMOOTHING.value, normalization=_NORMALIZATION.value,
                   patch_mode=_PATCH_MODE.value, mixed_precision=_MIXED_PRECISION.value,
                   strategy=_STRATEGY.value, logical_cpus=_LOGICAL_CPUS.value, seed=_SEED.value,
                   shuffle_buffer=_SHUFFLE_BUFFER.value, steps_per_epoch=_STEPS_PER_EPOCH.value,
                   eval_train=_EVAL_TRAIN.value, export=_EXPORT.value,
                   export_dir=_EXPORT_DIR.value, verbose=_VERBOSE.value)


# Files in model_dir.
# model_lib.CONFIG_FILENAME (model_config.json): the ModelConfig, everything to rebuild the model
RUN_CONFIG = model_lib.RUN_CONFIG_FILENAME
BEST_WEIGHTS = model_lib.BEST_WEIGHTS_FILENAME
BACKUP_DIR = "backup"                # BackupAndRestore state (removed when training completes)
CSV_LOG = "training_log.csv"
METRICS = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
LOG_DIR = "logs"


def _configure_devices(config: TrainConfig):
    """Logical CPUs, mixed precision and the distribution strategy, before any model is built."""
    if config.logical_cpus > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.logical_cpus)
        except RuntimeError as e:
            raise TrainError(f"--logical_cpus must be set before TensorFlow starts: {e}") from e
    gpus = tf.config.list_physical_devices("GPU")
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpus)
    keras.config.set_dtype_policy("mixed_float16" if mixed else "float32")
    if config.strategy == "mirrored" or (config.strategy == "auto" and len(gpus) > 1):
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Devices: %d GPU(s); dtype policy %s; strategy %s with %d replica(s)",
                 len(gpus), keras.config.dtype_policy().name, type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy, bool(mixed)


def _best_so_far(csv_path: str) -> Optional[float]:
    """Best val_accuracy of the epochs already logged (so a resumed run keeps the true best)."""
    if not os.path.exists(csv_path):
        return None
    best = None
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row.get("val_accuracy", "nan"))
            except ValueError:
                continue
            if value == value and (best is None or value > best):
                best = value
    return best


def _trim_csv_log(csv_path: str, completed_epochs: int) -> None:
    """Drops rows of epochs that a killed run logged but BackupAndRestore will run again."""
    if not os.path.exists(csv_path):
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < completed_epochs]
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def _backup_epoch(backup_dir: str) -> int:
    """Epochs completed according to BackupAndRestore's state (0 when there is none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    try:
        with open(path) as f:
            return int(json.load(f).get("epoch", 0))  # Keras stores epochs completed
    except (OSError, ValueError):
        return 0


class ConfusionMatrixLogger(keras.callbacks.Callback):
    """The validation confusion matrix as a TensorBoard image every epoch."""

    def __init__(self, dataset, class_names, log_dir):
        super().__init__()
        self.dataset, self.class_names = dataset, class_names
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "confusion"))

    def on_epoch_end(self, epoch, logs=None):
        y, p = evaluation.predict_split(self.model, self.dataset)
        matrix = evaluation.confusion_matrix(y, p.argmax(-1), len(self.class_names))
        image = evaluation.render_confusion_matrix(matrix, self.class_names,
                                                   f"validation, epoch {epoch + 1}")
        with self.writer.as_default():
            tf.summary.image("confusion_matrix/validation", image[None], step=epoch)
        self.writer.flush()


def _model_config(config: TrainConfig, task: labels.TaskSpec, mean, std) -> model_lib.ModelConfig:
    return model_lib.ModelConfig(
        num_classes=task.num_classes, num_patches=config.num_patches,
        patch_size=config.patch_size, backbone=config.backbone, trunk_layer=config.trunk_layer,
        backbone_weights=config.backbone_weights, filters=config.filters, l2=config.l2,
        batchnorm_momentum=config.batchnorm_momentum,
        scratch_width_divisor=config.scratch_width_divisor,
        normalization=config.normalization, mean=tuple(mean), std=tuple(std),
        patch_mode=config.patch_mode)


def train(config: TrainConfig) -> dict:
    """Trains, evaluates and exports; returns the metrics written to metrics.json."""
    start = time.monotonic()
    if config.field not in labels.FIELDS:
        raise TrainError(f"--field must be one of {', '.join(labels.FIELDS)}")
    task = labels.task_spec(config.field, config.task)
    model_dir = config.resolved_model_dir()
    try:
        manifest = data.read_manifest(config.data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"{e}\nBuild the records first: python -m exif_keras.make_records "
                         f"--output_dir={config.data_dir}") from e
    counts = {split: data.count_examples(config.data_dir, split, config.field, config.task)
              for split in ("train", "validation", "test")}
    if counts["train"] == 0:
        raise TrainError(
            f"no training example in {config.data_dir} has a label for --field={config.field} "
            f"--task={config.task} (classes: {', '.join(task.class_names)}); per-split counts: "
            f"{counts}. Try --task=fine or another field.")
    if counts["validation"] == 0:
        logging.warning("No validation example for this task: the best checkpoint is the last.")

    keras.utils.set_random_seed(config.seed)
    strategy, mixed = _configure_devices(config)
    mean, std = data.dataset_mean_std(manifest)
    try:
        model_config = _model_config(config, task, mean, std)
    except ValueError as e:  # an impossible combination of flags (e.g. a patch too small)
        raise TrainError(str(e)) from e


    os.makedirs(model_dir, exist_ok=True)
    model_lib.save_config(model_config, model_dir)
    with open(os.path.join(model_dir, RUN_CONFIG), "w") as f:
        json.dump({"train": dataclasses.asdict(config), "task": task.to_json(),
                   "mixed_precision": mixed,
                   "data_manifest": os.path.abspath(os.path.join(config.data_dir, "manifest.json"))},
                  f, indent=2)

    # Several replicas cannot split a short last batch inside fit (Keras 3 fails on an empty
    # replica): there, training drops it (fewer than batch_size images per epoch, reshuffled each
    # time) and so does the per-epoch validation; the final evaluation sees every image.
    drop_last = strategy.num_replicas_in_sync > 1

    def make(split, training, in_fit=False):
        drop = drop_last and in_fit
        ds = data.make_dataset(
            config.data_dir, split, config.field, config.task, batch_size=config.batch_size,
            num_patches=config.num_patches, patch_size=config.patch_size, is_training=training,
            seed=config.seed, shuffle_buffer=config.shuffle_buffer, drop_remainder=drop)
        # The manifest knows the batch count: Keras then shows a true progress bar and does not
        # warn that the input "ran out of data" at the end of every epoch.
        batches = (counts[split] // config.batch_size if drop
                   else math.ceil(counts[split] / config.batch_size))
        return ds.apply(tf.data.experimental.assert_cardinality(batches))

    try:
        train_ds = make("train", True, in_fit=True)
    except ValueError as e:  # no shards for the split
        raise TrainError(str(e)) from e
    val_ds = make("validation", False, in_fit=True) if counts["validation"] else None
    if val_ds is not None and drop_last and counts["validation"] < config.batch_size:
        val_ds = None  # not one whole batch to validate on

    with strategy.scope():
        try:
            model = model_lib.build_model(model_config)
        except model_lib.BackboneWeightsError as e:
            raise TrainError(str(e)) from e
        model_lib.compile_model(model, learning_rate=config.learning_rate,
                                label_smoothing=config.label_smoothing)
    if config.verbose:
        model.summary(print_fn=lambda line, *a, **k: logging.info("%s", line))

    csv_path = os.path.join(model_dir, CSV_LOG)
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    best_path = os.path.join(model_dir, BEST_WEIGHTS)
    completed = _backup_epoch(backup_dir)
    if completed:
        logging.info("Resuming after epoch %d from %s", completed, backup_dir)
        _trim_csv_log(csv_path, completed)
    elif os.path.exists(csv_path):
        os.remove(csv_path)  # a finished or fresh run starts a new log
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    best = _best_so_far(csv_path) if completed else None
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True,
                                         delete_checkpoint=True),
        keras.callbacks.ModelCheckpoint(best_path, monitor=monitor, mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best),
        keras.callbacks.CSVLogger(csv_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(model_dir, LOG_DIR)),
    ]
    if val_ds is not None:
        callbacks.append(ConfusionMatrixLogger(val_ds, task.class_names,
                                               os.path.join(model_dir, LOG_DIR)))
    steps = config.steps_per_epoch or None
    fit_train = train_ds.repeat() if steps else train_ds
    model.fit(fit_train, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=steps,
              callbacks=callbacks, verbose=config.verbose, shuffle=False)

    if os.path.exists(best_path):
        model.load_weights(best_path)
    else:  # can only happen when every epoch was NaN
        model.save_weights(best_path)
    best_epoch, best_value = None, None
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                v = float(row.get(monitor, "nan") or "nan")
                if v == v and (best_value is None or v > best_value):
                    best_epoch, best_value = int(row["epoch"]) + 1, v

    splits = {"validation": make("validation", False) if counts["validation"] else None,
              "test": make("test", False) if counts["test"] else None}
    if config.eval_train:
        splits = {"train": make("train", False), **splits}
    results = {}
    for split, ds in splits.items():
        if ds is None:
            continue
        y, p = evaluation.predict_split(model, ds)
        matrix = evaluation.confusion_matrix(y, p.argmax(-1), task.num_classes)
        results[split] = {"accuracy": evaluation.accuracy(matrix),
                          "per_class_accuracy": evaluation.per_class_accuracy(matrix),
                          "confusion_matrix": matrix.tolist(), "count": int(matrix.sum())}

    test = results.get("test")
    if test is not None:
        image = evaluation.render_confusion_matrix(
            np.array(test["confusion_matrix"]), task.class_names,
            f"{config.field} ({config.task}), test split")
        evaluation.save_png(image, os.path.join(model_dir, CONFUSION_PNG))
        with tf.summary.create_file_writer(os.path.join(model_dir, LOG_DIR, "confusion")).as_default():
            tf.summary.image("confusion_matrix/test", image[None], step=config.epochs)

    metrics = {
        "field": config.field,
        "task": config.task,
        "class_names": list(task.class_names),
        "test_accuracy": test["accuracy"] if test else None,
        "val_accuracy": results.get("validation", {}).get("accuracy"),
        "train_accuracy": results.get("train", {}).get("accuracy"),
        "num_train": counts["train"],
        "num_val": counts["validation"],
        "num_test": counts["test"],
        "confusion_matrix": test["confusion_matrix"] if test else None,
        "per_class_accuracy": {s: r["per_class_accuracy"] for s, r in results.items()},
        "splits": results,
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        "wall_seconds": None,  # set below
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "backbone": config.backbone,
        "num_patches": config.num_patches,
        "patch_size": config.patch_size,
    }

    if config.export:
        from exif_keras import export

        export_dir = config.export_dir or os.path.join("models", f"exif_{config.field}")
        metrics["export_path"] = export.export_model(model_dir, export_dir, model=model)

    figures.training_curves(csv_path, os.path.join(model_dir, "training_curves.png"), model_dir)
    metrics["wall_seconds"] = round(time.monotonic() - start, 2)
    with open(os.path.join(model_dir, METRICS), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def summary(metrics: dict) -> str:
    """Accuracy per split and per class, as a table."""
    splits = [s for s in ("train", "validation", "test") if s in metrics["per_class_accuracy"]]
    rows = [["all"] + [metrics["splits"][s]["accuracy"] for s in splits]]
    for i, name in enumerate(metrics["class_names"]):
        rows.append([name] + [metrics["per_class_accuracy"][s][i] for s in splits])
    rows.append(["images"] + [metrics["splits"][s]["count"] for s in splits])
    return evaluation.format_table(rows, ["accuracy"] + splits)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = TrainConfig.from_flags()
    try:
        metrics = train(config)
    except TrainError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(metrics))
    print(f"test accuracy: {metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None
          else "test accuracy: n/a (no test example)")
    if metrics.get("export_path"):
        print(f"exported: {metrics['export_path']}")
    print(f"metrics: {os.path.join(config.resolved_model_dir(), METRICS)}")


if __name__ == "__main__":
    flags.mark_flag_as_required("field")
    app.run(main)
