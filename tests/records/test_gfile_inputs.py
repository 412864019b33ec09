"""The converter reads its inputs through tf.io.gfile when the input folder has a scheme.

A folder is built on disk, copied into TensorFlow's in-memory file system (``ram://``, which
stands in here for ``gs://`` and the other file systems of ``tf.io.gfile``: no bucket is reached
from these tests) and converted from both places; the records, skips and manifest must be the
same. ``ram://`` lives in one process, so the local runner runs with ``workers=1`` and the Beam
runner with the DirectRunner in memory with one worker.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
import uuid
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, TiffImagePlugin

from exif_keras.common import exif as exif_lib
from exif_keras.common import files
from exif_keras.records import convert, features, sources, writer

import mirflickr_fixtures as mf

REPO = pathlib.Path(__file__).resolve().parents[2]
IN_MEMORY_BEAM = ["--runner=DirectRunner", "--direct_num_workers=1",
                  "--direct_running_mode=in_memory"]


def _jpeg(size=(180, 140), seed=0, exif_bytes=None) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90,
                                **({"exif": exif_bytes} if exif_bytes else {}))
    return out.getvalue()


def _exif(t=1 / 125, n=8.0, iso=400) -> bytes:
    e = Image.Exif()
    ifd = e.get_ifd(0x8769)
    ifd[0x829A] = TiffImagePlugin.IFDRational(*Fraction(t).limit_denominator(100000)
                                              .as_integer_ratio())
    ifd[0x829D] = TiffImagePlugin.IFDRational(n)
    ifd[0x8827] = iso
    return e.tobytes()


def photos_fixture(root: pathlib.Path) -> None:
    """Photos in nested folders, hidden and NAS folders, a hidden file, bad and unlabelled files."""
    files = {"a.jpg": _jpeg(seed=1, exif_bytes=_exif()),
             "trip/b.JPG": _jpeg(seed=2, exif_bytes=_exif(1 / 30, 2.8, 1600)),
             "trip/day 2/c.jpeg": _jpeg(seed=3, exif_bytes=_exif(1 / 500, 11.0, 100)),
             "trip/.photoprism/c.jpg": _jpeg(seed=3, exif_bytes=_exif()),
             ".thumbnails/normal/a.jpg": _jpeg(seed=1, exif_bytes=_exif()),
             "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg": _jpeg(seed=1, exif_bytes=_exif()),
             "trip/.copy.jpg": _jpeg(seed=2, exif_bytes=_exif()),
             "noexif.jpg": _jpeg(seed=4),
             "empty.jpg": b"",
             "text.jpg": b"not an image\n" * 5,
             "small.jpg": _jpeg(size=(60, 300), seed=5, exif_bytes=_exif()),
             "notes.txt": b"not a JPEG name: not listed\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def mirflickr25k_fixture(root: pathlib.Path) -> None:
    """Clean and raw EXIF text (raw fills gaps), a missing EXIF file, bad and unlabelled images."""
    (root / "meta" / "exif").mkdir(parents=True)
    (root / "meta" / "exif_raw").mkdir(parents=True)
    for n in range(1, 25):
        shutter = [1 / 1000, 1 / 60, 1 / 8, 2.0][n % 4]
        image = root / f"im{n}.jpg"
        clean = root / "meta" / "exif" / f"exif{n}.txt"
        if n % 11 == 0:
            image.write_bytes([b"", _jpeg(seed=n)[:400]][n % 2])
        else:
            image.write_bytes(_jpeg(size=(150 + n, 140), seed=n))
        if n % 9 == 0:
            continue  # no EXIF text at all: no_label
        if n % 5 == 0:
            mf.write_clean_exif(clean, exposure_time=shutter)
            mf.write_raw_exif(root / "meta" / "exif_raw" / f"exif{n}.txt", exposure_time=shutter,
                              f_number=[2.8, 8.0][n % 2], iso=[100, 1600][n % 2])
        else:
            mf.write_clean_exif(clean, exposure_time=shutter, f_number=[2.8, 5.6, 11.0][n % 3],
                                iso=[100, 400, 3200][n % 3])


def mirflickr1m_fixture(root: pathlib.Path) -> None:
    for rel in ("images/0/5.jpg", "images/0/12.jpg", "images/1/10003.jpg",
                "images/0/.thumbs/5.jpg", "images/@eaDir/7.jpg", "exif/0/5.txt",
                "exif/1/10003.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def to_ram(local: pathlib.Path) -> str:
    """A copy of the folder ``local`` in a new ram:// folder; returns its path."""
    top = f"ram://gfile-test-{uuid.uuid4().hex}/{local.name}"
    tf.io.gfile.makedirs(top)
    for path in sorted(local.rglob("*")):
        target = f"{top}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(target)
        else:
            tf.io.gfile.copy(str(path), target)
    return top


def _listing(input_dir: str, **kwargs):
    """list_items with the input folder taken off the paths, to compare disk and ram://."""
    layout, items = sources.list_items(input_dir, **kwargs)
    strip = lambda p: files.relpath(p, input_dir)  # noqa: E731
    return layout, [(i.source_id, strip(i.image_path),
                     tuple((v, strip(p)) for v, p in i.exif_paths), i.embedded_exif,
                     i.skip_reason) for i in items]


def assert_same_output(a: pathlib.Path, b: pathlib.Path) -> dict:
    """Same shards (byte for byte, so the same Examples), skips and manifest but for the source
    path and timings; returns the manifest."""
    shards_a = {p.name: p.read_bytes() for p in sorted(a.glob("*.tfrecord"))}
    shards_b = {p.name: p.read_bytes() for p in sorted(b.glob("*.tfrecord"))}
    assert list(shards_a) == list(shards_b)
    for name in shards_a:
        assert shards_a[name] == shards_b[name], name
    assert (a / "skipped.tsv").read_text() == (b / "skipped.tsv").read_text()
    ma, mb = (json.loads((d / features.MANIFEST).read_text()) for d in (a, b))
    for key in ("source", "seconds", "images_per_second"):
        ma.pop(key), mb.pop(key)
    assert ma == mb
    return ma


def written_ids(output_dir: pathlib.Path) -> set[str]:
    spec = features.feature_spec()
    return {tf.io.parse_single_example(raw, spec)[features.IMAGE_SOURCE_ID].numpy().decode()
            for path in output_dir.glob("*.tfrecord")
            for raw in tf.data.TFRecordDataset(str(path))}


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("layout,build", [("photos", photos_fixture),
                                          ("mirflickr25k", mirflickr25k_fixture),
                                          ("mirflickr1m", mirflickr1m_fixture)])
def test_listing_from_ram_equals_listing_from_disk(tmp_path, layout, build):
    local = tmp_path / layout
    build(local)
    remote = to_ram(local)
    for include_hidden in (False, True):
        on_disk = _listing(str(local), include_hidden=include_hidden)
        assert on_disk[0] == layout
        assert _listing(remote, include_hidden=include_hidden) == on_disk
        assert _listing(remote + "/", include_hidden=include_hidden) == on_disk
    if layout == "photos":  # the hidden-folder rule holds on ram:// too
        _, items = sources.list_items(remote)
        assert {i.source_id for i in items if i.skip_reason == sources.HIDDEN} == {
            "trip/.photoprism/c.jpg", ".thumbnails/normal/a.jpg",
            "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg", "trip/.copy.jpg"}


def test_photos_from_ram_local_runner(tmp_path):
    local = tmp_path / "photos"
    photos_fixture(local)
    remote = to_ram(local)
    writer.run(str(local), str(tmp_path / "disk"), workers=1, progress=False, shard_size=2)
    manifest = writer.run(remote, str(tmp_path / "ram"), workers=1, progress=False,
                                shard_size=2)
    assert manifest["source"] == remote
    manifest = assert_same_output(tmp_path / "disk", tmp_path / "ram")
    assert written_ids(tmp_path / "ram") == {"a.jpg", "trip/b.JPG", "trip/day 2/c.jpeg"}
    assert manifest["skipped"] == {"empty_file": 1, "hidden": 4, "no_label": 1,
                                   "not_an_image": 1, "too_small": 1}


def test_mirflickr25k_from_ram_local_and_beam_runners(tmp_path):
    local = tmp_path / "m25k"
    mirflickr25k_fixture(local)
    remote = to_ram(local)
    writer.run(str(local), str(tmp_path / "disk"), workers=1, progress=False, shard_size=4)
    writer.run(remote, str(tmp_path / "ram"), workers=1, progress=False, shard_size=4)
    manifest = assert_same_output(tmp_path / "disk", tmp_path / "ram")
    assert manifest["layout"] == "mirflickr25k" and manifest["candidates"] == 24
    assert manifest["skipped"]["no_label"] >= 2 and manifest["written"] >= 15
    assert manifest["exif_sources"]  # the EXIF text was read (clean, and raw filling gaps)

    pytest.importorskip("apache_beam", reason="Apache Beam is not installed: pip install -e "
                                              "'.[beam]' (make test installs it)")
    from exif_keras.records import beam_runner
    beam_runner.run(remote, str(tmp_path / "beam"), shard_size=4,
                     pipeline_options=IN_MEMORY_BEAM)
    assert_same_output(tmp_path / "disk", tmp_path / "beam")


def test_missing_and_unreadable_inputs_on_ram(tmp_path):
    top = f"ram://gfile-test-{uuid.uuid4().hex}"
    with pytest.raises(sources.SourceError, match="is not a directory"):
        sources.list_items(top + "/nowhere")
    tf.io.gfile.makedirs(top + "/empty")
    with pytest.raises(sources.SourceError, match="no images found"):
        sources.list_items(top + "/empty")

    # Listed, then gone (or unreadable): skipped as unreadable, with the reason.
    item = sources.Item("gone.jpg", top + "/gone.jpg", (), embedded_exif=True)
    result = convert.convert_item(item, convert.Options())
    assert result.skip_reason == "unreadable"
    assert result.detail.startswith("FileNotFoundError: ") and "gone.jpg" in result.detail
    assert exif_lib.read_exif_text_file(top + "/exif1.txt").problems == ["text:missing"]
    with pytest.raises(OSError):
        files.read_bytes(top + "/empty")

    # tf.io.gfile's errors become Python's, so callers handle every file system alike.
    denied = tf.errors.PermissionDeniedError(None, None, "denied")
    assert isinstance(files._os_error(denied, "gs://b/x.jpg"), PermissionError)
    missing = tf.errors.NotFoundError(None, None, "")
    assert isinstance(files._os_error(missing, "gs://b/x.jpg"), FileNotFoundError)
    assert "gs://b/x.jpg" in str(files._os_error(missing, "gs://b/x.jpg"))


def test_local_conversion_imports_no_tensorflow(tmp_path):
    """The local runner's workers read local files without TensorFlow (they stay small)."""
    photos_fixture(tmp_path / "p")
    script = (
        "import sys\n"
        "from exif_keras.records import convert, sources\n"
        f"layout, items = sources.list_items({str(tmp_path / 'p')!r})\n"
        "results = [convert.convert_path((i, convert.Options())) for i in items]\n"
        "assert sum(r.record is not None for r in results) == 3, results\n"
        "assert 'tensorflow' not in sys.modules, 'a local conversion imported TensorFlow'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
