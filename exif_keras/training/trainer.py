"""The training loop: ``train(config)`` fits, resumes, evaluates and writes a run folder.

Killed at any point, the same call resumes where it stopped and ends where an uninterrupted run
does: inside fit from the last completed epoch (Keras' BackupAndRestore; every epoch's data order
and crops are a function of (seed, epoch), see ``data/pipeline.py: make_dataset``), after fit
straight to evaluation and export. Called again once finished, it returns the metrics (exporting
only if the run has no export yet); ``--retrain`` starts over. The best checkpoint is the best
epoch by validation accuracy (the mean over heads), by loss for a regression.

The run folder's file names are ``modeling/run_folder.py``'s. The export at the end is passed in
(``export_fn``) by the train command, so that training imports no serving module.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from exif_keras.common import figures, files, labels
from exif_keras.common.errors import TrainError
from exif_keras.data import pipeline
from exif_keras.modeling import backbones, run_folder
from exif_keras.modeling import model as model_lib
from exif_keras.records import manifest as records_manifest
from exif_keras.training import calibration, devices, evaluation
from exif_keras.training import config as config_lib

TrainConfig = config_lib.TrainConfig
# export_fn(config, model_dir, model or None) -> the export's path
ExportFn = Callable[[TrainConfig, str, Optional[keras.Model]], str]

def _configure_devices(config: TrainConfig) -> devices.Devices:
    """Logical CPUs, dtype policy and distribution strategy, before any model is built."""
    try:
        return devices.setup(config.runtime.mixed_precision, config.runtime.strategy,
                                 config.runtime.logical_cpus,
                                 cpu_bfloat16=config.runtime.cpu_bfloat16)
    except devices.DeviceError as e:
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
                image = figures.confusion_matrix_figure(
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


class TimeEstimate(keras.callbacks.Callback):
    """Prints, after the first epoch of this run (and once more after the second, when the
    first one's tracing made it slower), how long the remaining epochs should take and when
    fit should end: epochs left x the last epoch's wall time (validation included). The line
    comes after Keras' own line for that epoch (printed when the next epoch begins)."""

    def __init__(self, total_epochs: int, print_fn: Callable[[str], None] = print):
        super().__init__()
        self.total_epochs, self.print_fn = total_epochs, print_fn
        self.seen, self.started, self.first, self.pending = 0, None, None, None

    def _flush(self):
        if self.pending:
            self.print_fn(self.pending)
        self.pending = None

    def on_epoch_begin(self, epoch, logs=None):
        self._flush()
        self.started = time.monotonic()

    def on_train_end(self, logs=None):
        self._flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.started is None:
            return
        took = time.monotonic() - self.started
        self.seen += 1
        left = self.total_epochs - (epoch + 1)
        if self.seen == 1:
            self.first = took
        elif not (self.seen == 2 and took < 0.8 * self.first):
            return
        if left <= 0:
            return
        remaining = left * took
        finish = time.strftime("%H:%M:%S", time.localtime(time.time() + remaining))
        self.pending = (f"Time estimate: epoch {epoch + 1} took {took:.1f} s; {left} epoch(s) "
                        f"left, about {_duration(remaining)} more (fit ends near {finish}), "
                        "then evaluation and export.")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _head_config(head: labels.TaskSpec, data_dir: str) -> model_lib.HeadConfig:
    if head.task == "regression":
        mean, std = pipeline.regression_stats(data_dir, head.field)
        return model_lib.HeadConfig(head.name, kind="regression", mean=mean, std=std)
    return model_lib.HeadConfig(head.name, head.num_classes)


def _export(export_fn: Optional[ExportFn], config: TrainConfig, model_dir: str,
            model=None) -> str:
    if export_fn is None:
        raise TrainError("this run asks for an export (--export) but the caller passed no "
                         "export_fn; train through `python -m exif_keras.train`, or --noexport")
    return export_fn(config, model_dir, model)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _start_over(model_dir: str) -> None:
    """--retrain: forget a previous run in model_dir (its state, log, checkpoint and metrics)."""
    for name in (run_folder.METRICS, run_folder.FIT_COMPLETE, run_folder.CSV_LOG,
                 run_folder.BEST_WEIGHTS):
        if os.path.exists(os.path.join(model_dir, name)):
            os.remove(os.path.join(model_dir, name))
    shutil.rmtree(os.path.join(model_dir, run_folder.BACKUP_DIR), ignore_errors=True)


def _check_data(config: TrainConfig, heads) -> tuple[dict, dict]:
    """(manifest, examples per split) of the records, or a TrainError saying what to do."""
    try:
        manifest = records_manifest.read_manifest(config.data.data_dir)
        records_manifest.verify_records(config.data.data_dir, checksums=config.data.verify_records,
                                        manifest=manifest)
        counts = {split: pipeline.count_examples(config.data.data_dir, split, config.field,
                                                 config.task)
                  for split in ("train", "validation", "test")}
    except records_manifest.DamagedRecordsError as e:
        raise TrainError(str(e)) from e
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"{e}\nBuild the records first: python -m exif_keras.make_records "
                         f"--output_dir={config.data.data_dir}") from e
    if counts["train"] == 0:
        classes = "; ".join(f"{h.name}: {', '.join(h.class_names)}" for h in heads)
        raise TrainError(
            f"no training example in {config.data.data_dir} has a label for --field={config.field} "
            f"--task={config.task} (classes: {classes}); per-split counts: "
            f"{counts}. Try --task=fine or another field.")
    if counts["validation"] == 0:
        logging.warning("No validation example for this task: the best checkpoint is the last.")
    return manifest, counts


class _Inputs:
    """The run's tf.data pipelines: a training stream whose every epoch is a function of (seed,
    epoch), and deterministic evaluation datasets."""

    def __init__(self, config: TrainConfig, counts: dict, dev: devices.Devices):
        self.config, self.counts, self.dev = config, counts, dev
        # Several replicas cannot split a short last batch inside fit (Keras 3 fails on an empty
        # replica): there, training drops it (fewer than batch_size images per epoch, reshuffled
        # each time) and so does the per-epoch validation; the final evaluation sees every image.
        self.drop_last = dev.replicas > 1
        self.multi_worker = devices.is_multi_worker(dev.strategy)

    def _make(self, split: str, training: bool, in_fit: bool = False, epoch=None,
              batch_size=None, shard=None):
        c = self.config
        return pipeline.make_dataset(
            dataclasses.replace(c.data, batch_size=batch_size or c.data.batch_size), split,
            c.field, c.task, is_training=training, seed=c.seed,
            drop_remainder=self.drop_last and in_fit, epoch=epoch, shard=shard,
            # a worker's shards hold fewer images than an epoch's steps ask: it repeats them
            repeat=bool(training and (c.optim.steps_per_epoch or shard is not None)))

    def batches(self, split: str, in_fit: bool = False) -> int:
        n, size = self.counts[split], self.config.data.batch_size
        return n // size if (self.drop_last and in_fit) else math.ceil(n / size)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.optim.steps_per_epoch or self.batches("train", in_fit=True)

    def training_stream(self, first_epoch: int):
        """Epochs first_epoch .. epochs-1, one after the other, steps_per_epoch batches each.
        Multi-worker: each worker's stream over its own shards (devices.py), as a distributed
        dataset."""
        steps = self.steps_per_epoch

        def stream(batch_size=None, shard=None):
            epochs = [self._make("train", True, in_fit=True, epoch=e, batch_size=batch_size,
                                 shard=shard).take(steps)
                      for e in range(first_epoch, self.config.optim.epochs)]
            out = functools.reduce(lambda a, b: a.concatenate(b), epochs)
            return out.apply(tf.data.experimental.assert_cardinality(steps * len(epochs)))

        try:
            return self.dev.distribute_training_data(stream, self.config.data.batch_size)
        except devices.DeviceError as e:
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
    csv_path = os.path.join(out_dir, run_folder.CSV_LOG)
    backup_dir = os.path.join(model_dir, run_folder.BACKUP_DIR)
    completed = _backup_epoch(backup_dir)
    if completed:
        logging.info("Resuming after epoch %d from %s", completed, backup_dir)
        _trim_csv_log(csv_path, completed)
    else:  # a fresh run starts a new log and forgets any older checkpoint
        for name in (run_folder.CSV_LOG, run_folder.BEST_WEIGHTS):
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
        devices.BackupAndRestore(backup_dir, os.path.join(out_dir, run_folder.BACKUP_DIR),
                                     double_checkpoint=True, delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out_dir, run_folder.BEST_WEIGHTS), monitor=monitor, mode=mode,
            save_best_only=True, save_weights_only=True,
            initial_value_threshold=_best_epoch(os.path.join(model_dir, run_folder.CSV_LOG),
                                                monitor, mode)[1] if completed else None),
        keras.callbacks.CSVLogger(csv_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(out_dir, run_folder.LOG_DIR)),
    ]
    if val_ds is not None:
        callbacks.append(ConfusionMatrixLogger(val_ds, heads,
                                               os.path.join(out_dir, run_folder.LOG_DIR)))
    if config.runtime.verbose and inputs.dev.chief:
        callbacks.append(TimeEstimate(config.optim.epochs,
                                      lambda line: print(line, flush=True)))
    callbacks.extend(extra_callbacks)
    if completed < config.optim.epochs:
        model.fit(inputs.training_stream(completed), validation_data=val_ds,
                  epochs=config.optim.epochs, steps_per_epoch=inputs.steps_per_epoch,
                  callbacks=callbacks, verbose=config.runtime.verbose, shuffle=False)
    best_epoch, best_value = _best_epoch(csv_path, monitor, mode)
    files.write_json_atomic(os.path.join(out_dir, run_folder.FIT_COMPLETE),
                            {"epochs": config.optim.epochs, "monitor": monitor,
                             "best_epoch": best_epoch, "best_value": best_value})
    shutil.rmtree(os.path.join(out_dir, run_folder.BACKUP_DIR), ignore_errors=True)


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


def _predict(model, inputs: _Inputs, eval_train: bool) -> dict:
    """{split: ({head: labels}, {head: outputs})} on the evaluation grid, every image of each
    split that has one."""
    splits = (["train"] if eval_train else []) + ["validation", "test"]
    predictions = {}
    for split in splits:
        ds = inputs.evaluation(split)
        if ds is not None:
            predictions[split] = evaluation.predict_split(model, ds)
    return predictions


def _calibrate(config: TrainConfig, heads, predictions: dict, model_dir: str) -> dict:
    """Fits each classification head's temperature on the validation split (T = 1 with
    --nocalibrate, or without a validation split), writes calibration.json (so the export and
    every later consumer get calibrated probabilities), and rescales ``predictions`` in place to
    what the calibrated model answers. Returns {head: {"temperature", "splits": {split: nll, ece
    (and intervals) before and after}}} and the raw predictions under "_raw"."""
    validation = predictions.get("validation")
    fit = config.calibration.calibrate and validation is not None
    interval = config.calibration.interval
    temperatures, masses, out = {}, {}, {}
    for head in heads:
        if head.task == "regression":
            continue
        temperature = 1.0
        if fit:
            temperature = calibration.fit_temperature(validation[0][head.name],
                                                      validation[1][head.name])
        temperatures[head.name] = temperature
        out[head.name] = {"temperature": temperature, "fitted_on": "validation"}
        if head.task == "fine":
            # the intervals' mass level, fitted on the calibrated validation probabilities
            masses[head.field] = calibration.fit_interval_mass(
                validation[0][head.name], calibration.scale(validation[1][head.name],
                                                            temperature),
                interval) if fit else interval
            out[head.name].update(interval=interval, interval_mass=masses[head.field])
        out[head.name]["splits"] = {split: calibration.head_calibration(
            y[head.name], p[head.name], temperature, head.task, interval, head.field,
            masses.get(head.field)) for split, (y, p) in predictions.items()}
    run_folder.save_calibration(model_dir, temperatures, calibrate=config.calibration.calibrate,
                                fitted_on="validation", method="temperature scaling (NLL)",
                                interval=interval, interval_masses=masses)
    raw = {split: (y, dict(p)) for split, (y, p) in predictions.items()}
    for _, p in predictions.values():
        for name, temperature in temperatures.items():
            if temperature != 1.0 and len(p[name]):
                p[name] = calibration.scale(p[name], temperature).astype(np.float32)
    out["_raw"] = raw
    return out


def _evaluate(heads, predictions: dict, manifest: dict, model_config: model_lib.ModelConfig,
              calibrated: dict) -> dict:
    """{split: {head name: results}} of the (calibrated) predictions, every image of each split
    (see evaluation.head_results; the majority class and the mean are the training split's), with
    each classification head's ``nll`` and ``ece`` and, for fine heads, ``interval_coverage`` and
    ``interval_width_stops`` after calibration."""
    train_counts = {h.name: _train_class_counts(manifest, h.field) for h in heads}
    train_means = {h.name: h.mean for h in model_config.heads}
    results = {}
    for split, (y, p) in predictions.items():
        results[split] = {}
        for h in heads:
            result = evaluation.head_results(h, y[h.name], p[h.name], train_counts[h.name],
                                             train_means[h.name])
            if h.name in calibrated:
                after = calibrated[h.name]["splits"][split]
                result.update({k[:-len("_after")]: v for k, v in after.items()
                               if k.endswith("_after")})
            results[split][h.name] = result
    return results


def _consistency(config: TrainConfig, heads, predictions: dict) -> Optional[dict]:
    """The EXIF consistency check on the test split (calibrated probabilities of the fine heads;
    every label is the photo's true EXIF): calibration.consistency_metrics."""
    fine = [h for h in heads if h.task == "fine"]
    if not fine or "test" not in predictions:
        return None
    y, p = predictions["test"]
    out = calibration.consistency_metrics({h.field: y[h.name] for h in fine},
                                          {h.field: p[h.name] for h in fine},
                                          config.calibration.consistency_threshold)
    out["split"] = "test"
    return out


def _write_reliability(model_dir: str, heads, calibrated: dict, step: int) -> None:
    """A reliability diagram per classification head on the test split (the validation split
    when there is no test split), before and after calibration: reliability[_<head>].png and
    TensorBoard."""
    raw = calibrated.get("_raw") or {}
    split = "test" if "test" in raw else ("validation" if "validation" in raw else None)
    if split is None:
        return
    writer = tf.summary.create_file_writer(os.path.join(model_dir, run_folder.LOG_DIR,
                                                        "calibration"))
    y, p = raw[split]
    several = len(heads) > 1
    for head in heads:
        if head.name not in calibrated or not len(y[head.name]):
            continue
        temperature = calibrated[head.name]["temperature"]
        numbers = calibrated[head.name]["splits"][split]
        tables = []
        for label, probabilities, ece in (
                ("before (T = 1)", p[head.name], numbers["ece_before"]),
                (f"after (T = {temperature:.3g})", calibration.scale(p[head.name], temperature),
                 numbers["ece_after"])):
            table = calibration.reliability(y[head.name], probabilities)
            tables.append(dict(table, ece=ece, label=label))
        image = figures.reliability_diagram(*tables, title=f"{head.name} ({head.task}), {split} "
                                                           f"split: reliability")
        figures.save_png(image, os.path.join(model_dir, run_folder.reliability_png(head.name,
                                                                                   several)))
        with writer.as_default():
            tf.summary.image(f"reliability/{split}/{head.name}", image[None], step=step)
    writer.flush()


def _train_class_counts(manifest: dict, field: str) -> list[int]:
    """Fine class counts of the training split (manifest), for the majority-class baseline."""
    per_class = manifest["counts"].get("train", {}).get(field, {})
    counts = [0] * labels.field_spec(field).num_classes
    for fine, n in per_class.items():
        if 0 <= int(fine) < len(counts):
            counts[int(fine)] = int(n)
    return counts


def _metrics(config: TrainConfig, heads, results: dict, counts: dict, fit_state: dict,
             dev: devices.Devices) -> dict:
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
        "epochs": config.optim.epochs,
        "best_epoch": fit_state.get("best_epoch"),
        "wall_seconds": None,  # set at the end
        "mixed_precision": dev.mixed,
        "dtype_policy": dev.policy,
        "replicas": dev.replicas,
        "workers": dev.num_workers,
        "backbone": config.model.backbone,
        "num_patches": config.data.num_patches,
        "patch_size": config.data.patch_size,
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
    writer = tf.summary.create_file_writer(os.path.join(model_dir, run_folder.LOG_DIR, "confusion"))
    for head in heads:
        if head.task == "regression":
            continue
        image = figures.confusion_matrix_figure(
            np.array(test[head.name]["confusion_matrix"]), head.class_names,
            f"{head.name} ({head.task}), test split")
        name = run_folder.CONFUSION_PNG if len(heads) == 1 else run_folder.CONFUSION_PNG.replace(
            ".png", f"_{head.name}.png")
        figures.save_png(image, os.path.join(model_dir, name))
        with writer.as_default():
            tf.summary.image(f"confusion_matrix/test/{head.name}", image[None], step=step)
    writer.flush()


def _check_same_run(config: TrainConfig, model_dir: str) -> None:
    """A model_dir that holds a run (in progress or finished) with other flags is an error, not a
    silent mix of two configurations."""
    saved = (_read_json(os.path.join(model_dir, run_folder.RUN_CONFIG)) or {}).get("train")
    if not saved or not (os.path.exists(os.path.join(model_dir, run_folder.FIT_COMPLETE))
                         or os.path.isdir(os.path.join(model_dir, run_folder.BACKUP_DIR))):
        return
    now = json.loads(json.dumps(config.to_flat()))
    changed = sorted(k for k in now if k not in config_lib.RUN_INDEPENDENT and k in saved
                     and saved[k] != now[k])
    if changed:
        raise TrainError(
            f"{model_dir} holds a run with other flags ("
            + ", ".join(f"--{k}: {saved[k]} there, {now[k]} now" for k in changed)
            + "); pass --retrain to start it over with these, or another --model_dir")


def _finished(config: TrainConfig, model_dir: str, export_fn: Optional[ExportFn]) -> Optional[dict]:
    """The metrics of a finished run in model_dir (exporting it if it has no export yet)."""
    metrics = _read_json(os.path.join(model_dir, run_folder.METRICS))
    if metrics is None or not os.path.exists(os.path.join(model_dir, run_folder.FIT_COMPLETE)):
        return None
    logging.info("%s holds a finished run (use --retrain to start over)", model_dir)
    metrics["already_finished"] = True
    if (config.runtime.export and devices.chief_process()
            and not (metrics.get("export_path") and os.path.isdir(metrics["export_path"]))):
        metrics["export_path"] = _export(export_fn, config, model_dir)
        files.write_json_atomic(os.path.join(model_dir, run_folder.METRICS),
                                {k: v for k, v in metrics.items() if k != "already_finished"})
    return metrics


def train(config: TrainConfig, extra_callbacks: Sequence = (),
          export_fn: Optional[ExportFn] = None) -> dict:
    """Trains, evaluates and exports; returns the metrics written to metrics.json.

    ``extra_callbacks`` go to model.fit after the project's own (tests use them to kill a run).
    ``export_fn(config, model_dir, model)``: the export at the end (``config.runtime.export``),
    passed in by the caller (the train command passes the serving exporter): training imports
    no serving code."""
    start = time.monotonic()
    try:
        heads = config.heads()
    except ValueError as e:
        raise TrainError(str(e)) from e
    model_dir = config.resolved_model_dir()
    if config.runtime.retrain:
        _start_over(model_dir)
    _check_same_run(config, model_dir)
    finished = _finished(config, model_dir, export_fn)
    if finished is not None:
        return finished
    manifest, counts = _check_data(config, heads)

    keras.utils.set_random_seed(config.seed)
    dev = _configure_devices(config)
    strategy, mixed = dev.strategy, dev.mixed
    if config.runtime.verbose and dev.chief:
        print(devices.describe_compute(dev.policy), flush=True)
    out_dir = dev.write_dir(model_dir)  # the chief writes model_dir, other workers a temp dir
    mean, std = records_manifest.dataset_mean_std(manifest)
    if config.optim.ordinal_sigma and config.task != "fine":
        raise TrainError("--ordinal_sigma spreads the target over ordered fine classes: use it "
                         "with --task=fine")
    try:
        model_config = config.model_config(
            [_head_config(h, config.data.data_dir) for h in heads], mean, std)
    except ValueError as e:  # an impossible combination of flags (e.g. a patch too small)
        raise TrainError(str(e)) from e
    os.makedirs(out_dir, exist_ok=True)
    run_folder.save(
        out_dir, model_config, heads, config.to_flat(), mixed_precision=mixed,
        # for the export: predict measures estimates against the training split's majority class
        train_class_counts={h.name: _train_class_counts(manifest, h.field)
                            for h in heads if h.task == "fine"},
        dtype_policy=dev.policy,
        data_manifest=os.path.abspath(os.path.join(config.data.data_dir, "manifest.json")))

    inputs = _Inputs(config, counts, dev)
    with strategy.scope():
        try:
            model = model_lib.build_model(model_config)
        except backbones.BackboneWeightsError as e:
            raise TrainError(str(e)) from e
        learning_rate = model_lib.learning_rate_schedule(
            config.optim.lr_schedule, config.optim.learning_rate,
            total_steps=config.optim.epochs * inputs.steps_per_epoch)
        model_lib.compile_model(model, learning_rate=learning_rate,
                                label_smoothing=config.optim.label_smoothing,
                                ordinal_sigma=config.optim.ordinal_sigma,
                                loss_weights=config.optim.field_weights)
    if config.runtime.verbose and dev.chief:
        model.summary(print_fn=lambda line, *a, **k: logging.info("%s", line))

    # Train (or skip to the evaluation of a run whose fit completed before it was killed).
    fit_state = _read_json(os.path.join(model_dir, run_folder.FIT_COMPLETE))
    if fit_state is None:
        _fit(model, config, inputs, model_dir, out_dir, heads, extra_callbacks)
        fit_state = _read_json(os.path.join(out_dir, run_folder.FIT_COMPLETE))
    if not dev.chief:  # no collective op follows fit: the chief alone evaluates and exports
        dev.cleanup()
        return {"field": config.field, "task": config.task, "chief": False,
                "workers": dev.num_workers, "replicas": dev.replicas,
                "dtype_policy": dev.policy, "mixed_precision": mixed}
    best_path = os.path.join(model_dir, run_folder.BEST_WEIGHTS)
    if os.path.exists(best_path):
        model.load_weights(best_path)
    else:  # can only happen when every epoch was NaN
        model.save_weights(best_path)

    # Evaluate every split, calibrate on the validation split, write the metrics and figures,
    # export (with the temperatures, from calibration.json).
    predictions = _predict(model, inputs, config.runtime.eval_train)
    calibrated = _calibrate(config, heads, predictions, model_dir)
    results = _evaluate(heads, predictions, manifest, model_config, calibrated)
    metrics = _metrics(config, heads, results, counts, fit_state, dev)
    for name, numbers in calibrated.items():
        if name != "_raw":
            metrics["fields"][name]["calibration"] = numbers
    metrics["calibration"] = {
        "calibrate": config.calibration.calibrate, "interval": config.calibration.interval,
        "temperatures": {n: c["temperature"] for n, c in calibrated.items() if n != "_raw"},
        "interval_masses": {n: c["interval_mass"] for n, c in calibrated.items()
                            if n != "_raw" and "interval_mass" in c}}
    metrics["consistency"] = _consistency(config, heads, predictions)
    _write_confusion_matrices(model_dir, heads, results, step=config.optim.epochs)
    _write_reliability(model_dir, heads, calibrated, step=config.optim.epochs)
    if config.runtime.export:
        metrics["export_path"] = _export(export_fn, config, model_dir, model)
    figures.training_curves(os.path.join(model_dir, run_folder.CSV_LOG),
                            os.path.join(model_dir, run_folder.TRAINING_CURVES_PNG), model_dir)
    metrics["wall_seconds"] = round(time.monotonic() - start, 2)
    files.write_json_atomic(os.path.join(model_dir, run_folder.METRICS), metrics)
    return metrics


STOP_METRICS = ("within_one_stop", "mae_stops", "majority_mae_stops", "binary_accuracy",
                "interval_coverage", "interval_width_stops")
CALIBRATION_METRICS = ("nll", "ece")
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
            rows.extend([prefix + key] + [r.get(key) for r in per_split]
                        for key in CALIBRATION_METRICS if any(key in r for r in per_split))
            if "calibration" in field:
                rows.append([prefix + "temperature"] + [field["calibration"]["temperature"]]
                            * len(splits))
        rows.append([prefix + "images"] + [field["splits"][s]["count"] for s in splits])
    return evaluation.format_table(rows, ["accuracy"] + splits)
