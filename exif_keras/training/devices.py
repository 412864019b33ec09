"""Devices for training: logical CPUs, the dtype policy, the distribution strategy, and where each
worker of a multi-worker run writes.

Everything here runs before the first model is built (``setup``), and the training code then asks
the returned :class:`Devices` where to write (``write_dir``) and how to feed the strategy
(``distribute_training_data``, ``distribute_validation_data``).

Decisions:

* **Dtype policy** (``--mixed_precision``, :func:`resolve_policy`): ``off`` float32; ``on`` or
  ``float16`` Keras' ``mixed_float16`` (fit gets automatic loss scaling from
  ``model.compile_model``); ``bfloat16`` ``mixed_bfloat16`` (float32 variables, bfloat16 compute,
  no loss scaling: bfloat16 has float32's exponent range). ``auto``: ``mixed_bfloat16`` on TPUs
  and when every visible GPU has compute capability 8.0 or later (Ampere and later have bfloat16
  tensor cores), ``mixed_float16`` on older GPUs, float32 on CPUs (asked for explicitly,
  ``--mixed_precision=bfloat16`` runs on a CPU too, and is faster on CPUs with AVX512-BF16 / AMX;
  see BUILD.md). The model's normalisation and softmax stay float32 under every policy, and an
  export is a float32 copy unless asked otherwise (``export.py``).
* **Strategy** (``--strategy``, :func:`make_strategy`): ``default`` none; ``mirrored``
  ``MirroredStrategy`` over the GPUs (or the logical CPUs of ``--logical_cpus``);
  ``multi_worker`` ``MultiWorkerMirroredStrategy`` with the cluster and this task from the
  ``TF_CONFIG`` environment variable, read by TensorFlow's ``TFConfigClusterResolver`` (a clear
  error when it is missing or malformed); ``auto``
  ``multi_worker`` when ``TF_CONFIG`` names a cluster of more than one task, else ``mirrored``
  when several GPUs are visible, else none.
* **Chief and non-chief writes**, as TensorFlow's multi-worker Keras guide does: every worker runs
  the same training code, callbacks included, but only the chief writes into the run folder and
  the export folder; any other worker writes into a local temporary folder (``write_dir``) that
  :meth:`Devices.cleanup` deletes at the end (and at interpreter exit, after a crash). After
  ``fit`` no collective op follows (the evaluation calls the model directly; the export rebuilds
  a float32 copy outside the strategy), so train.py stops a non-chief worker there.
* **Input sharding.** Each worker reads its own shards: :meth:`Devices.distribute_training_data`
  feeds ``fit`` through ``strategy.distribute_datasets_from_function``, whose function builds the
  pipeline over shards ``index::count`` (sorted names) with the per-replica batch size. TensorFlow's
  FILE auto-sharding cannot do it for this pipeline: its training crops zip the records with
  ``tf.data.Dataset.random``, an unshardable source, so the AUTO policy would silently fall back to
  DATA sharding (every worker reads every shard and keeps one element in N). The training input
  then repeats and every worker runs the same number of steps per epoch (the training split's
  count // the global batch), as collective ops need. Validation uses DATA sharding of whole
  global batches (equal step counts on every worker; the validation split is small).
* **Resume after a killed worker** works as on one machine: relaunch every worker with the same
  command. The run folder must be storage that every worker sees (a shared disk, ``gs://``), as in
  TensorFlow's guide. The chief keeps Keras' BackupAndRestore state in the run folder; each other
  worker writes its own in its temporary folder, and at the start first copies the chief's state
  there (:class:`BackupAndRestore`), so that every worker restarts from the same epoch and weights.
* **Keras 3 with MultiWorkerMirroredStrategy.** Keras 3.15's ``fit`` fails under this strategy
  with more than one worker, twice (keras-team/keras#20585, tensorflow/tensorflow#72388, open):
  ``_maybe_symbolic_build`` reduces the first data batch across workers with
  ``strategy.reduce`` (``ValueError: Attempt to convert a value (PerReplica...) with an
  unsupported type``), and every training step reduces the scalar metrics with
  ``strategy.reduce("MEAN", v, axis=0)`` (``Invalid reduction dimension 0 for input with 0
  dimensions``). :func:`patch_keras_for_multi_worker` replaces those two internals while such a
  strategy is in use (the first with the first local replica's batch, which is all the symbolic
  build needs; the second with ``axis=None`` for scalars); ``EXIF_KERAS_KERAS_PATCH=0`` turns it
  off, to check whether a newer Keras still needs it.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

from exif_keras.common.errors import TrainError

PRECISIONS = ("auto", "off", "on", "float16", "bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
POLICIES = {"off": "float32", "on": "mixed_float16", "float16": "mixed_float16",
            "bfloat16": "mixed_bfloat16"}
BFLOAT16_MIN_COMPUTE_CAPABILITY = (8, 0)
PATCH_ENV = "EXIF_KERAS_KERAS_PATCH"


class DeviceError(TrainError):
    """A device or cluster setting the user can fix (the message says how)."""


# ---------------------------------------------------------------------------------- dtype policy

def gpu_compute_capabilities() -> list[Optional[tuple[int, int]]]:
    """(major, minor) of every visible GPU; None where TensorFlow does not say."""
    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except (RuntimeError, ValueError):
            capability = None
        out.append(tuple(capability) if capability else None)
    return out


def cpu_bfloat16_flags() -> list[str]:
    """The bfloat16 instruction sets /proc/cpuinfo lists (avx512_bf16, amx_bf16); [] elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return []
    return sorted(words & {"avx512_bf16", "amx_bf16"})


# oneDNN's instruction-set names in its own order (ONEDNN_MAX_CPU_ISA takes one of them; the
# AVX10_1_512* names are the newer spellings of AVX512_CORE_FP16 / _AMX / _AMX_FP16).
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
               "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
               "AVX512_CORE_AMX_FP16")
_ONEDNN_ALIASES = {"AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
                   "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16"}
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads either
# The CPU flags (/proc/cpuinfo) each oneDNN level needs on top of the level below it.
_ISA_CPU_FLAGS = {"SSE41": {"sse4_1"}, "AVX": {"avx"}, "AVX2": {"avx2", "fma"},
                  "AVX2_VNNI": {"avx_vnni"}, "AVX2_VNNI_2": {"avx_ne_convert", "avx_vnni_int8"},
                  "AVX512_CORE": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
                  "AVX512_CORE_VNNI": {"avx512_vnni"}, "AVX512_CORE_BF16": {"avx512_bf16"},
                  "AVX512_CORE_FP16": {"avx512_fp16"},
                  "AVX512_CORE_AMX": {"amx_tile", "amx_int8", "amx_bf16"},
                  "AVX512_CORE_AMX_FP16": {"amx_fp16"}}
BFLOAT16_MIN_ISA = "AVX512_CORE_BF16"  # native bfloat16 in oneDNN from here up


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa(flags: Optional[set] = None) -> Optional[str]:
    """The highest oneDNN instruction set this CPU has (from /proc/cpuinfo); None where it is
    not an x86 Linux CPU. Levels are cumulative, as oneDNN's are (AVX2_VNNI without
    AVX512_CORE still counts below AVX512_CORE)."""
    flags = _cpu_flags() if flags is None else set(flags)
    best = None
    for isa in ONEDNN_ISAS:
        if not _ISA_CPU_FLAGS[isa] <= flags:
            if isa in ("AVX2_VNNI", "AVX2_VNNI_2"):
                continue  # an AVX512 CPU may lack them and still be AVX512_CORE
            break
        best = isa
    return best


def onednn_isa_limit(environ=None) -> Optional[str]:
    """The instruction-set cap set by ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), in oneDNN's
    spelling; None when unset or ALL/DEFAULT. An unknown name raises a DeviceError."""
    environ = os.environ if environ is None else environ
    for name in ONEDNN_ISA_ENV:
        value = environ.get(name, "").strip().upper()
        if not value:
            continue
        if value in ("ALL", "DEFAULT"):
            return None
        value = _ONEDNN_ALIASES.get(value, value)
        if value not in ONEDNN_ISAS:
            raise DeviceError(f"{name}={environ[name]!r} is not one of oneDNN's instruction "
                              f"sets ({', '.join(ONEDNN_ISAS)}, ALL)")
        return value
    return None


def onednn_isa(environ=None, flags: Optional[set] = None) -> Optional[str]:
    """The instruction set oneDNN runs with here: the CPU's best, held to the environment's
    limit. (``python -m exif_keras.benchmark --sections=limits`` checks it against oneDNN's own
    report.)"""
    best, limit = cpu_isa(flags), onednn_isa_limit(environ)
    if best is None or limit is None:
        return best
    return min(best, limit, key=ONEDNN_ISAS.index)


def native_cpu_bfloat16(environ=None, flags: Optional[set] = None) -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU under the environment's ISA limit:
    AVX512-BF16 or AMX listed, and ONEDNN_MAX_CPU_ISA (if set) at AVX512_CORE_BF16 or above.
    Held below it, oneDNN refuses bfloat16 convolutions on such a CPU ("could not create a
    primitive descriptor"), so the run must be float32."""
    flags = _cpu_flags() if flags is None else set(flags)
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    isa = onednn_isa(environ, flags)
    return isa is not None and ONEDNN_ISAS.index(isa) >= ONEDNN_ISAS.index(BFLOAT16_MIN_ISA)


# Policies whose compute dtype oneDNN runs natively only from an instruction set up, and the CPU
# flags by which TensorFlow decides to send that dtype to oneDNN at all.
_NATIVE_FROM = {"mixed_bfloat16": ("AVX512_CORE_BF16", {"avx512_bf16", "amx_bf16"}),
                "mixed_float16": ("AVX512_CORE_FP16", {"avx512_fp16", "amx_fp16"})}


def onednn_refuses(policy: str, environ=None, flags: Optional[set] = None) -> Optional[str]:
    """Why oneDNN cannot run ``policy`` on this CPU, or None. The one case: the CPU has the
    instructions (so TensorFlow sends the dtype to oneDNN) but ONEDNN_MAX_CPU_ISA holds oneDNN
    below them, and oneDNN then fails to create the convolution ("could not create a primitive
    descriptor"). A CPU without the instructions at all emulates the dtype and runs."""
    if policy not in _NATIVE_FROM:
        return None
    needed, cpu_flags = _NATIVE_FROM[policy]
    flags = _cpu_flags() if flags is None else set(flags)
    if not flags & cpu_flags:
        return None
    isa = onednn_isa(environ, flags)
    if isa is None or ONEDNN_ISAS.index(isa) >= ONEDNN_ISAS.index(needed):
        return None
    limit = onednn_isa_limit(environ)
    return (f"oneDNN is held to {limit} (ONEDNN_MAX_CPU_ISA) on a CPU with "
            f"{', '.join(sorted(flags & cpu_flags))}: TensorFlow sends {policy}'s convolutions "
            f"to oneDNN, which cannot run them below {needed}. Raise or unset "
            "ONEDNN_MAX_CPU_ISA, or train in float32 (--mixed_precision=off).")


def describe_compute(policy: str, environ=None) -> str:
    """One line for the start of a run: the precision and the CPU instruction set it runs with."""
    environ = os.environ if environ is None else environ
    isa = onednn_isa(environ)
    limit = next((f"{n}={environ[n]}" for n in ONEDNN_ISA_ENV if environ.get(n)), None)
    gpus = len(tf.config.list_physical_devices("GPU"))
    where = f"{gpus} GPU(s)" if gpus else "CPU"
    precision = {"float32": "float32", "mixed_bfloat16": "bfloat16 compute, float32 weights",
                 "mixed_float16": "float16 compute, float32 weights"}.get(policy, policy)
    text = f"Precision: {precision} (dtype policy {policy}) on {where}; oneDNN instruction set "
    text += isa or "unknown (not an x86 Linux CPU)"
    if limit:
        text += f", held by {limit} (the CPU has {cpu_isa() or 'unknown'})"
    return text


def resolve_policy(mixed_precision: str,
                   gpu_capabilities: Sequence[Optional[tuple[int, int]]] = (),
                   tpu: bool = False, cpu_bfloat16: bool = False) -> str:
    """The Keras dtype policy name for ``--mixed_precision`` on these accelerators.
    ``cpu_bfloat16``: with ``auto`` and no accelerator, bfloat16 (the CPU computes it natively:
    ``--cpu_bfloat16`` on a CPU that lists AVX512-BF16 or AMX)."""
    if mixed_precision not in PRECISIONS:
        raise DeviceError(f"--mixed_precision must be one of {', '.join(PRECISIONS)}; "
                          f"got {mixed_precision!r}")
    if mixed_precision != "auto":
        return POLICIES[mixed_precision]
    if tpu:
        return "mixed_bfloat16"
    if gpu_capabilities:
        if all(c is not None and tuple(c) >= BFLOAT16_MIN_COMPUTE_CAPABILITY
               for c in gpu_capabilities):
            return "mixed_bfloat16"
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


# -------------------------------------------------------------------------------------- cluster
#
# TensorFlow's TFConfigClusterResolver reads TF_CONFIG (the cluster and this task); what is kept
# here is a thin check, because the resolver answers a malformed TF_CONFIG with a bare
# JSONDecodeError, or not at all (a task outside its cluster fails later, inside the strategy).

Resolver = tf.distribute.cluster_resolver.ClusterResolver
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def cluster_resolver() -> Optional[Resolver]:
    """TF_CONFIG's cluster and this task's place in it (a TFConfigClusterResolver), None when
    TF_CONFIG is unset or empty; DeviceError when it is not a JSON object."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise DeviceError(f"TF_CONFIG is not JSON ({e}): {text[:200]}") from e
    if not isinstance(config, dict):
        raise DeviceError(f"TF_CONFIG must be a JSON object, got: {text[:200]}")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _cluster(resolver: Optional[Resolver]) -> dict:
    """The resolver's cluster as {job: [addresses]}; {} without one."""
    try:
        return resolver.cluster_spec().as_dict() if resolver is not None else {}
    except (TypeError, ValueError, AttributeError) as e:
        raise DeviceError(f"TF_CONFIG's cluster is not {{job: [host:port, ...]}} ({e}); "
                          f"e.g. {TF_CONFIG_EXAMPLE}") from e


def cluster_size(resolver: Optional[Resolver]) -> int:
    """Tasks of the training cluster (chief and workers); 0 without one."""
    cluster = _cluster(resolver)
    return sum(len(cluster.get(job) or []) for job in ("chief", "worker"))


def check_cluster(resolver: Optional[Resolver]) -> None:
    """DeviceError unless TF_CONFIG describes a cluster and this task's place in it."""
    if resolver is None:
        raise DeviceError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                          f"(the cluster and this worker's place in it), e.g. "
                          f"{TF_CONFIG_EXAMPLE}; see the README's 'Training on several machines'")
    cluster = _cluster(resolver)
    if not cluster_size(resolver):
        raise DeviceError(f"TF_CONFIG has no cluster with a chief or workers: {cluster}; "
                          f"e.g. {TF_CONFIG_EXAMPLE}")
    try:
        task_type, task_id = resolver.task_type, resolver.task_id
    except (TypeError, ValueError):
        task_type = task_id = None
    if task_type is None or task_id is None:
        raise DeviceError("TF_CONFIG has no task {\"type\": ..., \"index\": ...}: "
                          f"{os.environ.get('TF_CONFIG', '')[:200]}")
    if not 0 <= task_id < len(cluster.get(task_type) or []):
        raise DeviceError(f"TF_CONFIG task {task_type}:{task_id} is not in its cluster {cluster}")


def is_chief(resolver: Optional[Resolver]) -> bool:
    """TensorFlow's rule: the 'chief' task, or worker 0 when the cluster has no chief; a process
    outside any cluster (``None``, or a resolver without a task) is its own chief."""
    task_type = resolver.task_type if resolver is not None else None
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in _cluster(resolver)


def chief_process() -> bool:
    """This process is the chief of its TF_CONFIG cluster, or in none (a malformed TF_CONFIG
    counts as none: the strategy reports it where it matters)."""
    try:
        return is_chief(cluster_resolver())
    except (DeviceError, TypeError, ValueError):
        return True


def is_multi_worker(strategy) -> bool:
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


# ------------------------------------------------------------------------------ Keras workaround

def patch_keras_for_multi_worker() -> bool:
    """Works around keras-team/keras#20585 (see the module docstring); True when applied.

    Both replacements defer to Keras' own code for every strategy except a multi-worker
    MultiWorkerMirroredStrategy. Idempotent; ``EXIF_KERAS_KERAS_PATCH=0`` skips it."""
    if os.environ.get(PATCH_ENV, "1") == "0":
        logging.warning("%s=0: Keras' fit is used unpatched under MultiWorkerMirroredStrategy",
                        PATCH_ENV)
        return False
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
        original_reduce = tf_trainer.reduce_per_replica
        original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    except (ImportError, AttributeError) as e:  # a Keras whose internals moved
        logging.warning("Keras %s: cannot apply the multi-worker workaround (%s); fit may fail "
                        "as in keras-team/keras#20585", keras.__version__, e)
        return False
    if getattr(original_reduce, "_exif_keras_patch", False):
        return True

    def _first_local(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def mean(value):
                rank = _first_local(strategy, value).shape.rank
                return strategy.reduce("MEAN", value, axis=0 if rank else None)
            return tf.nest.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy  # pylint: disable=protected-access
        if strategy is None or iterator is None or not is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(lambda v: _first_local(strategy, v), next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

    reduce_per_replica._exif_keras_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    return True


# ------------------------------------------------------------------------------------- strategy

def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (MirroredStrategy without GPUs)."""
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:
        raise DeviceError(f"--logical_cpus must be set before TensorFlow starts: {e}") from e


def resolve_strategy_name(name: str, num_gpus: int, resolver: Optional[Resolver]) -> str:
    """``auto`` -> multi_worker (TF_CONFIG names several tasks), mirrored (several GPUs) or
    default; other names as they are."""
    if name not in STRATEGIES:
        raise DeviceError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name != "auto":
        return name
    if cluster_size(resolver) > 1:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "default"


def make_strategy(name: str):
    """The tf.distribute strategy for ``--strategy`` (see the module docstring)."""
    resolver = cluster_resolver()
    gpus = tf.config.list_physical_devices("GPU")
    name = resolve_strategy_name(name, len(gpus), resolver)
    if name == "multi_worker":
        check_cluster(resolver)
        patch_keras_for_multi_worker()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        except (ValueError, RuntimeError) as e:
            raise DeviceError(f"cannot start MultiWorkerMirroredStrategy from TF_CONFIG "
                              f"{os.environ.get('TF_CONFIG', '')[:200]}: {e}") from e
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


# -------------------------------------------------------------------------------------- devices

@dataclasses.dataclass
class Devices:
    """The strategy, the dtype policy and this process's place in the cluster."""
    strategy: tf.distribute.Strategy
    policy: str
    task_type: Optional[str] = None
    task_id: Optional[int] = None
    num_workers: int = 1
    chief: bool = True
    _temp_root: Optional[str] = dataclasses.field(default=None, repr=False)
    _temp_dirs: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def mixed(self) -> bool:
        return self.policy != "float32"

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def write_dir(self, path: str) -> str:
        """``path`` on the chief; on another worker a local temporary folder standing for it
        (the same folder for the same path), removed by :meth:`cleanup`."""
        if self.chief:
            return path
        if path not in self._temp_dirs:
            if self._temp_root is None:
                self._temp_root = tempfile.mkdtemp(
                    prefix=f"exif_keras_{self.task_type}{self.task_id}_")
                atexit.register(self.cleanup)
            name = f"{len(self._temp_dirs)}_{os.path.basename(os.path.normpath(path)) or 'dir'}"
            self._temp_dirs[path] = os.path.join(self._temp_root, name)
            os.makedirs(self._temp_dirs[path], exist_ok=True)
        return self._temp_dirs[path]

    def cleanup(self) -> None:
        """Deletes this worker's temporary folders (nothing on the chief)."""
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
            self._temp_root = None
            self._temp_dirs.clear()

    def distribute_training_data(self, make: Callable[..., tf.data.Dataset], global_batch: int):
        """The training input for ``fit``: ``make(batch_size=..., shard=(count, index))`` must
        return the repeated pipeline over shards ``index::count``. Single worker: ``make`` with the
        global batch and no sharding (``fit`` splits batches across local replicas)."""
        if not is_multi_worker(self.strategy):
            return make(batch_size=global_batch, shard=None)
        if global_batch % self.replicas:
            raise DeviceError(f"--batch_size={global_batch} must be a multiple of the "
                              f"{self.replicas} replicas of the cluster")

        def per_worker(context: tf.distribute.InputContext):
            return make(batch_size=context.get_per_replica_batch_size(global_batch),
                        shard=(context.num_input_pipelines, context.input_pipeline_id))

        return self.strategy.distribute_datasets_from_function(per_worker)

    def distribute_validation_data(self, dataset: Optional[tf.data.Dataset]):
        """Validation batches split between workers by whole global batches (DATA sharding)."""
        if dataset is None or not is_multi_worker(self.strategy):
            return dataset
        options = tf.data.Options()
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        return dataset.with_options(options)


def setup(mixed_precision: str = "auto", strategy: str = "auto", logical_cpus: int = 0,
          cpu_bfloat16: bool = False) -> Devices:
    """Logical CPUs, dtype policy and strategy, before any model is built."""
    split_cpu(logical_cpus)
    resolve_policy(mixed_precision)  # a bad value fails before anything starts
    made = make_strategy(strategy)  # first: MultiWorkerMirroredStrategy needs a fresh
    tpu = bool(tf.config.list_logical_devices("TPU"))  # runtime, and listing devices starts it
    policy = resolve_policy(mixed_precision, gpu_compute_capabilities(), tpu,
                            cpu_bfloat16=cpu_bfloat16 and native_cpu_bfloat16())
    refused = None if gpu_compute_capabilities() or tpu else onednn_refuses(policy)
    if refused:
        raise DeviceError(f"--mixed_precision={mixed_precision} cannot run here: {refused}")
    keras.config.set_dtype_policy(policy)
    devices = Devices(made, policy)
    if is_multi_worker(made):
        resolver = made.cluster_resolver
        devices.task_type, devices.task_id = resolver.task_type, resolver.task_id
        devices.num_workers = cluster_size(resolver)
        devices.chief = is_chief(resolver)
    logging.info("Devices: %d GPU(s); dtype policy %s; strategy %s with %d replica(s)%s",
                 len(tf.config.list_physical_devices("GPU")), policy, type(made).__name__,
                 made.num_replicas_in_sync,
                 f"; task {devices.task_type}:{devices.task_id} of {devices.num_workers}"
                 f"{' (chief)' if devices.chief else ''}" if devices.num_workers > 1 else "")
    return devices


# --------------------------------------------------------------------------------------- resume

class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore writing into ``write_dir`` (the chief: ``backup_dir`` itself); a
    non-chief worker first copies the chief's state from ``backup_dir`` into its own folder, so
    that every worker of a relaunched cluster restarts from the chief's epoch and weights."""

    STATE_FILES = ("latest.weights.h5", "training_metadata.json",
                   "latest.weights.h5.bkp", "training_metadata.json.bkp")

    def __init__(self, backup_dir: str, write_dir: Optional[str] = None, **kwargs):
        super().__init__(write_dir or backup_dir, **kwargs)
        self.chief_backup_dir = backup_dir

    def on_train_begin(self, logs=None):
        if os.path.normpath(self.chief_backup_dir) != os.path.normpath(self.backup_dir):
            tf.io.gfile.makedirs(self.backup_dir)
            for name in self.STATE_FILES:
                source = os.path.join(self.chief_backup_dir, name)
                target = os.path.join(self.backup_dir, name)
                if tf.io.gfile.exists(source):
                    tf.io.gfile.copy(source, target, overwrite=True)
                elif tf.io.gfile.exists(target):
                    tf.io.gfile.remove(target)
        super().on_train_begin(logs)
