r"""Studies: python -m exif_keras.study --flagfile=pipelines/studies/<name>.flags [--dry_run]

A study is a flagfile: the training flags it starts from (``--base_flagfile``), the grid (one
``--grid=<train flag>=v1,v2,...`` per axis; several axes make their product), the seeds
(``--seeds=0,1,2``) and where it goes (``--study_dir``). For example
``pipelines/studies/paper_patches.flags`` (the paper's figure 5)::

    --base_flagfile=pipelines/paper_shutter.flags
    --grid=num_patches=1,2,4,8,16
    --seeds=0,1,2
    --study_dir=runs/studies/paper_patches

Every grid point and seed is an ordinary run folder ``<study_dir>/<axis>=<value>_..._seed=<s>``,
trained by its own child process::

    python -m exif_keras.train --flagfile=<base> --<axis>=<value> ... --seed=<s>
                               --model_dir=<study_dir>/<run> --noexport

(its output in ``<run>/train.log``), so one failing or killed run is just that run. Into
``study_dir`` the study writes, after every run:

* ``results.csv``: one row per run: the axes' values, seed, status (``ok``, ``failed: <reason>``
  or ``pending``), ``val_accuracy``, ``test_accuracy``, ``train_accuracy``, ``best_epoch``,
  ``wall_seconds`` (of metrics.json; for a resumed run, its last process), the regression metrics
  ``mae_stops``, ``rmse_stops``, ``mean_baseline_mae_stops``, ``prediction_std_ratio`` (test split)
  when a run's metrics.json has them, and ``run_dir``;
* ``results.md``: per grid point the mean and the min-max over seeds (in %), the paper's number
  where it gives one (:data:`PAPER_NUMBERS`), and the majority-class accuracy of each split
  computed from the records' manifest counts;
* ``figure.png``: validation and test accuracy against the first axis (one line per combination
  of the other axes), mean and min-max over seeds, each seed a dot, the paper's numbers as stars.

Decisions:

* **Validated before anything trains.** Each run's training command line is parsed with the
  training command's own flag definitions (``exif_keras.training.config``): an unknown axis, a
  value that does not parse for its flag (``--grid=num_patches=two``), a missing base flagfile or
  a missing ``--field`` is an error naming it, and nothing runs. ``seed``, ``model_dir``,
  ``export``, ``export_dir`` and ``flagfile`` are set by the study and cannot be axes. Training
  flags given to the study itself (not in the base flagfile or the grid) are an error too,
  instead of being silently ignored.
* **Killed and rerun, a study continues.** A run whose ``metrics.json`` exists is finished and
  skipped; any other run is started with the same command, and training resumes by itself from
  its run folder's backup (``exif_keras.train``). Each run folder records the flag values it was
  trained with (``study_run.json``); a finished run whose values differ from the study's now
  (the base flagfile was edited) is an error before anything trains, and so is an interrupted
  one (it would resume another configuration's training): delete that folder or use another
  ``--study_dir``.
* **The paper's numbers** (``PAPER_NUMBERS``) are matched on the study's axes and on field and
  task; the other flags of the base may differ from the paper's setup (the ``demo_`` studies run
  on the sample with the scratch trunk), and ``results.md`` lists those differences beside them.

Exit status: 0 when every run is ok, 1 when some failed, 2 for a study that cannot start.
"""

from __future__ import annotations

import shlex
import signal
import sys
from typing import Sequence

from absl import app, flags

from exif_keras.analysis import studies

_BASE_FLAGFILE = flags.DEFINE_string("base_flagfile", None,
                                     "Training flagfile every run starts from.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "One axis: <training flag>=v1,v2,... (repeat for more axes: their product).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; every grid point is trained once per seed.")
_STUDY_DIR = flags.DEFINE_string("study_dir", None,
                                 "Folder of the study's run folders and results.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "List the runs and their state; train nothing.")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _training_flags_given(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(training flags given to the study itself, the other unparsed arguments). The study does
    not define them: they are left unparsed (see :func:`parse_flags`), or parsed already when
    this process defined them elsewhere (a test importing the train command)."""
    given, rest = studies.training_flags_among(args)
    given += [name for name in studies.train_flag_names()
              if name in flags.FLAGS and flags.FLAGS[name].present and name not in given]
    return given, rest


def main(argv: Sequence[str]) -> int:
    try:
        given, rest = _training_flags_given(argv[1:])
        if given:
            raise studies.StudyError(
                "training flags given to the study itself would be ignored: "
                + ", ".join(f"--{n}" for n in given)
                + "; put them into the --base_flagfile or make them --grid axes")
        if rest:
            raise app.UsageError(f"unexpected arguments: {' '.join(rest)}")
        signal.signal(signal.SIGTERM, _terminate)  # a killed study stops its child too
        result = studies.run_study(
            _BASE_FLAGFILE.value, _GRID.value, _SEEDS.value, _STUDY_DIR.value, _DRY_RUN.value,
            command=shlex.join(["python", "-m", "exif_keras.study", *sys.argv[1:]]))
    except studies.StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("study: interrupted; the same command continues it (finished runs are skipped, "
              "the interrupted one resumes)", file=sys.stderr)
        return 130
    if _DRY_RUN.value:
        return 0
    outcomes = result["outcomes"]
    failed = [name for name, o in outcomes.items() if o.status != "ok"]
    for kind, path in result["paths"].items():
        print(f"{kind}: {path}")
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs failed: see {result['paths']['markdown']}",
              file=sys.stderr)
        return 1
    return 0


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing (as ``app.parse_flags_with_usage``), except that flags the study does
    not define are left in the arguments for :func:`main`: a training flag given to the study is
    then an error that names it, instead of absl's "Unknown command line flag"."""
    try:
        return flags.FLAGS(argv, known_only=True)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
