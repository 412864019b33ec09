"""One writer for both runners: the listing and shard plan, record bytes, shard names, the
manifest and skipped.tsv, and the local runner (a process pool). The Beam runner
(`beam_runner`) calls the same functions; `runners` picks one for the command
(`exif_keras.make_records`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import os
import platform
import re
from typing import Optional

from absl import logging

from exif_keras import __version__
from exif_keras.common import files, labels
from exif_keras.common.console import StderrProgbar
from exif_keras.records import convert, features, sources

# Temporary files this converter writes (a shard, the manifest, skipped.tsv, the Beam runner's
# listing), and only those.
_TEMP_NAME = re.compile(
    r"^(?:(?:%s)-\d{5}-of-\d{5}\.tfrecord|%s|skipped\.tsv|items\.jsonl)\.tmp(?:-\d+)?$"
    % ("|".join(features.SPLITS), re.escape(features.MANIFEST)))


def _num_shards(candidates: int, shard_size: int) -> int:
    return max(1, math.ceil(candidates / max(1, shard_size)))


def _shard_paths(output_dir: str, split: str, count: int) -> list[str]:
    return [os.path.join(output_dir,
                         features.SHARD_PATTERN.format(split=split, index=i, count=count))
            for i in range(count)]


def _remove_stale(output_dir: str, keep: Optional[set[str]] = None) -> None:
    """Drops temp files of a killed run and, given the shards to keep, shards of an earlier run.
    Only names this converter writes are touched (`_TEMP_NAME`, `features.SHARD_PATTERN`)."""
    import tensorflow as tf

    for name in tf.io.gfile.listdir(output_dir):
        name = name.rstrip("/")
        path = os.path.join(output_dir, name)
        is_temp = bool(_TEMP_NAME.match(name))
        is_shard = name.endswith(".tfrecord") and name.split("-")[0] in features.SPLITS
        if is_temp or (keep is not None and is_shard and path not in keep):
            tf.io.gfile.remove(path)


def _shard_entries(final_paths: dict[str, list[str]], records: collections.Counter) -> dict:
    """manifest["shards"]: split -> shard file name -> {"records": count, "sha256": hex}."""
    return {split: {os.path.basename(path): {"records": records[path],
                                             "sha256": features.file_sha256(path)}
                    for path in paths}
            for split, paths in final_paths.items()}


def _versions() -> dict:
    import numpy
    import PIL
    import tensorflow as tf
    return {"exif_keras": __version__, "tensorflow": tf.__version__, "pillow": PIL.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def _results(items, options: convert.Options, workers: int):
    """Yields conversions in item order (so output is deterministic) using a process pool."""
    args = ((item, options) for item in items)
    if workers <= 1:
        for a in args:
            yield convert.convert_path(a)
        return
    # spawn, not fork: the parent has TensorFlow's threads running.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(convert.convert_path, args, chunksize=8)


def ensure_sample(sample_dir: str, count: int, seed: int, progress: bool = True) -> str:
    """Generates the built-in sample once; regenerates when count, seed or the renderer changed,
    or when an earlier generation was killed (sample.is_complete checks its completion marker)."""
    from exif_keras.records import sample

    if sample.is_complete(sample_dir, count, seed):
        logging.info("Using the sample already generated in %s", sample_dir)
        return sample_dir
    os.makedirs(sample_dir, exist_ok=True)
    logging.info("Generating the built-in sample: %d images, seed %d, into %s", count, seed,
                 sample_dir)
    sample.generate_sample(sample_dir, count=count, seed=seed, progress=progress)
    return sample_dir


# ------------------------------------------------------------ shared by the local and Beam runners

@dataclasses.dataclass
class Plan:
    """What a conversion will do, decided before any image is read: the listed items (in the
    order their records are written), the per-image options and every shard's final path."""

    input_dir: str
    output_dir: str
    layout: str
    exif_variant: str
    items: list                # sources.Item, in listing order (empty on Beam workers)
    candidates: int
    options: convert.Options
    shard_size: int
    final_paths: dict          # split -> [shard path, ...]
    source_description: Optional[str] = None
    include_hidden: bool = False

    @property
    def shard_counts(self) -> dict:
        return {split: len(paths) for split, paths in self.final_paths.items()}

    def all_shards(self) -> list[str]:
        return [p for split in features.SPLITS for p in self.final_paths[split]]


def plan_conversion(input_dir: str, output_dir: str, layout: str = "auto",
                    exif_variant: str = "auto", min_side: int = 128,
                    max_pixels: int = convert.DEFAULT_MAX_PIXELS, shard_size: int = 1024,
                    source_description: Optional[str] = None,
                    include_hidden: bool = False) -> Plan:
    """Lists the source and assigns the shard count of each split (from its candidate count:
    files skipped when listing, e.g. hidden ones, are no candidates)."""
    layout, items = sources.list_items(input_dir, layout, exif_variant, include_hidden)
    candidates = collections.Counter(convert.split_of(item.source_id) for item in items
                                     if not item.skip_reason)
    final_paths = {s: _shard_paths(output_dir, s, _num_shards(candidates[s], shard_size))
                   for s in features.SPLITS}
    return Plan(input_dir=input_dir, output_dir=output_dir, layout=layout,
                exif_variant=exif_variant, items=items, candidates=len(items),
                options=convert.Options(min_side=min_side, max_pixels=max_pixels),
                shard_size=shard_size, final_paths=final_paths,
                source_description=source_description, include_hidden=include_hidden)


def shard_of_result(result: convert.Converted, plan: Plan) -> tuple[str, int]:
    """(split, shard index) of a written image."""
    return result.split, convert.shard_of(result.source_id, plan.shard_counts[result.split])


def serialize_record(result: convert.Converted) -> bytes:
    """The record bytes of a converted image; deterministic, so both runners write equal shards."""
    rec = result.record
    example = features.make_example(
        encoded=rec.encoded, height=rec.height, width=rec.width, source_id=result.source_id,
        exposure_time=rec.exposure_time, f_number=rec.f_number, iso=rec.iso, labels=rec.labels)
    return features.serialize_example(example)


def temp_path(final_path: str, token: str) -> str:
    """Where a shard is written before it is complete (``_remove_stale`` knows these names)."""
    return f"{final_path}.tmp-{token}"


class Tally:
    """Everything the manifest and skipped.tsv report, accumulated one result at a time.

    Mergeable (the Beam runner combines per-worker tallies) and order independent: pixel sums are
    exact integers, skipped rows are sorted by item index when written."""

    def __init__(self):
        self.written = collections.Counter()
        self.class_counts = {s: {f: collections.Counter() for f in labels.FIELDS}
                             for s in features.SPLITS}
        self.skipped = collections.Counter()
        self.problems = collections.Counter()
        self.converted = collections.Counter()
        self.exif_sources = collections.Counter()
        self.channel_sum = [0, 0, 0]
        self.channel_sumsq = [0, 0, 0]
        self.pixel_count = 0
        self.skipped_rows = []   # (item index, source_id, reason, detail)
        self.shard_records = collections.Counter()   # final shard path -> records

    def add(self, index: int, result: convert.Converted, plan: "Plan") -> "Tally":
        self.problems.update(result.problems)
        if result.record is None:
            self.skipped[result.skip_reason] += 1
            self.skipped_rows.append((index, result.source_id, result.skip_reason, result.detail))
            return self
        rec = result.record
        self.written[result.split] += 1
        split, shard = shard_of_result(result, plan)
        self.shard_records[plan.final_paths[split][shard]] += 1
        for field, value in rec.labels.items():
            if value >= 0:
                self.class_counts[result.split][field][value] += 1
        if rec.converted:
            self.converted[rec.converted] += 1
        self.exif_sources.update(result.exif_sources)
        if rec.pixels:
            # Per-image sums are whole numbers (histogram x levels), exact in float64.
            self.pixel_count += int(rec.pixels)
            for c in range(3):
                self.channel_sum[c] += int(round(float(rec.channel_sum[c])))
                self.channel_sumsq[c] += int(round(float(rec.channel_sumsq[c])))
        return self

    def merge(self, other: "Tally") -> "Tally":
        for name in ("written", "skipped", "problems", "converted", "exif_sources",
                     "shard_records"):
            getattr(self, name).update(getattr(other, name))
        for split in features.SPLITS:
            for field in labels.FIELDS:
                self.class_counts[split][field].update(other.class_counts[split][field])
        for c in range(3):
            self.channel_sum[c] += other.channel_sum[c]
            self.channel_sumsq[c] += other.channel_sumsq[c]
        self.pixel_count += other.pixel_count
        self.skipped_rows.extend(other.skipped_rows)
        return self


def prepare_output(output_dir: str) -> None:
    """Creates the output folder; drops temp files of a killed run (old shards stay until the new
    ones are complete)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    _remove_stale(output_dir)


def discard_temporaries(output_dir: str) -> None:
    """Removes the temporary files of a failed or killed run."""
    _remove_stale(output_dir)


def build_manifest(plan: Plan, tally: Tally, elapsed: float) -> dict:
    if tally.pixel_count:
        mean = [s / tally.pixel_count for s in tally.channel_sum]
        std = [math.sqrt(max(q / tally.pixel_count - m * m, 0.0))
               for q, m in zip(tally.channel_sumsq, mean)]
    else:
        mean, std = [127.5] * 3, [64.0] * 3
    counts = {}
    for split in features.SPLITS:
        counts[split] = {"total": tally.written[split]}
        for field in labels.FIELDS:
            counts[split][field] = {str(k): v for k, v in
                                    sorted(tally.class_counts[split][field].items())}
    items = plan.candidates
    return {
        "source": plan.source_description or _absolute(plan.input_dir),
        "layout": plan.layout,
        "exif_variant": plan.exif_variant,
        "candidates": items,
        "written": sum(tally.written.values()),
        "counts": counts,
        "skipped": dict(sorted(tally.skipped.items())),
        "skip_reasons": {k: convert.SKIP_REASONS[k] for k in sorted(tally.skipped)},
        "converted": dict(sorted(tally.converted.items())),
        "exif_problems": dict(sorted(tally.problems.items())),
        "exif_sources": dict(sorted(tally.exif_sources.items())),
        "binning": labels.binning_spec(),
        "pixel_stats": {"train": {"mean": mean, "std": std, "pixels": tally.pixel_count}},
        "shards": _shard_entries(plan.final_paths, tally.shard_records),
        "split": {"method": "sha256(source_id) -> [0,1): <0.8 train, <0.9 validation, else test"},
        "options": {"min_side": plan.options.min_side, "max_pixels": plan.options.max_pixels,
                    "shard_size": plan.shard_size, "include_hidden": plan.include_hidden},
        "versions": _versions(),
        "seconds": round(elapsed, 3),
        "images_per_second": round(items / elapsed, 2) if elapsed > 0 else None,
    }


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def write_skipped(output_dir: str, rows) -> None:
    """skipped.tsv: one row per skipped file, in listing order."""
    lines = ["source_id\treason\tdetail\n"]
    for row in sorted(rows, key=lambda r: r[0]):
        lines.append("\t".join(str(x).replace("\t", " ").replace("\n", " ")
                               for x in row[1:]) + "\n")
    files.write_text_atomic(os.path.join(output_dir, "skipped.tsv"), "".join(lines))


def finish_output(plan: Plan, tally: Tally, token: str, elapsed: float) -> dict:
    """Renames the complete shards into place, drops older ones, writes skipped.tsv and the
    manifest (last: its presence means the folder is whole). Returns the manifest."""
    import tensorflow as tf

    for path in plan.all_shards():
        tmp = temp_path(path, token)
        # A retried Beam step finds its shards renamed already (the token is this run's alone).
        if tf.io.gfile.exists(tmp) or not tf.io.gfile.exists(path):
            tf.io.gfile.rename(tmp, path, overwrite=True)
    _remove_stale(plan.output_dir, keep=set(plan.all_shards()))
    manifest = build_manifest(plan, tally, elapsed)
    write_skipped(plan.output_dir, tally.skipped_rows)
    files.write_json_atomic(os.path.join(plan.output_dir, features.MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------- local runner

def run(input_dir: str, output_dir: str, layout: str = "auto", exif_variant: str = "auto",
        min_side: int = 128, max_pixels: int = convert.DEFAULT_MAX_PIXELS, shard_size: int = 1024,
        workers: int = 0, progress: bool = True, source_description: Optional[str] = None,
        include_hidden: bool = False) -> dict:
    """Converts ``input_dir`` into ``output_dir`` with a local process pool; returns the
    manifest. ``input_dir`` may be a ``gs://``-style path (`exif_keras.common.files`); with more
    than one worker it must be one every process can read (not ``ram://``, which is per
    process)."""
    import tensorflow as tf

    plan = plan_conversion(input_dir, output_dir, layout, exif_variant, min_side, max_pixels,
                           shard_size, source_description, include_hidden)
    workers = workers or os.cpu_count() or 1
    prepare_output(output_dir)
    token = str(os.getpid())
    writers = {s: [tf.io.TFRecordWriter(temp_path(p, token)) for p in plan.final_paths[s]]
               for s in features.SPLITS}

    def close_all():
        for split_writers in writers.values():
            for w in split_writers:
                w.close()

    logging.info("Converting %d candidate images from %s (layout %s) with %d workers",
                 len(plan.items), input_dir, plan.layout, workers)
    tally = Tally()
    bar = StderrProgbar(len(plan.items), "make_records", enabled=progress)
    try:
        for index, result in enumerate(_results(plan.items, plan.options, workers)):
            tally.add(index, result, plan)
            if result.record is not None:
                split, shard = shard_of_result(result, plan)
                writers[split][shard].write(serialize_record(result))
            bar.update()
    except BaseException:
        close_all()
        discard_temporaries(output_dir)
        raise
    elapsed = bar.close()
    close_all()
    return finish_output(plan, tally, token, elapsed)


def summary_table(manifest: dict) -> str:
    """Written per split and field, then skipped by reason."""
    lines = [f"{'split':<12}{'written':>9}" + "".join(f"{f:>10}" for f in labels.FIELDS)]
    for split in features.SPLITS:
        c = manifest["counts"][split]
        lines.append(f"{split:<12}{c['total']:>9}" +
                     "".join(f"{sum(c[f].values()):>10}" for f in labels.FIELDS))
    lines.append(f"{'all':<12}{manifest['written']:>9}")
    lines.append("")
    if manifest["skipped"]:
        lines.append("skipped:")
        for reason, n in manifest["skipped"].items():
            lines.append(f"  {reason:<20}{n:>7}  {convert.SKIP_REASONS.get(reason, '')}")
    else:
        lines.append("skipped: none")
    if manifest["converted"]:
        lines.append("re-encoded:")
        for reason, n in manifest["converted"].items():
            lines.append(f"  {reason:<20}{n:>7}  {convert.CONVERTED_REASONS.get(reason, '')}")
    lines.append(f"({manifest['candidates']} files in {manifest['seconds']:.1f} s, "
                 f"{manifest['images_per_second']} images/s)")
    return "\n".join(lines)
