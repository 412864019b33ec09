r"""The offline converter: photos and their EXIF -> sharded TFRecords with binned labels.

    python -m exif_keras.make_records --input_dir=/data/mirflickr --layout=auto \
        --output_dir=data/records

With no --input_dir, the built-in synthetic sample is generated (MIRFLICKR-25k layout) and
converted through the very same reader. Writes ``<output_dir>/{train,validation,test}-%05d-of-%05d
.tfrecord``, ``manifest.json`` (counts, skips, binning, pixel statistics, versions) and
``skipped.tsv`` (every skipped file with its reason).

Shards are written under temporary names (``<shard>.tmp-<token>``) and renamed when complete, so
a killed run never leaves a file a reader would take for whole; the next run deletes a killed run's
temporary files (its own names only: nothing else in ``output_dir`` is touched). The same input
and flags give byte-identical shards, whatever the process, ``--workers`` or runner: records are
serialised deterministically (`features.serialize_example`) and written in item order. The
manifest lists every shard with its record count and sha256 (``shards[split][name]``), which
`exif_keras.records.manifest.verify_records` checks before training.

Hidden files and folders and NAS index folders (``@eaDir``) are skipped (reason ``hidden``) unless
``--include_hidden``; JPEGs whose compressed data does not decode cleanly are skipped as
``corrupt_jpeg_data`` (see `convert`).

Two runners, the same records: ``--runner=local`` (default) converts with a process pool on this
machine; ``--runner=beam`` runs the conversion as an Apache Beam pipeline
(`exif_keras.records.beam_runner`: DirectRunner here, Dataflow, Flink or Spark with
``--beam_pipeline_options``). Both use `exif_keras.records.writer`: the listing and shard plan, the
per-image conversion (`convert.convert_path`), the record bytes, the shard names, the manifest and
skipped.tsv. This module holds only the command: its flags and `main`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from absl import app, flags

from exif_keras.records import convert, runners, sources, writer

FLAGS = flags.FLAGS
_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None, "Folder to convert: a local path or any path tf.io.gfile reads "
    "(gs://...). Empty: generate and convert the built-in sample.")
_LAYOUT = flags.DEFINE_enum("layout", "auto", list(sources.LAYOUTS),
                            "Folder layout; auto recognises the other three.")
_EXIF_VARIANT = flags.DEFINE_enum(
    "exif_variant", "auto", list(sources.EXIF_VARIANTS),
    "MIRFLICKR-25k EXIF text to read: Flickr's clean or raw files; auto reads clean and fills "
    "gaps from raw.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "data/records", "Where shards and manifest go.")
_MIN_SIDE = flags.DEFINE_integer("min_side", 128, "Skip images whose shorter side is smaller.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", convert.DEFAULT_MAX_PIXELS,
    "Skip images with more pixels than this (decompression bombs).")
_SHARD_SIZE = flags.DEFINE_integer(
    "shard_size", 1024, "Target images per shard; the shard count of each split follows from it.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Worker processes of the local runner; 0 = one per "
                                "CPU core.")
_SAMPLE_DIR = flags.DEFINE_string("sample_dir", "data/sample",
                                  "Where the built-in sample is generated (no --input_dir).")
_SAMPLE_COUNT = flags.DEFINE_integer("sample_count", 1500, "Images in the built-in sample.")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the built-in sample.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress on stderr (local runner).")
_RUNNER = flags.DEFINE_enum(
    "runner", "local", ["local", "beam"],
    "local: a process pool on this machine (--workers). beam: an Apache Beam pipeline "
    "(exif_keras.records.beam_runner; pip install -e '.[beam]'), same records; its runner and "
    "workers come from --beam_pipeline_options.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "",
    "With --runner=beam: Beam's options, comma separated, e.g. "
    "'--runner=DirectRunner,--direct_num_workers=2' (the default is the DirectRunner).")

_INCLUDE_HIDDEN = flags.DEFINE_boolean(
    "include_hidden", False,
    "Also convert JPEGs in hidden files and folders (name starting with '.', e.g. .thumbnails) "
    "and NAS index folders (@eaDir); by default they are skipped as thumbnails and copies.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    input_dir = _INPUT_DIR.value
    layout = _LAYOUT.value
    description = None
    if not input_dir:
        input_dir = writer.ensure_sample(_SAMPLE_DIR.value, _SAMPLE_COUNT.value,
                                         _SAMPLE_SEED.value, progress=_PROGRESS.value)
        layout = "mirflickr25k"
        description = (f"built-in sample: {_SAMPLE_COUNT.value} images, seed "
                       f"{_SAMPLE_SEED.value}, in {os.path.abspath(input_dir)}")
    start = time.monotonic()
    try:
        manifest = runners.run_with_runner(
            _RUNNER.value, input_dir, _OUTPUT_DIR.value, workers=_WORKERS.value,
            progress=_PROGRESS.value, beam_pipeline_options=_BEAM_PIPELINE_OPTIONS.value,
            layout=layout, exif_variant=_EXIF_VARIANT.value, min_side=_MIN_SIDE.value,
            max_pixels=_MAX_PIXELS.value, shard_size=_SHARD_SIZE.value,
            source_description=description, include_hidden=_INCLUDE_HIDDEN.value)
    except (sources.SourceError, runners.RunnerError) as e:
        print(f"make_records: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(writer.summary_table(manifest))
    print(f"Wrote {manifest['written']} records to {os.path.abspath(_OUTPUT_DIR.value)} "
          f"in {time.monotonic() - start:.1f} s")
    if manifest["written"] == 0:
        print("make_records: error: no image could be written; see skipped.tsv", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
