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
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from exif_keras.data import pipeline as data
from exif_keras.training import devices as devices_lib
from exif_keras.training import evaluation
from exif_keras.common import labels
from exif_keras.common import figures
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder

FIELDS = list(labels.FIELDS)

_FIELD = flags.DEFINE_string(
    "field", None, f"EXIF field(s) to estimate: one of {', '.join(FIELDS)}, a comma list, or "
    f"{labels.ALL_FIELDS!r} (one model, one head per field).")
flags.register_validator("field", lambda v: v is None or _valid_fields(v),
                         f"--field must be one of {', '.join(FIELDS)}, a comma list of them, or "
                         f"{labels.ALL_FIELDS!r}")
_TASK = flags.DEFINE_enum("task", "binary", list(labels.TASKS),
                          "binary: the paper's two groups; fine: every class; regression: the "
                          "value in stops (the paper's section 4 baseline).")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/records", "Records written by make_records.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run folder; default runs/<field>.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.", lower_bound=1)
_NUM_PATCHES = flags.DEFINE_integer("num_patches", 8, "Patches k per image.", lower_bound=1)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 128, "Patch side P in pixels.", lower_bound=8)
_BACKBONE = flags.DEFINE_enum("backbone", "vgg16", list(model_lib.BACKBONES),
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
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", "constant", list(model_lib.LR_SCHEDULES),
    "constant: --learning_rate throughout; cosine: Keras' CosineDecay from --learning_rate to 0 "
    "over the run's --epochs (steps counted by the optimizer, so a resumed run continues it).")
_LABEL_SMOOTHING = flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing (0 = one-hot).")
_ORDINAL_SIGMA = flags.DEFINE_float(
    "ordinal_sigma", 0.0, "Fine tasks: spread the target over neighbouring classes, a discretised "
    "Gaussian of this std in classes (stops), so a near miss costs less than a far one; 0 is "
    "plain cross-entropy.", lower_bound=0.0)
_FIELD_WEIGHTS = flags.DEFINE_list(
    "field_weights", [], "Loss weight per field of a joint model, e.g. shutter=1,iso=0.5 "
    "(default 1 each).")
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "auto", list(model_lib.NORMALIZATIONS),
    "auto: VGG16's preprocessing for vgg16, the dataset's mean/std (manifest) for scratch.")
_PATCH_MODE = flags.DEFINE_enum("patch_mode", "folded", list(model_lib.PATCH_MODES),
                                "How patches run through the per-patch network.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(devices_lib.PRECISIONS),
    "off: float32; float16 (alias on): mixed_float16; bfloat16: mixed_bfloat16; auto: bfloat16 "
    "on TPUs and GPUs of compute capability 8.0+, float16 on older GPUs, float32 on CPUs.")
_CPU_BFLOAT16 = flags.DEFINE_boolean(
    "cpu_bfloat16", False, "With --mixed_precision=auto and no GPU or TPU: mixed_bfloat16 when "
    "the CPU computes bfloat16 natively (it lists AVX512-BF16 or AMX), float32 otherwise.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", list(devices_lib.STRATEGIES),
    "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG; mirrored: MirroredStrategy; auto: "
    "multi_worker when TF_CONFIG names several tasks, mirrored with several GPUs, else none.")
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices (to run MirroredStrategy "
    "without GPUs); 0 leaves it whole.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and patch sampling.")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 1024, "Examples in the shuffle buffer.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 0,
                                        "0: one pass over the training split per epoch.")
_EVAL_TRAIN = flags.DEFINE_boolean("eval_train", True,
                                   "Evaluate the training split too for the final table.")
_VERIFY_RECORDS = flags.DEFINE_boolean(
    "verify_records", False, "Also check every shard's sha256 against manifest.json before "
    "training (a full read); the record counts are always checked.")
_RETRAIN = flags.DEFINE_boolean(
    "retrain", False, "Start over even if model_dir holds a finished or interrupted run.")
_EXPORT = flags.DEFINE_boolean("export", True, "Export the SavedModel at the end.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Default models/exif_<field>.")
_VERBOSE = flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 bar, 2 line.")


def _valid_fields(value: str) -> bool:
    try:
        labels.parse_fields(value)
    except ValueError:
        return False
    return True


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
    lr_schedule: str = "constant"
    label_smoothing: float = 0.0
    ordinal_sigma: float = 0.0
    field_weights: Optional[dict] = None  # {field: loss weight}; default 1 each
    normalization: str = "auto"
    patch_mode: str = "folded"
    mixed_precision: str = "auto"
    cpu_bfloat16: bool = False
    strategy: str = "auto"
    logical_cpus: int = 0
    seed: int = 0
    shuffle_buffer: int = 1024
    steps_per_epoch: int = 0
    eval_train: bool = True
    verify_records: bool = False
    retrain: bool = False
    export: bool = True
    export_dir: Optional[str] = None
    verbose: int = 1

    def heads(self) -> tuple[labels.TaskSpec, ...]:
        """One TaskSpec per field of --field: the model's outputs."""
        return labels.task_specs(self.field, self.task)

    def resolved_model_dir(self) -> str:
        return self.model_dir or os.path.join("runs", labels.fields_name(self.field))

    @classmethod
    def from_flags(cls) -> "TrainConfig":
        """The config from the parsed flags: every field of TrainConfig is the flag of its name
        (so a hyperparameter is declared twice, flag and field, and copied nowhere)."""
        values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(cls)}
        weights = values["backbone_weights"]
        values["backbone_weights"] = None if weights.lower() in ("", "none") else weights
        values["field_weights"] = _parse_weights(values["field_weights"])
        return cls(**values)


def _parse_weights(items: Sequence[str]) -> Optional[dict]:
    """["shutter=1", "iso=0.5"] -> {"shutter": 1.0, "iso": 0.5}."""
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise app.UsageError(f"--field_weights wants field=weight items, got {item!r}")
    return weights or None


# Files in model_dir.
# model_lib.CONFIG_FILENAME (model_config.json): the ModelConfig, everything to rebuild the model
RUN_CONFIG = run_folder.RUN_CONFIG
BEST_WEIGHTS = run_folder.BEST_WEIGHTS
BACKUP_DIR = "backup"                # BackupAndRestore state (removed once fit is complete)
FIT_COMPLETE = "fit_complete.json"   # written when fit ends: a rerun goes straight to evaluation
CSV_LOG = "training_log.csv"
METRICS = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
TRAINING_CURVES_PNG = "training_curves.png"
LOG_DIR = "logs"


def _configure_devices(config: TrainConfig) -> devices_lib.Devices:
    """Logical CPUs, dtype policy and distribution strategy, before any model is built."""
    try:
        return devices_lib.setup(config.mixed_precision, config.strategy, config.logical_cpus,
                                 cpu_bfloat16=config.cpu_bfloat16)
    except devices_lib.DeviceError as e:
        raise TrainError(str(e)) from e


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
    """Each classification head's validation confusion matrix as a TensorBoard image, per epoch."""

    def __init__(self, dataset, heads: Sequence[labels.TaskSpec], log_dir):
        super().__init__()
        self.dataset, self.heads = dataset, [h for h in heads if h.task != "regression"]
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "confusion"))

    def on_epoch_end(self, epoch, logs=None):
        y, p = evaluation.predict_split(self.model, self.dataset)
        with self.writer.as_default():
            for head in self.heads:
                result = evaluation.classification_results(y[head.name], p[head.name])
                image = evaluation.render_confusion_matrix(
                    np.array(result["confusion_matrix"]), head.class_names,
                    f"{head.name}, validation, epoch {epoch + 1}")
                tf.summary.image(f"confusion_matrix/validation/{head.name}", image[None],
                                 step=epoch)
        self.writer.flush()


class MeanOverHeads(keras.callbacks.Callback):
    """Adds ``accuracy`` and ``val_accuracy`` (the mean of the heads' accuracies) to the epoch
    logs of a several-head model, before the checkpoint and the CSV log read them: the best
    checkpoint of a joint model is the best on all fields together. (A one-head model's logs
    already carry them under these names.)"""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = list(names)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.names) < 2:
            return
        for prefix in ("", "val_"):
            values = [logs[f"{prefix}{n}_accuracy"] for n in self.names
                      if f"{prefix}{n}_accuracy" in logs]
            if values:
                logs[f"{prefix}accuracy"] = float(np.mean(values))


def _head_config(head: labels.TaskSpec, data_dir: str) -> model_lib.HeadConfig:
    if head.task == "regression":
        mean, std = data.regression_stats(data_dir, head.field)
        return model_lib.HeadConfig(head.name, kind="regression", mean=mean, std=std)
    return model_lib.HeadConfig(head.name, head.num_classes)


def _model_config(config: TrainConfig, heads: Sequence[labels.TaskSpec],
                  mean, std) -> model_lib.ModelConfig:
    return model_lib.ModelConfig(
        heads=tuple(_head_config(h, config.data_dir) for h in heads),
        num_patches=config.num_patches,
        patch_size=config.patch_size, backbone=config.backbone, trunk_layer=config.trunk_layer,
        backbone_weights=config.backbone_weights, filters=config.filters, l2=config.l2,
        batchnorm_momentum=config.batchnorm_momentum,
        scratch_width_divisor=config.scratch_width_divisor,
        normalization=config.normalization, mean=tuple(mean), std=tuple(std),
        patch_mode=config.patch_mode)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    """Writes through a temporary file and a rename: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _start_over(model_dir: str) -> None:
    """--retrain: forget a previous run in model_dir (its state, log, checkpoint and metrics)."""
    for name in (METRICS, FIT_COMPLETE, CSV_LOG, BEST_WEIGHTS):
        if os.path.exists(os.path.join(model_dir, name)):
            os.remove(os.path.join(model_dir, name))
    shutil.rmtree(os.path.join(model_dir, BACKUP_DIR), ignore_errors=True)


def _check_data(config: TrainConfig, heads) -> tuple[dict, dict]:
    """(manifest, examples per split) of the records, or a TrainError saying what to do."""
    try:
        manifest = data.read_manifest(config.data_dir)
        data.verify_records(config.data_dir, checksums=config.verify_records, manifest=manifest)
        counts = {split: data.count_examples(config.data_dir, split, config.field, config.task)
                  for split in ("train", "validation", "test")}
    except data.DamagedRecordsError as e:
        raise TrainError(str(e)) from e
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"{e}\nBuild the records first: python -m exif_keras.make_records "
                         f"--output_dir={config.data_dir}") from e
    if counts["train"] == 0:
        classes = "; ".join(f"{h.name}: {', '.join(h.class_names)}" for h in heads)
        raise TrainError(
            f"no training example in {config.data_dir} has a label for --field={config.field} "
            f"--task={config.task} (classes: {classes}); per-split counts: "
            f"{counts}. Try --task=fine or another field.")
    if counts["validation"] == 0:
        logging.warning("No validation example for this task: the best checkpoint is the last.")
    return manifest, counts


class _Inputs:
    """The run's tf.data pipelines: a training stream whose every epoch is a function of (seed,
    epoch), and deterministic evaluation datasets."""

    def __init__(self, config: TrainConfig, counts: dict, dev: devices_lib.Devices):
        self.config, self.counts, self.dev = config, counts, dev
        # Several replicas cannot split a short last batch inside fit (Keras 3 fails on an empty
        # replica): there, training drops it (fewer than batch_size images per epoch, reshuffled
        # each time) and so does the per-epoch validation; the final evaluation sees every image.
        self.drop_last = dev.replicas > 1
        self.multi_worker = devices_lib.is_multi_worker(dev.strategy)

    def _make(self, split: str, training: bool, in_fit: bool = False, epoch=None,
              batch_size=None, shard=None):
        c = self.config
        return data.make_dataset(
            c.data_dir, split, c.field, c.task, batch_size=batch_size or c.batch_size,
            num_patches=c.num_patches, patch_size=c.patch_size, is_training=training,
            seed=c.seed, shuffle_buffer=c.shuffle_buffer,
            drop_remainder=self.drop_last and in_fit, epoch=epoch, shard=shard,
            # a worker's shards hold fewer images than an epoch's steps ask: it repeats them
            repeat=bool(training and (c.steps_per_epoch or shard is not None)))

    def batches(self, split: str, in_fit: bool = False) -> int:
        n, size = self.counts[split], self.config.batch_size
        return n // size if (self.drop_last and in_fit) else math.ceil(n / size)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or self.batches("train", in_fit=True)

    def training_stream(self, first_epoch: int):
        """Epochs first_epoch .. epochs-1, one after the other, steps_per_epoch batches each.
        Multi-worker: each worker's stream over its own shards (devices.py), as a distributed
        dataset."""
        steps = self.steps_per_epoch

        def stream(batch_size=None, shard=None):
            epochs = [self._make("train", True, in_fit=True, epoch=e, batch_size=batch_size,
                                 shard=shard).take(steps)
                      for e in range(first_epoch, self.config.epochs)]
            out = functools.reduce(lambda a, b: a.concatenate(b), epochs)
            return out.apply(tf.data.experimental.assert_cardinality(steps * len(epochs)))

        try:
            return self.dev.distribute_training_data(stream, self.config.batch_size)
        except devices_lib.DeviceError as e:
            raise TrainError(str(e)) from e

    def validation_in_fit(self) -> Optional[tf.data.Dataset]:
        batches = self.batches("validation", in_fit=True)
        if not batches:
            return None
        return self.dev.distribute_validation_data(self.evaluation("validation", in_fit=True))

    def evaluation(self, split: str, in_fit: bool = False) -> Optional[tf.data.Dataset]:
        """The split with the evaluation grid, or None when it has no example. The manifest
        knows the batch count: Keras then shows a true progress bar."""
        if not self.counts[split]:
            return None
        ds = self._make(split, False, in_fit=in_fit)
        return ds.apply(tf.data.experimental.assert_cardinality(self.batches(split, in_fit)))


def _fit(model, config: TrainConfig, inputs: _Inputs, model_dir: str, out_dir: str, heads,
         extra_callbacks: Sequence = ()) -> None:
    """model.fit, resumable: BackupAndRestore keeps the state of the last completed epoch, the CSV
    log is trimmed to it, and the best checkpoint remembers the best validation accuracy so far.
    Ends by writing FIT_COMPLETE (then the backup is removed). ``out_dir``: where this worker
    writes (model_dir, or a non-chief worker's temporary folder); every worker resumes from the
    chief's state in model_dir."""
    csv_path = os.path.join(out_dir, CSV_LOG)
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    completed = _backup_epoch(backup_dir)
    if completed:
        logging.info("Resuming after epoch %d from %s", completed, backup_dir)
        _trim_csv_log(csv_path, completed)
    else:  # a fresh run starts a new log and forgets any older checkpoint
        for name in (CSV_LOG, BEST_WEIGHTS):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    val_ds = inputs.validation_in_fit()
    # The best epoch: by accuracy (a joint model's: the mean over heads, MeanOverHeads), or, for
    # a regression, by loss.
    monitor = ("val_" if val_ds is not None else "") + (
        "loss" if config.task == "regression" else "accuracy")
    mode = "min" if config.task == "regression" else "max"
    names = [h.name for h in heads]
    callbacks = [
        MeanOverHeads(names),
        devices_lib.BackupAndRestore(backup_dir, os.path.join(out_dir, BACKUP_DIR),
                                     double_checkpoint=True, delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, BEST_WEIGHTS), monitor=monitor,
                                        mode=mode, save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=_best_epoch(
                                            os.path.join(model_dir, CSV_LOG), monitor, mode)[1]
                                        if completed else None),
        keras.callbacks.CSVLogger(csv_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(out_dir, LOG_DIR)),
    ]
    if val_ds is not None:
        callbacks.append(ConfusionMatrixLogger(val_ds, heads, os.path.join(out_dir, LOG_DIR)))
    callbacks.extend(extra_callbacks)
    if completed < config.epochs:
        model.fit(inputs.training_stream(completed), validation_data=val_ds,
                  epochs=config.epochs, steps_per_epoch=inputs.steps_per_epoch,
                  callbacks=callbacks, verbose=config.verbose, shuffle=False)
    best_epoch, best_value = _best_epoch(csv_path, monitor, mode)
    _write_json(os.path.join(out_dir, FIT_COMPLETE),
                {"epochs": config.epochs, "monitor": monitor, "best_epoch": best_epoch,
                 "best_value": best_value})
    shutil.rmtree(os.path.join(out_dir, BACKUP_DIR), ignore_errors=True)


def _best_epoch(csv_path: str, monitor: str,
                mode: str = "max") -> tuple[Optional[int], Optional[float]]:
    """(1-based epoch, value) of the best ``monitor`` (highest, or lowest for mode "min") in the
    CSV log; a resumed run's checkpoint starts from it, so it keeps the true best."""
    sign = 1.0 if mode == "max" else -1.0
    best_epoch, best_value = None, None
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    v = float(row.get(monitor) or "nan")
                except ValueError:
                    continue
                if v == v and (best_value is None or sign * v > sign * best_value):
                    best_epoch, best_value = int(row["epoch"]) + 1, v
    return best_epoch, best_value


def _evaluate(model, heads, inputs: _Inputs, eval_train: bool, manifest: dict,
              model_config: model_lib.ModelConfig) -> dict:
    """{split: {head name: results}} on the evaluation grid, every image of each split (see
    evaluation.head_results; the majority class and the mean are the training split's)."""
    splits = (["train"] if eval_train else []) + ["validation", "test"]
    train_counts = {h.name: _train_class_counts(manifest, h.field) for h in heads}
    train_means = {h.name: h.mean for h in model_config.heads}
    results = {}
    for split in splits:
        ds = inputs.evaluation(split)
        if ds is None:
            continue
        y, p = evaluation.predict_split(model, ds)
        results[split] = {h.name: evaluation.head_results(h, y[h.name], p[h.name],
                                                          train_counts[h.name],
                                                          train_means[h.name])
                          for h in heads}
    return results


def _train_class_counts(manifest: dict, field: str) -> list[int]:
    """Fine class counts of the training split (manifest), for the majority-class baseline."""
    per_class = manifest["counts"].get("train", {}).get(field, {})
    counts = [0] * labels.field_spec(field).num_classes
    for fine, n in per_class.items():
        if 0 <= int(fine) < len(counts):
            counts[int(fine)] = int(n)
    return counts


def _metrics(config: TrainConfig, heads, results: dict, counts: dict, fit_state: dict,
             dev: devices_lib.Devices) -> dict:
    """metrics.json: per head under fields.<name>, and the mean over heads at the top (for a
    one-head run the top level also carries that head's class names and test matrix)."""

    def mean_accuracy(split):
        if split not in results:
            return None
        values = [r["accuracy"] for r in results[split].values()
                  if r["count"] and r["accuracy"] is not None]
        return float(np.mean(values)) if values else None

    fields = {h.name: {"task": h.task, "class_names": list(h.class_names),
                       "splits": {split: r[h.name] for split, r in results.items()}}
              for h in heads}
    metrics = {
        "field": ",".join(h.name for h in heads),
        "task": config.task,
        "test_accuracy": mean_accuracy("test"),
        "val_accuracy": mean_accuracy("validation"),
        "train_accuracy": mean_accuracy("train"),
        "num_train": counts["train"],
        "num_val": counts["validation"],
        "num_test": counts["test"],
        "splits": {split: {"accuracy": mean_accuracy(split),
                           "count": counts[split]} for split in results},
        "fields": fields,
        "epochs": config.epochs,
        "best_epoch": fit_state.get("best_epoch"),
        "wall_seconds": None,  # set at the end
        "mixed_precision": dev.mixed,
        "dtype_policy": dev.policy,
        "replicas": dev.replicas,
        "workers": dev.num_workers,
        "backbone": config.backbone,
        "num_patches": config.num_patches,
        "patch_size": config.patch_size,
    }
    if len(heads) == 1 and heads[0].task != "regression":
        only = fields[heads[0].name]
        test = only["splits"].get("test")
        metrics.update(class_names=only["class_names"],
                       confusion_matrix=test["confusion_matrix"] if test else None,
                       per_class_accuracy={s: r["per_class_accuracy"]
                                           for s, r in only["splits"].items()})
    return metrics


def _write_confusion_matrices(model_dir: str, heads, results: dict, step: int) -> None:
    """confusion_matrix.png (one head) or confusion_matrix_<head>.png, and the same in
    TensorBoard, for the test split."""
    test = results.get("test")
    if not test:
        return
    writer = tf.summary.create_file_writer(os.path.join(model_dir, LOG_DIR, "confusion"))
    for head in heads:
        if head.task == "regression":
            continue
        image = evaluation.render_confusion_matrix(
            np.array(test[head.name]["confusion_matrix"]), head.class_names,
            f"{head.name} ({head.task}), test split")
        name = CONFUSION_PNG if len(heads) == 1 else CONFUSION_PNG.replace(
            ".png", f"_{head.name}.png")
        evaluation.save_png(image, os.path.join(model_dir, name))
        with writer.as_default():
            tf.summary.image(f"confusion_matrix/test/{head.name}", image[None], step=step)
    writer.flush()


def _export(config: TrainConfig, model_dir: str, model=None) -> str:
    from exif_keras import export

    export_dir = config.export_dir or os.path.join(
        "models", f"exif_{labels.fields_name(config.field)}")
    return export.export_model(model_dir, export_dir, model=model)


# Flags that do not change what a run computes: a run may be resumed or re-exported with others.
_RUN_INDEPENDENT = ("model_dir", "verbose", "export", "export_dir", "retrain", "verify_records",
                    "eval_train")


def _check_same_run(config: TrainConfig, model_dir: str) -> None:
    """A model_dir that holds a run (in progress or finished) with other flags is an error, not a
    silent mix of two configurations."""
    saved = (_read_json(os.path.join(model_dir, RUN_CONFIG)) or {}).get("train")
    if not saved or not (os.path.exists(os.path.join(model_dir, FIT_COMPLETE))
                         or os.path.isdir(os.path.join(model_dir, BACKUP_DIR))):
        return
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(k for k in now if k not in _RUN_INDEPENDENT and k in saved
                     and saved[k] != now[k])
    if changed:
        raise TrainError(
            f"{model_dir} holds a run with other flags ("
            + ", ".join(f"--{k}: {saved[k]} there, {now[k]} now" for k in changed)
            + "); pass --retrain to start it over with these, or another --model_dir")


def _chief_process() -> bool:
    """This process is the chief of its TF_CONFIG cluster (or in none): it alone exports."""
    try:
        tf_config = devices_lib.read_tf_config() or {}
    except devices_lib.DeviceError:
        return True
    task = tf_config.get("task") or {}
    return devices_lib.is_chief(task.get("type"), task.get("index"), tf_config.get("cluster"))


def _finished(config: TrainConfig, model_dir: str) -> Optional[dict]:
    """The metrics of a finished run in model_dir (exporting it if it has no export yet)."""
    metrics = _read_json(os.path.join(model_dir, METRICS))
    if metrics is None or not os.path.exists(os.path.join(model_dir, FIT_COMPLETE)):
        return None
    logging.info("%s holds a finished run (use --retrain to start over)", model_dir)
    metrics["already_finished"] = True
    if config.export and _chief_process() and not (metrics.get("export_path")
                                                   and os.path.isdir(metrics["export_path"])):
        metrics["export_path"] = _export(config, model_dir)
        _write_json(os.path.join(model_dir, METRICS),
                    {k: v for k, v in metrics.items() if k != "already_finished"})
    return metrics


def train(config: TrainConfig, extra_callbacks: Sequence = ()) -> dict:
    """Trains, evaluates and exports; returns the metrics written to metrics.json.

    ``extra_callbacks`` go to model.fit after the project's own (tests use them to kill a run)."""
    start = time.monotonic()
    try:
        heads = config.heads()
    except ValueError as e:
        raise TrainError(str(e)) from e
    model_dir = config.resolved_model_dir()
    if config.retrain:
        _start_over(model_dir)
    _check_same_run(config, model_dir)
    finished = _finished(config, model_dir)
    if finished is not None:
        return finished
    manifest, counts = _check_data(config, heads)

    keras.utils.set_random_seed(config.seed)
    dev = _configure_devices(config)
    strategy, mixed = dev.strategy, dev.mixed
    out_dir = dev.write_dir(model_dir)  # the chief writes model_dir, other workers a temp dir
    mean, std = data.dataset_mean_std(manifest)
    if config.ordinal_sigma and config.task != "fine":
        raise TrainError("--ordinal_sigma spreads the target over ordered fine classes: use it "
                         "with --task=fine")
    try:
        model_config = _model_config(config, heads, mean, std)
    except ValueError as e:  # an impossible combination of flags (e.g. a patch too small)
        raise TrainError(str(e)) from e
    os.makedirs(out_dir, exist_ok=True)
    run_folder.save_model_config(model_config, out_dir)
    _write_json(os.path.join(out_dir, RUN_CONFIG), {
        "train": dataclasses.asdict(config), "task": heads[0].to_json(),
        "heads": [h.to_json() for h in heads], "mixed_precision": mixed,
        # for the export: predict measures estimates against the training split's majority class
        "train_class_counts": {h.name: _train_class_counts(manifest, h.field)
                               for h in heads if h.task == "fine"},
        "dtype_policy": dev.policy,
        "data_manifest": os.path.abspath(os.path.join(config.data_dir, "manifest.json"))})

    inputs = _Inputs(config, counts, dev)
    with strategy.scope():
        try:
            model = model_lib.build_model(model_config)
        except model_lib.BackboneWeightsError as e:
            raise TrainError(str(e)) from e
        learning_rate = model_lib.learning_rate_schedule(
            config.lr_schedule, config.learning_rate,
            total_steps=config.epochs * inputs.steps_per_epoch)
        model_lib.compile_model(model, learning_rate=learning_rate,
                                label_smoothing=config.label_smoothing,
                                ordinal_sigma=config.ordinal_sigma,
                                loss_weights=config.field_weights)
    if config.verbose and dev.chief:
        model.summary(print_fn=lambda line, *a, **k: logging.info("%s", line))

    # Train (or skip to the evaluation of a run whose fit completed before it was killed).
    fit_state = _read_json(os.path.join(model_dir, FIT_COMPLETE))
    if fit_state is None:
        _fit(model, config, inputs, model_dir, out_dir, heads, extra_callbacks)
        fit_state = _read_json(os.path.join(out_dir, FIT_COMPLETE))
    if not dev.chief:  # no collective op follows fit: the chief alone evaluates and exports
        dev.cleanup()
        return {"field": config.field, "task": config.task, "chief": False,
                "workers": dev.num_workers, "replicas": dev.replicas,
                "dtype_policy": dev.policy, "mixed_precision": mixed}
    best_path = os.path.join(model_dir, BEST_WEIGHTS)
    if os.path.exists(best_path):
        model.load_weights(best_path)
    else:  # can only happen when every epoch was NaN
        model.save_weights(best_path)

    # Evaluate every split, write the metrics and figures, export.
    results = _evaluate(model, heads, inputs, config.eval_train, manifest, model_config)
    metrics = _metrics(config, heads, results, counts, fit_state, dev)
    _write_confusion_matrices(model_dir, heads, results, step=config.epochs)
    if config.export:
        metrics["export_path"] = _export(config, model_dir, model)
    figures.training_curves(os.path.join(model_dir, CSV_LOG),
                            os.path.join(model_dir, TRAINING_CURVES_PNG), model_dir)
    metrics["wall_seconds"] = round(time.monotonic() - start, 2)
    _write_json(os.path.join(model_dir, METRICS), metrics)
    return metrics


STOP_METRICS = ("within_one_stop", "mae_stops", "majority_mae_stops", "binary_accuracy")
REGRESSION_METRICS = ("accuracy", "mae_stops", "rmse_stops", "mean_baseline_mae_stops",
                      "prediction_std_ratio")


def summary(metrics: dict) -> str:
    """Per split: accuracy per head and per class; for fine heads the metrics in stops; for
    regression heads the errors in stops against the training mean's."""
    splits = [s for s in ("train", "validation", "test") if s in metrics["splits"]]
    several = len(metrics["fields"]) > 1
    rows = [["all" + (" (mean over fields)" if several else "")]
            + [metrics["splits"][s]["accuracy"] for s in splits]]
    for name, field in metrics["fields"].items():
        prefix = f"{name}: " if several or field["task"] == "regression" else ""
        per_split = [field["splits"][s] for s in splits]
        if field["task"] == "regression":
            rows.extend([prefix + key] + [r.get(key) for r in per_split]
                        for key in REGRESSION_METRICS)
        else:
            if several:
                rows.append([name] + [r["accuracy"] for r in per_split])
            for i, class_name in enumerate(field["class_names"]):
                rows.append([prefix + class_name] + [r["per_class_accuracy"][i] for r in per_split])
            if field["task"] == "fine":
                rows.extend([prefix + key] + [r.get(key) for r in per_split]
                            for key in STOP_METRICS)
        rows.append([prefix + "images"] + [field["splits"][s]["count"] for s in splits])
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
    if not metrics.get("chief", True):
        print(f"worker done; the chief writes the metrics and the export "
              f"({config.resolved_model_dir()})")
        return
    if metrics.get("already_finished"):
        print(f"{config.resolved_model_dir()} holds a finished run; its metrics follow "
              "(--retrain starts over).")
    print(summary(metrics))
    print(f"test accuracy: {metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None
          else "test accuracy: n/a (no test example)")
    if metrics.get("export_path"):
        print(f"exported: {metrics['export_path']}")
    print(f"metrics: {os.path.join(config.resolved_model_dir(), METRICS)}")


if __name__ == "__main__":
    flags.mark_flag_as_required("field")
    app.run(main)
