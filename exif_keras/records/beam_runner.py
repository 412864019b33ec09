r"""The converter as an Apache Beam pipeline: the same records as ``make_records --runner=local``.

    python -m exif_keras.make_records --runner=beam --input_dir=... --output_dir=... \
        --beam_pipeline_options="--runner=DirectRunner,--direct_num_workers=2"

Everything that decides what is written is shared with the local runner (`make_records`): the
listing (`writer.plan_conversion`, which calls `sources.list_items`), the per-image work
(`convert.convert_path`), the split and shard of an image (`writer.shard_of_result`), the
record bytes (`writer.serialize_record`), the shard names, and the manifest and
``skipped.tsv`` (`writer.Tally`, `writer.finish_output`). Only the scheduling differs:

1. The launcher lists the source, fixes the shard count of each split (from its candidate count,
   as the local runner does) and writes the listing to ``<output_dir>/items.jsonl.tmp-<token>``
   (one JSON line per image, with its position in the listing): the job graph stays small however
   many images there are.
2. Workers read the listing, reshuffle it, and convert each image.
3. Written images are grouped by (split, shard); each group is sorted by listing position (the
   local runner's write order) and written to ``<shard>.tmp-<token>``. Every shard gets a group,
   so empty shards exist as empty files, as with the local runner.
4. The per-image outcomes are combined into one `writer.Tally`.
5. One last step, after every shard is written, renames the shards into place, removes older
   shards and temporary files, and writes ``skipped.tsv`` and ``manifest.json``.

Files are read and written through ``tf.io.gfile`` (shards, listing, manifest), so the output may
be any path TensorFlow's file systems handle (``gs://``, ``hdfs://``, ``s3://`` with
tensorflow-io). So may the input: `sources` lists it and `convert` reads the images and EXIF text
through `exif_keras.common.files`, which uses ``tf.io.gfile`` for a path with a scheme and Python's
own file functions for a plain path (which must then be reachable by that path from the launcher
and from every worker: a local disk with the DirectRunner, a shared mount on a cluster).

``manifest["seconds"]`` is the pipeline's wall time, launch and runner start-up included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from typing import Iterable, Optional, Sequence

import apache_beam as beam
from absl import logging
from apache_beam.options.pipeline_options import PipelineOptions

from exif_keras.common.errors import RecordsError
from exif_keras.records import convert, features, sources, writer

DEFAULT_PIPELINE_OPTIONS = ("--runner=DirectRunner",)
_COUNTERS = "make_records"


class PipelineOptionsError(RecordsError):
    """--beam_pipeline_options cannot be understood."""


def parse_pipeline_options(text: Optional[str]) -> list[str]:
    """``"--runner=DirectRunner,--direct_num_workers=2"`` (dashes optional, as TensorFlow
    Datasets accepts them) -> Beam's argument list. Empty: the DirectRunner."""
    if not text or not text.strip():
        return list(DEFAULT_PIPELINE_OPTIONS)
    args = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-") and not part.startswith("--"):
            raise PipelineOptionsError(f"--beam_pipeline_options: {part!r} is not an option; "
                                       "write each as --name=value, separated by commas")
        args.append(part if part.startswith("--") else "--" + part)
    options = PipelineOptions(args)
    unknown = options.get_all_options(retain_unknown_options=True)
    known = options.get_all_options()
    extra = sorted(set(unknown) - set(known))
    if extra:
        raise PipelineOptionsError(
            f"--beam_pipeline_options: unknown Beam option(s) {', '.join(extra)}; check the "
            "spelling against the pipeline options of your Beam runner")
    return args


# ----------------------------------------------------------------------------------- the listing

def _item_to_json(index: int, item: sources.Item) -> str:
    return json.dumps({"index": index, **dataclasses.asdict(item)}, sort_keys=True)


def _item_from_json(line: str) -> tuple[int, sources.Item]:
    fields = json.loads(line)
    index = fields.pop("index")
    fields["exif_paths"] = tuple(tuple(p) for p in fields.get("exif_paths", ()))
    return index, sources.Item(**fields)


def write_listing(path: str, items: Sequence[sources.Item]) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        for index, item in enumerate(items):
            f.write(_item_to_json(index, item) + "\n")


def read_listing(path: str) -> Iterable[tuple[int, sources.Item]]:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        for line in f:
            if line.strip():
                yield _item_from_json(line)


# ------------------------------------------------------------------------------ pipeline stages

class ConvertFn(beam.DoFn):
    """(index, Item) -> (index, convert.Converted): the local runner's per-image function."""

    def __init__(self, options: convert.Options):
        self._options = options
        self._written = beam.metrics.Metrics.counter(_COUNTERS, "written")
        self._skipped = beam.metrics.Metrics.counter(_COUNTERS, "skipped")

    def process(self, element):
        index, item = element
        result = convert.convert_path((item, self._options))
        (self._skipped if result.record is None else self._written).inc()
        yield index, result


def keyed_record(element, plan: writer.Plan):
    """(index, Converted) -> ((split, shard), (index, record bytes)) for written images."""
    index, result = element
    if result.record is not None:
        yield writer.shard_of_result(result, plan), (
            index, writer.serialize_record(result))


def write_shard(element, plan: writer.Plan, token: str) -> tuple[str, int, int]:
    """Writes one shard's records in listing order to its temporary name."""
    import tensorflow as tf

    (split, shard), values = element
    records = sorted((v for v in values if v is not None), key=lambda v: v[0])
    with tf.io.TFRecordWriter(writer.temp_path(plan.final_paths[split][shard], token)) as w:
        for _, data in records:
            w.write(data)
    return split, shard, len(records)


class TallyFn(beam.CombineFn):
    """Combines per-image outcomes into one `writer.Tally`."""

    def __init__(self, plan: writer.Plan):
        self._plan = plan

    def create_accumulator(self):
        return writer.Tally()

    def add_input(self, tally, element):
        index, result = element
        return tally.add(index, result, self._plan)

    def merge_accumulators(self, tallies):
        merged = writer.Tally()
        for tally in tallies:
            merged.merge(tally)
        return merged

    def extract_output(self, tally):
        return tally


def finish(_, plan: writer.Plan, token: str, listing: str, started: float,
           tally: writer.Tally, shards: Sequence[tuple[str, int, int]]) -> dict:
    """Runs once, after every shard is written: shards into place, skipped.tsv, manifest."""
    import tensorflow as tf

    written = {plan.final_paths[split][shard]: n for split, shard, n in shards}
    expected = {path: tally.shard_records[path] for path in plan.all_shards()}
    if written != expected:
        raise RuntimeError(f"make_records (beam): shards written with {written} records, "
                           f"expected {expected}")
    if tf.io.gfile.exists(listing):  # not on a retry of this step
        tf.io.gfile.remove(listing)
    return writer.finish_output(plan, tally, token, time.time() - started)


def build_pipeline(root: beam.Pipeline, plan: writer.Plan, listing: str,
                   token: str, started: float) -> None:
    """Adds the conversion to ``root`` (``plan`` without its items: workers read ``listing``)."""
    converted = (
        root
        | "Listing" >> beam.Create([listing])
        | "ReadListing" >> beam.FlatMap(read_listing)
        | "Distribute" >> beam.Reshuffle()
        | "Convert" >> beam.ParDo(ConvertFn(plan.options)))
    records = converted | "Key" >> beam.FlatMap(keyed_record, plan=plan)
    every_shard = root | "EveryShard" >> beam.Create(
        [((split, i), None) for split in features.SPLITS
         for i in range(plan.shard_counts[split])])
    shards = (
        (records, every_shard)
        | "Flatten" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.Map(write_shard, plan=plan, token=token))
    tally = converted | "Tally" >> beam.CombineGlobally(TallyFn(plan))
    (root
     | "Once" >> beam.Create([None])
     | "Finish" >> beam.Map(finish, plan=plan, token=token, listing=listing, started=started,
                            tally=beam.pvalue.AsSingleton(tally),
                            shards=beam.pvalue.AsList(shards)))


def run(input_dir: str, output_dir: str, pipeline_options: Optional[Sequence[str]] = None,
        **plan_options) -> dict:
    """Converts ``input_dir`` into ``output_dir`` with a Beam pipeline; returns the manifest.

    ``pipeline_options``: Beam's arguments (``["--runner=DirectRunner", ...]``); default the
    DirectRunner. ``plan_options``: those of `writer.plan_conversion` (layout, exif_variant,
    min_side, max_pixels, shard_size, ...). Same outputs as `writer.run` for the same
    options."""
    import tensorflow as tf

    started = time.time()
    plan = writer.plan_conversion(input_dir, output_dir, **plan_options)
    writer.prepare_output(output_dir)
    token = str(uuid.uuid4().int % 10**12)  # digits, like the local runner's process id
    listing = os.path.join(output_dir, f"items.jsonl.tmp-{token}")
    write_listing(listing, plan.items)
    args = list(pipeline_options) if pipeline_options else list(DEFAULT_PIPELINE_OPTIONS)
    logging.info("Converting %d candidate images from %s (layout %s) with Beam: %s",
                 plan.candidates, input_dir, plan.layout, " ".join(args))
    worker_plan = dataclasses.replace(plan, items=[])
    try:
        with beam.Pipeline(options=PipelineOptions(args)) as root:
            build_pipeline(root, worker_plan, listing, token, started)
    except BaseException:
        writer.discard_temporaries(output_dir)
        if tf.io.gfile.exists(listing):
            tf.io.gfile.remove(listing)
        raise
    with tf.io.gfile.GFile(os.path.join(output_dir, features.MANIFEST)) as f:
        return json.load(f)
