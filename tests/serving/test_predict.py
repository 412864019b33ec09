"""Tests of predict (exif_keras/predict.py, serving/predictor.py) on a tiny exported model."""

from __future__ import annotations

import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from PIL import Image, TiffImagePlugin

from exif_keras import predict
from exif_keras.common import labels
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import exporter, predictor

from image_bombs import jpeg_header_bomb, png_header_bomb

K, P = 2, 32
FIELD, TASK = "shutter", "binary"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL_EXIF = os.path.join(os.path.dirname(REPO), "shared", "corpora", "real-exif")
NAMES = labels.task_spec(FIELD, TASK).class_names   # ("fast: ...", "slow: ...")


def make_run(model_dir: str) -> None:
    """A run folder as exif_keras.train leaves it, with random weights (nothing trained)."""
    config = model_lib.ModelConfig(heads=(model_lib.HeadConfig(FIELD, 2),), num_patches=K, patch_size=P, backbone="scratch",
                                   backbone_weights=None, filters=4, dense_units=8)
    run_folder.save_model_config(config, model_dir)
    run_folder.save_run_config(run_folder.run_config(
        [labels.task_spec(FIELD, TASK)], {"field": FIELD, "task": TASK}), model_dir)
    keras.utils.set_random_seed(2)
    model_lib.build_model(config).save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))


def photo(height: int, width: int, seed: int, exposure=None, fmt: str = "JPEG") -> bytes:
    """A textured picture; with ``exposure`` (numerator, denominator) seconds in its EXIF."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    kwargs = {"quality": 90} if fmt == "JPEG" else {}
    if exposure is not None:
        exif = Image.Exif()
        ifd = exif.get_ifd(0x8769)
        ifd[0x829A] = TiffImagePlugin.IFDRational(*exposure)
        ifd[0x829D] = TiffImagePlugin.IFDRational(28, 10)
        ifd[0x8827] = 200
        kwargs["exif"] = exif
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    make_run(run_dir)
    export_dir = os.path.join(str(tmp_path_factory.mktemp("models")), "exif_shutter")
    exporter.export_model(run_dir, export_dir)
    return export_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Good photos (three with EXIF), a corrupt JPEG sorted between them, a non-image .jpg."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    files = {
        "a_fast.jpg": photo(60, 90, 0, exposure=(1, 500)),        # fast
        "c_slow.JPG": photo(90, 60, 1, exposure=(1, 15)),         # slow
        "d_between.jpeg": photo(50, 50, 2, exposure=(1, 125)),    # left out by the binary task
        "e_plain.png": photo(40, 70, 3, fmt="PNG"),               # no EXIF
        "sub/f_tiny.jpg": photo(9, 12, 4, exposure=(2, 1)),       # smaller than a patch; slow
    }
    good = photo(60, 90, 5)
    bad = {
        "b_corrupt.jpg": good[: len(good) // 3],                  # JPEG signature, truncated
        "sub/g_notes.jpg": b"these are notes, not a photo\n",
    }
    for name, data in {**files, **bad}.items():
        (root / name).write_bytes(data)
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root, sorted(str(root / n) for n in files), sorted(str(root / n) for n in bad)


def run_main(argv):
    """predict.main as app.run calls it: flags parsed from argv, the rest positional."""
    with flagsaver.flagsaver():
        rest = flags.FLAGS(argv, known_only=True)
        try:
            return predict.main(rest)
        finally:
            flags.FLAGS.unparse_flags()


def test_text_output_reports_bad_files_and_exif(model_path, photos, capsys):
    root, good, bad = photos
    status = run_main(["predict", f"--model={model_path}", str(root)])
    out, err = capsys.readouterr()
    assert status == 1
    lines = out.splitlines()
    photo_lines = [line for line in lines if line.startswith(str(root))]
    assert [line.split("  ")[0] for line in photo_lines] == good
    for line in photo_lines:
        predicted = line.split("  ")[1]
        assert predicted in NAMES
        assert 0.5 <= float(line.split("  ")[2]) <= 1.0
    by_name = {os.path.basename(line.split("  ")[0]): line for line in photo_lines}
    assert "| EXIF 1/500 s: fast: 1/250 s or shorter, " in by_name["a_fast.jpg"]
    assert "| EXIF 1/15 s: slow: 1/30 s or longer, " in by_name["c_slow.JPG"]
    assert "| EXIF 1/125 s: not in this task's classes" in by_name["d_between.jpeg"]
    assert "| EXIF 2 s: slow: 1/30 s or longer, " in by_name["f_tiny.jpg"]
    assert "EXIF" not in by_name["e_plain.png"]
    for path in bad:
        assert path in err
    assert "g_notes.jpg: skipped: not a JPEG or PNG image" in err
    assert "b_corrupt.jpg: skipped: jpeg::Uncompress failed" in err
    assert "readme.txt" not in out + err
    assert "5 photo(s) predicted, 2 failed." in out
    assert "4 with EXIF shutter; 3 of them in this task's classes" in out
    assert "Traceback" not in err


def test_json_lines_and_batches(model_path, photos, capsys):
    root, good, bad = photos
    results = {}
    for batch_size in (1, 2, 16):   # 2: the corrupt file fails a batch, retried one by one
        status = run_main(["predict", f"--model={model_path}", "--json",
                           f"--batch_size={batch_size}", str(root)])
        out, err = capsys.readouterr()
        assert status == 1
        records = [json.loads(line) for line in out.splitlines()]
        assert "summary" in records[-1]
        rows = records[:-1]
        assert [r["path"] for r in rows] == good
        for r in rows:
            assert r["class_name"] == NAMES[r["class_id"]]
            assert r["probability"] == pytest.approx(max(r["probabilities"]), abs=1e-6)
            assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        results[batch_size] = rows
        summary = records[-1]["summary"]
        assert (summary["photos"], summary["failed"]) == (5, 2)
        assert (summary["with_exif"], summary["with_exif_class"]) == (4, 3)
        per_class = {c["class_name"]: c["photos"] for c in summary["per_class"]}
        assert per_class == {NAMES[0]: 1, NAMES[1]: 2}
        assert sorted(err.count(p) for p in bad) == [1, 1]
    for rows in (results[1], results[2]):
        for a, b in zip(rows, results[16]):
            np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=2e-6)
    exif = {os.path.basename(r["path"]): r["exif"] for r in results[16]}
    assert exif["e_plain.png"] is None
    assert exif["a_fast.jpg"]["value"] == pytest.approx(1 / 500)
    assert (exif["a_fast.jpg"]["class_id"], exif["a_fast.jpg"]["class_name"]) == (0, NAMES[0])
    assert exif["d_between.jpeg"]["class_id"] is None and exif["d_between.jpeg"]["agrees"] is None
    by_path = {os.path.basename(r["path"]): r for r in results[16]}
    assert exif["c_slow.JPG"]["agrees"] == (by_path["c_slow.JPG"]["class_id"] == 1)


def test_matches_the_signature(model_path, photos):
    """predict's numbers are the SavedModel's, i.e. TensorFlow Serving's, for the same bytes."""
    root, good, _ = photos
    out = io.StringIO()
    assert predictor.run(good, model_path, as_json=True, out=out, err=io.StringIO()) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()[:-1]]
    signature = tf.saved_model.load(os.path.join(model_path, "1")).signatures["serving_default"]
    images = [open(p, "rb").read() for p in good]
    expected = signature(image_bytes=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-6)


def test_usage_errors(model_path, photos, tmp_path, capsys):
    root, good, _ = photos
    assert run_main(["predict", f"--model={tmp_path / 'nope'}", str(root)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_main(["predict", f"--model={model_path}", "--version=9", str(root)]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert run_main(["predict", f"--model={model_path}"]) == 2
    assert "no PATH" in capsys.readouterr().err
    assert run_main(["predict", f"--model={model_path}", "--version=1", good[0],
                     str(tmp_path / "missing.jpg")]) == 1
    out, err = capsys.readouterr()
    assert good[0] in out and "missing.jpg: no such file or folder" in err
    version_dir = os.path.join(model_path, "1")   # a version folder works as --model too
    assert run_main(["predict", f"--model={version_dir}", good[0]]) == 0


def test_decompression_bombs_are_skipped_with_the_reason(model_path, tmp_path, capsys):
    jpeg_bomb, png_bomb = jpeg_header_bomb(24000, 18000), png_header_bomb(20000, 30000)
    (tmp_path / "a.jpg").write_bytes(photo(60, 90, 6))
    (tmp_path / "b_bomb.jpg").write_bytes(jpeg_bomb)
    (tmp_path / "c_bomb.png").write_bytes(png_bomb)
    (tmp_path / "d.png").write_bytes(photo(40, 70, 7, fmt="PNG"))
    assert run_main(["predict", f"--model={model_path}", "--json", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [os.path.basename(r["path"]) for r in rows[:-1]] == ["a.jpg", "d.png"]
    assert (rows[-1]["summary"]["photos"], rows[-1]["summary"]["failed"]) == (2, 2)
    assert ("b_bomb.jpg: skipped: 24000x18000 = 432000000 pixels, over the limit of 64000000 "
            "pixels (export --max_pixels)") in err
    assert "c_bomb.png: skipped: 20000x30000 = 600000000 pixels, over the limit" in err


def test_the_pixel_limit_is_the_exports(tmp_path, capsys):
    """predict reads max_pixels from exif_keras.json and refuses by the header, before the model
    (whose own refusal reads "image_bytes[0] has ...")."""
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    make_run(run_dir)
    model = exporter.export_model(run_dir, str(tmp_path / "exif_shutter"), write_config=False,
                                max_pixels=60 * 90)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a_at_limit.jpg").write_bytes(photo(60, 90, 8))
    (tmp_path / "p" / "b_over.png").write_bytes(photo(61, 90, 9, fmt="PNG"))
    assert predictor.Predictor.load(model).max_pixels == 5400
    assert run_main(["predict", f"--model={model}", str(tmp_path / "p")]) == 1
    out, err = capsys.readouterr()
    assert "a_at_limit.jpg  " in out and "b_over.png" not in out
    assert err.strip().endswith("b_over.png: skipped: 90x61 = 5490 pixels, over the limit of 5400 "
                                "pixels (export --max_pixels)")


def test_real_exif_corpus(model_path, capsys):
    if not os.path.isdir(REAL_EXIF):
        pytest.skip(f"corpus of real photos not found at {REAL_EXIF} "
                    "(<repo>/../shared/corpora/real-exif)")
    files, _ = predictor.find_images([REAL_EXIF])
    decodable = set()
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        if predictor.image_problem(data):
            continue
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            continue
        decodable.add(path)
    assert decodable

    out, err = io.StringIO(), io.StringIO()
    status = predictor.run([REAL_EXIF], model_path, batch_size=32, as_json=True, out=out, err=err)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    predicted = {r["path"] for r in records[:-1]}
    assert predicted == decodable
    failed = set(files) - decodable
    reported = {line.split(": ")[0] for line in err.getvalue().splitlines()}
    assert reported == failed
    assert status == (1 if failed else 0)
    summary = records[-1]["summary"]
    assert summary["photos"] == len(decodable) and summary["failed"] == len(failed)
    assert summary["with_exif"] > 0   # the corpus's photos carry camera EXIF
