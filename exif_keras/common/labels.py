"""Binning of EXIF settings into the paper's classes, and the task groupings read at training time.

Conversion stores one *fine* class index per field (``label/<field>``); every task of the paper is a
grouping of those fine classes applied when reading, so one conversion serves every task.

Fine classes (paper, section 3):
  * shutter:  round(log2 t) for exposure time t in seconds, 1/8000 s ... 64 s, 20 classes,
              index = round(log2 t) + 13.
  * aperture: APEX Av = round(2 * log2 N) for f-number N, f/1 ... f/64, 13 classes, index = Av.
  * iso:      exactly one of 100, 200, 400, 800, 1600, 5 classes.
Outside a field's classes its label is -1 (``NO_LABEL``).

Binary groupings (paper, section 4: "high versus low", intermediate classes left out):
  * shutter:  fast = 1/250 s or shorter, slow = 1/30 s or longer; 1/125 s and 1/60 s left out.
  * aperture: wide = f/2.8 or wider, narrow = f/8 or narrower; f/4 and f/5.6 left out.
  * iso:      ISO 100 versus ISO 800, the two levels the paper names; the others left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

NO_LABEL = -1
FIELDS = ("shutter", "aperture", "iso")
TASKS = ("binary", "fine", "regression")
ALL_FIELDS = "all"  # --field=all: one model with a head per field

SHUTTER_OFFSET = 13  # index = round(log2 t) + 13
SHUTTER_CLASSES = 20
APERTURE_CLASSES = 13
ISO_LEVELS = (100, 200, 400, 800, 1600)

# The customary names of the shutter stops 2^e seconds, e = -13 .. 6.
_SHUTTER_NAMES = (
    "1/8000 s", "1/4000 s", "1/2000 s", "1/1000 s", "1/500 s", "1/250 s", "1/125 s",
    "1/60 s", "1/30 s", "1/15 s", "1/8 s", "1/4 s", "1/2 s",
    "1 s", "2 s", "4 s", "8 s", "15 s", "30 s", "64 s",
)
# The customary names of the aperture stops f/2^(Av/2), Av = 0 .. 12.
_APERTURE_NAMES = (
    "f/1", "f/1.4", "f/2", "f/2.8", "f/4", "f/5.6", "f/8", "f/11", "f/16", "f/22", "f/32",
    "f/45", "f/64",
)
assert len(_SHUTTER_NAMES) == SHUTTER_CLASSES and len(_APERTURE_NAMES) == APERTURE_CLASSES


_HALF_TOLERANCE = 1e-9


def _round_half_up(x: float) -> int:
    """Rounds .5 up, the same on every platform (no banker's rounding). A value within 1e-9 of a
    half counts as the half: APEX Tv 5.5 gives t = 2**-5.5, whose log2 may come back as
    -5.500000000000001 through a decimal round trip, and must land in the same class."""
    return int(math.floor(x + 0.5 + _HALF_TOLERANCE))


def _usable(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def shutter_class(exposure_time: Optional[float]) -> int:
    """Fine shutter class of an exposure time in seconds, or NO_LABEL."""
    if not _usable(exposure_time):
        return NO_LABEL
    index = _round_half_up(math.log2(exposure_time)) + SHUTTER_OFFSET
    return index if 0 <= index < SHUTTER_CLASSES else NO_LABEL


def aperture_class(f_number: Optional[float]) -> int:
    """Fine aperture class (APEX Av rounded) of an f-number, or NO_LABEL."""
    if not _usable(f_number):
        return NO_LABEL
    index = _round_half_up(2.0 * math.log2(f_number))
    return index if 0 <= index < APERTURE_CLASSES else NO_LABEL


def iso_class(iso: Optional[float]) -> int:
    """Fine ISO class: the index of the value in ISO_LEVELS if it is exactly one of them."""
    if not _usable(iso):
        return NO_LABEL
    for index, level in enumerate(ISO_LEVELS):
        if iso == level:
            return index
    return NO_LABEL


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One EXIF field: its fine classes and the binary grouping of the paper."""

    name: str
    description: str
    class_names: tuple[str, ...]
    binary_names: tuple[str, str]
    binary_groups: tuple[tuple[int, ...], tuple[int, ...]]  # fine indices of binary class 0 and 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classify(self, value: Optional[float]) -> int:
        return _CLASSIFIERS[self.name](value)


_CLASSIFIERS = {"shutter": shutter_class, "aperture": aperture_class, "iso": iso_class}

FIELD_SPECS = {
    "shutter": FieldSpec(
        name="shutter",
        description="exposure time, round(log2 seconds)",
        class_names=_SHUTTER_NAMES,
        binary_names=("fast: 1/250 s or shorter", "slow: 1/30 s or longer"),
        binary_groups=(tuple(range(0, 6)), tuple(range(8, SHUTTER_CLASSES))),
    ),
    "aperture": FieldSpec(
        name="aperture",
        description="f-number as APEX Av, round(2 log2 N)",
        class_names=_APERTURE_NAMES,
        binary_names=("wide: f/2.8 or wider", "narrow: f/8 or narrower"),
        binary_groups=(tuple(range(0, 4)), tuple(range(6, APERTURE_CLASSES))),
    ),
    "iso": FieldSpec(
        name="iso",
        description="ISO speed, exactly one of 100, 200, 400, 800, 1600",
        class_names=tuple(f"ISO {level}" for level in ISO_LEVELS),
        binary_names=("ISO 100", "ISO 800"),
        binary_groups=((0,), (3,)),
    ),
}


def field_spec(field: str) -> FieldSpec:
    try:
        return FIELD_SPECS[field]
    except KeyError:
        raise ValueError(f"unknown field {field!r}; expected one of {', '.join(FIELDS)}") from None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A learning task: which fine classes map to which target class (-1: left out)."""

    field: str
    task: str
    class_names: tuple[str, ...]
    fine_to_target: tuple[int, ...]  # indexed by fine class

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def name(self) -> str:
        """The head's name: the key of its label in a batch and of its output in the model."""
        return self.field

    def target(self, fine_class: int) -> int:
        if fine_class < 0 or fine_class >= len(self.fine_to_target):
            return NO_LABEL
        return self.fine_to_target[fine_class]

    def to_json(self) -> dict:
        return {"field": self.field, "task": self.task, "class_names": list(self.class_names),
                "fine_to_target": list(self.fine_to_target)}


def task_spec(field: str, task: str = "binary") -> TaskSpec:
    """The grouping of the fine classes of ``field`` for ``task`` ('binary', 'fine' or
    'regression'). A regression task has no classes: its target is the EXIF value in stops, for
    the photos that have a fine class (the same photos as the fine task, so the two compare)."""
    spec = field_spec(field)
    if task == "regression":
        return TaskSpec(field, task, (), tuple(range(spec.num_classes)))
    if task == "fine":
        return TaskSpec(field, task, spec.class_names, tuple(range(spec.num_classes)))
    if task == "binary":
        table = [NO_LABEL] * spec.num_classes
        for target, group in enumerate(spec.binary_groups):
            for fine in group:
                table[fine] = target
        return TaskSpec(field, task, spec.binary_names, tuple(table))
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def parse_fields(fields) -> tuple[str, ...]:
    """``"shutter"``, ``"shutter,iso"``, ``"all"`` or a sequence of names -> field names in the
    canonical order of FIELDS (so "iso,shutter" and "shutter,iso" are the same model)."""
    names = fields.split(",") if isinstance(fields, str) else list(fields)
    names = [n.strip() for n in names if n and n.strip()]
    if names == [ALL_FIELDS]:
        return FIELDS
    unknown = [n for n in names if n not in FIELDS]
    if unknown or not names:
        raise ValueError(f"unknown field {', '.join(unknown) or '(none)'}; expected one of "
                         f"{', '.join(FIELDS)}, a comma list of them, or {ALL_FIELDS!r}")
    return tuple(f for f in FIELDS if f in names)


def task_specs(fields, task: str = "binary") -> tuple[TaskSpec, ...]:
    """One TaskSpec per field (see :func:`parse_fields`): the heads of a model."""
    return tuple(task_spec(field, task) for field in parse_fields(fields))


def fields_name(fields) -> str:
    """A short name of a set of fields, for folders: "shutter", "shutter_iso", "all"."""
    names = parse_fields(fields)
    return ALL_FIELDS if names == FIELDS else "_".join(names)


def binning_spec() -> dict:
    """The whole binning, as written into manifest.json."""
    out = {}
    for name, spec in FIELD_SPECS.items():
        out[name] = {
            "description": spec.description,
            "class_names": list(spec.class_names),
            "binary": {"class_names": list(spec.binary_names),
                       "groups": [list(g) for g in spec.binary_groups]},
        }
    out["shutter"]["index"] = "round(log2(exposure_time_s)) + 13"
    out["aperture"]["index"] = "round(2 * log2(f_number))"
    out["iso"]["index"] = "position in " + ", ".join(map(str, ISO_LEVELS))
    return out


def classify_all(exposure_time: Optional[float], f_number: Optional[float],
                 iso: Optional[float]) -> dict[str, int]:
    return {"shutter": shutter_class(exposure_time), "aperture": aperture_class(f_number),
            "iso": iso_class(iso)}


# Class values in stops. Every fine class is one stop wide (a factor 2 of light), so a fine class
# index is a position on a log2 scale; these are the class centres on that scale, in the unit the
# binning rounds in: shutter log2(seconds), aperture APEX Av = 2 log2(N), ISO log2(ISO / 100).
# Distances between classes, estimates (probability-weighted means) and errors are measured in
# these units (exif_keras/stops.py).
CLASS_STOPS = {
    "shutter": tuple(float(i - SHUTTER_OFFSET) for i in range(SHUTTER_CLASSES)),
    "aperture": tuple(float(i) for i in range(APERTURE_CLASSES)),
    "iso": tuple(math.log2(level / 100.0) for level in ISO_LEVELS),
}
assert all(len(CLASS_STOPS[name]) == FIELD_SPECS[name].num_classes for name in FIELDS)


def class_stops(field: str) -> tuple[float, ...]:
    """The value in stops of each fine class of ``field`` (see CLASS_STOPS)."""
    field_spec(field)  # a clear error for an unknown field
    return CLASS_STOPS[field]
