"""The run folder: every file name a training run writes, and the code that reads them back.

One module owns the layout (as Keras Hub's ``preset_utils`` owns a preset's file names), so train,
export, explain, study and the tests agree on it by construction::

    <model_dir>/model_config.json   ModelConfig: everything to rebuild the Keras model
                run_config.json     the resolved configuration and the heads (class names, grouping)
                best.weights.h5     the best epoch by validation accuracy
                metrics.json        test/validation metrics, written last by train
                calibration.json    the temperature of each classification head, fitted on the
                                    validation split after training (none: T = 1, older runs)
                training_log.csv    one row per epoch (Keras CSVLogger)
                fit_complete.json   fit ended: a rerun goes straight to evaluation
                backup/             BackupAndRestore state while fit runs
                logs/               TensorBoard
                confusion_matrix.png, training_curves.png, reliability.png (one head) or
                reliability_<head>.png (several): the reliability diagrams before and after
                calibration

Paths may be local or anything ``tf.io.gfile`` reads (``gs://...``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional

import tensorflow as tf

from exif_keras.common import files, labels
from exif_keras.common.errors import ModelError
from exif_keras.modeling import model as model_lib

MODEL_CONFIG = "model_config.json"
RUN_CONFIG = "run_config.json"           # resolved flags and the heads (class names, grouping)
BEST_WEIGHTS = "best.weights.h5"         # the best epoch by validation accuracy
METRICS = "metrics.json"
CSV_LOG = "training_log.csv"
FIT_COMPLETE = "fit_complete.json"       # written when fit ends: a rerun goes straight to evaluation
BACKUP_DIR = "backup"                    # BackupAndRestore state (removed once fit is complete)
LOG_DIR = "logs"                         # TensorBoard
CONFUSION_PNG = "confusion_matrix.png"
TRAINING_CURVES_PNG = "training_curves.png"

CALIBRATION = "calibration.json"         # {"temperatures": {head: T}, ...}: see save_calibration
RELIABILITY_PNG = "reliability.png"      # reliability_<head>.png for a model of several heads

MODEL_NAME_PREFIX = "exif_"              # models/exif_<fields>: the serving model's name


class RunFolderError(ModelError):
    """A run folder that is missing, unfinished or inconsistent; the message names the file."""


def path(model_dir: str, name: str) -> str:
    """``model_dir/name`` for one of the names above."""
    return os.path.join(model_dir, name)


# ------------------------------------------------------------------------------- model config

def save_model_config(config: model_lib.ModelConfig, model_dir: str) -> str:
    """Writes ``model_dir/model_config.json``; returns its path."""
    tf.io.gfile.makedirs(model_dir)
    target = path(model_dir, MODEL_CONFIG)
    with tf.io.gfile.GFile(target, "w") as f:
        f.write(model_lib.config_to_json(config) + "\n")
    return target


def load_model_config(model_dir: str) -> model_lib.ModelConfig:
    with tf.io.gfile.GFile(path(model_dir, MODEL_CONFIG)) as f:
        return model_lib.config_from_json(f.read())


def save_run_config(run_config: Mapping, model_dir: str) -> str:
    """Writes ``model_dir/run_config.json`` atomically: "train" (the flat flag name -> value dict
    of ``TrainConfig.to_flat``, as every run has stored it), "task"/"heads", "train_class_counts"
    and the run's dtype policy; returns its path."""
    tf.io.gfile.makedirs(model_dir)
    target = path(model_dir, RUN_CONFIG)
    files.write_json_atomic(target, dict(run_config))
    return target


def run_config(heads, train: Mapping, **extra) -> dict:
    """What run_config.json holds: "train" (the flat flag name -> value dict), "heads" (a
    TaskSpec's JSON per output), "task" (the first head, which runs before joint models stored
    alone), and ``extra`` (e.g. "train_class_counts", "dtype_policy")."""
    return {"train": dict(train), "task": heads[0].to_json(),
            "heads": [h.to_json() for h in heads], **extra}


def save(model_dir: str, model_config: model_lib.ModelConfig, heads, train: Mapping,
         **extra) -> None:
    """Writes a run's two configuration files: model_config.json and run_config.json."""
    save_model_config(model_config, model_dir)
    save_run_config(run_config(heads, train, **extra), model_dir)


def reliability_png(head_name: str, several_heads: bool) -> str:
    """The file name of a head's reliability diagram: reliability.png, or reliability_<head>.png
    in a run of several heads."""
    return RELIABILITY_PNG.replace(".png", f"_{head_name}.png") if several_heads else RELIABILITY_PNG


# -------------------------------------------------------------------------------- calibration

def save_calibration(model_dir: str, temperatures: Mapping[str, float], **extra) -> str:
    """Writes ``model_dir/calibration.json`` atomically: "temperatures" ({classification head
    name: T}; ``modeling.model.calibrated`` applies them) and ``extra`` (how they were fitted;
    train adds "interval", the intervals' promised coverage, and "interval_masses", {field: the
    mass level that gives it}, which the export serves); returns its path."""
    target = path(model_dir, CALIBRATION)
    files.write_json_atomic(target, {"temperatures": {k: float(v) for k, v in
                                                      temperatures.items()}, **extra})
    return target


def read_calibration(model_dir: str) -> dict:
    """calibration.json as written by save_calibration; {} for a run without one."""
    target = path(model_dir, CALIBRATION)
    if not tf.io.gfile.exists(target):
        return {}
    with tf.io.gfile.GFile(target) as f:
        return json.load(f)


def read_temperatures(model_dir: str) -> dict:
    """{head name: T} from calibration.json; {} (T = 1 everywhere) for a run without one."""
    data = read_calibration(model_dir)
    temperatures = {str(k): float(v) for k, v in (data.get("temperatures") or {}).items()}
    bad = {k: v for k, v in temperatures.items() if not v > 0}
    if bad:
        raise ValueError(f"{CALIBRATION} holds temperatures that are not positive: {bad}")
    return temperatures


# ------------------------------------------------------------------------------------ the heads

def task_from_json(task: Mapping) -> labels.TaskSpec:
    return labels.TaskSpec(field=task["field"], task=task["task"],
                           class_names=tuple(task["class_names"]),
                           fine_to_target=tuple(int(v) for v in task["fine_to_target"]))


def heads_of(run_config: Mapping) -> tuple:
    """The TaskSpecs stored in run_config.json ("heads", else the one "task"), else rebuilt from
    "train"'s field/task."""
    if run_config.get("heads"):
        return tuple(task_from_json(h) for h in run_config["heads"])
    if run_config.get("task"):
        return (task_from_json(run_config["task"]),)
    train = run_config["train"]
    return labels.task_specs(train["field"], train.get("task", "binary"))


# ------------------------------------------------------------------------------ reading a run

@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What export and explain need from a finished run folder."""

    model_dir: str
    config: model_lib.ModelConfig
    heads: tuple  # labels.TaskSpec per model output, in the model's order
    # {head name: fine class counts of the training split} (fine heads; older runs: none)
    train_class_counts: Mapping = dataclasses.field(default_factory=dict)
    # {head name: temperature} of calibration.json (a run without one: {}, T = 1)
    temperatures: Mapping = dataclasses.field(default_factory=dict)
    # calibration.json's "interval" (the intervals' coverage; None: none fitted) and
    # "interval_masses" ({field: the mass level fitted for it})
    interval: Optional[float] = None
    interval_masses: Mapping = dataclasses.field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return MODEL_NAME_PREFIX + labels.fields_name([h.field for h in self.heads])

    @property
    def weights_path(self) -> str:
        return path(self.model_dir, BEST_WEIGHTS)


def read(model_dir: str, need_weights: bool = True) -> RunInfo:
    """Model config and heads of a training run folder; RunFolderError naming what is missing."""
    if not tf.io.gfile.isdir(model_dir):
        raise RunFolderError(f"run folder {model_dir!r} does not exist (train one with "
                             f"`python -m exif_keras.train --field=<field>`, or pass --model_dir)")
    needed = [MODEL_CONFIG, RUN_CONFIG] + ([BEST_WEIGHTS] if need_weights else [])
    missing = [n for n in needed if not tf.io.gfile.exists(path(model_dir, n))]
    if missing:
        raise RunFolderError(f"{model_dir!r} is not a finished training run: no "
                             f"{', '.join(missing)} in it")
    try:
        config = load_model_config(model_dir)
        with tf.io.gfile.GFile(path(model_dir, RUN_CONFIG)) as f:
            run_config = json.load(f)
        heads = heads_of(run_config)
        temperatures = read_temperatures(model_dir)
        calibrated = read_calibration(model_dir)
        interval = calibrated.get("interval")
        masses = {str(k): float(v) for k, v in (calibrated.get("interval_masses") or {}).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"cannot read the run configuration in {model_dir!r}: {e}") from e
    expected = [(h.name, h.num_classes) for h in heads]
    built = [(h.name, h.num_classes) for h in config.heads]
    if expected != built:
        raise RunFolderError(f"{model_dir!r}: {RUN_CONFIG} names the heads {expected} but "
                             f"{MODEL_CONFIG} has {built}")
    classification = {h.name for h in config.heads if h.kind == "classification"}
    if set(temperatures) - classification:
        raise RunFolderError(f"{model_dir!r}: {CALIBRATION} names heads that are not "
                             f"classification heads: {sorted(set(temperatures) - classification)}")
    return RunInfo(model_dir, config, heads, run_config.get("train_class_counts") or {},
                   temperatures, None if interval is None else float(interval), masses)


def load_model(run: RunInfo, weights: bool = True):
    """The run's Keras model rebuilt in float32 from its config (no backbone download), with its
    best weights unless ``weights=False``, and its heads' temperatures (calibration.json, applied
    by ``model.calibrated``: calibrated probabilities for every consumer)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = model_lib.build_model(dataclasses.replace(run.config, backbone_weights=None))
    finally:
        keras.config.set_dtype_policy(previous)
    if weights:
        try:
            model.load_weights(run.weights_path)
        except (ValueError, OSError) as e:
            raise RunFolderError(f"cannot load {run.weights_path}: {e}") from e
    return model_lib.calibrated(model, run.temperatures)
