"""The training configuration: one nested dataclass, the train flags generated from it.

``TrainConfig`` holds what a run is (``field``, ``task``, ``seed``) and one section per stage
that reads it, each passed whole to its stage, as big_vision passes ``config.model``:

* ``data`` (:class:`exif_keras.data.pipeline.DataConfig`): the records and how they are cut into
  batches of patches; ``make_dataset`` takes it whole;
* ``model`` (:class:`exif_keras.modeling.model.ModelConfig`): the backbone and head; training
  fills in what the data decides (heads, the dataset's mean/std, the patch geometry) with
  ``dataclasses.replace`` (:meth:`TrainConfig.model_config`);
* ``optim`` (:class:`OptimConfig`): epochs, learning rate and losses;
* ``runtime`` (:class:`RuntimeConfig`): where the run lives and how it runs (devices, resume,
  export, verbosity), nothing that changes what it computes but the devices;
* ``calibration`` (:class:`CalibrationConfig`): the temperature fit after training, the
  intervals' mass and the consistency threshold of the metrics.

Every default is declared once, on its field; the help text, enum choices and bounds of its flag
sit next to it in ``dataclasses.field(metadata=...)``. :func:`define_flags` generates the train
flags from them (their names, defaults, types, choices and validators are the ones the train
command always had) and :meth:`TrainConfig.from_flags` reads them back. Importing this module
defines no flag: only calling ``define_flags`` does (the train command at import, the study on a
``FlagValues`` of its own).

The run folder stores the configuration flat, flag name -> value (``run_config.json``'s "train",
as runs before the nesting did): :meth:`TrainConfig.to_flat` / :meth:`TrainConfig.from_flat`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from absl import flags

from exif_keras.common import labels
from exif_keras.data import pipeline
from exif_keras.modeling import model as model_lib
from exif_keras.training import devices

DataConfig = pipeline.DataConfig
ModelConfig = model_lib.ModelConfig


def _valid_fields(value: Optional[str]) -> bool:
    if value is None:
        return True
    try:
        labels.parse_fields(value)
    except ValueError:
        return False
    return True


class FlagFormatError(ValueError):
    """A flag value of the wrong form (the train command shows it as a usage error)."""


def parse_field_weights(items: Sequence[str]) -> Optional[dict]:
    """["shutter=1", "iso=0.5"] -> {"shutter": 1.0, "iso": 0.5}; [] -> None (1 each).
    FlagFormatError naming the item that is not field=weight."""
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise FlagFormatError(f"--field_weights wants field=weight items, got {item!r}")
    return weights or None


@dataclasses.dataclass
class OptimConfig:
    """How the model is fitted: epochs, steps, the optimizer's learning rate, the losses."""

    epochs: int = dataclasses.field(default=10, metadata=dict(
        help="Training epochs.", lower_bound=1))
    steps_per_epoch: int = dataclasses.field(default=0, metadata=dict(
        help="0: one pass over the training split per epoch."))
    learning_rate: float = dataclasses.field(default=1e-3, metadata=dict(
        help="Adam learning rate."))
    lr_schedule: str = dataclasses.field(default="constant", metadata=dict(
        choices=model_lib.LR_SCHEDULES,
        help="constant: --learning_rate throughout; cosine: Keras' CosineDecay from "
             "--learning_rate to 0 over the run's --epochs (steps counted by the optimizer, so a "
             "resumed run continues it)."))
    label_smoothing: float = dataclasses.field(default=0.0, metadata=dict(
        help="Label smoothing (0 = one-hot)."))
    ordinal_sigma: float = dataclasses.field(default=0.0, metadata=dict(
        help="Fine tasks: spread the target over neighbouring classes, a discretised Gaussian of "
             "this std in classes (stops), so a near miss costs less than a far one; 0 is plain "
             "cross-entropy.", lower_bound=0.0))
    # {field: loss weight}; None: 1 each. The flag is a list of field=weight items.
    field_weights: Optional[dict] = dataclasses.field(default=None, metadata=dict(
        help="Loss weight per field of a joint model, e.g. shutter=1,iso=0.5 (default 1 each).",
        flag_type="list", flag_default=[], from_flag=parse_field_weights))


@dataclasses.dataclass
class RuntimeConfig:
    """Where the run lives and how it runs: devices, resume, evaluation, export, verbosity."""

    model_dir: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="Run folder; default runs/<field>.", flag_type="string"))
    mixed_precision: str = dataclasses.field(default="auto", metadata=dict(
        choices=devices.PRECISIONS,
        help="off: float32; float16 (alias on): mixed_float16; bfloat16: mixed_bfloat16; auto: "
             "bfloat16 on TPUs and GPUs of compute capability 8.0+, float16 on older GPUs, "
             "float32 on CPUs."))
    cpu_bfloat16: bool = dataclasses.field(default=False, metadata=dict(
        help="With --mixed_precision=auto and no GPU or TPU: mixed_bfloat16 when the CPU "
             "computes bfloat16 natively (it lists AVX512-BF16 or AMX), float32 otherwise."))
    strategy: str = dataclasses.field(default="auto", metadata=dict(
        choices=devices.STRATEGIES,
        help="multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG; mirrored: "
             "MirroredStrategy; auto: multi_worker when TF_CONFIG names several tasks, mirrored "
             "with several GPUs, else none."))
    logical_cpus: int = dataclasses.field(default=0, metadata=dict(
        help="Split the CPU into this many logical devices (to run MirroredStrategy without "
             "GPUs); 0 leaves it whole."))
    eval_train: bool = dataclasses.field(default=True, metadata=dict(
        help="Evaluate the training split too for the final table."))
    retrain: bool = dataclasses.field(default=False, metadata=dict(
        help="Start over even if model_dir holds a finished or interrupted run."))
    export: bool = dataclasses.field(default=True, metadata=dict(
        help="Export the SavedModel at the end."))
    export_dir: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="Default models/exif_<field>.", flag_type="string"))
    verbose: int = dataclasses.field(default=1, metadata=dict(
        help="Keras fit verbosity: 0 silent, 1 bar, 2 line."))


def _valid_share(value) -> bool:
    return value is not None and 0.0 < float(value) <= 1.0


@dataclasses.dataclass
class CalibrationConfig:
    """After training: the temperature fit on the validation split, the intervals' probability
    mass and the consistency check's threshold (``training/calibration.py``)."""

    calibrate: bool = dataclasses.field(default=True, metadata=dict(
        help="Fit one temperature per classification head on the validation split after "
             "training (temperature scaling, minimising the validation NLL), kept with the model "
             "(run folder calibration.json) so the export, predict and explain give calibrated "
             "probabilities; --nocalibrate leaves T = 1."))
    interval: float = dataclasses.field(default=0.8, metadata=dict(
        help="Fine heads: the probability mass of the interval of an estimate (the shortest run "
             "of classes holding at least this much), in the metrics and the export.",
        validator=(_valid_share, "--interval must be in (0, 1]")))
    consistency_threshold: float = dataclasses.field(default=0.05, metadata=dict(
        help="The EXIF consistency check measured in the metrics: a claimed class whose "
             "calibrated probability is below this is flagged unlikely.",
        validator=(_valid_share, "--consistency_threshold must be in (0, 1]")))


# Flags that do not change what a run computes: a run may be resumed or re-exported with others.
RUN_INDEPENDENT = ("model_dir", "verbose", "export", "export_dir", "retrain", "verify_records",
                   "eval_train")


@dataclasses.dataclass
class TrainConfig:
    """One training run: what it estimates, and one section per stage (see the module docstring).

    ``model`` is the model section: its heads, mean/std, num_patches and patch_size are not flags
    and keep their defaults here; :meth:`model_config` fills them in from the data."""

    field: str = dataclasses.field(metadata=dict(
        help=f"EXIF field(s) to estimate: one of {', '.join(labels.FIELDS)}, a comma list, or "
             f"{labels.ALL_FIELDS!r} (one model, one head per field).",
        flag_type="string", flag_default=None,
        validator=(_valid_fields, f"--field must be one of {', '.join(labels.FIELDS)}, a comma "
                                  f"list of them, or {labels.ALL_FIELDS!r}")))
    task: str = dataclasses.field(default="binary", metadata=dict(
        choices=labels.TASKS,
        help="binary: the paper's two groups; fine: every class; regression: the value in stops "
             "(the paper's section 4 baseline)."))
    seed: int = dataclasses.field(default=0, metadata=dict(
        help="Seed of initialisation, shuffling and patch sampling."))
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)

    def heads(self) -> tuple[labels.TaskSpec, ...]:
        """One TaskSpec per field of --field: the model's outputs."""
        return labels.task_specs(self.field, self.task)

    def resolved_model_dir(self) -> str:
        return self.runtime.model_dir or os.path.join("runs", labels.fields_name(self.field))

    def model_config(self, heads: Sequence[model_lib.HeadConfig], mean: Sequence[float],
                     std: Sequence[float]) -> ModelConfig:
        """The model section with what the data decides: the heads, the training pixels'
        mean/std and the patch geometry. ValueError for an impossible combination (e.g. a patch
        too small for the trunk)."""
        return dataclasses.replace(self.model, heads=tuple(heads), mean=tuple(mean),
                                   std=tuple(std), num_patches=self.data.num_patches,
                                   patch_size=self.data.patch_size)

    # ------------------------------------------------------------- flat form: flag name -> value

    def to_flat(self) -> dict[str, Any]:
        """{flag name: value} of every train flag (the form run_config.json's "train" keeps)."""
        return {name: getattr(self if section is None else getattr(self, section), name)
                for name, section in flag_sections().items()}

    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """The config from {flag name: value} (as to_flat gives, or a subset: the rest default);
        TypeError for an unknown name."""
        where = flag_sections()
        unknown = sorted(set(values) - set(where))
        if unknown:
            raise TypeError(f"unknown train flags: {', '.join(unknown)}")
        top = {k: v for k, v in values.items() if where[k] is None}
        sections = {section: {k: v for k, v in values.items() if where[k] == section}
                    for section in _SECTIONS}
        return cls(**top, **{section: _SECTIONS[section](**kwargs)
                             for section, kwargs in sections.items()})

    def replace(self, **values) -> "TrainConfig":
        """A copy with some flags changed, by flag name (``config.replace(epochs=3)``)."""
        return type(self).from_flat(**{**self.to_flat(), **values})

    @classmethod
    def from_flags(cls, flag_values: flags.FlagValues = flags.FLAGS) -> "TrainConfig":
        """The config from the parsed flags of :func:`define_flags`. FlagFormatError for a value
        of the wrong form, ValueError for one that the configuration refuses (e.g. a
        --trunk_layer that is not a VGG16 layer)."""
        values = {}
        for f in _flag_fields():
            value = flag_values[f.name].value
            convert = f.metadata.get("from_flag")
            values[f.name] = convert(value) if convert and value is not None else value
        return cls.from_flat(**values)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
             "runtime": RuntimeConfig, "calibration": CalibrationConfig}


def _flag_fields() -> list[dataclasses.Field]:
    """The fields that are flags (those with a help text), top level first, then by section."""
    out = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    for section in _SECTIONS.values():
        out.extend(f for f in dataclasses.fields(section) if "help" in f.metadata)
    return out


def flag_sections() -> dict[str, Optional[str]]:
    """{flag name: its section ("data", "model", ...), or None for a top-level field}."""
    where = {f.name: None for f in dataclasses.fields(TrainConfig) if "help" in f.metadata}
    for name, section in _SECTIONS.items():
        where.update((f.name, name) for f in dataclasses.fields(section) if "help" in f.metadata)
    return where


def flag_names() -> tuple[str, ...]:
    """The train flags' names."""
    return tuple(flag_sections())


_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_boolean,
           str: flags.DEFINE_string}
_DEFINE_BY_NAME = {"integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
                   "boolean": flags.DEFINE_boolean, "string": flags.DEFINE_string,
                   "list": flags.DEFINE_list}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every train flag in ``flag_values`` from the fields of TrainConfig and its
    sections: name, default, type (an enum where the field has choices), help, bounds and
    validators."""
    for f in _flag_fields():
        meta: Mapping = f.metadata
        default = meta["flag_default"] if "flag_default" in meta else (
            f.default if f.default is not dataclasses.MISSING else None)
        kwargs = {"flag_values": flag_values}
        if "choices" in meta:
            flags.DEFINE_enum(f.name, default, list(meta["choices"]), meta["help"], **kwargs)
        else:
            define = (_DEFINE_BY_NAME[meta["flag_type"]] if "flag_type" in meta
                      else _DEFINE[type(default)])
            if "lower_bound" in meta:
                kwargs["lower_bound"] = meta["lower_bound"]
            define(f.name, default, meta["help"], **kwargs)
        if "validator" in meta:
            check, message = meta["validator"]
            flags.register_validator(f.name, check, message, flag_values=flag_values)
