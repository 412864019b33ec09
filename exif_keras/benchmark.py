r"""Speed benchmark: python -m exif_keras.benchmark [--quick] [--sections=...] [--markdown]

Measures, each side by side in ONE process (interleaved repeats, median and ratio reported: the
machine is usually shared and noisy, so a ratio of two figures taken at the same moment means more
than either figure alone):

1. **pipeline**: images/s of :func:`exif_keras.data.pipeline.make_dataset` (evaluation grid and
   training crops; batch 32, k=8, P=128 by default) against a plain ``TFRecordDataset -> parse ->
   tf.io.decode_jpeg`` of the very same records (same read parallelism, AUTOTUNE map, same
   ``dct_method``; each image reduced to its shape and first pixel, batched by 32: the bare decode
   rate, see :func:`plain_decode_dataset`), so the ratio is the cost of everything but the
   decoding. Also images per CPU-second (process CPU time, every thread; ``time.process_time``)
   and the cores used, since the goal is "pipeline at no less than 0.85x the decode rate *per
   CPU-second*" (issue 16).
2. **train**: a training step (``model.train_on_batch``: forward, backward of the head, Adam) of
   the paper's model (VGG16 trunk to block3_conv3, random weights: the speed is the same, k=8,
   P=128, F=64, batch B) against the frozen trunk's forward pass alone on the same batch folded to
   ``[B*k, P, P, 3]`` (``trunk_of(model)`` in a ``tf.function``, no XLA). Goal: step >= 0.85x the
   trunk forward rate, since the frozen trunk needs no backward pass. A FLOP count of the per-patch
   network gives the ceiling of that ratio (trunk forward / (trunk forward + head forward and
   backward, ~3x its forward)).
3. **patch_modes**: training step images/s of ``patch_mode="folded"`` against
   ``"time_distributed"`` (same weights, same batch). When "train" runs too, both sections share
   one interleaved measurement (the folded step is the same model).
4. **serving**: ms per photo through the exported SavedModel (``serving.exporter.export_model``,
   reloaded with ``tf.saved_model.load(...).signatures["serving_default"]``) at batch 1 and 32 of
   encoded 500x375 JPEGs, against the in-process Keras model (``predict_on_batch``) on the same,
   already extracted patches; the difference is the in-graph decoding and patching, also timed
   alone (``signature.preprocess``). Skipped (with the reason) when exif_keras.serving cannot be
   imported or fails.
5. **convert**: images/s of ``python -m exif_keras.make_records`` (local runner, ``--workers``)
   against Pillow's decode of the same files in one process, and beside it the same conversion on
   Apache Beam's DirectRunner (``--runner=beam``, as many workers; skipped with the reason when
   Beam is not installed), see :func:`convert_section`.
6. **precision**: the training step (as in "train") and the trunk's forward pass on a batch of
   ``PRECISION_TRUNK_PATCHES`` (32) PxP patches, each under the ``float32`` and the
   ``mixed_bfloat16`` dtype policy (same weights), all four measured interleaved: the bfloat16
   ratios say what ``--mixed_precision=bfloat16`` buys on this machine (on a CPU, it pays off
   where oneDNN has AVX512-BF16 or AMX; the section records whether /proc/cpuinfo lists them).
7. **limits**: the FLOP rate of a large float32 matrix product (``tf.matmul`` of two n x n
   matrices, ``2 n^3`` FLOPs a call; n 2048 on a CPU, 8192 on a GPU, 512 with --quick): the
   practical ceiling of this CPU or GPU, measured in the same interleaved rounds as the trunk's
   forward pass (folded ``[B*k, P, P, 3]``) and the training step (``train_on_batch``) of two
   configurations, "paper" (the model above, train batch B) and "demo" (the demo's model as
   pipelines/demo.flags sets it, read at run time: scratch backbone, its batch; --quick keeps the
   train batch and k), and each trunk convolution alone on an input of its shape. Each is
   reported as achieved GFLOP/s (images/s x FLOPs per image, counted from the Conv2D and Dense
   layers: the forward pass; for the step forward and backward, ~3x the forward of whatever
   trains) and as ``fraction_of_ceiling``. Also the oneDNN instruction set in effect (a child
   process with ``ONEDNN_VERBOSE=1``) against ``ONEDNN_MAX_CPU_ISA``, with a note when the limit
   did not take effect. See :func:`exif_keras.analysis.benchmarks.limits_section`.

Method (``exif_keras.analysis.timing``): every section builds its measurements first, calls each
one untimed to trace and warm up, then runs ``repeats`` rounds; in each round every measurement
runs ``steps`` timed iterations, in an order rotated from round to round. Input pipelines get a
fresh iterator per measurement and a few untimed batches first (so no buffer filled while
another measurement ran is counted, and no idle pipeline steals CPU from the measured one). The
garbage collector is off while timing. Reported: the median rate and its range, and ``ratio`` =
median / median of the baseline (``paired``: the median of the per-round ratios, robust to slow
drifts of the machine's load).

Data: a sample of synthetic photos (:func:`exif_keras.records.sample.generate_sample`) converted
with :func:`exif_keras.records.writer.run` into a temporary folder (``--work_dir`` keeps and
reuses it), so the benchmark needs no network and no user data. Field "shutter", task "fine" for
the pipeline: every sample photo has a class there, so the pipeline's label filter keeps every
record and both sides decode the same images.

``--quick``: k=2, P=64, batch 4, 32 photos, 3 rounds of 2 steps: a smoke run of a minute or less.
``--json_out=PATH`` writes every figure (and the per-round samples) as JSON; ``--markdown`` prints a
Markdown table for BUILD.md with the machine (CPU model, cores, TensorFlow version, GPU).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from absl import app, flags, logging

from exif_keras.analysis import benchmarks
from exif_keras.common import files
from exif_keras.modeling import backbones
from exif_keras.training import devices

_SECTIONS = flags.DEFINE_list("sections", list(benchmarks.SECTIONS),
                              f"Sections to run, any of {','.join(benchmarks.SECTIONS)}.")
_QUICK = flags.DEFINE_boolean("quick", False,
                              "Tiny configuration (k=2, P=64, batch 4, 32 photos, 3 rounds of 2 "
                              "steps): a smoke run; flags given explicitly still win.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None,
                                   "Training batch B of the train and patch_modes sections; "
                                   "default 8 on CPU, 32 on GPU.")
_PIPELINE_BATCH_SIZE = flags.DEFINE_integer("pipeline_batch_size", 32,
                                            "Batch of the pipeline section.", lower_bound=1)
_NUM_PATCHES = flags.DEFINE_integer("num_patches", 8, "Patches k per image.")
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 128, "Patch side P in pixels.")
_FILTERS = flags.DEFINE_integer("filters", 64, "Filters F of the head convolutions.")
_BACKBONE = flags.DEFINE_enum("backbone", "vgg16", list(backbones.BACKBONES),
                              "Per-patch trunk (random weights either way).")
_TRUNK_LAYER = flags.DEFINE_string("trunk_layer", "block3_conv3",
                                   "Last VGG16 layer of the trunk.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved rounds per section (medians).",
                                lower_bound=1)
_STEPS = flags.DEFINE_integer(
    "steps", None, "Timed iterations per measurement (pipeline batches, training steps, serving "
    "calls); default per section: 8 batches; 2 steps on CPU (20 on GPU; limits too, its matmul "
    "at least 4 calls, 8 with --quick, 20 on GPU, each layer alone 1 call on CPU); serving "
    "max(1, 8/batch) calls on CPU (max(5, 64/batch) on GPU).", lower_bound=1)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "Photos in the generated sample.",
                                   lower_bound=1)
_SERVING_BATCH_SIZES = flags.DEFINE_list("serving_batch_sizes", ["1", "32"],
                                         "Batch sizes of the serving section.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(devices.PRECISIONS),
    "Dtype policy of the other sections (the precision section measures float32 and bfloat16): "
    "auto: bfloat16 on GPUs of compute capability 8.0+, float16 on older GPUs, float32 on CPUs.")
_CONVERT_DIRS = flags.DEFINE_list(
    "convert_dirs", [], "More folders for the convert section (any make_records layout), e.g. "
    "../shared/corpora/real-exif.")
_CONVERT_WORKERS = flags.DEFINE_integer("convert_workers", 0,
                                        "make_records workers in the convert section; 0: per core.")
_WORK_DIR = flags.DEFINE_string("work_dir", None,
                                "Keeps (and reuses) the sample and records here; default a "
                                "temporary folder, removed at the end.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write every figure to this JSON file.")
_MARKDOWN = flags.DEFINE_boolean("markdown", False,
                                 "Print a Markdown table (for BUILD.md) instead of the text one.")


def config_from_flags() -> benchmarks.BenchConfig:
    """BenchConfig from the flags; --quick presets the values of flags not given explicitly."""
    values = {
        "sections": tuple(_SECTIONS.value), "batch_size": _BATCH_SIZE.value,
        "pipeline_batch_size": _PIPELINE_BATCH_SIZE.value, "num_patches": _NUM_PATCHES.value,
        "patch_size": _PATCH_SIZE.value, "filters": _FILTERS.value, "backbone": _BACKBONE.value,
        "trunk_layer": _TRUNK_LAYER.value, "repeats": _REPEATS.value, "steps": _STEPS.value,
        "num_images": _NUM_IMAGES.value,
        "serving_batch_sizes": tuple(int(b) for b in _SERVING_BATCH_SIZES.value),
        "mixed_precision": _MIXED_PRECISION.value, "work_dir": _WORK_DIR.value,
        "convert_dirs": tuple(_CONVERT_DIRS.value), "convert_workers": _CONVERT_WORKERS.value,
    }
    if not _QUICK.value:
        return benchmarks.BenchConfig(**values)
    explicit = {k: v for k, v in values.items() if flags.FLAGS[k].present}
    return benchmarks.BenchConfig.quick_config(**{**{k: v for k, v in values.items()
                                          if k not in ("batch_size", "num_patches", "patch_size",
                                                       "repeats", "steps", "num_images")},
                                       **explicit})


FLAG_NAMES = ("sections", "quick", "batch_size", "pipeline_batch_size", "num_patches",
              "patch_size", "filters", "backbone", "trunk_layer", "repeats", "steps",
              "num_images", "serving_batch_sizes", "mixed_precision", "work_dir", "json_out",
              "markdown", "convert_dirs", "convert_workers")


def command_line() -> str:
    """The command that reproduces this run: the benchmark's flags given explicitly."""
    given = [flags.FLAGS[name].serialize() for name in FLAG_NAMES if flags.FLAGS[name].present]
    return " ".join(["python -m exif_keras.benchmark"] + [shlex.quote(a) for a in given])


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's and make_records' INFO lines
    try:
        config = config_from_flags()
    except ValueError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 2
    result = benchmarks.run_benchmark(config,
                                      log=lambda s: print(s, file=sys.stderr, flush=True))
    result["command"] = command_line()
    print(benchmarks.format_markdown(result) if _MARKDOWN.value
          else benchmarks.format_text(result))
    if _JSON_OUT.value:
        directory = os.path.dirname(os.path.abspath(_JSON_OUT.value))
        os.makedirs(directory, exist_ok=True)
        files.write_json_atomic(_JSON_OUT.value, result)
        print(f"figures: {_JSON_OUT.value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)
