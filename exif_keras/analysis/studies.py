"""Studies: a grid of training runs over seeds, each an ordinary run folder trained by its own
child process, and their results (results.csv, results.md, figure.png) beside the paper's numbers.

The library of ``python -m exif_keras.study``, whose docstring describes a study's flagfile, its
files and its decisions (validated before anything trains; killed and rerun, a study continues;
the paper's numbers matched on the axes, field and task). The training flags are parsed with the
training command's own definitions (:func:`exif_keras.training.config.define_flags`) into a
FlagValues of the study's own, so the study never imports the train command.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import flags

from exif_keras.common import figures, files, labels
from exif_keras.common.errors import AnalysisError
from exif_keras.modeling import run_folder
from exif_keras.records import manifest as records_manifest
from exif_keras.training import config as config_lib

TRAIN_MODULE = "exif_keras.train"


# Set by the study for every run; not allowed as axes.
RESERVED = {"seed": "give the seeds with --seeds", "model_dir": "the study names the run folders",
            "export": "study runs never export", "export_dir": "study runs never export",
            "flagfile": "give it as --base_flagfile"}
# Flags that change nothing about what a run computes (not compared when a run is skipped).
COSMETIC = ("verbose",)

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
FIGURE_PNG = "figure.png"
RUN_RECORD = "study_run.json"
TRAIN_LOG = "train.log"
REGRESSION_METRICS = ("mae_stops", "rmse_stops", "mean_baseline_mae_stops",
                      "prediction_std_ratio")


class StudyError(AnalysisError):
    """A study that cannot start (bad grid, bad base flagfile): printed without a traceback."""


# ------------------------------------------------------------------------------- paper numbers

# The paper's best model (section 5.3): what its numbers refer to unless a condition says otherwise.
PAPER_SETUP = {"field": "shutter", "task": "binary", "backbone": "vgg16",
               "trunk_layer": "block3_conv3", "num_patches": 8, "patch_size": 128, "filters": 64,
               "learning_rate": 0.001, "l2": 0.001, "batch_size": 32, "epochs": 10}
PAPER_DATA = "MIRFLICKR-1M, 5406 images (§5.2)"


@dataclasses.dataclass(frozen=True)
class PaperNumber:
    """Accuracies (%) the paper reports for its setup with ``conditions`` changed."""

    conditions: Mapping[str, object]
    source: str
    validation: Optional[float] = None
    test: Optional[float] = None
    text: str = ""  # when the paper gives no number ("< 55")


# Every number of sections 5.1 and 5.3 (figure 5 itself has no values in the text: its k = 2 and
# k = 8 points are the two numbers below).
PAPER_NUMBERS = (
    PaperNumber({}, "§5.3, best model", validation=79.44, test=70.66),
    PaperNumber({"num_patches": 2}, "§5.3, k = 2", validation=72.03),
    PaperNumber({"backbone": "scratch"}, "§5.3, without transfer learning", validation=71.11),
    PaperNumber({"filters": 128}, "§5.3: F = 128 did not improve validation accuracy",
                text="≤ 79.44 (val)"),
    PaperNumber({"field": "iso"}, "§5.1: no more than 55% validation accuracy",
                text="< 55 (val)"),
    PaperNumber({"field": "aperture"}, "§5.1: no more than 55% validation accuracy",
                text="< 55 (val)"),
)
_PROBLEM_KEYS = ("field", "task")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def paper_number(settings: Mapping[str, object], axes: Sequence[str]) -> Optional[PaperNumber]:
    """The paper's number for a run with these training settings, or None. A number applies to a
    study whose axes include every flag its conditions change, when field, task and every axis
    agree with its setup (the paper's best model with its conditions). The other settings of the
    base may differ (see :func:`setup_differences`)."""
    best = None
    for number in PAPER_NUMBERS:
        if any(key not in axes and key not in _PROBLEM_KEYS for key in number.conditions):
            continue
        expected = {**PAPER_SETUP, **number.conditions}
        if any(key in settings and not _same(settings[key], value)
               for key, value in expected.items() if key in _PROBLEM_KEYS or key in axes):
            continue
        if best is None or len(number.conditions) > len(best.conditions):
            best = number
    return best


def setup_differences(settings: Mapping[str, object], axes: Sequence[str]) -> list[str]:
    """Settings (not axes) in which a run differs from the paper's setup, as "name=value"."""
    return [f"{k}={settings[k]} (paper: {v})" for k, v in PAPER_SETUP.items()
            if k not in axes and k not in _PROBLEM_KEYS and k in settings
            and not _same(settings[k], v)]


# ---------------------------------------------------------------------------------- the study

@dataclasses.dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[str, ...]


@dataclasses.dataclass
class Run:
    name: str
    point: tuple[tuple[str, str], ...]  # (axis, value as written in the grid)
    seed: int
    run_dir: str
    args: list[str]  # the training command's flags
    settings: dict  # every training flag's value for this run

    @property
    def metrics_path(self) -> str:
        return run_folder.path(self.run_dir, run_folder.METRICS)

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, TRAIN_LOG)

    def command(self) -> list[str]:
        return [sys.executable, "-m", TRAIN_MODULE, *self.args]


@dataclasses.dataclass
class Outcome:
    status: str  # "ok", "failed: <reason>", "pending"
    metrics: Optional[dict] = None


def parse_axis(text: str) -> Axis:
    """"num_patches=1,2,4" -> Axis("num_patches", ("1", "2", "4"))."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-")
    items = tuple(v.strip() for v in values.split(",")) if sep else ()
    if not name or not sep or not items or any(not v for v in items):
        raise StudyError(f"--grid={text!r}: expected <training flag>=v1,v2,... "
                         "(e.g. --grid=num_patches=1,2,4,8)")
    if name in RESERVED:
        raise StudyError(f"--grid={text!r}: {name} cannot be an axis ({RESERVED[name]})")
    if len(set(items)) != len(items):
        raise StudyError(f"--grid={text!r}: a value is repeated")
    return Axis(name, items)


def parse_seeds(seeds: Sequence[str]) -> list[int]:
    try:
        values = [int(s) for s in seeds]
    except ValueError as e:
        raise StudyError(f"--seeds={','.join(seeds)}: seeds are integers ({e})") from e
    if not values or len(set(values)) != len(values):
        raise StudyError(f"--seeds={','.join(seeds)}: give one or more distinct integers")
    return values


def train_flag_values() -> flags.FlagValues:
    """A FlagValues of its own holding the training command's flags (the definitions of
    exif_keras.training.config), unparsed: the global flags.FLAGS is never touched."""
    values = flags.FlagValues()
    config_lib.define_flags(values)
    return values


def _names(values: flags.FlagValues) -> list[str]:
    return sorted({values[name].name for name in values})  # long names only


def train_flag_names() -> list[str]:
    return _names(train_flag_values())


def parse_train_args(args: Sequence[str]) -> dict:
    """Every training flag's value for this command line (flagfiles read), parsed by the training
    command's flag definitions; flags.Error when a flag is unknown or a value does not parse."""
    values = train_flag_values()
    rest = values([TRAIN_MODULE, *args])
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments {rest[1:]}")
    return {name: values[name].value for name in _names(values)}


def training_flags_among(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the training flags among these command-line arguments, the other arguments): the study
    command's check that no training flag is given to the study itself, where it would be
    ignored. StudyError when a training flag's value does not parse."""
    values = train_flag_values()
    try:
        rest = values(["study", *args], known_only=True)
    except flags.Error as e:
        raise StudyError(f"{e}; training flags go into the --base_flagfile or --grid") from e
    return [name for name in _names(values) if values[name].present], rest[1:]


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", value).strip("-") or "_"


def run_name(point: Sequence[tuple[str, str]], seed: int) -> str:
    return "_".join([f"{name}={_safe(value)}" for name, value in point] + [f"seed={seed}"])


def plan(base_flagfile: str, axes: Sequence[Axis], seeds: Sequence[int],
         study_dir: str) -> list[Run]:
    """Every run of the study, validated (StudyError before anything trains)."""
    if not base_flagfile:
        raise StudyError("--base_flagfile is required (the training flagfile every run starts "
                         "from, e.g. pipelines/demo.flags)")
    if not os.path.isfile(base_flagfile):
        raise StudyError(f"--base_flagfile={base_flagfile}: no such file")
    if not study_dir:
        raise StudyError("--study_dir is required (e.g. runs/studies/<name>)")
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise StudyError(f"an axis is given twice: {names}")
    known = set(train_flag_names())
    for axis in axes:
        if axis.name not in known:
            close = [n for n in sorted(known) if axis.name in n or n in axis.name]
            raise StudyError(f"--grid={axis.name}=...: {axis.name!r} is not a flag of "
                             f"{TRAIN_MODULE}{f' (did you mean {close[0]}?)' if close else ''}; "
                             f"axes can be: {', '.join(sorted(known - set(RESERVED)))}")
    runs = []
    for values in itertools.product(*[a.values for a in axes]) if axes else [()]:
        point = tuple(zip(names, values))
        for seed in seeds:
            name = run_name(point, seed)
            run_dir = os.path.join(study_dir, name)
            args = ([f"--flagfile={base_flagfile}"] + [f"--{n}={v}" for n, v in point]
                    + [f"--seed={seed}", f"--model_dir={run_dir}", "--noexport"])
            try:
                settings = parse_train_args(args)
            except flags.Error as e:
                where = ", ".join(f"{n}={v}" for n, v in point) or "the base flagfile"
                raise StudyError(f"run {name} ({where}): {e}") from e
            if "field" in settings and settings["field"] is None:
                raise StudyError(f"no --field for run {name}: set it in {base_flagfile} or make "
                                 "it an axis (--grid=field=shutter,aperture,iso)")
            runs.append(Run(name, point, seed, run_dir, args, settings))
    if len({r.name for r in runs}) != len(runs):
        raise StudyError("two grid values give the same run folder name; write them differently")
    return runs


def _comparable(settings: Mapping) -> dict:
    return json.loads(json.dumps({k: v for k, v in settings.items() if k not in COSMETIC},
                                 default=str))


def check_finished_runs(runs: Sequence[Run]) -> None:
    """StudyError when a run folder (finished, or interrupted and about to resume) was trained
    with other flag values than the study gives it now."""
    for run in runs:
        record = os.path.join(run.run_dir, RUN_RECORD)
        if not os.path.exists(record):
            continue
        with open(record) as f:
            before = json.load(f).get("settings", {})
        now = _comparable(run.settings)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise StudyError(
                f"{run.run_dir} was trained with other flag values than this study gives it now "
                f"({', '.join(f'{k}: {before.get(k)!r} then, {now.get(k)!r} now' for k in changed)}"
                f"); delete that folder to retrain it, or use another --study_dir")


def state(run: Run) -> str:
    """"done", "resume" (a run folder without metrics.json) or "new"."""
    if os.path.exists(run.metrics_path):
        return "done"
    return "resume" if os.path.isdir(run.run_dir) else "new"


# ------------------------------------------------------------------------------------- running

Runner = Callable[[Run], int]


def subprocess_runner(run: Run) -> int:
    """Trains one run in a child process, its output appended to <run>/train.log; returns the
    exit status (negative: killed by that signal). Interrupted, it stops the child first."""
    with open(run.log_path, "a") as log:
        log.write(f"\n$ {shlex.join(run.command())}\n")
        log.flush()
        child = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        try:
            return child.wait()
        except BaseException:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise


def failure_reason(run: Run, returncode: int) -> str:
    """Why a run failed: train's own error line, else the last line of its log."""
    lines = []
    if os.path.exists(run.log_path):
        with open(run.log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        start = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1)
        lines = lines[start + 1:]
    errors = [line for line in lines if line.startswith("train: error:")]
    if returncode < 0:
        reason = f"killed by signal {-returncode}"
    elif errors:
        reason = errors[-1][len("train: "):]
    elif lines:
        reason = f"exit status {returncode}: {lines[-1]}"
    else:
        reason = f"exit status {returncode}"
    if returncode == 0:
        reason = f"no {run_folder.METRICS} written"
    return f"{reason[:300]} (log: {run.log_path})"


def read_metrics(run: Run) -> Optional[dict]:
    try:
        with open(run.metrics_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def execute(run: Run, runner: Runner) -> Outcome:
    os.makedirs(run.run_dir, exist_ok=True)
    files.write_json_atomic(os.path.join(run.run_dir, RUN_RECORD),
                            {"command": run.command()[1:], "settings": _comparable(run.settings)})
    returncode = runner(run)
    metrics = read_metrics(run) if returncode == 0 else None
    if metrics is None:
        return Outcome(f"failed: {failure_reason(run, returncode)}")
    return Outcome("ok", metrics)


# ------------------------------------------------------------------------------------- results

def _find(metrics: Mapping, key: str, split: str = "test"):
    """A metric of a split wherever metrics.json keeps it: splits.<split>.<key>, a field's
    fields.<field>.splits.<split>.<key> (the first field), or a top-level <key>."""
    for holder in [metrics] + [v for v in (metrics.get("fields") or {}).values()
                               if isinstance(v, Mapping)]:
        value = (holder.get("splits") or {}).get(split, {})
        if isinstance(value, Mapping) and value.get(key) is not None:
            return value[key]
    return metrics.get(key)


def rows(runs: Sequence[Run], outcomes: Mapping[str, Outcome]) -> tuple[list[str], list[dict]]:
    """The header and rows of results.csv."""
    axes = [name for name, _ in runs[0].point] if runs else []
    extra = [k for k in REGRESSION_METRICS
             if any(o.metrics and _find(o.metrics, k) is not None for o in outcomes.values())]
    header = axes + ["seed", "status", "val_accuracy", "test_accuracy", "train_accuracy",
                     "best_epoch", "wall_seconds"] + extra + ["run_dir"]
    out = []
    for run in runs:
        outcome = outcomes.get(run.name, Outcome("pending"))
        m = outcome.metrics or {}
        row = dict(run.point, seed=run.seed, status=outcome.status, run_dir=run.run_dir)
        for key in ("val_accuracy", "test_accuracy", "train_accuracy", "best_epoch",
                    "wall_seconds"):
            row[key] = m.get(key)
        for key in extra:
            row[key] = _find(m, key) if m else None
        out.append(row)
    return header, out


def write_csv(path: str, header: Sequence[str], table: Sequence[Mapping]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in header})
    files.write_text_atomic(path, buffer.getvalue())


def majority_accuracy(settings: Mapping) -> dict[str, Optional[float]]:
    """{"validation", "test"}: accuracy of always answering the split's largest class, from the
    records' manifest counts for the run's field and task (None when not computable)."""
    out = {"validation": None, "test": None}
    try:
        manifest = records_manifest.read_manifest(settings["data_dir"])
        spec = labels.task_spec(settings["field"], settings.get("task") or "binary")
    except Exception:  # noqa: BLE001 - no records, or a task without classes (regression)
        return out
    for split in out:
        per_class: dict[int, int] = {}
        for fine, n in manifest.get("counts", {}).get(split, {}).get(settings["field"],
                                                                     {}).items():
            target = spec.target(int(fine))
            if target != labels.NO_LABEL:
                per_class[target] = per_class.get(target, 0) + int(n)
        total = sum(per_class.values())
        out[split] = max(per_class.values()) / total if total else None
    return out


@dataclasses.dataclass
class Point:
    """One grid point: its runs over seeds and what they gave."""

    values: tuple[tuple[str, str], ...]
    runs: list[Run]
    outcomes: list[Outcome]

    def accuracies(self, key: str) -> list[float]:
        return [o.metrics[key] for o in self.outcomes
                if o.metrics and isinstance(o.metrics.get(key), (int, float))
                and not math.isnan(o.metrics[key])]


def points(runs: Sequence[Run], outcomes: Mapping[str, Outcome]) -> list[Point]:
    grouped: dict = {}
    for run in runs:
        point = grouped.setdefault(run.point, Point(run.point, [], []))
        point.runs.append(run)
        point.outcomes.append(outcomes.get(run.name, Outcome("pending")))
    return list(grouped.values())


def _pct(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    mean = 100.0 * sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({100 * min(values):.2f}–{100 * max(values):.2f})"


def _paper_text(number: Optional[PaperNumber]) -> str:
    if number is None:
        return "–"
    if number.text:
        return number.text
    return " / ".join("–" if v is None else f"{v:.2f}" for v in (number.validation, number.test))


def _majority_text(majority: Mapping[str, Optional[float]]) -> str:
    return " / ".join("n/a" if majority[s] is None else f"{100 * majority[s]:.2f}"
                      for s in ("validation", "test"))


def markdown(title: str, command: str, base_flagfile: str, axes: Sequence[Axis],
             seeds: Sequence[int], runs: Sequence[Run], outcomes: Mapping[str, Outcome]) -> str:
    names = [a.name for a in axes]
    groups = points(runs, outcomes)
    ok = sum(o.status == "ok" for o in outcomes.values())
    lines = [f"# Study {title}", "",
             f"`{command}`", "",
             f"Base: `{base_flagfile}`; grid: "
             + ("; ".join(f"{a.name} = {', '.join(a.values)}" for a in axes) or "none")
             + f"; seeds {', '.join(map(str, seeds))}; {len(runs)} runs, {ok} ok, "
             f"{sum(o.status.startswith('failed') for o in outcomes.values())} failed, "
             f"{len(runs) - len(outcomes)} pending.", "",
             "Accuracies in %: mean over the seeds' finished runs (min–max). Paper: validation / "
             f"test accuracy the paper reports ({PAPER_DATA}). Majority: always answering the "
             "split's largest class (validation / test), from the records' manifest.", "",
             "| " + " | ".join(names + ["runs ok", "validation", "test", "train", "best epoch",
                                        "paper", "majority"]) + " |",
             "|" + "---|" * (len(names) + 7)]
    sources, differences = [], []
    for point in groups:
        settings = point.runs[0].settings
        number = paper_number(settings, names)
        if number is not None and number.source not in sources:
            sources.append(number.source)
        for d in setup_differences(settings, names):
            if d not in differences:
                differences.append(d)
        epochs = [o.metrics["best_epoch"] for o in point.outcomes
                  if o.metrics and o.metrics.get("best_epoch") is not None]
        done = sum(o.status == "ok" for o in point.outcomes)
        lines.append("| " + " | ".join(
            [v for _, v in point.values]
            + [f"{done}/{len(point.runs)}", _pct(point.accuracies("val_accuracy")),
               _pct(point.accuracies("test_accuracy")), _pct(point.accuracies("train_accuracy")),
               (f"{sum(epochs) / len(epochs):.1f}" if epochs else "n/a"),
               _paper_text(number), _majority_text(majority_accuracy(settings))]) + " |")
    lines.append("")
    if sources:
        lines.append("Paper numbers from: " + "; ".join(sources) + ".")
    if differences:
        lines.append("This study's base differs from the paper's setup in "
                     + ", ".join(differences)
                     + ": the paper's numbers are shown for orientation, not as a target.")
    failed = [(r, outcomes[r.name]) for r in runs
              if r.name in outcomes and outcomes[r.name].status.startswith("failed")]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"* `{r.name}`: {o.status[len('failed: '):]}"
                                              for r, o in failed]
    return "\n".join(lines) + "\n"


def figure(path: str, title: str, axes: Sequence[Axis], runs: Sequence[Run],
           outcomes: Mapping[str, Outcome]) -> str:
    names = [a.name for a in axes]
    first = axes[0] if axes else Axis("grid point", ("all",))
    series: dict = {}
    for point in points(runs, outcomes):
        x = point.values[0][1] if point.values else "all"
        label = ", ".join(f"{n}={v}" for n, v in point.values[1:])
        s = series.setdefault(label, figures.StudySeries(label, [], [], []))
        s.x_labels.append(x)
        s.validation.append(point.accuracies("val_accuracy"))
        s.test.append(point.accuracies("test_accuracy"))
        number = paper_number(point.runs[0].settings, names)
        if number is not None and (number.validation is not None or number.test is not None):
            s.paper[x] = {"validation": number.validation, "test": number.test}
        s.majority[x] = majority_accuracy(point.runs[0].settings)
    return figures.study_figure(list(series.values()), first.name, path, title=title,
                                paper_source="MIRFLICKR, §5.3")


def write_results(study_dir: str, title: str, command: str, base_flagfile: str,
                  axes: Sequence[Axis], seeds: Sequence[int], runs: Sequence[Run],
                  outcomes: Mapping[str, Outcome], with_figure: bool = True) -> dict:
    os.makedirs(study_dir, exist_ok=True)
    header, table = rows(runs, outcomes)
    paths = {"csv": os.path.join(study_dir, RESULTS_CSV),
             "markdown": os.path.join(study_dir, RESULTS_MD)}
    write_csv(paths["csv"], header, table)
    files.write_text_atomic(paths["markdown"],
                            markdown(title, command, base_flagfile, axes, seeds, runs, outcomes))
    if with_figure:
        paths["figure"] = figure(os.path.join(study_dir, FIGURE_PNG), title, axes, runs, outcomes)
    return paths


# --------------------------------------------------------------------------------------- study

def run_study(base_flagfile: str, grid: Sequence[str], seeds: Sequence[str], study_dir: str,
              dry_run: bool = False, runner: Runner = subprocess_runner,
              command: str = "", out=None) -> dict:
    """Plans, validates and trains the study; returns {"runs", "outcomes", "paths"}."""
    out = out or sys.stdout
    axes = [parse_axis(text) for text in grid]
    seed_values = parse_seeds(seeds)
    runs = plan(base_flagfile, axes, seed_values, study_dir)
    check_finished_runs(runs)
    title = os.path.basename(os.path.normpath(study_dir))
    command = command or "python -m exif_keras.study " + shlex.join(
        [f"--base_flagfile={base_flagfile}"] + [f"--grid={g}" for g in grid]
        + [f"--seeds={','.join(seeds)}", f"--study_dir={study_dir}"])
    if dry_run:
        for run in runs:
            print(f"{state(run):6}  {run.name}\n        "
                  f"{shlex.join(['python', *run.command()[1:]])}", file=out)
        print(f"{len(runs)} runs: " + ", ".join(
            f"{sum(state(r) == s for r in runs)} {s}" for s in ("done", "resume", "new")), file=out)
        return {"runs": runs, "outcomes": {}, "paths": {}}

    outcomes: dict[str, Outcome] = {}
    for run in runs:  # finished runs first, so that results.csv is complete from the start
        if state(run) == "done":
            metrics = read_metrics(run)
            outcomes[run.name] = (Outcome("ok", metrics) if metrics is not None
                                  else Outcome(f"failed: unreadable {run.metrics_path}"))
    for index, run in enumerate(runs, start=1):
        if run.name in outcomes:
            done = outcomes[run.name].status
            print(f"[{index}/{len(runs)}] {run.name}: "
                  + ("done, skipped" if done == "ok" else done), file=out)
            continue
        verb = "resuming" if state(run) == "resume" else "training"
        print(f"[{index}/{len(runs)}] {run.name}: {verb} (log: {run.log_path})", file=out,
              flush=True)
        start = time.monotonic()
        outcome = execute(run, runner)
        outcomes[run.name] = outcome
        accuracy = (outcome.metrics or {}).get("val_accuracy")
        print(f"    {outcome.status}"
              + (f", validation accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "")
              + f" ({time.monotonic() - start:.0f} s)", file=out, flush=True)
        write_results(study_dir, title, command, base_flagfile, axes, seed_values, runs,
                      outcomes, with_figure=False)
    paths = write_results(study_dir, title, command, base_flagfile, axes, seed_values, runs,
                          outcomes)
    return {"runs": runs, "outcomes": outcomes, "paths": paths}
