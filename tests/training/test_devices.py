"""devices.py: dtype policies (bfloat16 end to end, float32 export), strategy and TF_CONFIG
handling, per-worker shards, and two MultiWorkerMirroredStrategy workers on this CPU (killed after
an epoch, relaunched, resumed)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from exif_keras import train
from exif_keras.data import pipeline
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.records import writer
from exif_keras.serving import exporter, signature
from exif_keras.training import config as config_lib
from exif_keras.training import devices, trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(sample_photos, tmp_path_factory):
    """~48 sample images in several training shards (shard_size 8: 5 train shards)."""
    root = tmp_path_factory.mktemp("devices_data")
    writer.run(str(sample_photos), str(root / "records"), workers=2, progress=False,
               shard_size=8)
    return root / "records"


def tiny_config(records, model_dir, **overrides) -> config_lib.TrainConfig:
    base = dict(field="shutter", task="binary", data_dir=str(records), model_dir=str(model_dir),
                epochs=2, batch_size=8, num_patches=2, patch_size=32, backbone="scratch",
                filters=4, scratch_width_divisor=8, export=False, verbose=0, eval_train=False,
                seed=1)
    base.update(overrides)
    return config_lib.TrainConfig.from_flat(**base)


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


# ------------------------------------------------------------------------------- dtype policies

@pytest.mark.parametrize("flag,capabilities,tpu,policy", [
    ("auto", [], False, "float32"),
    ("auto", [(8, 0)], False, "mixed_bfloat16"),
    ("auto", [(9, 0), (8, 6)], False, "mixed_bfloat16"),
    ("auto", [(7, 5)], False, "mixed_float16"),
    ("auto", [(8, 0), (7, 0)], False, "mixed_float16"),   # the oldest GPU decides
    ("auto", [None], False, "mixed_float16"),              # capability unknown: float16
    ("auto", [], True, "mixed_bfloat16"),
    ("off", [(8, 0)], True, "float32"),
    ("on", [], False, "mixed_float16"),
    ("float16", [], False, "mixed_float16"),
    ("bfloat16", [], False, "mixed_bfloat16"),
])
def test_resolve_policy(flag, capabilities, tpu, policy):
    assert devices.resolve_policy(flag, capabilities, tpu) == policy


def test_cpu_bfloat16_only_with_auto_and_no_accelerator():
    assert devices.resolve_policy("auto", [], False, cpu_bfloat16=True) == "mixed_bfloat16"
    assert devices.resolve_policy("auto", [(7, 5)], False, cpu_bfloat16=True) == "mixed_float16"
    assert devices.resolve_policy("off", [], False, cpu_bfloat16=True) == "float32"
    assert set(devices.cpu_bfloat16_flags()) <= {"avx512_bf16", "amx_bf16"}


SAPPHIRE_RAPIDS = {"sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                   "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                   "amx_bf16"}
HASWELL = {"sse4_1", "avx", "avx2", "fma"}
SKYLAKE_X = HASWELL | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


@pytest.mark.parametrize("flags,isa", [
    (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX"), (HASWELL, "AVX2"), (SKYLAKE_X, "AVX512_CORE"),
    (SKYLAKE_X | {"avx512_vnni", "avx512_bf16"}, "AVX512_CORE_BF16"),
    (HASWELL | {"avx_vnni"}, "AVX2_VNNI"), ({"sse4_1"}, "SSE41"), (set(), None),
])
def test_cpu_isa_from_the_cpu_flags(flags, isa):
    assert devices.cpu_isa(flags) == isa


@pytest.mark.parametrize("environ,isa", [
    ({}, "AVX512_CORE_AMX"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX2"),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "AVX512_CORE"),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "AVX512_CORE_VNNI"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "AVX512_CORE_AMX"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX_FP16"}, "AVX512_CORE_AMX"),  # above the CPU: its own
])
def test_onednn_isa_is_the_cpu_held_to_the_limit(environ, isa):
    assert devices.onednn_isa(environ, SAPPHIRE_RAPIDS) == isa


def test_an_unknown_isa_limit_is_a_clear_error():
    with pytest.raises(devices.DeviceError, match="ONEDNN_MAX_CPU_ISA='AVX3'.*AVX2"):
        devices.onednn_isa_limit({"ONEDNN_MAX_CPU_ISA": "AVX3"})


@pytest.mark.parametrize("flags,environ,native", [
    (SAPPHIRE_RAPIDS, {}, True),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    (HASWELL, {}, False),
    (SKYLAKE_X, {}, False),
])
def test_cpu_bfloat16_honours_the_onednn_isa_limit(flags, environ, native):
    """--cpu_bfloat16 held below AVX512_CORE_BF16 by ONEDNN_MAX_CPU_ISA runs float32: oneDNN
    refuses bfloat16 convolutions there."""
    assert devices.native_cpu_bfloat16(environ, flags) is native


def test_setup_runs_float32_when_the_isa_limit_forbids_bfloat16(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: set(SAPPHIRE_RAPIDS))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    previous = keras.config.dtype_policy()
    try:
        assert devices.setup("auto", "default", cpu_bfloat16=True).policy == "float32"
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        assert devices.setup("auto", "default", cpu_bfloat16=True).policy == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy(previous)


def test_a_policy_onednn_cannot_run_under_the_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: set(SAPPHIRE_RAPIDS))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(devices.DeviceError, match="--mixed_precision=bfloat16 cannot run here: "
                       "oneDNN is held to AVX2.*--mixed_precision=off"):
        devices.setup("bfloat16", "default")
    assert devices.onednn_refuses("mixed_float16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
                                  SAPPHIRE_RAPIDS)
    assert devices.onednn_refuses("mixed_float16", {}, SAPPHIRE_RAPIDS) is None
    assert devices.onednn_refuses("mixed_bfloat16", {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                                  HASWELL) is None  # emulated, runs
    assert devices.onednn_refuses("float32", {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                                  SAPPHIRE_RAPIDS) is None


def test_describe_compute_names_precision_isa_and_limit(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: set(SAPPHIRE_RAPIDS))
    line = devices.describe_compute("float32", {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "float32" in line and "instruction set AVX2" in line
    assert "held by ONEDNN_MAX_CPU_ISA=AVX2 (the CPU has AVX512_CORE_AMX)" in line
    line = devices.describe_compute("mixed_bfloat16", {})
    assert "bfloat16 compute" in line and "AVX512_CORE_AMX" in line and "held" not in line


def test_unknown_precision_and_strategy_are_clear_errors():
    with pytest.raises(devices.DeviceError, match="--mixed_precision must be one of"):
        devices.resolve_policy("half")
    with pytest.raises(devices.DeviceError, match="--strategy must be one of"):
        devices.resolve_strategy_name("tpu", 0, None)


# ---------------------------------------------------------------------------- cluster handling

CLUSTER = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
           "task": {"type": "worker", "index": 1}}


def resolver_of(monkeypatch, tf_config):
    """devices.cluster_resolver() with this TF_CONFIG (a dict, a string, or None: unset)."""
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str)
                           else json.dumps(tf_config))
    return devices.cluster_resolver()


def test_strategy_names_and_tf_config(monkeypatch):
    cluster = resolver_of(monkeypatch, CLUSTER)
    assert devices.resolve_strategy_name("auto", 0, None) == "default"
    assert devices.resolve_strategy_name("auto", 2, None) == "mirrored"
    assert devices.resolve_strategy_name("auto", 0, cluster) == "multi_worker"
    one = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}
    assert devices.resolve_strategy_name("auto", 0, resolver_of(monkeypatch, one)) == "default"
    cluster = resolver_of(monkeypatch, CLUSTER)
    assert devices.resolve_strategy_name("default", 4, cluster) == "default"
    assert cluster.cluster_spec().as_dict() == CLUSTER["cluster"]
    assert (cluster.task_type, cluster.task_id) == ("worker", 1)
    assert resolver_of(monkeypatch, None) is None
    with pytest.raises(devices.DeviceError, match="not JSON"):
        resolver_of(monkeypatch, "{cluster")
    resolver_of(monkeypatch, None)
    with pytest.raises(devices.DeviceError, match="needs the TF_CONFIG"):
        devices.make_strategy("multi_worker")
    with pytest.raises(devices.DeviceError, match="not in its cluster"):
        devices.check_cluster(resolver_of(monkeypatch, {**CLUSTER, "task": {"type": "worker",
                                                                             "index": 2}}))
    devices.check_cluster(resolver_of(monkeypatch, CLUSTER))


def test_chief_rule():
    def resolver(task_type, task_id, cluster):
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)

    workers = {"worker": ["a:1", "b:1"]}
    assert devices.is_chief(resolver("worker", 0, workers))
    assert not devices.is_chief(resolver("worker", 1, workers))
    assert not devices.is_chief(resolver("worker", 0, {"chief": ["c:1"], **workers}))
    assert devices.is_chief(resolver("chief", 0, {"chief": ["c:1"], **workers}))
    assert devices.is_chief(None)


def test_non_chief_writes_to_a_temporary_folder_that_cleanup_removes(tmp_path):
    chief = devices.Devices(tf.distribute.get_strategy(), "float32")
    assert chief.write_dir(str(tmp_path / "run")) == str(tmp_path / "run")
    worker = devices.Devices(tf.distribute.get_strategy(), "float32", "worker", 1, 2, chief=False)
    run, models = worker.write_dir(str(tmp_path / "run")), worker.write_dir(str(tmp_path / "m"))
    assert worker.write_dir(str(tmp_path / "run")) == run and run != models
    assert not run.startswith(str(tmp_path)) and os.path.isdir(run)
    (pathlib.Path(run) / "metrics.json").write_text("{}")
    worker.cleanup()
    assert not os.path.exists(run) and not os.path.exists(os.path.dirname(run))
    assert not list(tmp_path.iterdir())


def test_each_input_pipeline_reads_its_own_shards(records):
    def images(shard):
        data_config = pipeline.DataConfig(str(records), batch_size=4, num_patches=1,
                                          patch_size=32)
        ds = pipeline.make_dataset(data_config, "train", "shutter", "fine", is_training=False,
                                   shard=shard)
        return [p.tobytes() for batch, _ in ds for p in batch.numpy()]

    everything = images(None)
    first, second = images((2, 0)), images((2, 1))
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(everything)
    with pytest.raises(ValueError, match="no train shard.*smaller --shard_size"):
        images((9, 7))


def test_non_chief_restores_the_chiefs_backup(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    chief_dir, worker_dir = tmp_path / "run" / "backup", tmp_path / "tmp" / "backup"
    chief_dir.mkdir(parents=True)
    model.save_weights(str(chief_dir / "latest.weights.h5"))
    (chief_dir / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    weights = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in weights])
    callback = devices.BackupAndRestore(str(chief_dir), str(worker_dir))
    callback.set_model(model)
    callback.on_train_begin()
    assert model._initial_epoch == 3
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert (worker_dir / "latest.weights.h5").exists()


# ------------------------------------------------------------------------------------ bfloat16

@pytest.mark.dtype_policy("mixed_bfloat16")
def test_bfloat16_training_and_float32_export(records, tmp_path, restore_policy):
    metrics = trainer.train(tiny_config(records, tmp_path / "run", epochs=1,
                                        mixed_precision="bfloat16", export=True,
                                        export_dir=str(tmp_path / "models" / "m")),
                            export_fn=train.export_run)
    assert metrics["dtype_policy"] == "mixed_bfloat16" and metrics["mixed_precision"] is True
    run = run_folder.read(str(tmp_path / "run"))
    images = exporter.sample_images(run.config.patch_size, count=3)
    patches = tf.stack([signature.preprocess(tf.constant([b]), run.config.num_patches,
                                          run.config.patch_size)[0] for b in images])

    keras.config.set_dtype_policy("mixed_bfloat16")  # the trained model, as in training
    trained = model_lib.build_model(dataclasses.replace(run.config, backbone_weights=None))
    trained.load_weights(run.weights_path)
    keras.config.set_dtype_policy("float32")
    assert trained.get_layer("per_patch").compute_dtype == "bfloat16"
    bf16 = trained(patches, training=False)["shutter"]
    assert bf16.dtype == tf.float32, "probabilities stay float32 under mixed_bfloat16"

    float32_copy = exporter._serving_copy(trained, run.config)
    assert all(w.dtype == "float32" for w in float32_copy.weights)
    # the export serves the calibrated model: the same temperature on the float32 copy
    calibrated_copy = model_lib.calibrated(float32_copy, run_folder.read_temperatures(
        str(tmp_path / "run")))
    reference = calibrated_copy(patches, training=False)["shutter"].numpy()

    loaded = tf.saved_model.load(metrics["export_path"])
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert served["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(served["probabilities"].numpy(), reference, rtol=1e-5, atol=1e-6)
    # bfloat16 keeps 8 bits of mantissa: the trained model's own numbers are close, not equal
    # (compared before calibration: `trained` is the Keras model as training built it).
    uncalibrated = float32_copy(patches, training=False)["shutter"].numpy()
    np.testing.assert_allclose(bf16.numpy(), uncalibrated, atol=0.05)
    meta = json.loads((pathlib.Path(metrics["export_path"]) / "assets.extra" /
                       "exif_keras.json").read_text())
    assert meta["precision"] == "float32"

    # Asked for, the export computes in bfloat16 (float32 variables and outputs).
    path = exporter.export_model(str(tmp_path / "run"), str(tmp_path / "models" / "bf16"),
                               precision="bfloat16", write_config=False)
    served = tf.saved_model.load(path).signatures["serving_default"](
        image_bytes=tf.constant(images))["probabilities"]
    assert served.dtype == tf.float32
    np.testing.assert_allclose(served.numpy(), reference, atol=0.05)
    assert json.loads((pathlib.Path(path) / "assets.extra" / "exif_keras.json").read_text()
                      )["precision"] == "bfloat16"
    with pytest.raises(exporter.ExportError, match="--export_precision must be one of"):
        exporter.export_model(str(tmp_path / "run"), str(tmp_path / "x"), precision="int8")


# ------------------------------------------------------------------------ two workers, one CPU

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    from exif_keras import train
    from exif_keras.data import pipeline
    from exif_keras.training import config as config_lib
    from exif_keras.training import devices, trainer

    index, out = int(sys.argv[1]), sys.argv[2]
    kill_after = int(os.environ.get("KILL_AFTER_EPOCH", "0"))
    seen = {"epochs": [], "shards": []}

    real_read = pipeline.read_records
    def read_records(*args, shard=None, **kwargs):
        seen["shards"].append([args[1], shard])
        return real_read(*args, shard=shard, **kwargs)
    pipeline.read_records = read_records

    real_begin = keras.callbacks.CSVLogger.on_epoch_begin
    def on_epoch_begin(self, epoch, logs=None):
        seen["epochs"].append(epoch)
        return real_begin(self, epoch, logs)
    keras.callbacks.CSVLogger.on_epoch_begin = on_epoch_begin

    real_end = keras.callbacks.CSVLogger.on_epoch_end
    def on_epoch_end(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch + 1 == kill_after:
            os._exit(17)  # killed after the epoch's backup and log line
    keras.callbacks.CSVLogger.on_epoch_end = on_epoch_end

    real_fit = keras.Model.fit
    def fit(self, *args, **kwargs):
        history = real_fit(self, *args, **kwargs)
        np.savez(os.path.join(out, f"weights{index}.npz"),
                 **{v.path: v.numpy() for v in self.trainable_variables})
        np.savez(os.path.join(out, f"moving{index}.npz"),
                 **{v.path: v.numpy() for v in self.non_trainable_variables})
        return history
    keras.Model.fit = fit

    config = config_lib.TrainConfig.from_flat(**json.loads(os.environ["TRAIN_CONFIG"]))
    metrics = trainer.train(config, export_fn=train.export_run)
    seen["workers"], seen["replicas"] = metrics["workers"], metrics["replicas"]
    seen["chief"] = metrics.get("chief", True)
    with open(os.path.join(out, f"seen{index}.json"), "w") as f:
        json.dump(seen, f)
""")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(config: config_lib.TrainConfig, out: pathlib.Path, kill_after: int = 0,
                timeout: float = 150) -> list[subprocess.CompletedProcess]:
    """Two workers on localhost, each with its TF_CONFIG; their outputs once both have ended."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "worker.py"
    script.write_text(WORKER)
    hosts = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        tmp = out / f"tmp{index}"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3",
                   CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp), KILL_AFTER_EPOCH=str(kill_after),
                   TRAIN_CONFIG=json.dumps(config.to_flat()),
                   TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(index), str(out)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    results = []
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def files_under(path: pathlib.Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_two_workers_train_resume_and_only_the_chief_writes(records, tmp_path):
    run, models = tmp_path / "run", tmp_path / "models" / "exif_shutter"
    config = tiny_config(records, run, strategy="multi_worker", epochs=2, export=True,
                         export_dir=str(models), eval_train=False)

    # 1. Both workers die right after the first epoch's backup (a killed worker takes the
    #    cluster down with it: collective ops cannot go on without it).
    killed = run_workers(config, tmp_path / "first", kill_after=1)
    assert [r.returncode for r in killed] == [17, 17], "\n".join(r.stdout[-3000:] for r in killed)
    metadata = json.loads((run / run_folder.BACKUP_DIR / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1
    with open(run / run_folder.CSV_LOG) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]

    # 2. The same command resumes: both run only the second epoch, from the chief's backup.
    done = run_workers(config, tmp_path / "second")
    assert [r.returncode for r in done] == [0, 0], "\n".join(r.stdout[-3000:] for r in done)
    seen = [json.loads((tmp_path / "second" / f"seen{i}.json").read_text()) for i in (0, 1)]
    assert [s["epochs"] for s in seen] == [[1], [1]]
    assert [s["workers"] for s in seen] == [2, 2] and [s["replicas"] for s in seen] == [2, 2]
    assert [s["chief"] for s in seen] == [True, False]
    train_shards = [[shard for split, shard in s["shards"] if shard] for s in seen]
    assert train_shards == [[[2, 0]], [[2, 1]]], "each worker reads its own training shards"

    # The trained weights agree (every step applies the same all-reduced gradients). Batch
    # normalisation's moving statistics are each replica's own, as under MirroredStrategy on one
    # machine (Keras' non-synchronised BatchNormalization): the chief's are saved.
    weights = [np.load(tmp_path / "second" / f"weights{i}.npz") for i in (0, 1)]
    assert weights[0].files == weights[1].files and len(weights[0].files) > 4
    for name in weights[0].files:
        np.testing.assert_allclose(weights[0][name], weights[1][name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    moving = np.load(tmp_path / "second" / "moving0.npz").files
    assert moving and all(n.endswith(("moving_mean", "moving_variance")) for n in moving), moving

    # Only the chief wrote the run folder and the export; the other worker's temporary folders
    # are gone (those of the killed run stay: a hard kill runs no clean-up).
    names = files_under(run)
    assert {"model_config.json", "run_config.json", run_folder.BEST_WEIGHTS, run_folder.CSV_LOG,
            run_folder.METRICS, run_folder.CONFUSION_PNG} <= names
    assert not any(n.startswith(run_folder.BACKUP_DIR) for n in names), names
    with open(run / run_folder.CSV_LOG) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert sorted(p.name for p in models.iterdir()) == ["1"]
    assert not list((tmp_path / "second" / "tmp1").iterdir())
    assert not list((tmp_path / "second" / "tmp0").iterdir())
    metrics = json.loads((run / run_folder.METRICS).read_text())
    assert metrics["workers"] == 2 and metrics["export_path"] == str(models / "1")
