"""The Beam runner of the converter (exif_keras/records/beam_runner.py) against the local runner.

Both runners convert the same input; the records must be the same: the same Examples in every
shard (parsed and compared, then byte for byte, since serialisation is deterministic), the same
shard names, the same skipped.tsv and the same manifest (but for its timings). Inputs: the real
camera JPEGs of ``../shared/corpora/real-exif`` (photos layout) and a MIRFLICKR-25k folder built
here. Beam's DirectRunner takes a few seconds to start, so there are only three pipeline runs.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import exif_keras
from exif_keras.records import convert, features, runners, writer

import mirflickr_fixtures as mf

beam = pytest.importorskip(
    "apache_beam", reason="Apache Beam is not installed: pip install -e '.[beam]' (make test "
    "installs it)")
from exif_keras.records import beam_runner  # noqa: E402 (after the importorskip)

REPO = pathlib.Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpora" / "real-exif"
DIRECT = ["--runner=DirectRunner", "--direct_num_workers=2"]
TIMINGS = ("seconds", "images_per_second")


# --------------------------------------------------------------------------------------- helpers

def parsed_shards(output_dir) -> dict[str, list[dict]]:
    """shard file name -> its Examples in file order, parsed (numpy values)."""
    spec = features.feature_spec()
    out = {}
    for path in sorted(pathlib.Path(output_dir).glob("*.tfrecord")):
        out[path.name] = [{k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
                          for raw in tf.data.TFRecordDataset(str(path))]
    return out


def assert_same_records(local_dir, beam_dir) -> dict:
    """The two runners' folders hold the same records, skips and manifest; returns the manifest."""
    local_dir, beam_dir = pathlib.Path(local_dir), pathlib.Path(beam_dir)
    a, b = parsed_shards(local_dir), parsed_shards(beam_dir)
    assert list(a) == list(b), "different shard files"
    for name in a:
        ids_a = [r[features.IMAGE_SOURCE_ID] for r in a[name]]
        ids_b = [r[features.IMAGE_SOURCE_ID] for r in b[name]]
        assert ids_a == ids_b, f"{name}: different images or order"
        for ra, rb in zip(a[name], b[name]):
            assert ra.keys() == rb.keys()
            for key in ra:
                assert np.array_equal(ra[key], rb[key]), (name, ra[features.IMAGE_SOURCE_ID], key)
        # Deterministic serialisation: the files themselves are equal.
        assert (local_dir / name).read_bytes() == (beam_dir / name).read_bytes(), name
    assert (local_dir / "skipped.tsv").read_text() == (beam_dir / "skipped.tsv").read_text()
    ma = json.loads((local_dir / features.MANIFEST).read_text())
    mb = json.loads((beam_dir / features.MANIFEST).read_text())
    for key in TIMINGS:
        ma.pop(key), mb.pop(key)
    assert ma == mb
    # Nothing temporary left behind (shards, listing, manifest).
    leftovers = [p.name for d in (local_dir, beam_dir) for p in d.iterdir() if ".tmp" in p.name]
    assert not leftovers
    return ma


def _jpeg(size=(180, 140), seed=0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue()


def mirflickr_fixture(root: pathlib.Path) -> dict[str, str]:
    """A MIRFLICKR-25k folder: clean and raw EXIF text, gaps filled from raw, images without
    labels, bad files; every image whose split is "test" is bad, so the test shard is written
    empty by both runners. Returns the expected skip reason of the skipped images."""
    (root / "meta" / "exif").mkdir(parents=True)
    (root / "meta" / "exif_raw").mkdir(parents=True)
    skipped = {}
    for n in range(1, 41):
        sid = str(n)
        image = root / f"im{n}.jpg"
        shutter = [1 / 1000, 1 / 60, 1 / 8, 2.0][n % 4]
        if convert.split_of(sid) == "test" or n % 13 == 0:
            kind = n % 3
            image.write_bytes([b"", b"<html>not a jpeg</html>", _jpeg(seed=n)[:500]][kind])
            skipped[sid] = ["empty_file", "not_an_image", "corrupt_image"][kind]
            mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", exposure_time=shutter,
                                f_number=4.0, iso=200)
            continue
        image.write_bytes(_jpeg(size=(160 + n, 140), seed=n))
        if n % 7 == 0:  # no usable value anywhere
            mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", exposure_time="Error")
            skipped[sid] = "no_label"
        elif n % 5 == 0:  # clean lacks ISO and aperture: raw fills them
            mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", exposure_time=shutter)
            mf.write_raw_exif(root / "meta" / "exif_raw" / f"exif{n}.txt", exposure_time=shutter,
                              f_number=[2.8, 8.0][n % 2], iso=[100, 1600][n % 2])
        else:
            mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", exposure_time=shutter,
                                f_number=[2.8, 5.6, 11.0][n % 3], iso=[100, 400, 3200][n % 3])
    return skipped


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


# ------------------------------------------------------------------------------------------ tests

def test_parse_pipeline_options():
    assert beam_runner.parse_pipeline_options("") == ["--runner=DirectRunner"]
    assert beam_runner.parse_pipeline_options(
        "--runner=DirectRunner, direct_num_workers=2") == DIRECT
    with pytest.raises(beam_runner.PipelineOptionsError, match="no_such_option"):
        beam_runner.parse_pipeline_options("--runner=DirectRunner,--no_such_option=1")
    with pytest.raises(beam_runner.PipelineOptionsError, match="--name=value"):
        beam_runner.parse_pipeline_options("-x")


def test_listing_round_trip():
    item = beam_runner.sources.Item("12", "/d/im12.jpg", (("clean", "/d/a.txt"),
                                                          ("raw", "/d/b.txt")))
    assert beam_runner._item_from_json(beam_runner._item_to_json(7, item)) == (7, item)


def test_bad_pipeline_options_are_a_runner_error(tmp_path):
    """make_records.main turns RunnerError into "make_records: error: ..." and exit status 2."""
    with pytest.raises(runners.RunnerError, match="bogus"):
        runners.run_with_runner("beam", str(tmp_path), str(tmp_path / "out"),
                                beam_pipeline_options="--runner=DirectRunner,--bogus=1")
    with pytest.raises(runners.RunnerError, match="expected local or beam"):
        runners.run_with_runner("spark", str(tmp_path), str(tmp_path / "out"))


def test_beam_runner_without_beam_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam -> ImportError
    monkeypatch.delitem(sys.modules, "exif_keras.records.beam_runner")
    monkeypatch.delattr(exif_keras.records, "beam_runner")
    with pytest.raises(runners.RunnerError, match=r"pip install -e '\.\[beam\]'"):
        runners.run_with_runner("beam", str(tmp_path), str(tmp_path / "out"))


def test_mirflickr_fixture_cli_both_runners(tmp_path):
    """The command line: --runner=local imports no Beam; --runner=beam on the DirectRunner with
    two workers writes the same records, shards of 8, one of them empty."""
    root = tmp_path / "mirflickr"
    expected_skips = mirflickr_fixture(root)
    common = [f"--input_dir={root}", "--shard_size=8", "--progress=false"]
    local_script = (
        "import sys\n"
        "from absl import app\n"
        "from exif_keras import make_records\n"
        "try:\n"
        "    app.run(make_records.main, argv=sys.argv)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'apache_beam' not in sys.modules, 'the local runner imported Beam'\n"
        "print('no beam imported')\n")
    local = _cli("-c", local_script, *common, f"--output_dir={tmp_path / 'local'}", "--workers=2")
    assert local.returncode == 0, local.stderr[-3000:]
    assert "no beam imported" in local.stdout
    done = _cli("-m", "exif_keras.make_records", *common, f"--output_dir={tmp_path / 'beam'}",
                "--runner=beam", "--beam_pipeline_options=" + ",".join(DIRECT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Wrote" in done.stdout
    manifest = assert_same_records(tmp_path / "local", tmp_path / "beam")
    assert manifest["layout"] == "mirflickr25k" and manifest["candidates"] == 40
    assert manifest["written"] == 40 - len(expected_skips)
    assert manifest["exif_sources"] and manifest["skipped"]
    skipped_rows = (tmp_path / "beam" / "skipped.tsv").read_text().splitlines()[1:]
    assert {r.split("\t")[0]: r.split("\t")[1] for r in skipped_rows} == expected_skips
    shards = sorted(p.name for p in (tmp_path / "beam").glob("*.tfrecord"))
    assert shards == sorted(n for names in manifest["shards"].values() for n in names)
    assert len(manifest["shards"]["train"]) > 1
    assert list(manifest["shards"]["test"]) == ["test-00000-of-00001.tfrecord"]
    assert manifest["shards"]["test"]["test-00000-of-00001.tfrecord"]["records"] == 0
    assert manifest["counts"]["test"]["total"] == 0
    assert (tmp_path / "beam" / "test-00000-of-00001.tfrecord").stat().st_size == 0


@pytest.mark.skipif(not (CORPUS / "exiftool.tsv").exists(),
                    reason=f"the real-EXIF corpus is not at {CORPUS} (../shared beside the "
                           "repository)")
def test_real_exif_corpus_both_runners(tmp_path):
    local = writer.run(str(CORPUS), str(tmp_path / "local"), layout="photos", workers=2,
                             progress=False, shard_size=32)
    beamed = beam_runner.run(str(CORPUS), str(tmp_path / "beam"), layout="photos",
                              shard_size=32, pipeline_options=DIRECT)
    manifest = assert_same_records(tmp_path / "local", tmp_path / "beam")
    assert local["written"] == beamed["written"] == manifest["written"] >= 60
    assert sum(len(v) for v in manifest["shards"].values()) > 3
    assert manifest["skipped"], "the corpus has corrupt and odd files"


def test_failed_pipeline_leaves_previous_records_whole(tmp_path, monkeypatch):
    root = tmp_path / "m"
    (root / "meta" / "exif").mkdir(parents=True)
    for n in range(1, 7):
        (root / f"im{n}.jpg").write_bytes(_jpeg(seed=n))
        mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", exposure_time=1 / 60,
                            f_number=4.0, iso=100)
    out = tmp_path / "out"
    writer.run(str(root), str(out), workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(args):
        raise RuntimeError("a worker failed")

    monkeypatch.setattr(convert, "convert_path", broken)  # the DirectRunner runs in this process
    with pytest.raises(Exception, match="a worker failed"):
        beam_runner.run(str(root), str(out), pipeline_options=["--runner=DirectRunner"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file, no listing
