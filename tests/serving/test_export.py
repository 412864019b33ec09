"""Tests of the TensorFlow Serving export (exif_keras/serving/exporter.py, signature.py and the export command) on a tiny model.

A fake run folder (model_config.json, run_config.json, best.weights.h5 of a randomly initialised
tiny "scratch" model) is written here; nothing is trained and nothing is downloaded.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from exif_keras import export
from exif_keras.common import labels
from exif_keras.common.images import JPEG_MAGIC
from exif_keras.data import patches
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.records import convert
from exif_keras.serving import exporter
from exif_keras.serving.signature import image_sizes

from image_bombs import jpeg_header_bomb, png_header_bomb

K, P = 2, 32   # patches per image, patch size: tiny keeps the tests fast
FIELD, TASK = "shutter", "binary"
PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL_EXIF = os.path.join(os.path.dirname(REPO), "shared", "corpora", "real-exif")
SAVED_MODEL_CLI = os.path.join(REPO, ".venv", "bin", "saved_model_cli")


# ------------------------------------------------------------------------------------- helpers

def tiny_config() -> model_lib.ModelConfig:
    return model_lib.ModelConfig(heads=(model_lib.HeadConfig(FIELD, 2),), num_patches=K, patch_size=P, backbone="scratch",
                                 backbone_weights=None, filters=4, dense_units=8)


def make_run(model_dir: str, seed: int = 1) -> keras.Model:
    """A run folder as exif_keras.train leaves it, with random weights; returns the model."""
    config = tiny_config()
    run_folder.save_model_config(config, model_dir)
    task = labels.task_spec(FIELD, TASK)
    run_folder.save_run_config(run_folder.run_config([task], {"field": FIELD, "task": TASK}),
                               model_dir)
    keras.utils.set_random_seed(seed)
    model = model_lib.build_model(config)
    # Non-trivial BatchNorm statistics, so that inference mode matters.
    for layer in model_lib.per_patch_of(model).get_layer("trunk").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.5, 0.5, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
    model.save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))
    return model


def textured(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 3 % 256, xx * 5 % 256, (yy + xx) % 256], axis=-1)
    return np.clip(base + rng.integers(-30, 31, (height, width, 3)), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def real_photo(max_bytes: int = 300_000):
    """The first real-exif JPEG (sorted) that TensorFlow decodes, or None without the corpus."""
    if not os.path.isdir(REAL_EXIF):
        return None
    for root, dirs, names in os.walk(REAL_EXIF):
        dirs.sort()
        for name in sorted(names):
            if not name.lower().endswith((".jpg", ".jpeg")):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            if not data.startswith(JPEG_MAGIC) or len(data) > max_bytes:
                continue
            try:
                image = tf.io.decode_jpeg(data, channels=3)
            except tf.errors.InvalidArgumentError:
                continue
            if min(image.shape[:2]) >= P:
                return path, data
    return None


def keras_probabilities(model: keras.Model, encoded: bytes) -> np.ndarray:
    """What evaluation computes: decode, the k patches of the grid, the Keras model."""
    crops = patches.extract_patches(patches.decode_image(tf.constant(encoded)), K, P,
                                      is_training=False)
    return model(crops[None], training=False)[FIELD].numpy()[0]


def tf_serving_rest_predict(signature, body: str) -> dict:
    """What TensorFlow Serving does with a REST predict body in the row ("instances") format for
    a signature with one input: every instance is that input's value, {"b64": ...} objects are
    base64-decoded into DT_STRING elements; the answer is {"predictions": [one object per row
    with every output]} (a DT_STRING output whose name does not end in "_bytes" is plain text)."""
    request = json.loads(body)
    (name,) = signature.structured_input_signature[1]
    values = []
    for instance in request["instances"]:
        if isinstance(instance, dict) and set(instance) == {name}:
            instance = instance[name]
        assert isinstance(instance, dict) and set(instance) == {"b64"}, instance
        values.append(base64.b64decode(instance["b64"]))
    outputs = {k: v.numpy() for k, v in signature(**{name: tf.constant(values)}).items()}
    predictions = []
    for i in range(len(values)):
        row = {}
        for key, value in outputs.items():
            item = value[i]
            row[key] = item.decode() if isinstance(item, bytes) else item.tolist()
        predictions.append(row)
    return json.loads(json.dumps({"predictions": predictions}))


# ------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run"))
    make_run(path)
    return path


@pytest.fixture(scope="module")
def keras_model(run_dir):
    model = model_lib.build_model(tiny_config())
    model.load_weights(os.path.join(run_dir, run_folder.BEST_WEIGHTS))
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def exported(run_dir, models_dir):
    """Version 1, exported once for the module (model=None: rebuilt from the run folder)."""
    return exporter.export_model(run_dir, os.path.join(models_dir, "exif_shutter"))


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


@pytest.fixture(scope="module")
def signature(loaded):
    return loaded.signatures["serving_default"]


def serve(signature, images) -> dict:
    return {k: v.numpy() for k, v in signature(image_bytes=tf.constant(images)).items()}


# ---------------------------------------------------------------------------------------- tests

def test_version_folder_layout(exported, models_dir):
    export_dir = os.path.join(models_dir, "exif_shutter")
    assert exported == os.path.join(export_dir, "1")
    for name in ("saved_model.pb", "variables",
                 os.path.join("assets.extra", "tf_serving_warmup_requests"),
                 os.path.join("assets.extra", "exif_keras.json")):
        assert os.path.exists(os.path.join(exported, name)), name
    assert not [n for n in os.listdir(export_dir) if n.startswith(exporter.TMP_PREFIX)]
    with open(os.path.join(exported, "assets.extra", "exif_keras.json")) as f:
        meta = json.load(f)
    task = labels.task_spec(FIELD, TASK)
    [head] = meta["heads"]
    assert head["field"] == FIELD and head["task"] == TASK
    assert head["class_names"] == list(task.class_names)
    assert head["fine_to_target"] == list(task.fine_to_target)
    assert (meta["num_patches"], meta["patch_size"]) == (K, P)
    assert meta["max_pixels"] == convert.DEFAULT_MAX_PIXELS == 64_000_000
    assert meta["model_name"] == "exif_shutter" and meta["version"] == 1


def test_signature_as_saved_model_cli_shows_it(exported, signature):
    if os.path.exists(SAVED_MODEL_CLI):
        shown = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", exported],
                               capture_output=True, text=True, check=True, timeout=120).stdout
        section = re.search(r"signature_def\['serving_default'\]:(.*?)(?:signature_def\[|"
                            r"The MetaGraph|$)", shown, re.S)
        assert section, shown
        text = re.sub(r"\s+", " ", section.group(1))
        assert "inputs['image_bytes'] tensor_info: dtype: DT_STRING shape: (-1)" in text
        assert "outputs['probabilities'] tensor_info: dtype: DT_FLOAT shape: (-1, 2)" in text
        assert "outputs['class_ids'] tensor_info: dtype: DT_INT64 shape: (-1)" in text
        assert "outputs['class_names'] tensor_info: dtype: DT_STRING shape: (-1)" in text
        assert "Method name is: tensorflow/serving/predict" in text
    args, kwargs = signature.structured_input_signature
    assert args == () and list(kwargs) == ["image_bytes"]
    assert kwargs["image_bytes"].dtype == tf.string
    assert kwargs["image_bytes"].shape.as_list() == [None]
    outputs = signature.structured_outputs
    assert sorted(outputs) == ["class_ids", "class_names", "probabilities"]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 2]
    assert outputs["class_ids"].dtype == tf.int64 and outputs["class_ids"].shape.as_list() == [None]
    assert outputs["class_names"].dtype == tf.string


def test_parity_with_keras_model_on_evaluation_patches(signature, keras_model):
    images = [encode(textured(90, 130, 0)),          # landscape: 1 x 2 grid
              encode(textured(130, 90, 1)),          # portrait: 2 x 1 grid
              encode(textured(45, 200, 2), "PNG"),   # PNG
              encode(textured(20, 12, 3))]           # smaller than a patch: zero-padded
    out = serve(signature, images)
    expected = np.stack([keras_probabilities(keras_model, image) for image in images])
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"], expected.argmax(-1))
    names = labels.task_spec(FIELD, TASK).class_names
    assert [n.decode() for n in out["class_names"]] == [names[i] for i in out["class_ids"]]
    # Same bytes, same numbers: again, alone, and in another batch order.
    np.testing.assert_array_equal(serve(signature, images)["probabilities"], out["probabilities"])
    for i, image in enumerate(images):
        np.testing.assert_allclose(serve(signature, [image])["probabilities"][0],
                                   out["probabilities"][i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(serve(signature, images[::-1])["probabilities"][::-1],
                               out["probabilities"], rtol=1e-5, atol=1e-6)


def test_png_decodes_to_the_exact_pixels(signature, keras_model):
    array = textured(70, 100, 4)
    crops = patches.extract_patches(tf.constant(array), K, P, is_training=False)
    expected = keras_model(crops[None], training=False)[FIELD].numpy()
    np.testing.assert_allclose(serve(signature, [encode(array, "PNG")])["probabilities"],
                               expected, rtol=1e-5, atol=1e-6)


def test_image_smaller_than_a_patch(signature, keras_model):
    tiny = encode(textured(7, 5, 5))
    out = serve(signature, [tiny])
    assert out["probabilities"].shape == (1, 2)
    np.testing.assert_allclose(out["probabilities"].sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["probabilities"][0], keras_probabilities(keras_model, tiny),
                               rtol=1e-5, atol=1e-6)


def test_empty_batch(signature):
    out = serve(signature, np.array([], dtype=object))
    assert out["probabilities"].shape == (0, 2) and out["class_ids"].shape == (0,)


def test_rest_body_round_trip(signature, keras_model):
    photos = [encode(textured(100, 150, 6))]
    real = real_photo()
    if real is not None:
        photos.append(real[1])
    body = json.dumps({"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]})
    response = tf_serving_rest_predict(signature, body)
    assert len(response["predictions"]) == len(photos)
    names = list(labels.task_spec(FIELD, TASK).class_names)
    for photo, row in zip(photos, response["predictions"]):
        assert sorted(row) == ["class_ids", "class_names", "probabilities"]
        np.testing.assert_allclose(row["probabilities"], keras_probabilities(keras_model, photo),
                                   rtol=1e-5, atol=1e-6)
        assert row["class_ids"] == int(np.argmax(row["probabilities"]))
        assert row["class_names"] == names[row["class_ids"]]
    # The named-input form of an instance is accepted too.
    named = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(photos[0])
                                                       .decode()}}]})
    assert (tf_serving_rest_predict(signature, named)["predictions"][0]
            == response["predictions"][0])


def test_corrupt_bytes_fail_the_request_then_the_next_one_is_served(signature):
    good = encode(textured(80, 120, 7))
    before = serve(signature, [good])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(signature, [good, b"this is not an image"])
    assert "image_bytes[1] is not a JPEG or PNG image" in info.value.message
    assert exporter.first_line(info.value.message) == "image_bytes[1] is not a JPEG or PNG image"
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(signature, [b""])
    with pytest.raises(tf.errors.InvalidArgumentError):   # JPEG signature, truncated data
        serve(signature, [good[: len(good) // 3]])
    after = serve(signature, [good])
    np.testing.assert_array_equal(after["probabilities"], before["probabilities"])


def test_header_sizes_without_decoding():
    images = [encode(textured(30, 70, 10)), encode(textured(45, 20, 11), "PNG"),
              jpeg_header_bomb(24000, 18000), png_header_bomb(30000, 20000), b"\x89PNG\r\n"]
    np.testing.assert_array_equal(image_sizes(tf.constant(images)).numpy(),
                                  [[30, 70], [45, 20], [18000, 24000], [20000, 30000], [0, 0]])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_header_only_bomb_is_refused_then_the_next_request_is_served(signature, fmt):
    good = encode(textured(80, 120, 12))
    before = serve(signature, [good])
    bomb = jpeg_header_bomb(24000, 18000) if fmt == "JPEG" else png_header_bomb(24000, 18000)
    assert len(bomb) < 1000
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(signature, [good, bomb])
    assert exporter.first_line(info.value.message) == (
        "image_bytes[1] has 24000x18000 = 432000000 pixels, over the limit of 64000000 pixels "
        "(export --max_pixels)")
    np.testing.assert_array_equal(serve(signature, [good])["probabilities"],
                                  before["probabilities"])


def test_max_pixels_is_an_export_setting(tmp_path, run_dir, keras_model):
    path = exporter.export_model(run_dir, str(tmp_path / "exif_shutter"), model=keras_model,
                               write_config=False, max_pixels=50 * 100)
    with open(os.path.join(path, "assets.extra", "exif_keras.json")) as f:
        assert json.load(f)["max_pixels"] == 5000
    signature = tf.saved_model.load(path).signatures["serving_default"]
    at_limit, landscape = encode(textured(50, 100, 13)), encode(textured(50, 101, 14), "PNG")
    np.testing.assert_allclose(serve(signature, [at_limit])["probabilities"][0],
                               keras_probabilities(keras_model, at_limit), rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(signature, [at_limit, at_limit, landscape])
    assert exporter.first_line(info.value.message) == (
        "image_bytes[2] has 101x50 = 5050 pixels, over the limit of 5000 pixels "
        "(export --max_pixels)")
    with pytest.raises(exporter.ExportError, match="max_pixels must be a positive"):
        exporter.export_model(run_dir, str(tmp_path / "exif_shutter"), model=keras_model,
                            write_config=False, max_pixels=0)


def test_no_python_ops_in_the_graph(exported):
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    ops = set()
    for meta_graph in saved.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    assert not ops & PY_OPS, sorted(ops & PY_OPS)
    # the preprocessing is in the graph, with the header check
    assert {"DecodeJpeg", "DecodeImage", "Assert", "ExtractJpegShape", "DecodeRaw"} <= ops


def _parse_models_config(text: str) -> list[dict]:
    """models.config parsed by protobuf's text format into TensorFlow Serving's own schema ->
    [{name, base_path, model_platform}]."""
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert config.WhichOneof("config") == "model_config_list"
    return [{"name": c.name, "base_path": c.base_path, "model_platform": c.model_platform}
            for c in config.model_config_list.config]


def test_versions_and_models_config(run_dir, models_dir, exported):
    export_dir = os.path.join(models_dir, "exif_shutter")
    second = exporter.export_model(run_dir, export_dir)
    assert second == os.path.join(export_dir, "2")
    assert exporter.version_numbers(export_dir) == [1, 2]
    assert exporter.next_version(export_dir) == 3
    assert exporter.latest_version_dir(export_dir) == second
    with pytest.raises(exporter.ExportError, match="version 2 already exists"):
        exporter.export_model(run_dir, export_dir, version=2)
    assert exporter.version_numbers(export_dir) == [1, 2]

    # Every model folder with a complete version is named; others are not.
    shutil.copytree(exported, os.path.join(models_dir, "exif_aperture", "7"))
    os.makedirs(os.path.join(models_dir, "half_written", "1"))
    os.makedirs(os.path.join(models_dir, "exif_shutter", ".tmp-3-deadbeef"))
    path = exporter.write_models_config(models_dir)
    assert path == os.path.join(models_dir, "models.config")
    with open(path) as f:
        entries = _parse_models_config(f.read())
    assert entries == [
        {"name": "exif_aperture", "base_path": "/models/exif_aperture",
         "model_platform": "tensorflow"},
        {"name": "exif_shutter", "base_path": "/models/exif_shutter",
         "model_platform": "tensorflow"},
    ]
    exporter.write_models_config(models_dir, serving_base_path="/srv/models/")
    with open(path) as f:
        assert [e["base_path"] for e in _parse_models_config(f.read())] == [
            "/srv/models/exif_aperture", "/srv/models/exif_shutter"]


def test_models_config_schema(tmp_path, exported):
    """models.config parsed by protobuf's text format into TensorFlow Serving's own schema."""
    shutil.copytree(exported, str(tmp_path / "exif_iso" / "1"))
    with open(exporter.write_models_config(str(tmp_path))) as f:
        text = f.read()
    assert text.startswith("# Written by exif_keras.export")
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (
        "exif_iso", "/models/exif_iso", "tensorflow")
    assert text_format.Parse(exporter.models_config_text([]),
                             model_server_config_pb2.ModelServerConfig()).model_config_list \
        .config == []


def test_warmup_requests(exported, signature):
    """The warmup file: TFRecords that TensorFlow Serving's PredictionLog parses, each a predict
    request for this model's signature that the model serves."""
    path = os.path.join(exported, "assets.extra", "tf_serving_warmup_requests")
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert 2 <= len(records) <= 1000            # TensorFlow Serving reads at most 1000
    sizes = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (
            "exif_shutter", "serving_default")
        assert list(request.inputs) == ["image_bytes"]
        tensor = request.inputs["image_bytes"]
        assert tensor.dtype == tf.string.as_datatype_enum
        images = list(tf.make_ndarray(tensor))
        sizes.append(len(images))
        assert all(image.startswith(JPEG_MAGIC) for image in images)
        assert serve(signature, images)["probabilities"].shape == (len(images), 2)
    assert sizes == [1, 1, 1, 3]
    assert [log.SerializeToString() for log in exporter.read_warmup(path)] == records


def test_export_of_a_given_model_and_warmup_images(tmp_path, run_dir, keras_model):
    photo = encode(textured(64, 64, 8))
    photo_path = tmp_path / "warm.jpg"
    photo_path.write_bytes(photo)
    path = exporter.export_model(run_dir, str(tmp_path / "m" / "exif_shutter"), version=5,
                               model=keras_model, warmup_images=[photo, str(photo_path)],
                               write_config=False)
    assert path.endswith(os.path.join("exif_shutter", "5"))
    assert not (tmp_path / "m" / "models.config").exists()
    records = exporter.read_warmup(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    assert [list(tf.make_ndarray(r.predict_log.request.inputs["image_bytes"]))
            for r in records] == [[photo], [photo], [photo, photo]]
    with pytest.raises(exporter.ExportError, match="warmup image"):
        exporter.export_model(run_dir, str(tmp_path / "m" / "exif_shutter"), model=keras_model,
                            warmup_images=[b"nope"], write_config=False)
    assert exporter.version_numbers(str(tmp_path / "m" / "exif_shutter")) == [5]


def _run_main(argv):
    with flagsaver.flagsaver():
        rest = flags.FLAGS(argv, known_only=True)
        try:
            return export.main(rest)
        finally:
            flags.FLAGS.unparse_flags()


def test_cli_errors_without_traceback(tmp_path, run_dir, exported, models_dir, capsys):
    missing = str(tmp_path / "no_such_run")
    assert _run_main(["export", f"--model_dir={missing}"]) == 2
    err = capsys.readouterr().err
    assert "export: error:" in err and "no_such_run" in err and "does not exist" in err
    assert "Traceback" not in err
    assert _run_main(["export", f"--model_dir={run_dir}", "--version=1",
                      f"--export_dir={os.path.join(models_dir, 'exif_shutter')}"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    run_folder.save_model_config(tiny_config(), str(half))
    assert _run_main(["export", f"--model_dir={half}"]) == 2
    assert "run_config.json, best.weights.h5" in capsys.readouterr().err
    limited = str(tmp_path / "limited" / "exif_shutter")
    assert _run_main(["export", f"--model_dir={run_dir}", f"--export_dir={limited}",
                      "--max_pixels=0"]) == 2
    assert "--max_pixels must be a positive integer, got 0" in capsys.readouterr().err
    assert _run_main(["export", f"--model_dir={run_dir}", f"--export_dir={limited}",
                      "--max_pixels=1000"]) == 2   # under the generated warmup images' 64x48
    assert ("a warmup image cannot be served: image_bytes[0] has 64x48 = 3072 pixels, over the "
            "limit of 1000 pixels" in capsys.readouterr().err)
    assert _run_main(["export", f"--model_dir={run_dir}", f"--export_dir={limited}",
                      "--max_pixels=5000"]) == 0
    with open(os.path.join(limited, "1", "assets.extra", "exif_keras.json")) as f:
        assert json.load(f)["max_pixels"] == 5000


# ------------------------------------------------------- exports of trained and vgg16 models

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A few sample images converted to records, as in tests/test_train.py."""
    from exif_keras.records import sample, writer

    root = tmp_path_factory.mktemp("train_data")
    sample.generate_sample(str(root / "sample"), count=32, seed=3, workers=1, progress=False)
    writer.run(str(root / "sample"), str(root / "records"), workers=1, progress=False)
    return root / "records"


@pytest.fixture
def float32_afterwards():
    """Training sets the global dtype policy (mixed_float16 with --mixed_precision=on)."""
    yield
    keras.config.set_dtype_policy("float32")


def train_config(records, tmp_path, **overrides):
    from exif_keras.training import config as config_lib

    base = dict(field=FIELD, task=TASK, data_dir=str(records), model_dir=str(tmp_path / "run"),
                epochs=1, batch_size=8, num_patches=K, patch_size=P, backbone="scratch",
                trunk_layer="block1_pool", scratch_width_divisor=16, filters=4, verbose=0,
                eval_train=False, seed=1, export=True,
                export_dir=str(tmp_path / "models" / "exif_shutter"))
    base.update(overrides)
    return config_lib.TrainConfig.from_flat(**base)


def model_of_run(model_dir: str) -> keras.Model:
    """The run's model as evaluation sees it: its config, its best weights, this dtype policy,
    and the temperatures training fitted (calibration.json)."""
    model = model_lib.build_model(run_folder.load_model_config(model_dir))
    model.load_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))
    return model_lib.calibrated(model, run_folder.read_temperatures(model_dir))


TEST_PHOTOS = [encode(textured(90, 130, 20)), encode(textured(130, 90, 21), "PNG"),
               encode(textured(20, 12, 22))]


def train_with_export(config) -> dict:
    """Training as `python -m exif_keras.train` runs it: the command's export at the end."""
    from exif_keras import train
    from exif_keras.training import trainer

    return trainer.train(config, export_fn=train.export_run)


def test_training_exports_its_best_model_at_the_end(records, tmp_path, float32_afterwards):
    metrics = train_with_export(train_config(records, tmp_path))
    path = metrics["export_path"]
    assert path == str(tmp_path / "models" / "exif_shutter" / "1")
    with open(tmp_path / "run" / run_folder.METRICS) as f:
        assert json.load(f)["export_path"] == path
    with open(os.path.join(path, "assets.extra", "exif_keras.json")) as f:
        meta = json.load(f)
    assert meta["source_model_dir"] == str(tmp_path / "run")
    assert (meta["heads"][0]["field"], meta["num_patches"], meta["patch_size"]) == (FIELD, K, P)
    with open(tmp_path / "models" / "models.config") as f:
        assert [e["name"] for e in _parse_models_config(f.read())] == ["exif_shutter"]
    served = serve(tf.saved_model.load(path).signatures["serving_default"], TEST_PHOTOS)
    model = model_of_run(str(tmp_path / "run"))
    np.testing.assert_allclose(served["probabilities"],
                               [keras_probabilities(model, p) for p in TEST_PHOTOS],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.dtype_policy("mixed_float16")
def test_export_of_a_mixed_precision_run_serves_float32(records, tmp_path, float32_afterwards):
    metrics = train_with_export(train_config(records, tmp_path, mixed_precision="on"))
    assert metrics["mixed_precision"] is True
    signature = tf.saved_model.load(metrics["export_path"]).signatures["serving_default"]
    assert signature.structured_outputs["probabilities"].dtype == tf.float32
    served = serve(signature, TEST_PHOTOS)
    assert served["probabilities"].dtype == np.float32

    mixed = model_of_run(str(tmp_path / "run"))   # the policy training left: mixed_float16
    assert mixed.get_layer("per_patch").compute_dtype == "float16"
    in_process = np.stack([keras_probabilities(mixed, p) for p in TEST_PHOTOS])
    np.testing.assert_allclose(served["probabilities"], in_process, atol=1e-2)
    # The export computes in float32: exactly the float32 model with the trained weights.
    keras.config.set_dtype_policy("float32")
    full = model_of_run(str(tmp_path / "run"))
    np.testing.assert_allclose(served["probabilities"],
                               [keras_probabilities(full, p) for p in TEST_PHOTOS],
                               rtol=1e-5, atol=1e-6)


def test_export_of_a_vgg16_backbone(tmp_path):
    """A vgg16 run's model_config.json names the backbone's initial weights (ImageNet, or a file
    on the training machine, missing here); the export rebuilds the model without them (the run's
    own weights replace them) and serves what the trained model computes."""
    config = model_lib.ModelConfig(heads=(model_lib.HeadConfig(FIELD, 2),), num_patches=K,
                                   patch_size=P, backbone="vgg16",
                                   trunk_layer="block2_pool", backbone_weights=None,
                                   dense_units=8, filters=4)
    keras.utils.set_random_seed(4)
    model = model_lib.build_model(config)
    run_dir = str(tmp_path / "run")
    make_run(run_dir)   # run_config.json and the like, then the vgg16 model over them
    elsewhere = str(tmp_path / "elsewhere" / "vgg16_notop.h5")
    run_folder.save_model_config(dataclasses.replace(config, backbone_weights=elsewhere), run_dir)
    model.save_weights(os.path.join(run_dir, run_folder.BEST_WEIGHTS))

    path = exporter.export_model(run_dir, str(tmp_path / "models" / "exif_shutter"))
    with open(os.path.join(path, "assets.extra", "exif_keras.json")) as f:
        meta = json.load(f)
    assert (meta["model_config"]["backbone"], meta["model_config"]["trunk_layer"]) == (
        "vgg16", "block2_pool")
    served = serve(tf.saved_model.load(path).signatures["serving_default"], TEST_PHOTOS)
    np.testing.assert_allclose(served["probabilities"],
                               [keras_probabilities(model, p) for p in TEST_PHOTOS],
                               rtol=1e-5, atol=1e-6)
