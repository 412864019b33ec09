"""A fine/joint model end to end after training: its serving signature (per-field outputs and the
estimates in camera notation) and predict's estimates against the photos' own EXIF."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import exporter, predictor
from exif_keras.serving.signature import SIGNATURE_NAME

from fakes import exif_photo as photo

K, P = 2, 32
FIELDS = labels.FIELDS


# training class counts recorded for two fields only (an older run records none)
SHUTTER_COUNTS = [0] * labels.field_spec("shutter").num_classes
SHUTTER_COUNTS[3], SHUTTER_COUNTS[6] = 5, 9   # majority: class 6, 1/125 s
APERTURE_COUNTS = [1] * labels.field_spec("aperture").num_classes  # ties: the first class


def make_joint_run(model_dir: str) -> keras.Model:
    heads = labels.task_specs("all", "fine")
    config = model_lib.ModelConfig(
        heads=tuple(model_lib.HeadConfig(h.name, h.num_classes) for h in heads), num_patches=K,
        patch_size=P, backbone="scratch", backbone_weights=None, filters=4, dense_units=8)
    run_folder.save_model_config(config, model_dir)
    run_folder.save_run_config(run_folder.run_config(
        heads, {"field": "all", "task": "fine"},
        train_class_counts={"shutter": SHUTTER_COUNTS, "aperture": APERTURE_COUNTS}), model_dir)
    keras.utils.set_random_seed(4)
    model = model_lib.build_model(config)
    model.save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))
    return model


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    model = make_joint_run(run_dir)
    export_dir = os.path.join(str(tmp_path_factory.mktemp("models")), "exif_all")
    path = exporter.export_model(run_dir, export_dir)
    return model, export_dir, path


def test_joint_signature_outputs_one_row_per_photo(joint):
    model, export_dir, path = joint
    assert export_dir.endswith("exif_all") and path.endswith("exif_all/1")
    signature = tf.saved_model.load(path).signatures[SIGNATURE_NAME]
    images = [photo(i) for i in range(3)]
    out = signature(image_bytes=tf.constant(images))
    expected = {f"{f}_{o}" for f in FIELDS for o in ("probabilities", "class_ids", "class_names")}
    expected |= {"exposure_time", "f_number", "iso", "exif_text", "exif_range_text"}
    expected |= {f"{f}_{end}" for f in FIELDS for end in ("low", "high")}   # the intervals
    assert set(out) == expected
    for f in FIELDS:
        assert out[f"{f}_probabilities"].shape == (3, labels.field_spec(f).num_classes)
    for name in ("exposure_time", "f_number", "iso", "exif_text"):
        assert out[name].shape == (3,)
    # the estimate is the probability-weighted mean in stops, written as cameras do
    probs = {f: out[f"{f}_probabilities"].numpy() for f in FIELDS}
    want = stops.estimates(probs)
    np.testing.assert_allclose(out["exposure_time"].numpy(), want["exposure_time"], rtol=1e-4)
    assert [t.decode() for t in out["exif_text"].numpy()] == list(want["exif_text"])
    assert all(", f/" in t.decode() and ", ISO " in t.decode() for t in out["exif_text"].numpy())
    # deterministic, and a corrupt photo fails alone with a clear error
    again = signature(image_bytes=tf.constant(images))
    np.testing.assert_array_equal(again["iso_probabilities"], out["iso_probabilities"])
    with pytest.raises(tf.errors.InvalidArgumentError):
        signature(image_bytes=tf.constant([images[0], b"not a photo"]))
    one = signature(image_bytes=tf.constant(images[:1]))
    np.testing.assert_allclose(one["shutter_probabilities"][0], out["shutter_probabilities"][0],
                               rtol=1e-5, atol=1e-6)


def test_predict_prints_estimates_and_stop_errors(joint, tmp_path, capsys):
    _, export_dir, _ = joint
    (tmp_path / "a.jpg").write_bytes(photo(1, exposure=(1, 125), f_number=(56, 10), iso=400))
    (tmp_path / "b.jpg").write_bytes(photo(2, exposure=(2, 1)))
    (tmp_path / "c.jpg").write_bytes(photo(3))
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff broken")
    status = predictor.run([str(tmp_path)], export_dir, as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1  # d.jpg failed, the others were predicted
    rows = {os.path.basename(r["path"]): r for r in lines[:-1]}
    assert sorted(rows) == ["a.jpg", "b.jpg", "c.jpg"]
    a = rows["a.jpg"]
    for f in FIELDS:
        e = a["estimate"][f]
        assert e["stops"] == pytest.approx(stops.value_to_stops(e["value"], f))
        truth = a["exif"][f]
        assert truth["error_stops"] == pytest.approx(e["stops"] - stops.value_to_stops(
            {"shutter": 1 / 125, "aperture": 5.6, "iso": 400}[f], f), abs=1e-6)
    assert a["exif"]["shutter"]["text"] == "1/125 s"
    assert rows["b.jpg"]["exif"]["iso"] is None and rows["c.jpg"]["exif"]["shutter"] is None
    summary = lines[-1]["summary"]
    assert summary["photos"] == 3 and summary["failed"] == 1
    shutter = summary["fields"]["shutter"]
    assert shutter["with_exif"] == 2
    errors = [abs(rows[n]["exif"]["shutter"]["error_stops"]) for n in ("a.jpg", "b.jpg")]
    assert shutter["mae_stops"] == pytest.approx(np.mean(errors))
    assert shutter["within_one_stop"] == pytest.approx(np.mean([e <= 1 for e in errors]))
    # the constant answer: the training split's most frequent class, from the export's metadata
    assert stops.class_values("shutter")[6] == pytest.approx(np.log2(1 / 125), abs=0.05)
    assert shutter["majority_mae_stops"] == pytest.approx(np.mean(
        [abs(np.log2(t) - stops.class_values("shutter")[6]) for t in (1 / 125, 2.0)]))
    aperture = summary["fields"]["aperture"]
    assert aperture["with_exif"] == 1 and aperture["majority_mae_stops"] == pytest.approx(
        abs(stops.value_to_stops(5.6, "aperture") - stops.class_values("aperture")[0]))
    assert summary["fields"]["iso"]["majority_mae_stops"] is None  # no counts recorded
    # text mode: settings as cameras write them, the EXIF value and the error in stops
    predictor.run([str(tmp_path / "a.jpg")], export_dir)
    text = capsys.readouterr().out
    assert " s (" in text and "  f/" in text and "  ISO " in text   # estimates (intervals)
    assert "EXIF 1/125 s: shutter " in text
    assert "MAE stops" in text and "majority MAE" in text
