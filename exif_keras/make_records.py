r"""The offline converter: photos and their EXIF -> sharded TFRecords with binned labels.

    python -m exif_keras.make_records --input_dir=/data/mirflickr --layout=auto \
        --output_dir=data/records

With no --input_dir, the built-in synthetic sample is generated (MIRFLICKR-25k layout) and
converted through the very same reader. Writes ``<output_dir>/{train,validation,test}-%05d-of-%05d
.tfrecord``, ``manifest.json`` (counts, skips, binning, pixel statistics, versions) and
``skipped.tsv`` (every skipped file with its reason).

Shards are written under temporary names and renamed when complete, so a killed run never leaves a
file a reader would take for whole; the same command run again writes the same records.
"""

from __future__ import annotations

import collections
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from typing import Optional, Sequence

from absl import app, flags, logging

from exif_keras import __version__, convert, features, labels, sources
from exif_keras.progress import Progress

FLAGS = flags.FLAGS
_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None, "Folder to convert. Empty: generate and convert the built-in sample.")
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
_WORKERS = flags.DEFINE_integer("workers", 0, "Worker processes; 0 = one per CPU core.")
_SAMPLE_DIR = flags.DEFINE_string("sample_dir", "data/sample",
                                  "Where the built-in sample is generated (no --input_dir).")
_SAMPLE_COUNT = flags.DEFINE_integer("sample_count", 1500, "Images in the built-in sample.")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the built-in sample.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress on stderr.")

def _num_shards(candidates: int, shard_size: int) -> int:
    return max(1, math.ceil(candidates / max(1, shard_size)))


def _shard_paths(output_dir: str, split: str, count: int) -> list[str]:
    return [os.path.join(output_dir, features.SHARD_PATTERN.format(split=split, index=i, count=count))
            for i in range(count)]


def _remove_stale(output_dir: str, keep: Optional[set[str]] = None) -> None:
    """Drops temp files of a killed run and, given the shards to keep, shards of an earlier run."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        is_temp = ".tfrecord.tmp-" in name
        is_shard = name.endswith(".tfrecord") and name.split("-")[0] in features.SPLITS
        if is_temp or (keep is not None and is_shard and path not in keep):
            os.remove(path)


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


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
    from exif_keras import sample

    if sample.is_complete(sample_dir, count, seed):
        logging.info("Using the sample already generated in %s", sample_dir)
        return sample_dir
    os.makedirs(sample_dir, exist_ok=True)
    logging.info("Generating the built-in sample: %d images, seed %d, into %s", count, seed,
                 sample_dir)
    sample.generate_sample(sample_dir, count=count, seed=seed, progress=progress)
    return sample_dir


def run(input_dir: str, output_dir: str, layout: str = "auto", exif_variant: str = "auto",
        min_side: int = 128, max_pixels: int = convert.DEFAULT_MAX_PIXELS,
        shard_size: int = 1024,
        workers: int = 0, progress: bool = True, source_description: Optional[str] = None) -> dict:
    """Converts ``input_dir`` into ``output_dir``; returns the manifest."""
    import tensorflow as tf

    layout, items = sources.list_items(input_dir, layout, exif_variant)
    workers = workers or os.cpu_count() or 1
    options = convert.Options(min_side=min_side, max_pixels=max_pixels)
    os.makedirs(output_dir, exist_ok=True)

    candidates = collections.Counter(convert.split_of(item.source_id) for item in items)
    shard_counts = {s: _num_shards(candidates[s], shard_size) for s in features.SPLITS}
    final_paths = {s: _shard_paths(output_dir, s, shard_counts[s]) for s in features.SPLITS}
    tmp_suffix = f".tmp-{os.getpid()}"
    _remove_stale(output_dir)  # temp files of a killed run; old shards stay until this one is done
    writers = {s: [tf.io.TFRecordWriter(p + tmp_suffix) for p in final_paths[s]]
               for s in features.SPLITS}

    written = collections.Counter()
    class_counts = {s: {f: collections.Counter() for f in labels.FIELDS} for s in features.SPLITS}
    skipped = collections.Counter()
    problems = collections.Counter()
    converted = collections.Counter()
    exif_sources = collections.Counter()
    channel_sum = [0.0, 0.0, 0.0]
    channel_sumsq = [0.0, 0.0, 0.0]
    pixel_count = 0
    skipped_rows = []

    logging.info("Converting %d candidate images from %s (layout %s) with %d workers",
                 len(items), input_dir, layout, workers)
    bar = Progress(len(items), "make_records", enabled=progress)
    try:
        for result in _results(items, options, workers):
            problems.update(result.problems)
            if result.record is None:
                skipped[result.skip_reason] += 1
                skipped_rows.append((result.source_id, result.skip_reason, result.detail))
            else:
                rec = result.record
                example = features.make_example(
                    encoded=rec.encoded, height=rec.height, width=rec.width,
                    source_id=result.source_id, exposure_time=rec.exposure_time,
                    f_number=rec.f_number, iso=rec.iso, labels=rec.labels)
                shard = convert.shard_of(result.source_id, shard_counts[result.split])
                writers[result.split][shard].write(example.SerializeToString())
                written[result.split] += 1
                for field, index in rec.labels.items():
                    if index >= 0:
                        class_counts[result.split][field][index] += 1
                if rec.converted:
                    converted[rec.converted] += 1
                exif_sources.update(result.exif_sources)
                if rec.pixels:
                    pixel_count += rec.pixels
                    for c in range(3):
                        channel_sum[c] += float(rec.channel_sum[c])
                        channel_sumsq[c] += float(rec.channel_sumsq[c])
            bar.update(extra=f"written {sum(written.values())}, skipped {sum(skipped.values())}")
    except BaseException:
        for split_writers in writers.values():
            for w in split_writers:
                w.close()
        _remove_stale(output_dir)
        raise
    elapsed = bar.close()

    for split_writers in writers.values():
        for w in split_writers:
            w.close()
    for split in features.SPLITS:
        for path in final_paths[split]:
            os.replace(path + tmp_suffix, path)
    _remove_stale(output_dir, keep={p for ps in final_paths.values() for p in ps})

    if pixel_count:
        mean = [s / pixel_count for s in channel_sum]
        std = [math.sqrt(max(q / pixel_count - m * m, 0.0)) for q, m in zip(channel_sumsq, mean)]
    else:
        mean, std = [127.5] * 3, [64.0] * 3
    counts = {}
    for split in features.SPLITS:
        counts[split] = {"total": written[split]}
        for field in labels.FIELDS:
            counts[split][field] = {str(k): v for k, v in sorted(class_counts[split][field].items())}
    manifest = {
        "source": source_description or os.path.abspath(input_dir),
        "layout": layout,
        "exif_variant": exif_variant,
        "candidates": len(items),
        "written": sum(written.values()),
        "counts": counts,
        "skipped": dict(sorted(skipped.items())),
        "skip_reasons": {k: convert.SKIP_REASONS[k] for k in sorted(skipped)},
        "converted": dict(sorted(converted.items())),
        "exif_problems": dict(sorted(problems.items())),
        "exif_sources": dict(sorted(exif_sources.items())),
        "binning": labels.binning_spec(),
        "pixel_stats": {"train": {"mean": mean, "std": std, "pixels": pixel_count}},
        "shards": {s: [os.path.basename(p) for p in final_paths[s]] for s in features.SPLITS},
        "split": {"method": "sha256(source_id) -> [0,1): <0.8 train, <0.9 validation, else test"},
        "options": {"min_side": min_side, "max_pixels": max_pixels, "shard_size": shard_size},
        "versions": _versions(),
        "seconds": round(elapsed, 3),
        "images_per_second": round(len(items) / elapsed, 2) if elapsed > 0 else None,
    }
    with open(os.path.join(output_dir, "skipped.tsv.tmp"), "w") as f:
        f.write("source_id\treason\tdetail\n")
        for row in skipped_rows:
            f.write("\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in row) + "\n")
    os.replace(os.path.join(output_dir, "skipped.tsv.tmp"), os.path.join(output_dir, "skipped.tsv"))
    _write_json_atomic(os.path.join(output_dir, features.MANIFEST), manifest)
    return manifest


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


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    input_dir = _INPUT_DIR.value
    layout = _LAYOUT.value
    description = None
    if not input_dir:
        input_dir = ensure_sample(_SAMPLE_DIR.value, _SAMPLE_COUNT.value, _SAMPLE_SEED.value,
                                  progress=_PROGRESS.value)
        layout = "mirflickr25k"
        description = (f"built-in sample: {_SAMPLE_COUNT.value} images, seed "
                       f"{_SAMPLE_SEED.value}, in {os.path.abspath(input_dir)}")
    start = time.monotonic()
    try:
        manifest = run(input_dir, _OUTPUT_DIR.value, layout=layout,
                       exif_variant=_EXIF_VARIANT.value, min_side=_MIN_SIDE.value,
                       max_pixels=_MAX_PIXELS.value, shard_size=_SHARD_SIZE.value,
                       workers=_WORKERS.value, progress=_PROGRESS.value,
                       source_description=description)
    except sources.SourceError as e:
        print(f"make_records: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(manifest))
    print(f"Wrote {manifest['written']} records to {os.path.abspath(_OUTPUT_DIR.value)} "
          f"in {time.monotonic() - start:.1f} s")
    if manifest["written"] == 0:
        print("make_records: error: no image could be written; see skipped.tsv", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
