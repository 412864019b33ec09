"""The speed benchmark's sections (convert, pipeline, train, patch_modes, serving, precision,
limits), its configuration, the data it measures on and its reports (text, Markdown, JSON-ready
dict).

The library of ``python -m exif_keras.benchmark``, whose docstring describes every section and
the method; the timing itself (interleaved rounds, medians, ratios) is
:mod:`exif_keras.analysis.timing`. Everything runs in one process on a generated sample, so the
benchmark needs no network and no user data.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from exif_keras.analysis.timing import Measurement, Sample, measure_interleaved, ratio, summarise
from exif_keras.common import labels
from exif_keras.data import patches, pipeline
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.records import features, sample, writer
from exif_keras.records import manifest as records_manifest
from exif_keras.training import devices

try:  # optional: the serving section is skipped (with the reason) when the export is unusable
    from exif_keras.serving import exporter, signature
    EXPORT_IMPORT_ERROR: Optional[str] = None
except Exception as e:  # noqa: BLE001 - any failure to import only disables that section
    exporter = signature = None
    EXPORT_IMPORT_ERROR = f"{type(e).__name__}: {e}"

SECTIONS = ("convert", "pipeline", "train", "patch_modes", "serving", "precision", "limits")
DATA_SECTIONS = ("convert", "pipeline", "serving")  # those that need the generated sample
PIPELINE_FIELD, PIPELINE_TASK = "shutter", "fine"   # every sample photo has a fine shutter class
SERVING_FIELD, SERVING_TASK = "shutter", "binary"
SERVING_IMAGE_SIZE = (500, 375)                      # width, height of the served JPEGs
SERVING_JPEG_QUALITY = 90
PIPELINE_SPLIT = "train"
PIPELINE_WARMUP_BATCHES = 3   # untimed batches of every fresh pipeline iterator
PAPER_BATCH_SIZE = 32         # pipelines/paper_*.flags
GOAL_RATIO = 0.85             # pipeline per CPU-second vs decode; training step vs trunk forward (issue 16)
DATA_MARKER = "benchmark_data.json"
PRECISION_TRUNK_PATCHES = 32  # patches per trunk forward in the precision section
PRECISIONS = (("float32", "float32"), ("bfloat16", "mixed_bfloat16"))  # name, Keras policy
# limits: the ceiling's matmul size n and its calls per round, by device and --quick
LIMITS_MATMUL = {"cpu": (2048, 4), "cpu_quick": (512, 8), "gpu": (8192, 20),
                 "gpu_quick": (2048, 8)}
# The demo's training flagfile (make demo), read at run time; the constants stand in where it is
# missing (an installed package) or does not parse.
DEMO_FLAGFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "pipelines", "demo.flags")
DEMO_DEFAULTS = {"backbone": "scratch", "trunk_layer": "block3_conv3", "num_patches": 8,
                 "patch_size": 64, "filters": 16, "scratch_width_divisor": 4,
                 "normalization": "dataset", "batchnorm_momentum": 0.9, "batch_size": 32}
ONEDNN_ISA_VARIABLES = devices.ONEDNN_ISA_ENV  # ONEDNN_MAX_CPU_ISA, DNNL_MAX_CPU_ISA
ONEDNN_PROBE_TIMEOUT_S = 120.0
# One tiny convolution on the CPU, so that oneDNN (ONEDNN_VERBOSE=1) prints its instruction set.
ONEDNN_PROBE = ("import tensorflow as tf\n"
                "with tf.device('/CPU:0'):\n"
                "    tf.nn.conv2d(tf.ones([1, 8, 8, 3]), tf.ones([3, 3, 3, 4]), 1, 'SAME')\n")


# ------------------------------------------------------------------------------- configuration

@dataclasses.dataclass
class BenchConfig:
    """What to measure. ``None`` means automatic (see :meth:`resolved`)."""

    sections: tuple = SECTIONS
    batch_size: Optional[int] = None        # training batch B: 8 on CPU, 32 on GPU
    pipeline_batch_size: int = 32
    num_patches: int = 8
    patch_size: int = 128
    filters: int = 64
    backbone: str = "vgg16"
    trunk_layer: str = "block3_conv3"
    repeats: int = 5
    steps: Optional[int] = None             # timed iterations per measurement; None: per section
    num_images: int = 256                   # photos in the generated sample
    serving_batch_sizes: tuple = (1, 32)
    mixed_precision: str = "auto"           # devices.resolve_policy: float32 on a CPU
    work_dir: Optional[str] = None          # None: a temporary folder, removed at the end
    seed: int = 0
    quick: bool = False
    convert_dirs: tuple = ()                # more folders for the convert section (any layout)
    convert_workers: int = 0                # make_records --workers; 0: one per core

    def __post_init__(self):
        self.sections = tuple(self.sections)
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown or not self.sections:
            raise ValueError(f"sections must be a non-empty subset of {SECTIONS}, got "
                             f"{self.sections}")
        self.serving_batch_sizes = tuple(int(b) for b in self.serving_batch_sizes)
        if self.mixed_precision not in devices.PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(devices.PRECISIONS)}"
                             f", got {self.mixed_precision!r}")
        for name in ("pipeline_batch_size", "num_patches", "patch_size", "filters", "repeats",
                     "num_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.serving_batch_sizes or min(self.serving_batch_sizes) < 1:
            raise ValueError(f"serving_batch_sizes must be positive, got "
                             f"{self.serving_batch_sizes}")

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        """The --quick configuration: a tiny model and a few steps, about a minute on 2 cores."""
        base = dict(num_patches=2, patch_size=64, batch_size=4, num_images=32, repeats=3, steps=2,
                    quick=True)
        base.update(overrides)
        return cls(**base)

    def model_config(self, patch_mode: str = "folded", num_classes: int = 2,
                     head: str = "shutter"):
        """The measured model: one classification head named ``head``."""
        return model_lib.ModelConfig(
            heads=(model_lib.HeadConfig(head, num_classes),), num_patches=self.num_patches,
            patch_size=self.patch_size,
            backbone=self.backbone, trunk_layer=self.trunk_layer, backbone_weights=None,
            filters=self.filters, patch_mode=patch_mode)

    def resolved(self, gpu: bool) -> dict:
        """The automatic values made concrete for this machine."""
        steps = self.steps
        return {
            "batch_size": self.batch_size or (32 if gpu else 8),
            "mixed_precision": self.mixed_precision in ("on", "float16", "bfloat16")
                               or (self.mixed_precision == "auto" and gpu),
            "pipeline_steps": steps or 8,
            "train_steps": steps or (20 if gpu else 2),
            "serving_steps": {b: steps or (max(5, 64 // b) if gpu else max(1, 8 // b))
                              for b in self.serving_batch_sizes},
        }


# ------------------------------------------------------------------------------------- machine

def machine_info() -> dict:
    """CPU model, cores, CPU quota, GPUs and library versions."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    quota = None
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            limit, period = f.read().split()[:2]
            if limit != "max":
                quota = round(int(limit) / int(period), 2)
    except (OSError, ValueError):
        pass
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001
            details = {}
        gpus.append(details.get("device_name") or gpu.name)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu_quota": quota,
            "gpus": gpus, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


# ----------------------------------------------------------------------------------------- data

def prepare_data(work_dir: str, num_images: int, seed: int = 0,
                 log: Callable[[str], None] = lambda s: None) -> tuple[str, str]:
    """(sample_dir, records_dir) under ``work_dir``: the synthetic sample and its records, made
    once (a marker file tells a later run with the same count and seed to reuse them)."""
    sample_dir = os.path.join(work_dir, "sample")
    records_dir = os.path.join(work_dir, "records")
    marker = os.path.join(work_dir, DATA_MARKER)
    wanted = {"num_images": num_images, "seed": seed, "sample_version": sample.SAMPLE_VERSION}
    try:
        with open(marker) as f:
            if (json.load(f) == wanted
                    and os.path.exists(os.path.join(records_dir, features.MANIFEST))):
                log(f"reusing the sample and records in {work_dir}")
                return sample_dir, records_dir
    except (OSError, ValueError):
        pass
    if os.path.exists(marker):
        os.remove(marker)
    start = time.perf_counter()
    log(f"generating {num_images} sample photos in {sample_dir}")
    # A small sample is quicker in this process than in spawned workers importing TensorFlow.
    sample.generate_sample(sample_dir, count=num_images, seed=seed, progress=False,
                           workers=1 if num_images <= 64 else None)
    # One worker: a spawned pool would re-import this module (and TensorFlow) in every worker.
    writer.run(sample_dir, records_dir, layout="mirflickr25k", workers=1, progress=False,
                     source_description=f"benchmark sample: {num_images} images, seed {seed}")
    with open(marker, "w") as f:
        json.dump(wanted, f)
    log(f"sample and records ready in {time.perf_counter() - start:.1f} s")
    return sample_dir, records_dir


def serving_images(sample_dir: str, count: int) -> list[bytes]:
    """``count`` encoded 500x375 JPEGs (q90): the sample photos cropped and scaled to that size
    (cycled when there are fewer photos than ``count``)."""
    from PIL import Image, ImageOps

    paths = sorted(os.path.join(sample_dir, n) for n in os.listdir(sample_dir)
                   if n.startswith("im") and n.endswith(".jpg"))
    if not paths:
        raise FileNotFoundError(f"no sample photo (im*.jpg) in {sample_dir!r}")
    encoded = []
    for path in paths[:count]:
        with Image.open(path) as image:
            fitted = ImageOps.fit(image.convert("RGB"), SERVING_IMAGE_SIZE)
        buffer = io.BytesIO()
        fitted.save(buffer, "JPEG", quality=SERVING_JPEG_QUALITY)
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


# ------------------------------------------------------------------------------------- measuring

def _count(batch) -> int:
    """Images in a batch: the leading dimension of its first component."""
    x = batch[0] if isinstance(batch, tuple) else batch
    return int(x.shape[0])


def _pipeline_measurement(name: str, make: Callable[[], tf.data.Dataset],
                          steps: int) -> Measurement:
    """A measurement of ``steps`` batches of a fresh iterator of ``make()``, after warm-up."""
    dataset = make()
    state = {}

    def start():
        state["it"] = iter(dataset)
        for _ in range(PIPELINE_WARMUP_BATCHES):
            next(state["it"])

    def step():
        return _count(next(state["it"]))

    def stop():
        state.pop("it", None)

    return Measurement(name, step, steps, start, stop, warmup=0)


# --------------------------------------------------------------------------------------- sections

def plain_decode_dataset(records_dir: str, split: str, batch_size: int) -> tf.data.Dataset:
    """The baseline, the bare decode rate: TFRecordDataset -> parse image/encoded ->
    tf.io.decode_jpeg (make_dataset's read and map parallelism and dct_method), repeated.

    Each decoded image is reduced to its shape and first pixel inside the map (which still needs
    the whole decode) and those are batched: images of different sizes cannot be batched densely,
    and ``ragged_batch`` of the full images costs about as much as the decoding itself (measured
    on 2 cores: half the rate), which would flatter the pipeline."""
    files = pipeline.list_shards(records_dir, split)
    spec = {features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}

    def decode(record):
        encoded = tf.io.parse_single_example(record, spec)[features.IMAGE_ENCODED]
        image = tf.io.decode_jpeg(encoded, channels=3, dct_method=patches.DCT_METHOD)
        return tf.shape(image), image[0, 0]

    ds = tf.data.TFRecordDataset(files,
                                 num_parallel_reads=min(len(files), pipeline.MAX_CYCLE_LENGTH))
    ds = ds.repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pillow_decode(paths: Sequence[str]) -> None:
    """The plain Pillow decode of every file, in this one process: read, open, load."""
    from PIL import Image

    for path in paths:
        try:
            with open(path, "rb") as f, Image.open(io.BytesIO(f.read())) as image:
                image.load()
        except Exception:  # noqa: BLE001 - corrupt files cost their failed decode too
            pass


def beam_available() -> Optional[str]:
    """None when Apache Beam can be imported, else why not (the DirectRunner side is skipped)."""
    import importlib.util

    if importlib.util.find_spec("apache_beam") is None:
        return "Apache Beam is not installed (pip install -e '.[beam]')"
    return None


def _run_make_records(input_dir: str, out: str, extra: Sequence[str]) -> Sample:
    """``python -m exif_keras.make_records`` in a child process; its conversion time from the
    manifest, its CPU time (child and its workers) from ``RUSAGE_CHILDREN``."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "exif_keras.make_records", f"--input_dir={input_dir}",
         f"--output_dir={out}", "--progress=false", *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"make_records {' '.join(extra)} failed: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(out, features.MANIFEST)) as f:
        manifest = json.load(f)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(manifest["seconds"], cpu, manifest["candidates"])


def convert_section(config: BenchConfig, inputs: Mapping[str, str], work_dir: str,
                    log: Callable[[str], None]) -> dict:
    """make_records over a folder against Pillow's decode of the same files in one process: the
    converter is decode bound, so that decode rate is its yardstick. Beside it, the same
    conversion on Apache Beam's DirectRunner (``--runner=beam``, ``--direct_num_workers`` = the
    local runner's workers), when Beam is installed.

    The converter runs as users run it, ``python -m exif_keras.make_records`` in a child process
    (its workers then stay free of TensorFlow, which this process has loaded); its rate is the
    manifest's ``seconds``: the conversion itself, worker pool start included, interpreter and
    TensorFlow start-up excluded (a one-off cost of a few seconds, nothing on MIRFLICKR's scale).
    For the Beam runner ``seconds`` runs from the listing to the manifest, so it includes the
    pipeline's construction and the DirectRunner's start-up. CPU time: the child and its workers
    (``RUSAGE_CHILDREN``), start-up included. The sides alternate, round after round."""
    from exif_keras.records import sources

    workers = config.convert_workers or os.cpu_count() or 1
    no_beam = beam_available()
    beam_options = f"--runner=DirectRunner,--direct_num_workers={workers}"
    samples, ratios = {}, {}
    for label, input_dir in inputs.items():
        layout, items = sources.list_items(input_dir)
        paths = [item.image_path for item in items]
        log(f"  {label}: {len(items)} files ({layout}) in {input_dir}")
        conv, dec, direct = (f"make_records_{label}", f"pillow_decode_{label}",
                             f"beam_direct_{label}")
        samples[conv], samples[dec] = [], []
        if not no_beam:
            samples[direct] = []
        for r in range(config.repeats):
            samples[conv].append(_run_make_records(
                input_dir, os.path.join(work_dir, f"convert_{label}"), [f"--workers={workers}"]))
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            pillow_decode(paths)
            samples[dec].append(Sample(time.perf_counter() - wall, time.process_time() - cpu,
                                       len(paths)))
            line = (f"  round {r + 1}/{config.repeats}: make_records "
                    f"{len(paths) / samples[conv][-1].wall_s:.1f} img/s, Pillow decode "
                    f"{len(paths) / samples[dec][-1].wall_s:.1f} img/s")
            if not no_beam:
                samples[direct].append(_run_make_records(
                    input_dir, os.path.join(work_dir, f"convert_beam_{label}"),
                    ["--runner=beam", f"--beam_pipeline_options={beam_options}"]))
                line += f", Beam DirectRunner {len(paths) / samples[direct][-1].wall_s:.1f} img/s"
            log(line)
        ratios[f"make_records_vs_pillow_decode_{label}"] = ratio(samples, conv, dec)
        if not no_beam:
            ratios[f"beam_direct_vs_make_records_{label}"] = ratio(samples, direct, conv)
    notes = [f"make_records (child process, {workers} workers) against Pillow in one "
             "process; make_records img/s from its manifest (conversion only); its "
             "img/CPU-s counts the child's start-up too"]
    notes.append(f"beam_direct: make_records --runner=beam --beam_pipeline_options={beam_options}"
                 " (same records); its seconds include the pipeline's start-up; its ratio is to "
                 "make_records, not to the Pillow decode" if not no_beam
                 else f"beam_direct skipped: {no_beam}")
    return {
        "baseline": "pillow_decode",
        "workers": workers,
        "inputs": dict(inputs),
        "measurements": {name: summarise(s) for name, s in samples.items()},
        "ratios": ratios,
        "notes": notes,
    }


def pipeline_section(config: BenchConfig, records_dir: str, steps: int,
                     log: Callable[[str], None] = lambda s: None) -> dict:
    """make_dataset (eval and training) against plain decode_jpeg of the same records."""
    split, bs = PIPELINE_SPLIT, config.pipeline_batch_size
    kept = pipeline.count_examples(records_dir, split, PIPELINE_FIELD, PIPELINE_TASK)
    total = int(records_manifest.read_manifest(records_dir)["counts"][split]["total"])
    if kept == 0:
        raise RuntimeError(f"no {split} record in {records_dir!r} for the pipeline benchmark")
    common = dict(field=PIPELINE_FIELD, task=PIPELINE_TASK, repeat=True)
    data_config = pipeline.DataConfig(records_dir, batch_size=bs, num_patches=config.num_patches,
                                  patch_size=config.patch_size)
    measurements = [
        _pipeline_measurement("make_dataset_eval", lambda: pipeline.make_dataset(
            data_config, split, is_training=False, **common), steps),
        _pipeline_measurement("make_dataset_train", lambda: pipeline.make_dataset(
            data_config, split, is_training=True, seed=config.seed, **common), steps),
        _pipeline_measurement("decode_jpeg", lambda: plain_decode_dataset(
            records_dir, split, bs), steps),
    ]
    samples = measure_interleaved(measurements, config.repeats, log)
    result = {
        "baseline": "decode_jpeg",
        "records": total,
        "records_kept_by_pipeline": kept,
        "batch_size": bs,
        "batches_per_round": steps,
        "measurements": {name: summarise(s) for name, s in samples.items()},
        "ratios": {
            "eval_vs_decode": ratio(samples, "make_dataset_eval", "decode_jpeg"),
            "train_vs_decode": ratio(samples, "make_dataset_train", "decode_jpeg"),
        },
        "goal": f"make_dataset images per CPU-second >= {GOAL_RATIO}x decode_jpeg's",
    }
    result["goal_met"] = {k: r["per_cpu"] >= GOAL_RATIO for k, r in result["ratios"].items()}
    notes = []
    if kept != total:
        notes.append(f"the label filter keeps {kept} of {total} records; the baseline decodes all")
    for key, r in result["ratios"].items():
        if r["per_cpu"] < GOAL_RATIO:
            notes.append(f"{key}: {r['per_cpu']:.3f}x the decode rate per CPU-second, below the "
                         f"{GOAL_RATIO}x goal")
    result["notes"] = notes
    return result


def layer_flops(model: keras.Model) -> dict[str, int]:
    """{layer name: multiply-adds x 2 of one forward pass on one input} of the Conv2D and Dense
    layers of a (sub-)model, from their kernel and output shapes: a Conv2D costs
    ``2 * H_out * W_out * kh * kw * C_in * C_out``, a Dense ``2 * inputs * units``. Biases,
    BatchNormalization, activations and pooling (a few percent) are not counted."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            out[layer.name] = int(2 * h * w * kh * kw * cin * cout)
        elif isinstance(layer, keras.layers.Dense):
            out[layer.name] = int(2 * layer.kernel.shape[0] * layer.kernel.shape[1])
    return out


def per_patch_flops(model: keras.Model) -> dict:
    """Multiply-adds x 2 of the convolutions and dense layers of one patch: trunk and head
    (:func:`layer_flops`), and the training step's estimate per patch."""
    trunk, head = model_lib.trunk_of(model), model_lib.head_of(model)
    out = {"trunk": sum(layer_flops(trunk).values()), "head": sum(layer_flops(head).values()),
           "trunk_trainable": bool(trunk.trainable)}
    # Training: a frozen trunk runs forward only; the head forward and backward (~2x its forward).
    # A trainable trunk (scratch) needs its backward too.
    train = out["trunk"] * (1 if not trunk.trainable else 3) + 3 * out["head"]
    out["train_step_per_patch"] = train
    out["ceiling_train_vs_trunk"] = out["trunk"] / train if train else None
    return out


def train_notes(step_ratio: float, cost: dict, trainable: int, batch_size: int) -> list[str]:
    """The train section's notes: below the goal, why (the FLOP ceiling of
    :func:`per_patch_flops` out of reach, or the head below the trunk's FLOP rate) and, at a
    batch under the paper's, that the per-step work then weighs more per image."""
    if step_ratio >= GOAL_RATIO:
        return []
    notes = [f"training step at {step_ratio:.3f}x the trunk forward rate, below the "
             f"{GOAL_RATIO}x goal"]
    ceiling = cost["ceiling_train_vs_trunk"]
    if ceiling is not None and ceiling < GOAL_RATIO:
        notes.append(f"the goal is out of reach at this configuration: by FLOPs the step "
                     f"cannot exceed {ceiling:.2f}x (head forward + backward = "
                     f"{3 * cost['head'] / cost['trunk']:.0%} of the trunk forward"
                     + ("; the trunk is trainable and needs its backward too"
                        if cost["trunk_trainable"] else "") + ")")
        return notes
    if ceiling is not None:
        notes.append(f"by FLOPs the step could reach {ceiling:.2f}x: the rest is the head "
                     f"running below the trunk's FLOP rate (small convolutions, BatchNorm "
                     f"and ReLU in training mode, their backward) and Adam updating "
                     f"{trainable:,} parameters every step")
    if batch_size < PAPER_BATCH_SIZE:
        notes.append(f"at batch {batch_size}; the paper trains at batch {PAPER_BATCH_SIZE} "
                     f"(--batch_size={PAPER_BATCH_SIZE}), where the work done once per step "
                     f"(the update of the parameters) weighs {batch_size}/{PAPER_BATCH_SIZE} "
                     f"as much per image")
    return notes


def _synthetic_batch(config: BenchConfig, resolved: dict):
    """(rng, patches uint8 [B, k, P, P, 3], binary labels [B]) of the model measurements."""
    b, k, p = resolved["batch_size"], config.num_patches, config.patch_size
    rng = np.random.default_rng(config.seed)
    x = tf.constant(rng.integers(0, 256, (b, k, p, p, 3), dtype=np.uint8))
    y = tf.constant(rng.integers(0, 2, (b,)), tf.int32)
    return rng, x, y


def model_sections(config: BenchConfig, resolved: dict, which: Sequence[str],
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """The "train" and/or "patch_modes" sections, from one interleaved measurement."""
    b, k, p = resolved["batch_size"], config.num_patches, config.patch_size
    steps = resolved["train_steps"]
    rng, x, y = _synthetic_batch(config, resolved)

    start = time.perf_counter()
    folded = model_lib.build_model(config.model_config("folded"))
    initial = folded.get_weights()
    model_lib.compile_model(folded)
    log(f"  built the folded model in {time.perf_counter() - start:.1f} s")

    def train_step(model):
        def step():
            model.train_on_batch(x, y)
            return b
        return step

    measurements = [Measurement("train_step_folded", train_step(folded), steps)]
    if "train" in which:
        trunk = model_lib.trunk_of(folded)
        folded_input = tf.reshape(folded.get_layer("normalize")(x), (b * k, p, p, 3))

        @tf.function(jit_compile=False)
        def trunk_forward(inputs):
            return tf.reduce_sum(tf.cast(trunk(inputs, training=False), tf.float32))

        def forward_step():
            trunk_forward(folded_input).numpy()
            return b

        measurements.append(Measurement("trunk_forward", forward_step, steps))
    if "patch_modes" in which:
        start = time.perf_counter()
        distributed = model_lib.build_model(config.model_config("time_distributed"))
        distributed.set_weights(initial)
        model_lib.compile_model(distributed)
        log(f"  built the time_distributed model in {time.perf_counter() - start:.1f} s")
        measurements.append(Measurement("train_step_time_distributed", train_step(distributed),
                                        steps))
    samples = measure_interleaved(measurements, config.repeats, log)
    summaries = {name: summarise(s) for name, s in samples.items()}
    common = {"batch_size": b, "num_patches": k, "patch_size": p, "filters": config.filters,
              "backbone": config.backbone, "trunk_layer": config.trunk_layer,
              "dtype_policy": keras.config.dtype_policy().name,
              "train_step_jit_compile": bool(getattr(folded, "jit_compile", False)),
              "steps_per_round": steps}
    out = {}
    if "train" in which:
        r = ratio(samples, "train_step_folded", "trunk_forward")
        cost = per_patch_flops(folded)
        trainable = int(sum(np.prod(v.shape) for v in folded.trainable_variables))
        notes = train_notes(r["wall"], cost, trainable, b)
        out["train"] = {
            **common, "baseline": "trunk_forward",
            "measurements": {n: summaries[n] for n in ("train_step_folded", "trunk_forward")},
            "ratios": {"train_step_vs_trunk_forward": r},
            "flops_per_patch": cost,
            "trainable_parameters": trainable,
            "goal": f"training step images/s >= {GOAL_RATIO}x the trunk forward's",
            "goal_met": {"train_step_vs_trunk_forward": r["wall"] >= GOAL_RATIO},
            "notes": notes,
        }
    if "patch_modes" in which:
        r = ratio(samples, "train_step_folded", "train_step_time_distributed")
        out["patch_modes"] = {
            **common, "baseline": "train_step_time_distributed",
            "measurements": {n: summaries[n] for n in ("train_step_folded",
                                                       "train_step_time_distributed")},
            "ratios": {"folded_vs_time_distributed": r},
            "notes": ([] if r["wall"] >= 1.0 else
                      [f"folded is slower than time_distributed here ({r['wall']:.2f}x)"]),
        }
    return out


def precision_section(config: BenchConfig, resolved: dict,
                      log: Callable[[str], None] = lambda s: None) -> dict:
    """Training step and trunk forward under float32 and mixed_bfloat16, interleaved."""
    b, k, p = resolved["batch_size"], config.num_patches, config.patch_size
    steps = resolved["train_steps"]
    rng, x, y = _synthetic_batch(config, resolved)
    trunk_patches = tf.constant(rng.integers(0, 256, (PRECISION_TRUNK_PATCHES, 1, p, p, 3),
                                       dtype=np.uint8))
    previous = keras.config.dtype_policy()
    measurements, initial, policies = [], None, {}
    gpu = bool(tf.config.list_physical_devices("GPU"))
    refused = {name: devices.onednn_refuses(policy) for name, policy in PRECISIONS
               if not gpu and devices.onednn_refuses(policy)}
    if refused:  # e.g. a bfloat16 CPU held to AVX2 by ONEDNN_MAX_CPU_ISA
        return {"skipped": "; ".join(refused.values())}
    try:
        for name, policy in PRECISIONS:
            start = time.perf_counter()
            keras.config.set_dtype_policy(policy)
            model = model_lib.build_model(config.model_config("folded"))
            if initial is None:
                initial = model.get_weights()
            else:
                model.set_weights(initial)
            model_lib.compile_model(model)
            policies[name] = model.dtype_policy.name
            trunk = model_lib.trunk_of(model)
            trunk_input = tf.reshape(model.get_layer("normalize")(trunk_patches),
                                     (PRECISION_TRUNK_PATCHES, p, p, 3))

            def train_step(model=model):
                model.train_on_batch(x, y)
                return b

            @tf.function(jit_compile=False)
            def trunk_forward(inputs, trunk=trunk):
                return tf.reduce_sum(tf.cast(trunk(inputs, training=False), tf.float32))

            def forward_step(fn=trunk_forward, inputs=trunk_input):
                fn(inputs).numpy()
                return PRECISION_TRUNK_PATCHES  # counted in patches

            measurements += [Measurement(f"{name}_train_step", train_step, steps),
                             Measurement(f"{name}_trunk_forward", forward_step, steps)]
            log(f"  built the {policy} model in {time.perf_counter() - start:.1f} s")
    finally:
        keras.config.set_dtype_policy(previous)
    samples = measure_interleaved(measurements, config.repeats, log)
    ratios = {f"bfloat16_vs_float32_{what}": ratio(samples, f"bfloat16_{what}",
                                                     f"float32_{what}")
              for what in ("train_step", "trunk_forward")}
    cpu_flags = devices.cpu_bfloat16_flags()
    notes = []
    if not tf.config.list_physical_devices("GPU") and not cpu_flags:
        notes.append("this CPU lists neither avx512_bf16 nor amx_bf16: bfloat16 is emulated "
                     "and expected to be slower than float32")
    return {
        "baseline": "float32_train_step",
        "batch_size": b, "num_patches": k, "patch_size": p, "filters": config.filters,
        "backbone": config.backbone, "trunk_layer": config.trunk_layer,
        "trunk_batch_patches": PRECISION_TRUNK_PATCHES,
        "units": {"train_step": "images", "trunk_forward": "patches"},
        "dtype_policies": policies, "cpu_bfloat16_flags": cpu_flags,
        "steps_per_round": steps,
        "measurements": {n: summarise(s) for n, s in samples.items()},
        "ratios": ratios,
        "notes": notes,
    }


def serving_section(config: BenchConfig, resolved: dict, sample_dir: str, work_dir: str,
                    log: Callable[[str], None] = lambda s: None) -> dict:
    """SavedModel on JPEG bytes against the in-process Keras model on extracted patches."""
    if exporter is None:
        return {"skipped": f"exif_keras.serving is not importable ({EXPORT_IMPORT_ERROR})"}
    k, p = config.num_patches, config.patch_size
    task = labels.task_spec(SERVING_FIELD, SERVING_TASK)
    model_config = config.model_config("folded", num_classes=task.num_classes,
                                       head=SERVING_FIELD)
    # The export is always float32 (exporter._serving_copy); compare it with a float32 Keras model.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = model_lib.build_model(model_config)
    finally:
        keras.config.set_dtype_policy(previous)
    folder = tempfile.mkdtemp(prefix="serving-", dir=work_dir)
    try:
        run_dir = os.path.join(folder, "run")
        run_folder.save_model_config(model_config, run_dir)
        with open(run_folder.path(run_dir, run_folder.RUN_CONFIG), "w") as f:
            json.dump({"train": {"field": SERVING_FIELD, "task": SERVING_TASK},
                       "task": task.to_json()}, f)
        start = time.perf_counter()
        path = exporter.export_model(run_dir, os.path.join(folder, "models", "exif_shutter"),
                                       model=model, write_config=False)
        log(f"  exported the SavedModel in {time.perf_counter() - start:.1f} s")
        served_fn = tf.saved_model.load(path).signatures[signature.SIGNATURE_NAME]
        images = serving_images(sample_dir, max(config.serving_batch_sizes))

        @tf.function
        def preprocess(image_bytes):
            return signature.preprocess(image_bytes, k, p)

        measurements, checks = [], {}
        for b in config.serving_batch_sizes:
            encoded = tf.constant(images[:b])
            extracted = signature.preprocess(encoded, k, p)
            served = served_fn(**{signature.INPUT_NAME: encoded})
            checks[b] = float(np.max(np.abs(
                served[signature.OUTPUT_PROBABILITIES].numpy()
                - np.asarray(model.predict_on_batch(extracted)[SERVING_FIELD]))))

            def saved_step(encoded=encoded, b=b):
                served_fn(**{signature.INPUT_NAME: encoded})[
                    signature.OUTPUT_PROBABILITIES].numpy()
                return b

            def keras_step(extracted=extracted, b=b):
                np.asarray(model.predict_on_batch(extracted)[SERVING_FIELD])
                return b

            def preprocess_step(encoded=encoded, b=b):
                preprocess(encoded).numpy()
                return b

            steps = resolved["serving_steps"][b]
            measurements += [Measurement(f"savedmodel_b{b}", saved_step, steps),
                             Measurement(f"keras_b{b}", keras_step, steps),
                             Measurement(f"decode_patch_b{b}", preprocess_step, steps)]
        samples = measure_interleaved(measurements, config.repeats, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summaries = {name: summarise(s) for name, s in samples.items()}
    per_batch = {}
    for b in config.serving_batch_sizes:
        saved, kept = summaries[f"savedmodel_b{b}"], summaries[f"keras_b{b}"]
        per_batch[str(b)] = {
            "savedmodel_ms_per_photo": saved["ms_per_image"],
            "keras_ms_per_photo": kept["ms_per_image"],
            "decode_patch_ms_per_photo": summaries[f"decode_patch_b{b}"]["ms_per_image"],
            "difference_ms_per_photo": saved["ms_per_image"] - kept["ms_per_image"],
            "max_abs_probability_difference": checks[b],
        }
    return {
        "baseline": "keras",
        "image_size": list(SERVING_IMAGE_SIZE),
        "jpeg_quality": SERVING_JPEG_QUALITY,
        "num_patches": k, "patch_size": p, "filters": config.filters,
        "backbone": config.backbone, "dtype_policy": "float32",
        "calls_per_round": {str(b): resolved["serving_steps"][b]
                            for b in config.serving_batch_sizes},
        "measurements": summaries,
        "ratios": {f"savedmodel_vs_keras_b{b}": ratio(samples, f"savedmodel_b{b}", f"keras_b{b}")
                   for b in config.serving_batch_sizes},
        "per_batch_size": per_batch,
        "notes": [],
    }


# --------------------------------------------------------------------------------------- limits

def demo_settings(flagfile: Optional[str] = None) -> tuple[dict, str]:
    """The demo's model settings (the keys of :data:`DEMO_DEFAULTS`) from its training flagfile
    (default :data:`DEMO_FLAGFILE`), read with the training command's own flag definitions
    (``--flagfile=`` includes too) into a flag set of its own, and where they came from: the
    file, or the built-in constants (with the reason) when it is missing or does not parse."""
    flagfile = flagfile or DEMO_FLAGFILE
    if not os.path.isfile(flagfile):
        return dict(DEMO_DEFAULTS), f"built-in constants ({flagfile} not found)"
    try:
        from absl import flags

        from exif_keras.training import config as config_lib

        values = flags.FlagValues()
        config_lib.define_flags(values)
        values(["demo", f"--flagfile={flagfile}"], known_only=True)
        train = config_lib.TrainConfig.from_flags(values)
    except Exception as e:  # noqa: BLE001 - a flagfile being edited: report, use the constants
        return dict(DEMO_DEFAULTS), (f"built-in constants ({flagfile} did not parse: "
                                     f"{type(e).__name__}: {e})")
    settings = {name: getattr(train.model, name) for name in DEMO_DEFAULTS
                if hasattr(train.model, name)}
    settings.update(num_patches=train.data.num_patches, patch_size=train.data.patch_size,
                    batch_size=train.data.batch_size)
    try:
        source = os.path.relpath(flagfile)
    except ValueError:
        source = flagfile
    return settings, source


def _start_onednn_probe():
    """The child process of :func:`onednn_reported_isa`, started (None when it cannot start)."""
    import subprocess

    env = dict(os.environ, ONEDNN_VERBOSE="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        return subprocess.Popen([sys.executable, "-c", ONEDNN_PROBE], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError:
        return None


def _onednn_probe_result(child, timeout_s: float = ONEDNN_PROBE_TIMEOUT_S) -> Optional[str]:
    """The text after ``isa:`` of the child's line ``onednn_verbose,v1,info,cpu,isa:...``."""
    import subprocess

    if child is None:
        return None
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None
    for line in (stdout + "\n" + stderr).splitlines():
        if line.startswith("onednn_verbose") and ",cpu,isa:" in line:
            return line.split(",cpu,isa:", 1)[1].strip() or None
    return None


def onednn_reported_isa(timeout_s: float = ONEDNN_PROBE_TIMEOUT_S) -> Optional[str]:
    """The instruction set oneDNN runs with in this environment, in its own words ("Intel
    AVX2"): a child process (this Python, this environment, so ``ONEDNN_MAX_CPU_ISA`` applies;
    ``ONEDNN_VERBOSE=1`` and no GPU added) runs one tiny convolution on the CPU and oneDNN prints
    ``onednn_verbose,v1,info,cpu,isa:Intel AVX2``. None when oneDNN is off
    (``TF_ENABLE_ONEDNN_OPTS=0``), prints no such line, or the child fails or times out."""
    return _onednn_probe_result(_start_onednn_probe(), timeout_s)


def onednn_limit(environ: Optional[Mapping[str, str]] = None
                 ) -> tuple[Optional[str], Optional[str]]:
    """(variable, value) of the instruction-set limit in the environment: ONEDNN_MAX_CPU_ISA, or
    the older DNNL_MAX_CPU_ISA that oneDNN also reads; (None, None) when neither is set."""
    environ = os.environ if environ is None else environ
    for name in ONEDNN_ISA_VARIABLES:
        if environ.get(name):
            return name, environ[name]
    return None, None


def _isa_level(text: str, limit: bool) -> Optional[int]:
    """Coarse level of an instruction set, 0 SSE4.1 < 1 AVX < 2 AVX2 < 3 AVX-512 < 4 AMX: of a
    limit's name (AVX2, AVX512_CORE_BF16, AVX10_1_512_AMX, ...) or of oneDNN's report ("Intel
    AVX-512 with ..."); None for a limit of ALL/DEFAULT or an unknown name."""
    t = text.strip().upper()
    if "AMX" in t:
        return 4
    if limit:
        if t.startswith(("AVX512", "AVX10")):
            return 3
        for level, prefix in ((2, "AVX2"), (1, "AVX"), (0, "SSE")):
            if t.startswith(prefix):
                return level
        return None
    for level, word in ((3, "AVX-512"), (3, "AVX512"), (2, "AVX2"), (1, "AVX")):
        if word in t:
            return level
    return 0


def isa_consistent(limit: Optional[str], isa: Optional[str]) -> Optional[bool]:
    """Whether oneDNN's reported instruction set ``isa`` stays within ``limit`` (the value of
    ONEDNN_MAX_CPU_ISA), at the coarse levels of :func:`_isa_level`; None when either is unknown
    or the limit is ALL/DEFAULT."""
    if not limit or not isa:
        return None
    cap = _isa_level(limit, limit=True)
    return None if cap is None else _isa_level(isa, limit=False) <= cap


def onednn_info(isa: Optional[str], environ: Optional[Mapping[str, str]] = None) -> dict:
    """The limits section's record of the instruction set: oneDNN's report ``isa``
    (:func:`onednn_reported_isa`), the environment's limit, whether they agree (:func:`isa_consistent`)
    and, when they do not, the note that says so."""
    environ = os.environ if environ is None else environ
    variable, limit = onednn_limit(environ)
    consistent = isa_consistent(limit, isa)
    try:
        expected = devices.onednn_isa(environ)  # from /proc/cpuinfo and the limit
    except devices.DeviceError:
        expected = None
    return {"isa": isa, "expected_isa": expected,
            "max_cpu_isa_variable": variable, "max_cpu_isa": limit,
            "onednn_max_cpu_isa": environ.get("ONEDNN_MAX_CPU_ISA"), "consistent": consistent,
            "note": (f"{variable}={limit} but oneDNN reports {isa}: the limit did not take "
                     "effect") if consistent is False else None}


def _limits_model_config(settings: Mapping) -> model_lib.ModelConfig:
    """The model of one limits configuration: one binary head, random weights."""
    return model_lib.ModelConfig(
        heads=(model_lib.HeadConfig("shutter", 2),), num_patches=settings["num_patches"],
        patch_size=settings["patch_size"], backbone=settings["backbone"],
        trunk_layer=settings["trunk_layer"], backbone_weights=None, filters=settings["filters"],
        normalization=settings["normalization"],
        scratch_width_divisor=settings["scratch_width_divisor"],
        batchnorm_momentum=settings["batchnorm_momentum"])


def _limits_configuration(name: str, settings: Mapping, steps: int, layer_steps: int,
                          seed: int) -> tuple[list[Measurement], dict, list[dict]]:
    """The measurements of one configuration (trunk forward, training step, every trunk Conv2D
    alone), its FLOP counts, and the per-layer specs."""
    b, k, p = settings["batch_size"], settings["num_patches"], settings["patch_size"]
    model = model_lib.build_model(_limits_model_config(settings))
    model_lib.compile_model(model)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.integers(0, 256, (b, k, p, p, 3), dtype=np.uint8))
    y = tf.constant(rng.integers(0, 2, (b,)), tf.int32)
    trunk = model_lib.trunk_of(model)
    folded_input = tf.reshape(model.get_layer("normalize")(x), (b * k, p, p, 3))

    @tf.function(jit_compile=False)
    def trunk_forward(inputs):
        return trunk(inputs, training=False)[:1, :1, :1, :1]  # fetch one value, not the map

    def forward_step():
        trunk_forward(folded_input).numpy()
        return b

    def train_step():
        model.train_on_batch(x, y)
        return b

    cost = per_patch_flops(model)
    measurements = [Measurement(f"{name}_trunk_forward", forward_step, steps),
                    Measurement(f"{name}_train_step", train_step, steps)]
    layers = []
    per_layer = layer_flops(trunk)
    for i, layer in enumerate(trunk.layers):
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        shape = (b * k,) + tuple(int(d) for d in layer.input.shape[1:])
        state = {}
        # Traced here, for its one input signature: a dozen functions of the same code traced
        # on their first calls would set off TensorFlow's warning about retracing.
        layer_forward = tf.function(
            lambda inputs, layer=layer: layer(inputs)[:1, :1, :1, :1],  # one value, not the map
            jit_compile=False).get_concrete_function(tf.TensorSpec(shape, layer.compute_dtype))

        # The layer's input exists only while it is measured (VGG16's block1_conv2 takes 268 MB
        # at B*k=64, P=128); made untimed around every round's iterations.
        def start(shape=shape, dtype=layer.compute_dtype, i=i, state=state):
            state["x"] = tf.random.stateless_uniform(shape, (seed, i), dtype=dtype)

        def step(fn=layer_forward, state=state):
            fn(state["x"]).numpy()
            return b

        def stop(state=state):
            state.pop("x", None)

        measurement = f"{name}_layer_{layer.name}"
        measurements.append(Measurement(measurement, step, layer_steps, start, stop))
        layers.append({"measurement": measurement, "layer": layer.name,
                       "input_shape": list(shape),
                       "kernel": [int(d) for d in layer.kernel.shape],
                       "flops_per_image": k * per_layer[layer.name]})
    info = {
        **{key: settings[key] for key in ("backbone", "trunk_layer", "num_patches",
                                          "patch_size", "filters", "scratch_width_divisor",
                                          "normalization", "batch_size")},
        "trunk_trainable": cost["trunk_trainable"],
        "trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "flops_per_patch": cost,
        "flops_per_image": {"trunk_forward": k * cost["trunk"],
                            "train_step": k * cost["train_step_per_patch"]},
        "steps_per_round": steps,
    }
    return measurements, info, layers


def limits_section(config: BenchConfig, resolved: dict,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """The FLOP rate of a large float32 matrix product (this machine's practical ceiling) and
    the achieved FLOP rates of the trunk's forward pass, the training step and every trunk
    convolution alone, as fractions of that ceiling, for the paper's model and the demo's.

    Ceiling: ``tf.matmul`` of two random float32 n x n matrices in a ``tf.function`` (n 2048 on
    a CPU, 8192 on a GPU, 512 with --quick), ``2 n^3`` FLOPs per call, several calls a round.
    Configurations: "paper", the benchmark's model (``config.model_config()``: VGG16 to
    block3_conv3 by default, random weights, k=8, P=128, F=64, the train batch); "demo", the
    demo's model as pipelines/demo.flags sets it (:func:`demo_settings`; scratch backbone, its
    batch). With --quick the demo keeps its patch size and filters, at most the train batch
    and the quick k.

    FLOPs per image (:func:`per_patch_flops`, counted from the Conv2D and Dense layers' shapes,
    times k): trunk forward = k x the trunk's forward pass; training step = k x (3 x the head's
    forward, for its forward, input-gradient and weight-gradient passes, + the trunk's forward,
    also x3 when the trunk trains, as the scratch trunk does, x1 for the frozen VGG16). An
    estimate: it leaves out BatchNorm, ReLU, pooling, the loss and Adam's update, and counts an
    input gradient for the first convolution, which needs none. Achieved FLOP/s = images/s x
    FLOPs per image;
    ``fraction_of_ceiling`` = achieved / the ceiling measured in the same interleaved rounds
    (ratio of the medians; ``_paired``: median of the per-round ratios; ``_per_cpu``: per
    CPU-second). Per layer: each Conv2D of the trunk alone (its own ``tf.function`` on a random
    input of its input shape, the trunk forward's folded batch ``B*k``), on one iteration a
    round on a CPU: which layers sit far below the ceiling (few channels). Also the oneDNN
    instruction set in effect (:func:`onednn_reported_isa`) against ``ONEDNN_MAX_CPU_ISA``.
    """
    gpu = bool(tf.config.list_physical_devices("GPU"))
    probe = _start_onednn_probe()  # oneDNN's CPU instruction set, while the models build
    steps = resolved["train_steps"]
    layer_steps = steps if gpu else 1
    n, calls = LIMITS_MATMUL[("gpu" if gpu else "cpu") + ("_quick" if config.quick else "")]
    matmul_flops = 2 * n ** 3
    start = time.perf_counter()
    rng = tf.random.Generator.from_seed(config.seed)
    a, m = rng.uniform((n, n), dtype=tf.float32), rng.uniform((n, n), dtype=tf.float32)

    @tf.function(jit_compile=False)
    def matmul(a, m):
        return tf.matmul(a, m)[:1, :1]  # fetch one value: the product, not its transfer

    def matmul_step():
        matmul(a, m).numpy()
        return 1

    paper_model = config.model_config("folded")
    paper = {key: getattr(paper_model, key) for key in DEMO_DEFAULTS if key != "batch_size"}
    paper["batch_size"] = resolved["batch_size"]
    demo, demo_source = demo_settings()
    if config.quick:
        demo["batch_size"] = min(demo["batch_size"], resolved["batch_size"])
        demo["num_patches"] = min(demo["num_patches"], config.num_patches)
    sources = {"paper": "the benchmark's configuration", "demo": demo_source}
    measurements = [Measurement("matmul_ceiling", matmul_step, max(steps, calls))]
    configurations, layer_specs = {}, {}
    for name, settings in (("paper", paper), ("demo", demo)):
        built, info, layers = _limits_configuration(name, settings, steps, layer_steps,
                                                    config.seed)
        measurements += built
        configurations[name] = {"source": sources[name], **info}
        layer_specs[name] = layers
    log(f"  built the paper and demo models in {time.perf_counter() - start:.1f} s")
    isa = _onednn_probe_result(probe)
    samples = measure_interleaved(measurements, config.repeats, log)

    summaries = {name: summarise(s) for name, s in samples.items()}
    ceiling = summaries["matmul_ceiling"]["images_per_s"] * matmul_flops / 1e9

    def rated(name: str, flops_per_image: int) -> dict:
        r = ratio(samples, name, "matmul_ceiling")
        scale = flops_per_image / matmul_flops
        return {**summaries[name], "flops_per_image": int(flops_per_image),
                "gflops_per_s": summaries[name]["images_per_s"] * flops_per_image / 1e9,
                "fraction_of_ceiling": r["wall"] * scale,
                "fraction_of_ceiling_paired": r["wall_paired"] * scale,
                "fraction_of_ceiling_per_cpu": r["per_cpu"] * scale}

    out_measurements = {"matmul_ceiling": {
        **summaries["matmul_ceiling"], "flops_per_call": matmul_flops, "gflops_per_s": ceiling,
        "fraction_of_ceiling": 1.0, "fraction_of_ceiling_paired": 1.0,
        "fraction_of_ceiling_per_cpu": 1.0}}
    for name, info in configurations.items():
        for what in ("trunk_forward", "train_step"):
            out_measurements[f"{name}_{what}"] = rated(f"{name}_{what}",
                                                       info["flops_per_image"][what])
    layers = {name: [{**spec, **rated(spec["measurement"], spec["flops_per_image"])}
                     for spec in specs] for name, specs in layer_specs.items()}

    onednn = onednn_info(isa)
    notes = [onednn["note"]] if onednn["note"] else []
    if isa is None and not gpu:
        notes.append("oneDNN reported no instruction set (oneDNN off, or the probe failed)")
    if demo_source.startswith("built-in"):
        notes.append(f"demo configuration from {demo_source}")
    tf32 = gpu and tf.config.experimental.tensor_float_32_execution_enabled()
    if tf32:
        notes.append("TensorFloat-32 is on: the GPU's float32 matmuls and convolutions (ceiling "
                     "and models alike) run at TF32 precision")
    policy = keras.config.dtype_policy().name
    if policy != "float32":
        notes.append(f"the models run under the {policy} policy against a float32 ceiling: "
                     "their fractions can exceed what float32 would reach")
    return {
        "baseline": "matmul_ceiling",
        "units": {"matmul_ceiling": "matmul calls", "trunk_forward": "images",
                  "train_step": "images", "layers": "images"},
        "matmul": {"size": n, "dtype": "float32", "flops_per_call": matmul_flops,
                   "calls_per_round": max(steps, calls), "tensor_float_32": bool(tf32)},
        "ceiling_gflops_per_s": ceiling,
        "dtype_policy": policy,
        "configurations": configurations,
        "measurements": out_measurements,
        "layers": layers,
        "onednn": onednn,
        "ratios": {},
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------- core

def run_benchmark(config: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Runs the selected sections; returns every figure (see exif_keras/benchmark.py).

    Sets the Keras dtype policy for the run (mixed_float16 with --mixed_precision=on, or auto on
    a GPU) and restores the previous one afterwards.
    """
    start = time.perf_counter()
    gpus = tf.config.list_physical_devices("GPU")
    resolved = config.resolved(bool(gpus))
    own_dir = config.work_dir is None
    work_dir = tempfile.mkdtemp(prefix="exif-benchmark-") if own_dir else config.work_dir
    os.makedirs(work_dir, exist_ok=True)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(devices.resolve_policy(
        config.mixed_precision, devices.gpu_compute_capabilities()))
    result = {
        "machine": machine_info(),
        "config": json.loads(json.dumps({**dataclasses.asdict(config), "resolved": {
            **resolved, "serving_steps": {str(b): s for b, s in resolved["serving_steps"].items()},
            "dtype_policy": keras.config.dtype_policy().name}})),  # tuples -> lists
        "sections": {},
    }
    try:
        if set(config.sections) & set(DATA_SECTIONS):
            sample_dir, records_dir = prepare_data(work_dir, config.num_images, config.seed, log)
        if "convert" in config.sections:
            log("convert: make_records (local, Beam DirectRunner) vs Pillow decode of the same "
                "files")
            inputs = {"sample": sample_dir}
            for path in config.convert_dirs:
                inputs[os.path.basename(os.path.normpath(path)) or "dir"] = path
            result["sections"]["convert"] = convert_section(config, inputs, work_dir, log)
        if "pipeline" in config.sections:
            log("pipeline: make_dataset (eval, train) vs plain decode_jpeg")
            result["sections"]["pipeline"] = pipeline_section(
                config, records_dir, resolved["pipeline_steps"], log)
        which = [s for s in ("train", "patch_modes") if s in config.sections]
        if which:
            log(f"{' + '.join(which)}: training steps and the trunk forward")
            result["sections"].update(model_sections(config, resolved, which, log))
        if "serving" in config.sections:
            log("serving: SavedModel on JPEG bytes vs Keras on patches")
            try:
                result["sections"]["serving"] = serving_section(
                    config, resolved, sample_dir, work_dir, log)
            except Exception as e:  # noqa: BLE001 - the export is optional; report, go on
                result["sections"]["serving"] = {
                    "skipped": f"the export failed: {type(e).__name__}: {e}"}
        if "precision" in config.sections:
            log("precision: training step and trunk forward, float32 vs mixed_bfloat16")
            result["sections"]["precision"] = precision_section(config, resolved, log)
        if "limits" in config.sections:
            log("limits: FLOP/s of a float32 matmul (the ceiling), the trunk forward and the "
                "training step (paper, demo)")
            result["sections"]["limits"] = limits_section(config, resolved, log)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ------------------------------------------------------------------------------------ reporting

ROW_HEADER = ("section", "measurement", "img/s", "range", "ms/img", "img/CPU-s", "cores",
              "ratio", "ratio/CPU")


def _fmt(value) -> str:
    """About three significant digits."""
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:.{digits}f}"


def table_rows(result: dict) -> list[list[str]]:
    """One row per measurement; ``ratio`` relative to the section's baseline."""
    rows = []
    for section in SECTIONS:
        info = result["sections"].get(section)
        if info is None:
            continue
        if "skipped" in info:
            rows.append([section, "skipped: " + info["skipped"]] + [""] * 7)
            continue
        ratios = {r["of"]: r for r in info["ratios"].values()}
        bases = {r["to"] for r in info["ratios"].values()}
        for name, m in info["measurements"].items():
            r = ratios.get(name)
            is_base = (name == info["baseline"] or name.startswith(info["baseline"] + "_")
                       or name in bases)
            if r is None and not is_base and "fraction_of_ceiling" in m:
                # limits: FLOP/s relative to the ceiling's, not images/s
                r = {"wall": m["fraction_of_ceiling"], "per_cpu": m["fraction_of_ceiling_per_cpu"]}
            rows.append([
                section, name, _fmt(m["images_per_s"]),
                f"{_fmt(m['images_per_s_min'])}-{_fmt(m['images_per_s_max'])}",
                _fmt(m["ms_per_image"]), _fmt(m["images_per_cpu_s"]), f"{m['cores_used']:.2f}",
                f"{r['wall']:.2f}x" if r else ("1 (base)" if is_base else ""),
                f"{r['per_cpu']:.2f}x" if r else ("1 (base)" if is_base else ""),
            ])
    return rows


def summary_lines(result: dict) -> list[str]:
    """The ratios that answer the section's question, with the goals, and the notes."""
    lines = []
    sections = result["sections"]
    if "convert" in sections:
        for key, r in sections["convert"]["ratios"].items():
            lines.append(f"convert {key}: {r['wall']:.2f}x images/s (paired "
                         f"{r['wall_paired']:.2f}x)")
    if "pipeline" in sections and "skipped" not in sections["pipeline"]:
        for key, r in sections["pipeline"]["ratios"].items():
            met = r["per_cpu"] >= GOAL_RATIO
            lines.append(f"pipeline {key}: {r['wall']:.2f}x images/s (paired {r['wall_paired']:.2f}"
                         f"x), {r['per_cpu']:.3f}x per CPU-second (paired "
                         f"{r['per_cpu_paired']:.3f}x); goal >= {GOAL_RATIO}x per CPU-second: "
                         f"{'met' if met else 'NOT met'}")
    if "train" in sections:
        info = sections["train"]
        r = info["ratios"]["train_step_vs_trunk_forward"]
        ceiling = info["flops_per_patch"]["ceiling_train_vs_trunk"]
        lines.append(f"train step vs trunk forward: {r['wall']:.3f}x (paired {r['wall_paired']:.3f}"
                     f"x); goal >= {GOAL_RATIO}x: {'met' if r['wall'] >= GOAL_RATIO else 'NOT met'}"
                     f"; FLOP ceiling {ceiling:.2f}x")
    if "patch_modes" in sections:
        r = sections["patch_modes"]["ratios"]["folded_vs_time_distributed"]
        lines.append(f"folded vs time_distributed training step: {r['wall']:.2f}x (paired "
                     f"{r['wall_paired']:.2f}x)")
    if "serving" in sections and "skipped" not in sections["serving"]:
        for b, info in sections["serving"]["per_batch_size"].items():
            lines.append(f"serving batch {b}: SavedModel {info['savedmodel_ms_per_photo']:.1f} "
                         f"ms/photo vs Keras on patches {info['keras_ms_per_photo']:.1f} ms/photo "
                         f"({info['difference_ms_per_photo']:+.1f} ms; decode+patch alone "
                         f"{info['decode_patch_ms_per_photo']:.1f} ms)")
    if "precision" in sections and "skipped" not in sections["precision"]:
        for key, r in sections["precision"]["ratios"].items():
            lines.append(f"precision {key}: {r['wall']:.2f}x (paired {r['wall_paired']:.2f}x)")
    if "limits" in sections and "skipped" not in sections["limits"]:
        info = sections["limits"]
        ceiling, isa = info["matmul"], info["onednn"]
        limit = (f", {isa['max_cpu_isa_variable']}={isa['max_cpu_isa']}"
                 if isa["max_cpu_isa"] else "")
        lines.append(f"limits: ceiling {info['ceiling_gflops_per_s']:.1f} GFLOP/s (float32 matmul "
                     f"{ceiling['size']}x{ceiling['size']}); oneDNN ISA: "
                     f"{isa['isa'] or 'not reported'}{limit}")
        for name in info["configurations"]:
            forward = info["measurements"][f"{name}_trunk_forward"]
            step = info["measurements"][f"{name}_train_step"]
            lines.append(f"limits {name}: trunk forward {forward['gflops_per_s']:.1f} GFLOP/s = "
                         f"{forward['fraction_of_ceiling']:.2f} of the ceiling, training step "
                         f"{step['gflops_per_s']:.1f} GFLOP/s = {step['fraction_of_ceiling']:.2f} "
                         f"(FLOPs estimated from the layers)")
    for name, info in sections.items():
        for note in info.get("notes", []):
            lines.append(f"note ({name}): {note}")
    return lines


LIMITS_HEADER = ("configuration", "measurement", "shape", "GFLOP/img", "GFLOP/s", "of ceiling",
                 "paired")


def limits_rows(result: dict) -> list[list[str]]:
    """The limits section's FLOP table: the ceiling, then per configuration its trunk forward,
    training step and every trunk convolution alone; [] without that section."""
    info = result["sections"].get("limits")
    if not info or "skipped" in info:
        return []

    def row(configuration, name, shape, m):
        flops = m.get("flops_per_image", m.get("flops_per_call"))
        return [configuration, name, shape, _fmt(flops / 1e9), _fmt(m["gflops_per_s"]),
                f"{m['fraction_of_ceiling']:.2f}", f"{m['fraction_of_ceiling_paired']:.2f}"]

    n = info["matmul"]["size"]
    rows = [row("-", "matmul_ceiling", f"{n}x{n} float32", info["measurements"]["matmul_ceiling"])]
    for name, c in info["configurations"].items():
        shape = f"B={c['batch_size']} k={c['num_patches']} P={c['patch_size']}"
        for what in ("trunk_forward", "train_step"):
            rows.append(row(name, what, shape, info["measurements"][f"{name}_{what}"]))
        for layer in info["layers"][name]:
            _, h, w, _ = layer["input_shape"]
            kh, kw, cin, cout = layer["kernel"]
            rows.append(row(name, layer["layer"], f"{h}x{w} {cin}->{cout} ({kh}x{kw})", layer))
    return rows


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> list[str]:
    """A text table: the first ``left`` columns left-aligned, the others right-aligned."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if j < left else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                    left: int = 2) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return lines


def _setup_line(result: dict) -> str:
    c, r = result["config"], result["config"]["resolved"]
    return (f"k={c['num_patches']}, P={c['patch_size']}, F={c['filters']}, {c['backbone']} to "
            f"{c['trunk_layer']} (random weights), train batch {r['batch_size']}, pipeline batch "
            f"{c['pipeline_batch_size']}, serving batches "
            f"{'/'.join(str(b) for b in c['serving_batch_sizes'])}, {r['dtype_policy']}, "
            f"{c['repeats']} interleaved rounds (medians), {c['num_images']} sample photos")


def _machine_line(result: dict) -> str:
    m = result["machine"]
    cores = f"{m['cpu_count']} cores" + (f" ({m['cpus_usable']} usable)"
                                         if m["cpus_usable"] != m["cpu_count"] else "")
    if m.get("cpu_quota"):
        cores += f", CPU quota {m['cpu_quota']}"
    gpu = ", ".join(m["gpus"]) if m["gpus"] else "no GPU"
    return (f"{m['cpu']}, {cores}, {gpu}; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
            f"Python {m['python']}")


def format_text(result: dict) -> str:
    lines = ["machine: " + _machine_line(result), "setup: " + _setup_line(result)]
    if result.get("command"):
        lines.append("command: " + result["command"])
    lines += _aligned(ROW_HEADER, table_rows(result))
    lines += summary_lines(result)
    limits = limits_rows(result)
    if limits:
        lines += ["", "limits: FLOP/s against the float32 matmul ceiling"]
        lines += _aligned(LIMITS_HEADER, limits, left=3)
    lines.append(f"total: {result['seconds']:.0f} s")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    lines = [f"**Machine:** {_machine_line(result)}  ", f"**Setup:** {_setup_line(result)}  "]
    if result.get("command"):
        lines.append(f"**Command:** `{result['command']}` ({result['seconds']:.0f} s)")
    lines += [""] + _markdown_table(ROW_HEADER, table_rows(result))
    lines.append("")
    lines += [f"- {line}" for line in summary_lines(result)]
    limits = limits_rows(result)
    if limits:
        lines += ["", "FLOP/s against the float32 matmul ceiling (limits):", ""]
        lines += _markdown_table(LIMITS_HEADER, limits, left=3)
    return "\n".join(lines)
