"""The page of ``python -m exif_keras.serve`` (exif_keras/analysis/page.py): the same answer as
``predict`` for the same bytes (RGB, greyscale and CMYK JPEG, RGBA PNG), one sentence for each bad
file, batching under concurrent clients, and the served page through gradio_client."""

from __future__ import annotations

import concurrent.futures
import io
import os
import re

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the serve extra: pip install -e '.[serve]'")

from exif_keras import serve  # noqa: E402
from exif_keras.analysis import page as page_lib  # noqa: E402
from exif_keras.serving import predictor  # noqa: E402

from image_bombs import jpeg_header_bomb, png_header_bomb  # noqa: E402
from page_fixtures import (  # noqa: E402
    BatchRecorder,
    K,
    P,
    as_predict_line,
    photos,
    running,
    textured,
    write,
)


@pytest.fixture(scope="module")
def exports(page_exports):
    return page_exports


@pytest.fixture(scope="module")
def pages(exports):
    return {kind: page_lib.Page(path) for kind, path in exports.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write(str(tmp_path_factory.mktemp("photos")), photos())


def bad_files() -> dict[str, bytes]:
    good = photos(seed=5)["rgb.jpg"]
    from PIL import Image

    tiny = io.BytesIO()
    Image.fromarray(textured(20, 24, 1)).save(tiny, "JPEG", quality=90)
    return {"notes.txt": b"these are not the pixels you are looking for\n",
            "truncated.jpg": good[: len(good) // 3],
            "tiny.jpg": tiny.getvalue(),
            "bomb.jpg": jpeg_header_bomb(20000, 20000),
            "bomb.png": png_header_bomb(30000, 30000),
            "empty.jpg": b""}


def predict_lines(export: str, paths) -> dict[str, str]:
    out, err = io.StringIO(), io.StringIO()
    predictor.run(list(paths), export, out=out, err=err)
    return {line.split("  ")[0]: line for line in out.getvalue().splitlines()
            if line.split("  ")[0] in paths}


def test_same_bytes_same_answer_as_predict_joint(pages, exports, files):
    page, lines = pages["joint"], predict_lines(exports["joint"], files.values())
    assert len(lines) == 4, lines    # predict answers all four kinds of file
    for name, path in files.items():
        with open(path, "rb") as f:
            answer = page.answer(f.read())
        assert answer.problem is None
        # the table and the headline are predict's, to the last digit shown
        assert lines[path] == f"{path}  {as_predict_line(page, answer)}", name
        assert [row[0] for row in answer.rows] == ["shutter", "aperture", "iso"]
        assert answer.headline.split("\n\n")[0] == ", ".join(row[1] for row in answer.rows)
        if page.ranges:   # an export with intervals (issue 17): the served ranges beside them
            ranges = [row[page.headers.index(page_lib.RANGE_HEADER)] for row in answer.rows]
            assert "likely range: " + ", ".join(ranges) in answer.headline
        assert set(answer.probabilities) == {"shutter", "aperture", "iso"}
        for probabilities in answer.probabilities.values():
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert "EXIF 1/250 s" in lines[files["rgb.jpg"]] and "EXIF 1/30 s" in lines[files["cmyk.jpg"]]


def test_same_bytes_same_answer_as_predict_binary(pages, exports, files):
    page, lines = pages["binary"], predict_lines(exports["binary"], files.values())
    assert page.headers == page_lib.CLASS_HEADERS
    for name, path in files.items():
        with open(path, "rb") as f:
            answer = page.answer(f.read())
        [[field, cls, probability, exif, agrees]] = answer.rows
        # predict: "path  fast: 1/250 s or shorter  0.873  | EXIF 1/250 s: fast: ..., agrees"
        assert lines[path].startswith(f"{path}  {cls}  {probability}"), (name, lines[path])
        assert answer.headline == f"{cls} ({probability})"
        if exif != "no EXIF":
            assert f"EXIF {exif}: " in lines[path] and lines[path].endswith(agrees)
        assert max(answer.probabilities["shutter"].values()) == pytest.approx(
            float(probability), abs=5e-4)


@pytest.mark.parametrize("kind", ["joint", "binary"])
def test_bad_files_get_one_sentence_and_the_next_upload_works(pages, files, kind):
    page = pages[kind]
    with open(files["rgb.jpg"], "rb") as f:
        good = f.read()
    expected = page.answer(good)
    reasons = {"notes.txt": "not a JPEG or PNG image", "truncated.jpg": "does not decode",
               "tiny.jpg": f"20 pixels, smaller than one {P}x{P} patch",
               "bomb.jpg": "20000x20000 = 400000000 pixels, over the limit",
               "bomb.png": "30000x30000 = 900000000 pixels, over the limit",
               "empty.jpg": "empty"}
    for name, data in bad_files().items():
        answer = page.answer(data)
        assert answer.problem and reasons[name] in answer.problem, (name, answer.problem)
        assert "\n" not in answer.problem and "Traceback" not in answer.problem
        assert answer.problem.endswith(".") and not answer.rows and not answer.probabilities
        assert page.evidence(data) == (None, None, "")   # nothing decoded for the evidence
        assert page.answer(good) == expected   # the next upload works
    # in one batch: each bad file its sentence, each good one the answer it gets alone
    batch = [good, bad_files()["truncated.jpg"], good, b"GIF89a", None]
    answers = page.answer_batch(batch)
    assert answers[0] == expected and answers[2] == expected
    assert "does not decode" in answers[1].problem and "not a JPEG" in answers[3].problem
    assert answers[4] == page_lib.Answer()


def test_a_batch_is_cut_into_model_calls_of_bounded_patch_pixels(pages, files, monkeypatch):
    """MODEL_CALL_PATCH_PIXELS bounds each model call (the server's memory); the answers are the
    ones each photo gets alone, bad files in the batch included (their headers read in one call)."""
    page = pages["joint"]
    goods = []
    for path in files.values():
        with open(path, "rb") as f:
            goods.append(f.read())
    alone = [page.answer(data) for data in goods]
    bad = bad_files()
    batch = [goods[0], bad["bomb.jpg"], goods[1], bad["tiny.jpg"], goods[2], bad["truncated.jpg"],
             goods[3], bad["notes.txt"]]
    calls = []
    inner = page.predictor

    class Recorder:
        def __getattr__(self, name):
            return getattr(inner, name)

        def __call__(self, items):
            calls.append(len(items))
            return inner(items)

    monkeypatch.setattr(page, "predictor", Recorder())
    monkeypatch.setattr(page_lib, "MODEL_CALL_PATCH_PIXELS", 2 * K * P * P)   # 2 photos a call
    assert page.call_size == 2
    answers = page.answer_batch(batch)
    for got, want in zip([answers[i] for i in (0, 2, 4, 6)], alone):
        # what the page shows, to the last digit; the probabilities to float32 rounding (oneDNN
        # may pick another kernel for another batch size, e.g. with ONEDNN_MAX_CPU_ISA=AVX2)
        assert (got.headline, got.rows, got.problem) == (want.headline, want.rows, want.problem)
        assert got.probabilities.keys() == want.probabilities.keys()
        for field, classes in want.probabilities.items():
            assert got.probabilities[field].keys() == classes.keys()
            np.testing.assert_allclose(list(got.probabilities[field].values()),
                                       list(classes.values()), atol=1e-5)
    assert "over the limit" in answers[1].problem and "smaller than one" in answers[3].problem
    assert "does not decode" in answers[5].problem and "not a JPEG" in answers[7].problem
    # 5 files pass the header checks: calls of 2, 2 and 1; the one with the truncated file fails
    # and is retried photo by photo
    assert calls[:2] == [2, 2] and max(calls) <= 2 and sum(calls) == 5 + 2
    # one unreadable header: the others still read, each as it reads alone
    mixed = page_lib.header_sizes([goods[0], bad["truncated.jpg"][:10], goods[1]])
    assert mixed[1] is None
    assert [mixed[0], mixed[2]] == page_lib.header_sizes([goods[0], goods[1]]) != [None, None]


def test_evidence_boxes_are_the_evaluation_grid_with_each_patch_estimate(pages, files,
                                                                         tmp_path):
    page = pages["joint"]
    with open(files["rgb.jpg"], "rb") as f:
        data = f.read()
    (image, boxes), figure, note = page.evidence(data, "rgb.jpg")
    assert note == "" and image.shape == (48, 64, 3) and figure.ndim == 3
    assert len(boxes) == K
    explanation = page.explainer.explain(image)
    assert [b for b, _ in boxes] == [(x, y, x + s, y + s) for y, x, s in explanation.boxes]
    for i, (_, label) in enumerate(boxes):
        assert re.fullmatch(rf"patch {i}: \S+ s, f/\S+, ISO \d+", label), label
    # explain's figure taken from its canvas: the pixels render writes as a PNG
    from PIL import Image

    from exif_keras.analysis import explainer

    path = explainer.render(explanation, page.explainer.class_names[explanation.field],
                            str(tmp_path / "figure.png"), "rgb.jpg")
    with Image.open(path) as written:
        np.testing.assert_array_equal(figure, np.asarray(written.convert("RGB")))
    binary = pages["binary"]
    (_, boxes), _, _ = binary.evidence(data)
    assert all(re.fullmatch(r"patch \d: (fast|slow) \d\.\d\d", label) for _, label in boxes)


def test_without_run_folder_the_answer_works_and_the_page_says_why(exports, files, tmp_path):
    page = page_lib.Page(exports["binary"], model_dir=str(tmp_path / "gone"))
    with open(files["rgb.jpg"], "rb") as f:
        data = f.read()
    assert page.answer(data).rows
    image, figure, note = page.evidence(data)
    assert image is None and figure is None and "cannot be used" in note


def test_serve_command_usage_errors(capsys, tmp_path):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"   # the command sets it on import
    from absl import flags
    from absl.testing import flagsaver

    def run_main(argv):
        with flagsaver.flagsaver():
            rest = flags.FLAGS(argv, known_only=True)
            try:
                return serve.main(rest)
            finally:
                flags.FLAGS.unparse_flags()

    assert run_main(["serve"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert run_main(["serve", f"--model={tmp_path / 'nothing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_main(["serve", f"--model={tmp_path}", "--max_batch_size=0"]) == 2


def test_build_sums_up_gradios_queue_less_often_unless_the_environment_says(pages,
                                                                            monkeypatch):
    for name in page_lib.QUEUE_SUMMARY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_MAX_EVENTS", "50")
    page_lib.build(pages["binary"])
    assert os.environ["GRADIO_ANALYTICS_CACHE_FREQUENCY"] == "100"
    assert os.environ["GRADIO_ANALYTICS_MAX_EVENTS"] == "50"


def test_theme_uses_system_fonts_only():
    import gradio as gr

    # Gradio's default theme loads font files (@font-face); the page's names system fonts only
    assert "@font-face" in gr.themes.Default()._get_theme_css()
    css = page_lib.theme()._get_theme_css()
    assert "@font-face" not in css and "googleapis" not in css and "ui-sans-serif" in css


def test_page_answers_gradio_client_the_same_and_batches_concurrent_uploads(pages, files):
    from gradio_client import Client, handle_file

    page = pages["joint"]
    recorder = BatchRecorder(page)
    blocks = page_lib.build(page, max_batch_size=8)
    bad = write(os.path.dirname(files["rgb.jpg"]), {"bad-" + k: v for k, v in bad_files().items()
                                                    if v})
    with running(blocks) as url:
        client = Client(url, verbose=False)

        def ask(path):
            return client.predict(handle_file(path), api_name="/estimate")

        for name, path in files.items():
            headline, table, *labels = ask(path)   # headline: Markdown's value
            with open(path, "rb") as f:
                answer = page_lib.Page.answer(page, f.read())
            assert headline == answer.headline, name   # the bytes reached the model unchanged
            assert [[str(c) for c in row] for row in table["data"]] == answer.rows
            assert labels[0]["label"] == max(answer.probabilities["shutter"],
                                             key=answer.probabilities["shutter"].get)
        headline, table, *_ = ask(bad["bad-tiny.jpg"])
        assert "smaller than one" in headline and not table["data"]
        recorder.sizes.clear()
        jobs = list(files.values()) * 4 + list(bad.values())
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, jobs))
        for path, (headline, *_) in zip(jobs, results):
            assert ("This" in headline) == ("bad-" in path), (path, headline)
        assert sum(recorder.sizes) == len(jobs)
        assert max(recorder.sizes) > 1, recorder.sizes   # concurrent uploads share model calls


def test_export_without_intervals_shows_no_range_columns():
    """An export written before intervals were served (tests/fixtures/legacy_v0_1): the page
    answers as predict does, without the range columns."""
    fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "fixtures", "legacy_v0_1")
    export, photo = os.path.join(fixture, "models_joint_fine"), os.path.join(fixture, "photo.jpg")
    page = page_lib.Page(export)
    assert not page.ranges and page_lib.RANGE_HEADER not in page.headers
    with open(photo, "rb") as f:
        answer = page.answer(f.read())
    assert "likely range" not in answer.headline
    assert predict_lines(export, [photo])[photo] == f"{photo}  {as_predict_line(page, answer)}"
