"""End-to-end tests of the converter on real camera JPEGs laid out as each source layout.

The photos come from ``../shared/corpora/real-exif`` with exiftool's readings (``exiftool.tsv``) as
the oracle: the labels in the records must be what exiftool's values imply.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from exif_keras.common import labels
from exif_keras.records import convert, features, sources, writer

import mirflickr_fixtures as mf

REPO = pathlib.Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpora" / "real-exif"
needs_corpus = pytest.mark.skipif(
    not (CORPUS / "exiftool.tsv").exists(),
    reason=f"the real-EXIF corpus is not at {CORPUS} (../shared beside the repository)")


# ------------------------------------------------------------------------------------ the oracle

def _num(cell: str):
    """exiftool -n writes a list as space-separated numbers ("200 0"): the first one counts."""
    return float(cell.split()[0]) if cell and cell.strip() else None


def _valid(value, kind):
    """The converter's documented validity rules (exif.py), applied to exiftool's numbers."""
    if value is None or not math.isfinite(value) or value <= 0 or value == 4294967295:
        return None
    if kind == "exposure_time" and value > 3600:
        return None
    if kind == "iso" and value == 65535:
        return None
    return value


def oracle_rows() -> dict[str, dict]:
    with open(CORPUS / "exiftool.tsv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f, delimiter="\t")}
    out = {}
    for path, r in rows.items():
        t = _valid(_num(r["exposure_time_s"]), "exposure_time")
        if t is None:
            t = _valid(_num(r["shutter_speed_value_s"]), "exposure_time")
        n = _valid(_num(r["f_number"]), "f_number")
        if n is None:
            n = _valid(_num(r["aperture_value_f"]), "f_number")
        iso = _valid(_num(r["iso"]), "iso")
        out[path] = {"exposure_time": t, "f_number": n, "iso": iso, "row": r,
                     "labels": labels.classify_all(t, n, iso)}
    return out


def read_records(output_dir) -> dict[str, dict]:
    """source_id -> parsed example (numpy values), over every shard of every split."""
    spec = features.feature_spec()
    out = {}
    for split in features.SPLITS:
        for path in sorted(pathlib.Path(output_dir).glob(f"{split}-*-of-*.tfrecord")):
            for raw in tf.data.TFRecordDataset(str(path)):
                ex = tf.io.parse_single_example(raw, spec)
                rec = {k: v.numpy() for k, v in ex.items()}
                rec["split"] = split
                sid = rec[features.IMAGE_SOURCE_ID].decode()
                assert sid not in out, f"{sid} written twice"
                out[sid] = rec
    return out


def read_skipped(output_dir) -> dict[str, str]:
    with open(pathlib.Path(output_dir) / "skipped.tsv", newline="") as f:
        return {r["source_id"]: r["reason"] for r in csv.DictReader(f, delimiter="\t")}


def record_labels(rec) -> dict[str, int]:
    return {field: int(rec[key]) for field, key in features.LABEL_KEYS.items()}


def assert_decodes(rec):
    image = tf.io.decode_jpeg(rec[features.IMAGE_ENCODED], channels=3)
    assert image.shape[0] == rec[features.IMAGE_HEIGHT]
    assert image.shape[1] == rec[features.IMAGE_WIDTH]


# ----------------------------------------------------------------------------------- unit tests

def test_split_is_stable_and_80_10_10():
    ids = [str(i) for i in range(1, 20001)]
    splits = [convert.split_of(i) for i in ids]
    fractions = {s: splits.count(s) / len(ids) for s in features.SPLITS}
    assert abs(fractions["train"] - 0.8) < 0.015
    assert abs(fractions["validation"] - 0.1) < 0.01
    assert abs(fractions["test"] - 0.1) < 0.01
    # The split depends on the id alone: literal values guard against any change of hash (md5
    # for sha256 moves a third of these), of its bits or of the split bounds.
    assert splits[:20] == [
        "train", "validation", "train", "train", "test", "test", "train", "train", "train",
        "train", "train", "train", "train", "train", "validation", "train", "train", "train",
        "train", "test"]
    assert convert.stable_hash("123") == 11990170285644066717
    assert [convert.shard_of(str(i), 7) for i in range(1, 13)] == [1, 0, 1, 4, 0, 1, 6, 4, 1, 3,
                                                                   3, 2]
    assert convert.split_of("holiday/IMG_0001.jpg") == "train"
    assert convert.shard_of("holiday/IMG_0001.jpg", 5) == 3


def test_layout_detection(tmp_path):
    (tmp_path / "a" / "meta" / "exif").mkdir(parents=True)
    (tmp_path / "a" / "im1.jpg").write_bytes(b"x")
    assert sources.detect_layout(str(tmp_path / "a")) == "mirflickr25k"
    (tmp_path / "b" / "images" / "0").mkdir(parents=True)
    (tmp_path / "b" / "exif" / "0").mkdir(parents=True)
    assert sources.detect_layout(str(tmp_path / "b")) == "mirflickr1m"
    (tmp_path / "c" / "x").mkdir(parents=True)
    assert sources.detect_layout(str(tmp_path / "c")) == "photos"
    with pytest.raises(sources.SourceError):
        sources.list_items(str(tmp_path / "missing"))
    with pytest.raises(sources.SourceError, match="no images"):
        sources.list_items(str(tmp_path / "c"))


def _jpeg_bytes(size=(200, 160), mode="RGB", fmt="JPEG", exif=None, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4}[mode]
    array = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    out = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _exif_bytes(t=1 / 125, n=8.0, iso=400) -> bytes:
    from PIL import TiffImagePlugin
    e = Image.Exif()
    ifd = e.get_ifd(0x8769)
    from fractions import Fraction
    ifd[0x829A] = TiffImagePlugin.IFDRational(*Fraction(t).limit_denominator(100000)
                                              .as_integer_ratio())
    ifd[0x829D] = TiffImagePlugin.IFDRational(n)
    ifd[0x8827] = iso
    return e.tobytes()


def test_odd_files_in_photos_layout(tmp_path):
    """CMYK and PNG-in-disguise are converted once; bombs, garbage, empty and small are skipped."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    exif = _exif_bytes()
    (d / "rgb.jpg").write_bytes(_jpeg_bytes(exif=exif))
    (d / "grey.jpg").write_bytes(_jpeg_bytes(mode="L", exif=exif))
    (d / "sub" / "cmyk.jpg").write_bytes(_jpeg_bytes(mode="CMYK", exif=exif))
    (d / "png.jpg").write_bytes(_jpeg_bytes(fmt="PNG", exif=exif))
    (d / "big.jpg").write_bytes(_jpeg_bytes(size=(1200, 1000), exif=exif))
    (d / "small.jpg").write_bytes(_jpeg_bytes(size=(100, 300), exif=exif))
    (d / "noexif.jpg").write_bytes(_jpeg_bytes())
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_bytes(b"this is not an image\n" * 10)
    good = _jpeg_bytes(size=(400, 300), exif=exif)
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    manifest = writer.run(str(d), str(out), layout="auto", workers=1, progress=False,
                                max_pixels=1_000_000)
    assert manifest["layout"] == "photos"
    records, skipped = read_records(out), read_skipped(out)
    assert set(records) == {"rgb.jpg", "grey.jpg", "sub/cmyk.jpg", "png.jpg"}
    assert skipped == {"big.jpg": "decompression_bomb", "small.jpg": "too_small",
                       "noexif.jpg": "no_label", "empty.jpg": "empty_file",
                       "text.jpg": "not_an_image", "truncated.jpg": "corrupt_image"}
    assert manifest["converted"] == {"jpeg_cmyk": 1, "not_jpeg": 1}
    assert records["rgb.jpg"][features.IMAGE_ENCODED] == (d / "rgb.jpg").read_bytes()
    assert records["grey.jpg"][features.IMAGE_ENCODED] == (d / "grey.jpg").read_bytes()
    for rec in records.values():
        assert_decodes(rec)
        assert record_labels(rec) == {"shutter": 6, "aperture": 6, "iso": 2}
        assert rec[features.IMAGE_FORMAT] == b"jpeg"
    assert manifest["skipped"] == {"corrupt_image": 1, "decompression_bomb": 1, "empty_file": 1,
                                   "no_label": 1, "not_an_image": 1, "too_small": 1}


def test_unreadable_file_is_skipped(tmp_path):
    """A file listed but not readable: a dangling link (a photo moved away, a NAS share gone) and,
    where the tests do not run as root (root reads whatever the mode), a file of mode 000."""
    d = tmp_path / "p"
    d.mkdir()
    (d / "ok.jpg").write_bytes(_jpeg_bytes(exif=_exif_bytes()))
    (d / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    expected = {"gone.jpg": "unreadable"}
    if os.geteuid() != 0:
        (d / "locked.jpg").write_bytes(_jpeg_bytes(exif=_exif_bytes()))
        os.chmod(d / "locked.jpg", 0)
        expected["locked.jpg"] = "unreadable"
    writer.run(str(d), str(tmp_path / "o"), workers=1, progress=False)
    assert read_skipped(tmp_path / "o") == expected
    assert set(read_records(tmp_path / "o")) == {"ok.jpg"}
    with open(tmp_path / "o" / "skipped.tsv") as f:
        assert "FileNotFoundError" in f.read()


# ------------------------------------------------------------------------- real photos, 3 layouts

@pytest.fixture(scope="module")
def oracle():
    if not (CORPUS / "exiftool.tsv").exists():
        pytest.skip(f"the real-EXIF corpus is not at {CORPUS}")
    return oracle_rows()


@pytest.fixture(scope="module")
def photos_run(oracle, tmp_path_factory):
    out = tmp_path_factory.mktemp("photos_records")
    manifest = writer.run(str(CORPUS), str(out), layout="photos", workers=2,
                                progress=False)
    return manifest, read_records(out), read_skipped(out)


@needs_corpus
def test_photos_layout_matches_exiftool(oracle, photos_run):
    manifest, records, skipped = photos_run
    jpegs = {p for p in oracle if p.lower().endswith(sources.JPEG_SUFFIXES)}
    # Every file is written or skipped with a reason, never both, never neither.
    assert set(records) | set(skipped) == jpegs
    assert not set(records) & set(skipped)
    assert set(skipped.values()) <= set(convert.SKIP_REASONS)
    assert manifest["written"] == len(records)
    assert sum(manifest["skipped"].values()) == len(skipped)
    assert len(records) >= 60, "most real camera photos of usable size should be written"
    for sid, rec in records.items():
        expected = oracle[sid]
        assert record_labels(rec) == expected["labels"], (sid, expected["row"])
        assert_decodes(rec)
        assert rec[features.IMAGE_ENCODED] == (CORPUS / sid).read_bytes(), sid
        assert rec["split"] == convert.split_of(sid)
    # Corrupt and odd files: exiftool's "JPEG format error", "Missing JPEG SOS", "File is empty".
    for sid, entry in oracle.items():
        warning = entry["row"]["exiftool_warning"]
        if sid in jpegs and any(w in warning for w in ("JPEG format error", "Missing JPEG SOS",
                                                       "File is empty")):
            assert sid in skipped, f"{sid} ({warning}) should have been skipped"
    # Files whose settings put no field in a class are skipped as no_label (unless already
    # unusable for another reason).
    for sid, reason in skipped.items():
        if reason == "no_label":
            assert all(v < 0 for v in oracle[sid]["labels"].values()), sid


def _usable_photos(oracle, records, count):
    """Real photos that were written in the photos run (decodable, large enough), sorted."""
    chosen = [sid for sid in sorted(records)
              if all(oracle[sid][k] is not None for k in ("exposure_time", "f_number", "iso"))]
    assert len(chosen) >= count
    return chosen[:count]


def _expected(t, n, iso):
    return labels.classify_all(t, n, iso)


@needs_corpus
def test_mirflickr25k_clean_raw_and_auto(oracle, photos_run, tmp_path):
    _, photo_records, _ = photos_run
    photos = _usable_photos(oracle, photo_records, 12)
    root = tmp_path / "mirflickr"
    (root / "meta" / "exif").mkdir(parents=True)
    (root / "meta" / "exif_raw").mkdir(parents=True)
    expect = {}  # variant -> source_id -> labels (None: skipped as no_label)
    expect_reason = {}

    def put(n, photo, clean=None, raw=None):
        shutil.copyfile(CORPUS / photo, root / f"im{n}.jpg")
        if clean is not None:
            mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", **clean)
        if raw is not None:
            mf.write_raw_exif(root / "meta" / "exif_raw" / f"exif{n}.txt", **raw)

    for i, photo in enumerate(photos[:6], start=1):  # plain: both forms from exiftool's values
        o = oracle[photo]
        vals = dict(exposure_time=o["exposure_time"], f_number=o["f_number"], iso=o["iso"])
        put(i, photo, clean=vals, raw=vals)
        lab = _expected(o["exposure_time"], o["f_number"], o["iso"])
        expect[str(i)] = {"clean": lab, "raw": lab, "auto": lab}
    # A duplicate: the same photo under another number keeps its own labels.
    o = oracle[photos[0]]
    put(7, photos[0], clean=dict(exposure_time=o["exposure_time"], f_number=o["f_number"],
                                 iso=o["iso"]), raw=dict(exposure_time=o["exposure_time"]))
    expect["7"] = {"clean": expect["1"]["clean"], "raw": _expected(o["exposure_time"], None, None),
                   "auto": expect["1"]["clean"]}
    # APEX-only raw entry: Tv and Av, no ExposureTime/FNumber; clean lacks ISO.
    o = oracle[photos[6]]
    tv = -math.log2(o["exposure_time"])
    av = 2 * math.log2(o["f_number"])
    put(8, photos[6], clean=dict(exposure_time=o["exposure_time"]),
        raw=dict(shutter_apex=tv, aperture_apex=av, iso=o["iso"]))
    full = _expected(o["exposure_time"], o["f_number"], o["iso"])
    expect["8"] = {"clean": _expected(o["exposure_time"], None, None), "raw": full, "auto": full}
    # Dirty values: "May be 400" is used; "Error", 0 and 4294967295 are unknown.
    o = oracle[photos[7]]
    put(9, photos[7], clean=dict(exposure_time="Error", f_number=o["f_number"], iso="May be 400"),
        raw=dict(exposure_time="0", f_number="4294967295", iso="100, 100"))
    expect["9"] = {"clean": _expected(None, o["f_number"], 400),
                   "raw": _expected(None, None, 100),
                   "auto": _expected(None, o["f_number"], 400)}
    # Missing clean file, raw present; empty clean file, raw with values.
    o = oracle[photos[8]]
    vals = dict(exposure_time=o["exposure_time"], f_number=o["f_number"], iso=o["iso"])
    put(10, photos[8], clean=None, raw=vals)
    lab = _expected(o["exposure_time"], o["f_number"], o["iso"])
    expect["10"] = {"clean": None, "raw": lab, "auto": lab}
    put(11, photos[9], raw=vals)
    (root / "meta" / "exif" / "exif11.txt").write_text("")
    expect["11"] = {"clean": None, "raw": lab, "auto": lab}
    # Garbage EXIF text and no usable values anywhere.
    put(12, photos[10], raw=dict(exposure_time="n/a", iso="0"))
    (root / "meta" / "exif" / "exif12.txt").write_bytes(b"\x00\xff garbage\n-ISO Speed\n\n")
    expect["12"] = {"clean": None, "raw": None, "auto": None}
    # Bad image files with good EXIF text.
    vals = dict(exposure_time=1 / 125, f_number=8.0, iso=400)
    for n, payload in ((13, b""), (14, b"<html>not a jpeg</html>"),
                       (15, (CORPUS / photos[11]).read_bytes()[:600])):
        (root / f"im{n}.jpg").write_bytes(payload)
        mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt", **vals)
        mf.write_raw_exif(root / "meta" / "exif_raw" / f"exif{n}.txt", **vals)
    expect_reason.update({"13": "empty_file", "14": "not_an_image", "15": "corrupt_image"})

    for variant in ("clean", "raw", "auto"):
        out = tmp_path / f"out_{variant}"
        manifest = writer.run(str(root), str(out), layout="auto", exif_variant=variant,
                                    workers=2, progress=False)
        assert manifest["layout"] == "mirflickr25k"
        records, skipped = read_records(out), read_skipped(out)
        assert len(records) + len(skipped) == 15
        for sid, by_variant in expect.items():
            want = by_variant[variant]
            if want is None or all(v < 0 for v in want.values()):
                assert skipped.get(sid) == "no_label", (variant, sid)
            else:
                assert sid in records, (variant, sid, skipped.get(sid))
                assert record_labels(records[sid]) == want, (variant, sid)
        for sid, reason in expect_reason.items():
            assert skipped[sid] == reason, (variant, sid)
        for rec in records.values():
            assert_decodes(rec)
        assert manifest["exif_problems"], "dirty values must be counted"


@needs_corpus
def test_mirflickr1m_layout(oracle, photos_run, tmp_path):
    _, photo_records, _ = photos_run
    photos = _usable_photos(oracle, photo_records, 4)
    root = tmp_path / "m1m"
    numbers = [5, 10001, 25003, 999999]
    want = {}
    for n, photo in zip(numbers, photos):
        (root / "images" / str(n // 10000)).mkdir(parents=True, exist_ok=True)
        (root / "exif" / str(n // 10000)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CORPUS / photo, root / "images" / str(n // 10000) / f"{n}.jpg")
        o = oracle[photo]
        mf.write_raw_exif(root / "exif" / str(n // 10000) / f"{n}.txt",
                          exposure_time=o["exposure_time"], f_number=o["f_number"], iso=o["iso"])
        want[str(n)] = _expected(o["exposure_time"], o["f_number"], o["iso"])
    out = tmp_path / "out"
    manifest = writer.run(str(root), str(out), workers=1, progress=False)
    assert manifest["layout"] == "mirflickr1m"
    records = read_records(out)
    assert {sid: record_labels(r) for sid, r in records.items()} == want
    for sid, rec in records.items():
        assert rec["split"] == convert.split_of(sid)
        assert_decodes(rec)


# --------------------------------------------------------------- determinism, crash, manifest

def _tiny_25k(root: pathlib.Path, count: int, start: int = 1):
    (root / "meta" / "exif").mkdir(parents=True, exist_ok=True)
    for n in range(start, start + count):
        (root / f"im{n}.jpg").write_bytes(_jpeg_bytes(size=(180, 140), seed=n))
        mf.write_clean_exif(root / "meta" / "exif" / f"exif{n}.txt",
                            exposure_time=[1 / 1000, 1 / 60, 1 / 8][n % 3], f_number=4.0,
                            iso=[100, 800][n % 2])


def _shard_bytes(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


def test_same_command_same_records_and_stable_splits(tmp_path):
    root = tmp_path / "m"
    _tiny_25k(root, 40)
    a, b = tmp_path / "a", tmp_path / "b"
    m1 = writer.run(str(root), str(a), workers=2, progress=False, shard_size=8)
    writer.run(str(root), str(b), workers=1, progress=False, shard_size=8)
    assert _shard_bytes(a) == _shard_bytes(b)
    assert len(m1["shards"]["train"]) == math.ceil(
        sum(convert.split_of(str(n)) == "train" for n in range(1, 41)) / 8)
    first = {sid: r["split"] for sid, r in read_records(a).items()}
    _tiny_25k(root, 40, start=41)  # adding images never moves an old one
    writer.run(str(root), str(a), workers=2, progress=False, shard_size=8)
    second = {sid: r["split"] for sid, r in read_records(a).items()}
    assert len(second) == 80
    assert all(second[sid] == split for sid, split in first.items())
    manifest = json.loads((a / features.MANIFEST).read_text())
    assert manifest["counts"]["train"]["total"] + manifest["counts"]["validation"]["total"] + \
        manifest["counts"]["test"]["total"] == 80
    assert manifest["counts"]["train"]["shutter"] and "binning" in manifest
    stats = manifest["pixel_stats"]["train"]
    assert len(stats["mean"]) == 3 and all(0 < s < 255 for s in stats["std"])
    # Uniform random pixels: mean about 127, std about 73.6 before JPEG's smoothing.
    assert all(110 < m < 145 for m in stats["mean"])
    assert set(manifest["versions"]) >= {"tensorflow", "pillow", "numpy", "exif_keras"}


def test_killed_run_leaves_previous_records_whole(tmp_path, monkeypatch):
    root = tmp_path / "m"
    _tiny_25k(root, 30)
    out = tmp_path / "out"
    writer.run(str(root), str(out), workers=1, progress=False, shard_size=8)
    before = _shard_bytes(out)
    manifest_before = (out / features.MANIFEST).read_text()
    (out / "train-00000-of-00009.tfrecord.tmp-999").write_bytes(b"half")  # an earlier crash
    calls = {"n": 0}
    real = convert.convert_path

    def dying(args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(convert, "convert_path", dying)
    _tiny_25k(root, 10, start=31)
    with pytest.raises(KeyboardInterrupt):
        writer.run(str(root), str(out), workers=1, progress=False, shard_size=8)
    assert _shard_bytes(out) == before
    assert (out / features.MANIFEST).read_text() == manifest_before
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_cli_builds_the_sample_and_reports_errors(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "exif_keras.make_records", f"--output_dir={tmp_path / 'rec'}",
           f"--sample_dir={tmp_path / 'sample'}", "--sample_count=24", "--progress=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "written" in done.stdout and "skipped" in done.stdout
    manifest = json.loads((tmp_path / "rec" / features.MANIFEST).read_text())
    assert manifest["source"].startswith("built-in sample")
    assert manifest["layout"] == "mirflickr25k" and manifest["written"] > 0
    assert (tmp_path / "sample" / "im24.jpg").exists()
    bad = subprocess.run([sys.executable, "-m", "exif_keras.make_records",
                          f"--input_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'x'}"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2
    assert "not a directory" in bad.stderr and "Traceback" not in bad.stderr


def _child_env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    env.pop("PYTHONHASHSEED", None)  # each child gets its own hash seed, as two commands do
    return env


def test_two_commands_give_byte_identical_shards_and_their_checksums(tmp_path):
    """Two separate processes (1 and 2 workers): the same bytes. A protobuf map's plain
    serialisation order differs from process to process; only deterministic serialisation and
    item order make this pass."""
    root = tmp_path / "m"
    _tiny_25k(root, 24)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        done = subprocess.run(
            [sys.executable, "-m", "exif_keras.make_records", f"--input_dir={root}",
             f"--output_dir={out}", f"--workers={workers}", "--shard_size=6", "--progress=false"],
            capture_output=True, text=True, env=_child_env(), cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[workers] = out
    one, two = _shard_bytes(outs[1]), _shard_bytes(outs[2])
    assert len(one) >= 4 and one == two
    manifest = json.loads((outs[1] / features.MANIFEST).read_text())
    listed = {name: entry for split in features.SPLITS
              for name, entry in manifest["shards"][split].items()}
    assert set(listed) == set(one)
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(one[name]).hexdigest()
        assert entry["records"] == sum(1 for _ in tf.data.TFRecordDataset(str(outs[1] / name)))
    assert sum(e["records"] for e in listed.values()) == manifest["written"] == 24
    assert json.loads((outs[2] / features.MANIFEST).read_text())["shards"] == manifest["shards"]


_KILLABLE = """
import pathlib, sys, time
from exif_keras.records import convert
from exif_keras.records import writer
real, seen = convert.convert_path, []
def stalling(args):
    seen.append(1)
    if len(seen) == 5:  # shards are open, some records written: now wait to be killed
        pathlib.Path(sys.argv[3]).write_text("stalled")
        time.sleep(600)
    return real(args)
convert.convert_path = stalling
writer.run(sys.argv[1], sys.argv[2], workers=1, progress=False, shard_size=4)
"""


def test_next_run_removes_a_killed_runs_temp_files_and_only_those(tmp_path):
    root = tmp_path / "m"
    _tiny_25k(root, 12)
    out, marker = tmp_path / "out", tmp_path / "stalled"
    out.mkdir()
    foreign = {"notes.txt": b"mine", "backup.tfrecord.tmp-12": b"mine too",
               "train-00000-of-00003.tfrecord.tmp-old": b"not a pid: not ours"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    child = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(root), str(out), str(marker)],
                             env=_child_env(), cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the child conversion never reached its stalling point"
        child.kill()  # SIGKILL: no cleanup runs in the child
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith(f".tmp-{child.pid}"))
    assert leftovers and all(".tfrecord.tmp-" in name for name in leftovers), leftovers
    assert not (out / features.MANIFEST).exists()

    writer.run(str(root), str(out), workers=1, progress=False, shard_size=4)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name and p.name not in foreign]
    for name, data in foreign.items():
        assert (out / name).read_bytes() == data, f"{name} is not the converter's to delete"
    assert len(read_records(out)) == 12


def test_hidden_and_nas_folders_are_skipped_and_counted(tmp_path):
    d = tmp_path / "photos"
    exif = _exif_bytes()
    photos = {"a.jpg": 1, "b.jpg": 2, "trip/c.jpg": 3}
    for rel, seed in photos.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(_jpeg_bytes(exif=exif, seed=seed))
    hidden = [".thumbnails/a.jpg", ".thumbnails/normal/b.jpg", "trip/.photoprism/c.jpg",
              "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg", "trip/.c-copy.jpg"]
    for rel in hidden:  # copies of the archive's photos, as thumbnailers and NAS boxes leave them
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / ("trip/c.jpg" if rel.startswith("trip") else "a.jpg"), d / rel)
    (d / ".git").mkdir()
    (d / ".git" / "config").write_text("[core]\n")  # not a JPEG name: not even counted

    out = tmp_path / "out"
    manifest = writer.run(str(d), str(out), workers=1, progress=False)
    assert set(read_records(out)) == set(photos)
    assert read_skipped(out) == {rel: "hidden" for rel in hidden}
    assert manifest["skipped"] == {"hidden": len(hidden)}
    assert "--include_hidden" in manifest["skip_reasons"]["hidden"]
    assert manifest["candidates"] == len(photos) + len(hidden)

    everything = tmp_path / "all"
    manifest = writer.run(str(d), str(everything), workers=1, progress=False,
                                include_hidden=True)
    assert set(read_records(everything)) == set(photos) | set(hidden)
    assert manifest["skipped"] == {} and manifest["options"]["include_hidden"]

    # Only hidden photos: the error says why nothing was found and what to do.
    only_hidden = tmp_path / "only"
    (only_hidden / ".thumbnails").mkdir(parents=True)
    shutil.copyfile(d / "a.jpg", only_hidden / ".thumbnails" / "a.jpg")
    with pytest.raises(sources.SourceError, match="1 in hidden.*--include_hidden"):
        sources.list_items(str(only_hidden))


def test_hidden_folders_in_the_mirflickr1m_layout(tmp_path):
    root = tmp_path / "m1m"
    for rel in ("images/0/5.jpg", "images/0/.thumbs/5.jpg", "images/@eaDir/7.jpg",
                "exif/0/5.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    layout, items = sources.list_items(str(root))
    assert layout == "mirflickr1m"
    assert [(i.source_id, i.skip_reason) for i in items] == [
        ("5", ""), ("images/0/.thumbs/5.jpg", "hidden"), ("images/@eaDir/7.jpg", "hidden")]
    _, items = sources.list_items(str(root), include_hidden=True)
    assert [(i.source_id, i.skip_reason) for i in items] == [("5", ""), ("7", "")]


# ------------------------------------------------------------------------------ corrupt JPEG data

def _photo_like_jpeg(seed=0) -> bytes:
    """A 400x300 JPEG with gradients and noise (Pillow's standard Huffman tables), with EXIF."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:400]
    array = np.stack([x * 255 // 400, y * 255 // 300, (x + y) % 256], -1)
    array = np.clip(array + rng.integers(-20, 21, array.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90, exif=_exif_bytes())
    return out.getvalue()


def _scan_start(data: bytes) -> int:
    sos = data.find(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _pillow_loads(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001
        return False


def _libjpeg_warns(data: bytes, capfd) -> bool:
    """The oracle: libjpeg (TensorFlow's build) prints its warnings on stderr while decoding."""
    capfd.readouterr()
    try:
        tf.io.decode_jpeg(data, channels=3)
    except tf.errors.InvalidArgumentError:
        return True
    err = capfd.readouterr().err
    return "Corrupt JPEG data" in err or "Premature end of JPEG file" in err


def test_corrupt_jpeg_data_is_skipped(tmp_path, capfd):
    good = _photo_like_jpeg()
    start, end = _scan_start(good), len(good) - 2
    mid = (start + end) // 2
    d = tmp_path / "photos"
    d.mkdir()
    (d / "good.jpg").write_bytes(good)
    # Header junk and odd APPn segments leave the pixels alone: still a photo.
    app15 = b"\xff\xef\x00\x06junk"
    (d / "header_junk.jpg").write_bytes(good[:2] + app15 + b"\x00\x11\x22" + good[2:])
    # Both decode "fine" in Pillow and TensorFlow, with libjpeg warnings.
    corrupt = {
        "cut_scan.jpg": good[:mid] + b"\xff\xd9",                    # premature end of segment
        "ff_run.jpg": good[:mid] + b"\xff\x00" * 32 + good[mid + 64:],  # garbage codes
    }
    # Bytes flipped in the entropy-coded data: whatever libjpeg warns about must be skipped.
    rng = np.random.default_rng(7)
    for k in range(24):
        mutant = bytearray(good)
        for _ in range(1 + k % 4):
            pos = int(rng.integers(start, end))
            mutant[pos] ^= 1 << int(rng.integers(8))
        corrupt[f"flip{k:02d}.jpg"] = bytes(mutant)
    truncated = {"cut_90.jpg": good[:int(len(good) * 0.9)], "no_eoi.jpg": good[:-2]}
    for name, data in {**corrupt, **truncated}.items():
        (d / name).write_bytes(data)

    out = tmp_path / "out"
    manifest = writer.run(str(d), str(out), workers=1, progress=False)
    records, skipped = read_records(out), read_skipped(out)
    assert {"good.jpg", "header_junk.jpg"} <= set(records)
    assert skipped["cut_scan.jpg"] == skipped["ff_run.jpg"] == "corrupt_jpeg_data"
    assert skipped["cut_90.jpg"] == skipped["no_eoi.jpg"] == "corrupt_image"  # Pillow: truncated
    warned = 0
    for name, data in corrupt.items():
        if not _pillow_loads(data):
            assert skipped.get(name) in ("corrupt_image", "not_an_image"), name
        elif _libjpeg_warns(data, capfd):
            warned += 1
            assert skipped.get(name) == "corrupt_jpeg_data", name
        else:  # a flip that keeps a valid code stream: no decoder can tell
            assert name in records, (name, skipped.get(name))
    assert warned >= 6, "too few mutants decode with libjpeg warnings for this test to mean much"
    assert manifest["skipped"]["corrupt_jpeg_data"] == sum(
        r == "corrupt_jpeg_data" for r in skipped.values())
    with open(out / "skipped.tsv") as f:
        assert "premature end of data segment" in f.read()
    assert "corrupt_jpeg_data" in manifest["skip_reasons"]


def test_pixel_statistics_are_numpys_per_channel(tmp_path):
    """Mean and std of R, G, B in that order, exactly as numpy computes them on the pixels."""
    d = tmp_path / "photos"
    d.mkdir()
    name = next(f"p{i}.jpg" for i in range(100) if convert.split_of(f"p{i}.jpg") == "train")
    rng = np.random.default_rng(3)
    array = np.stack([rng.normal(mean, std, (150, 200)) for mean, std in
                      ((200, 10), (110, 30), (40, 5))], -1)
    out = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(
        out, format="JPEG", quality=95, exif=_exif_bytes())
    (d / name).write_bytes(out.getvalue())
    manifest = writer.run(str(d), str(tmp_path / "out"), workers=1, progress=False)
    pixels = np.asarray(Image.open(d / name).convert("RGB"), dtype=np.float64).reshape(-1, 3)
    stats = manifest["pixel_stats"]["train"]
    assert stats["pixels"] == 150 * 200
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=0, atol=1e-6)
    assert stats["mean"][0] > stats["mean"][1] > stats["mean"][2]
