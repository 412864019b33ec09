"""The speed benchmark's sections (convert, pipeline, train, patch_modes, serving, precision),
its configuration, the data it measures on and its reports (text, Markdown, JSON-ready dict).

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

SECTIONS = ("convert", "pipeline", "train", "patch_modes", "serving", "precision")
PIPELINE_FIELD, PIPELINE_TASK = "shutter", "fine"   # every sample photo has a fine shutter class
SERVING_FIELD, SERVING_TASK = "shutter", "binary"
SERVING_IMAGE_SIZE = (500, 375)                      # width, height of the served JPEGs
SERVING_JPEG_QUALITY = 90
PIPELINE_SPLIT = "train"
PIPELINE_WARMUP_BATCHES = 3   # untimed batches of every fresh pipeline iterator
GOAL_RATIO = 0.8              # pipeline per core vs decode; training step vs trunk forward
DATA_MARKER = "benchmark_data.json"
PRECISION_TRUNK_PATCHES = 32  # patches per trunk forward in the precision section
PRECISIONS = (("float32", "float32"), ("bfloat16", "mixed_bfloat16"))  # name, Keras policy


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


def per_patch_flops(model: keras.Model) -> dict:
    """Multiply-adds x 2 of the convolutions and dense layers of one patch: trunk and head."""

    def flops(sub: keras.Model) -> int:
        total = 0
        for layer in sub.layers:
            if isinstance(layer, keras.layers.Conv2D):
                _, h, w, _ = layer.output.shape
                kh, kw, cin, cout = layer.kernel.shape
                total += 2 * h * w * kh * kw * cin * cout
            elif isinstance(layer, keras.layers.Dense):
                total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        return int(total)

    trunk, head = model_lib.trunk_of(model), model_lib.head_of(model)
    out = {"trunk": flops(trunk), "head": flops(head), "trunk_trainable": bool(trunk.trainable)}
    # Training: a frozen trunk runs forward only; the head forward and backward (~2x its forward).
    # A trainable trunk (scratch) needs its backward too.
    train = out["trunk"] * (1 if not trunk.trainable else 3) + 3 * out["head"]
    out["train_step_per_patch"] = train
    out["ceiling_train_vs_trunk"] = out["trunk"] / train if train else None
    return out


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
        ceiling = cost["ceiling_train_vs_trunk"]
        trainable = int(sum(np.prod(v.shape) for v in folded.trainable_variables))
        notes = []
        if r["wall"] < GOAL_RATIO:
            notes.append(f"training step at {r['wall']:.3f}x the trunk forward rate, below the "
                         f"{GOAL_RATIO}x goal")
        if ceiling is not None and ceiling < GOAL_RATIO:
            notes.append(f"the goal is out of reach at this configuration: by FLOPs the step "
                         f"cannot exceed {ceiling:.2f}x (head forward + backward = "
                         f"{3 * cost['head'] / cost['trunk']:.0%} of the trunk forward"
                         + ("; the trunk is trainable and needs its backward too"
                            if cost["trunk_trainable"] else "") + ")")
        elif ceiling is not None and r["wall"] < GOAL_RATIO:
            notes.append(f"by FLOPs the step could reach {ceiling:.2f}x: the rest is the head "
                         f"running below the trunk's FLOP rate (small convolutions, BatchNorm "
                         f"and ReLU in training mode, their backward) and Adam updating "
                         f"{trainable:,} parameters every step")
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
    for name, info in sections.items():
        for note in info.get("notes", []):
            lines.append(f"note ({name}): {note}")
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
    rows = [list(ROW_HEADER)] + table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(ROW_HEADER))]
    lines = ["machine: " + _machine_line(result), "setup: " + _setup_line(result)]
    if result.get("command"):
        lines.append("command: " + result["command"])
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += summary_lines(result)
    lines.append(f"total: {result['seconds']:.0f} s")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    lines = [f"**Machine:** {_machine_line(result)}  ", f"**Setup:** {_setup_line(result)}  "]
    if result.get("command"):
        lines.append(f"**Command:** `{result['command']}` ({result['seconds']:.0f} s)")
    lines += ["", "| " + " | ".join(ROW_HEADER) + " |",
              "|" + "|".join(["---"] * 2 + ["---:"] * (len(ROW_HEADER) - 2)) + "|"]
    for row in table_rows(result):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    lines.append("")
    lines += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(lines)


