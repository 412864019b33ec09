"""Picks the converter's runner: the local process pool (`writer.run`) or the Apache Beam pipeline
(`beam_runner.run`), with the same arguments and the same records. Beam is imported only when
chosen, so the local runner never loads it. Here rather than in `writer`, which `beam_runner`
imports: no import circle.
"""

from __future__ import annotations

from absl import logging

from exif_keras.common.errors import RecordsError
from exif_keras.records import writer


class RunnerError(RecordsError):
    """The chosen runner cannot run (Beam missing, bad pipeline options)."""


def run_with_runner(runner: str, input_dir: str, output_dir: str, *, workers: int = 0,
                    progress: bool = True, beam_pipeline_options: str = "", **kwargs) -> dict:
    """The local runner (`writer.run`) or the Beam pipeline (`beam_runner.run`) with the same
    arguments (``kwargs``: those of `writer.plan_conversion`). Beam is imported only for the
    latter."""
    if runner == "local":
        return writer.run(input_dir, output_dir, workers=workers, progress=progress, **kwargs)
    if runner != "beam":
        raise RunnerError(f"unknown --runner={runner!r}; expected local or beam")
    try:
        from exif_keras.records import beam_runner
    except ImportError as e:
        raise RunnerError(f"--runner=beam needs Apache Beam ({e}); install it with "
                          "pip install -e '.[beam]', or use --runner=local") from e
    if workers:
        logging.warning("--workers is ignored by --runner=beam: the Beam runner's options "
                        "(e.g. --direct_num_workers, --num_workers) set the parallelism")
    try:
        options = beam_runner.parse_pipeline_options(beam_pipeline_options)
    except beam_runner.PipelineOptionsError as e:
        raise RunnerError(str(e)) from e
    return beam_runner.run(input_dir, output_dir, pipeline_options=options, **kwargs)
