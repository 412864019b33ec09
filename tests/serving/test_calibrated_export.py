"""Calibrated exports (issue 17): the run folder's temperatures inside the served model, the
served intervals (<field>_low/high, exif_range_text) equal to predict's and the in-process
numbers, the consistency verdict in predict, and a binary model calibrated with its signature
unchanged."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.data import patches
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import exporter, predictor
from exif_keras.serving.signature import SIGNATURE_NAME
from exif_keras.training import calibration

from fakes import exif_photo as photo

K, P = 2, 32
FIELDS = labels.FIELDS
TEMPERATURES = {"shutter": 0.25, "aperture": 0.5, "iso": 1.0}   # sharpen: intervals vary


def make_run(model_dir: str, field: str = "all", task: str = "fine", temperatures=None):
    heads = labels.task_specs(field, task)
    config = model_lib.ModelConfig(
        heads=tuple(model_lib.HeadConfig(h.name, h.num_classes) for h in heads), num_patches=K,
        patch_size=P, backbone="scratch", backbone_weights=None, filters=4, dense_units=8)
    run_folder.save(model_dir, config, heads, {"field": field, "task": task})
    keras.utils.set_random_seed(7)
    model = model_lib.build_model(config)
    # a larger last layer, so the random model is not flat and the intervals differ per photo
    for h in heads:
        layer = model.get_layer(f"{h.name}_logits")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 30.0, bias])
    model.save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))
    if temperatures is not None:
        run_folder.save_calibration(model_dir, temperatures)
    return model


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    raw_model = make_run(run_dir, temperatures=TEMPERATURES)
    models = str(tmp_path_factory.mktemp("models"))
    path = exporter.export_model(run_dir, os.path.join(models, "exif_all"), write_config=False)
    return run_dir, raw_model, path


def _crops(images):
    """The evaluation patches of encoded images, as the served graph cuts them."""
    return np.stack([patches.extract_patches(patches.decode_image(tf.constant(b)), K, P,
                                             is_training=False).numpy() for b in images])


def serve(path, images):
    signature = tf.saved_model.load(path).signatures[SIGNATURE_NAME]
    return {k: v.numpy() for k, v in signature(image_bytes=tf.constant(images)).items()}


def test_the_served_probabilities_are_calibrated_by_the_run_folders_temperatures(calibrated):
    run_dir, raw_model, path = calibrated
    images = [photo(i) for i in range(6)]
    out = serve(path, images)
    # the export records the temperatures and the intervals' mass
    meta = json.loads(open(os.path.join(path, exporter.ASSETS_EXTRA,
                                        exporter.METADATA_FILENAME)).read())
    assert meta["temperatures"] == TEMPERATURES and meta["interval"] == 0.8
    # run_folder.load_model (explain, the page) gives the same calibrated model in process
    run = run_folder.read(run_dir)
    assert run.temperatures == TEMPERATURES
    loaded = run_folder.load_model(run)
    crops = _crops(images)
    in_process = {k: v.numpy() for k, v in loaded(crops).items()}
    raw = {k: v.numpy() for k, v in raw_model(crops).items()}
    for field, temperature in TEMPERATURES.items():
        served = out[f"{field}_probabilities"]
        np.testing.assert_allclose(served, in_process[field], atol=2e-6)
        np.testing.assert_allclose(served, calibration.scale(raw[field], temperature), atol=2e-5)
    np.testing.assert_array_equal(out["iso_probabilities"].argmax(-1), raw["iso"].argmax(-1))


def test_served_intervals_equal_the_in_process_numbers_and_predicts(calibrated, tmp_path, capsys):
    _, _, path = calibrated
    settings = [((1, 125), (56, 10), 400), ((1, 8000), (22, 1), 1600), ((2, 1), None, 200)]
    paths = []
    for i, (exposure, f_number, iso) in enumerate(settings):
        (tmp_path / f"p{i}.jpg").write_bytes(photo(10 + i, exposure, f_number, iso))
        paths.append(str(tmp_path / f"p{i}.jpg"))
    out = serve(path, [open(p, "rb").read() for p in paths])
    lo_hi = {}
    for field in FIELDS:
        lo, hi = stops.interval_classes(out[f"{field}_probabilities"], 0.8)
        low, high = stops.interval_values(field, lo, hi)
        np.testing.assert_allclose(out[f"{field}_low"], low, rtol=1e-5)
        np.testing.assert_allclose(out[f"{field}_high"], high, rtol=1e-5)
        assert out[f"{field}_low"].dtype == np.float32 and out[f"{field}_low"].shape == (3,)
        lo_hi[field] = (lo, hi)
    assert [t.decode() for t in out["exif_range_text"]] == stops.exif_range_text(lo_hi)
    widths = {int(h - lo + 1) for lo, h in zip(*lo_hi["shutter"])}
    assert widths, "intervals"

    status = predictor.run(paths, os.path.dirname(path), as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    rows = {os.path.basename(r["path"]): r for r in lines[:-1]}
    for i, p in enumerate(paths):
        row = rows[os.path.basename(p)]
        assert row["exif_range_text"] == out["exif_range_text"][i].decode()
        for field in FIELDS:
            interval = row["estimate"][field]["interval"]
            assert interval["low"] == pytest.approx(float(out[f"{field}_low"][i]))
            assert interval["high"] == pytest.approx(float(out[f"{field}_high"][i]))
            assert (interval["low_class"], interval["high_class"]) == (
                lo_hi[field][0][i], lo_hi[field][1][i])
            truth = row["exif"][field]
            if truth is not None:
                c = labels.field_spec(field).classify(truth["value"])
                assert truth["in_interval"] == (lo_hi[field][0][i] <= c <= lo_hi[field][1][i])
        # the consistency check: the claimed classes' calibrated probabilities
        check = row["consistency"]
        claims = {f: c for f, c in check["fields"].items()}
        for field, c in claims.items():
            p_claim = out[f"{field}_probabilities"][i][c["class_id"]]
            assert c["probability"] == pytest.approx(float(p_claim), rel=1e-5)
            assert c["verdict"] == ("unlikely" if p_claim < 0.05 else "consistent")
        assert check["score"] == pytest.approx(sum(
            -math.log(max(c["probability"], stops.PROBABILITY_FLOOR)) for c in claims.values()))
        assert check["verdict"] == ("unlikely" if any(
            c["verdict"] == "unlikely" for c in claims.values()) else "consistent")
    assert set(rows["p2.jpg"]["consistency"]["fields"]) == {"shutter", "iso"}   # no f-number
    summary = lines[-1]["summary"]
    assert summary["consistency"]["checked"] == 3
    assert summary["consistency"]["unlikely"] == sum(
        r["consistency"]["verdict"] == "unlikely" for r in rows.values())
    assert summary["fields"]["shutter"]["interval_photos"] == 3
    # a stricter threshold flags at least as many; the text shows intervals and verdicts
    predictor.run(paths, os.path.dirname(path), consistency_threshold=0.9)
    text = capsys.readouterr().out
    assert "unlikely" in text and "EXIF inside the interval" in text
    assert f"({rows['p0.jpg']['estimate']['shutter']['interval']['text']})" in text
    assert ", inside" in text or ", outside" in text
    assert predictor.run(paths, os.path.dirname(path), consistency_threshold=0.0) == 2


def test_the_interval_is_an_export_setting(calibrated, tmp_path):
    run_dir, _, _ = calibrated
    images = [photo(i) for i in range(4)]
    path = exporter.export_model(run_dir, str(tmp_path / "exif_all"), write_config=False,
                                 interval=0.5)
    assert predictor.Predictor.load(path).interval == 0.5
    out = serve(path, images)
    lo, hi = stops.interval_classes(out["aperture_probabilities"], 0.5)
    np.testing.assert_allclose(out["aperture_high"], stops.interval_values("aperture", lo, hi)[1],
                               rtol=1e-5)
    # the mass levels training fitted for its coverage (calibration.json) are served for it
    masses = {"shutter": 0.35, "aperture": 0.6, "iso": 0.95}
    run_folder.save_calibration(run_dir, TEMPERATURES, interval=0.8, interval_masses=masses)
    path = exporter.export_model(run_dir, str(tmp_path / "fitted"), write_config=False)
    loaded = predictor.Predictor.load(path)
    assert loaded.interval == 0.8 and loaded.metadata["interval_masses"] == masses
    out = serve(path, images)
    for field, level in masses.items():
        assert loaded.interval_mass(field) == level
        lo, hi = stops.interval_classes(out[f"{field}_probabilities"], level)
        np.testing.assert_allclose(out[f"{field}_low"], stops.interval_values(field, lo, hi)[0],
                                   rtol=1e-5)
    run_folder.save_calibration(run_dir, TEMPERATURES)
    with pytest.raises(exporter.ExportError, match="interval"):
        exporter.export_model(run_dir, str(tmp_path / "bad"), interval=1.5)


def test_predictor_consistency_and_interval_of_on_known_outputs():
    outputs = {"iso_probabilities": np.array([0.6, 0.36, 0.02, 0.01, 0.01], np.float32),
               "iso_low": np.float32(100 * 2 ** -0.5), "iso_high": np.float32(100 * 2 ** 1.5)}
    interval = predictor.interval_of(outputs, "iso")
    assert (interval["low_class"], interval["high_class"]) == (0, 1)
    assert interval["text"] == "ISO 100-200" and interval["width_stops"] == 2.0
    assert predictor.interval_of(outputs, "shutter") is None
    check = predictor.consistency(outputs, {"iso": 800.0, "exposure_time": 0.01}, ["iso",
                                                                                   "shutter"])
    assert check["fields"]["iso"]["verdict"] == "unlikely" and check["verdict"] == "unlikely"
    assert check["score"] == pytest.approx(-math.log(0.01), rel=1e-5)
    assert set(check["fields"]) == {"iso"}     # no shutter probabilities served
    ok = predictor.consistency(outputs, {"iso": 200.0}, ["iso"])
    assert ok["verdict"] == "consistent" and ok["fields"]["iso"]["probability"] == \
        pytest.approx(0.36)
    assert predictor.consistency(outputs, {"iso": 200.0}, ["iso"], threshold=0.5)[
        "verdict"] == "unlikely"
    assert predictor.consistency(outputs, {}, ["iso"]) is None
    assert predictor.consistency(outputs, {"iso": 25600.0}, ["iso"]) is None   # past the classes


def test_a_binary_model_is_calibrated_with_its_signature_unchanged(tmp_path):
    run_dir = str(tmp_path / "run")
    raw_model = make_run(run_dir, "shutter", "binary", temperatures={"shutter": 3.0})
    images = [photo(i) for i in range(4)]
    out = serve(exporter.export_model(run_dir, str(tmp_path / "m"), write_config=False), images)
    assert sorted(out) == ["class_ids", "class_names", "probabilities"]
    raw = raw_model(_crops(images))["shutter"].numpy()
    np.testing.assert_allclose(out["probabilities"], calibration.scale(raw, 3.0), atol=2e-6)
    np.testing.assert_array_equal(out["class_ids"], raw.argmax(-1))
