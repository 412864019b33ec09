"""The synthetic sample: MIRFLICKR layout, metadata that agrees with itself, determinism, and the
physics that makes the shutter task learnable (slow shots are blurrier than fast ones)."""

from __future__ import annotations

import os
import re
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from exif_keras.common import labels
from exif_keras.records import sample

COUNT = 12
SEED = 7


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sample"))
    summary = sample.generate_sample(out, count=COUNT, seed=SEED, workers=1, progress=False)
    return out, summary


def _files(directory: str) -> dict[str, bytes]:
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def _parse_text(path: str) -> dict[str, str]:
    """Label/value pairs of a MIRFLICKR 'clean' EXIF file (a stand-in for the real parser)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) % 2 == 0 and all(line.startswith("-") for line in lines[::2])
    return {label[1:]: value for label, value in zip(lines[::2], lines[1::2])}


def _exposure_of(text: str) -> Fraction:
    match = re.fullmatch(r"([\d.]+) sec(?: \((\d+)/(\d+)\))?", text)
    assert match, text
    if match.group(2):
        return Fraction(int(match.group(2)), int(match.group(3)))
    return Fraction(match.group(1))


def _sharpness(image: Image.Image) -> float:
    """Mean absolute Laplacian of the grey image: high for crisp detail, low when blurred."""
    g = np.asarray(image.convert("L"), np.float32)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def test_layout_and_sizes(sample_dir):
    out, summary = sample_dir
    assert summary["count"] == COUNT and sum(summary["shutter_groups"].values()) == COUNT
    assert sample.is_complete(out, COUNT, SEED) and not sample.is_complete(out, COUNT, SEED + 1)
    for n in range(1, COUNT + 1):
        assert os.path.isfile(os.path.join(out, "meta", "exif", f"exif{n}.txt"))
        with Image.open(os.path.join(out, f"im{n}.jpg")) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert max(im.size) == 500 and 250 <= min(im.size) <= 500
    assert not [name for name in _files(out) if ".tmp" in name]


def test_text_and_embedded_exif_agree(sample_dir):
    out, _ = sample_dir
    for n in range(1, COUNT + 1):
        text = _parse_text(os.path.join(out, "meta", "exif", f"exif{n}.txt"))
        exposure = _exposure_of(text["Exposure"])
        f_number = float(re.fullmatch(r"f/([\d.]+)", text["Aperture"]).group(1))
        iso = int(text["ISO Speed"])
        assert text["Camera"] == sample.SAMPLE_CAMERA[1]
        assert exposure in sample.SHUTTER_STOPS and 1.0 <= f_number <= 22.0
        assert labels.shutter_class(float(exposure)) != labels.NO_LABEL

        with Image.open(os.path.join(out, f"im{n}.jpg")) as im:
            exif = im.getexif()
        sub = exif.get_ifd(sample.TAG_EXIF_IFD)
        assert (exif[sample.TAG_MAKE], exif[sample.TAG_MODEL]) == sample.SAMPLE_CAMERA
        embedded = sub[sample.TAG_EXPOSURE_TIME]
        assert Fraction(embedded.numerator, embedded.denominator) == exposure
        assert float(sub[sample.TAG_F_NUMBER]) == pytest.approx(f_number, abs=0.05)
        assert sub[sample.TAG_ISO] == iso


def test_text_format():
    settings = {"exposure_fraction": Fraction(1, 125), "exposure_time": 0.008, "f_number": 8.0,
                "iso": 400, "focal_length": 35}
    assert sample.exif_text(settings) == (
        "-Camera\nSynthetic Camera\n-Exposure\n0.008 sec (1/125)\n-Aperture\nf/8.0\n"
        "-ISO Speed\n400\n-Focal Length\n35 mm\n-Flash\nFlash did not fire\n")
    assert sample.format_exposure(Fraction(2)) == "2 sec"
    assert sample.format_exposure(Fraction(5, 2)) == "2.5 sec"
    assert sample.format_exposure(Fraction(3, 10)) == "0.3 sec (3/10)"
    assert sample.format_exposure(Fraction(1, 60)) == "0.017 sec (1/60)"
    assert sample.format_exposure(Fraction(1, 2000)) == "0.0005 sec (1/2000)"


def test_deterministic_whatever_the_workers(sample_dir, tmp_path):
    out, _ = sample_dir
    again = str(tmp_path / "again")
    sample.generate_sample(again, count=COUNT, seed=SEED, workers=2, progress=False)
    first, second = _files(out), _files(again)
    del first[sample.MARKER], second[sample.MARKER]
    assert first == second
    other = sample.make_image(SEED + 1, 1)[0]
    assert other != first["im1.jpg"]


def test_rerun_after_interruption_gives_the_same_files(sample_dir, tmp_path):
    out, _ = sample_dir
    partial = str(tmp_path / "partial")
    sample.generate_sample(partial, count=4, seed=SEED, workers=1, progress=False)
    # A killed run: no marker, a torn temporary file, a truncated image (from a non-atomic copy).
    os.remove(os.path.join(partial, sample.MARKER))
    with open(os.path.join(partial, "im2.jpg.tmp123"), "wb") as f:
        f.write(b"torn")
    with open(os.path.join(partial, "im3.jpg"), "wb") as f:
        f.write(b"truncated")
    assert not sample.is_complete(partial, COUNT, SEED)
    sample.generate_sample(partial, count=COUNT, seed=SEED, workers=1, progress=False)
    assert sample.is_complete(partial, COUNT, SEED)
    assert "im2.jpg.tmp123" not in os.listdir(partial)
    for n in range(1, COUNT + 1):
        for rel in (f"im{n}.jpg", os.path.join("meta", "exif", f"exif{n}.txt")):
            with open(os.path.join(out, rel), "rb") as a, \
                    open(os.path.join(partial, rel), "rb") as b:
                assert a.read() == b.read(), rel


def _render(seed: int, **changes) -> Image.Image:
    settings = {"exposure_time": 1 / 1000, "f_number": 8.0, "iso": 100, "focal_length": 35,
                "exposure_bias": 0.0}
    settings.update(changes)
    return sample.render_image(np.random.default_rng(seed), settings)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slow_shutter_blurs_the_same_scene(seed):
    fast, slow = _render(seed, exposure_time=1 / 1000), _render(seed, exposure_time=1 / 15)
    assert fast.size == slow.size
    assert _sharpness(slow) < 0.5 * _sharpness(fast)
    # Same scene: seen from afar (where the blur does not matter) the two look alike.
    a, b = (np.asarray(im.convert("L").reduce(25), np.float32).ravel() for im in (fast, slow))
    assert np.corrcoef(a, b)[0, 1] > 0.8


def test_high_iso_is_noisier_and_wide_aperture_softer():
    base = _sharpness(_render(0))
    assert _sharpness(_render(0, iso=1600)) > 1.15 * base
    # Against f/16, whose background is about 1 px soft (f/8 is already ~2 px: this pixel-scale
    # measure saturates there).
    assert _sharpness(_render(0, f_number=1.8)) < 0.95 * _sharpness(_render(0, f_number=16.0))


def test_the_f_number_dominates_the_defocus():
    """The model sees neither the scene's depth nor the focal length: over their whole range, a
    lens three stops wider (f/2.8 against f/8) always blurs the background more, and the spread
    they add stays under 1.5 stops of blur (version 1 of the sample let them scale it by 6x)."""
    radii = {n: [sample.defocus_radius(n, focal, depth) for focal in sample.FOCAL_LENGTHS
                 for depth in sample.DEPTH_RANGE] for n in (2.8, 8.0)}
    assert min(radii[2.8]) > max(radii[8.0])
    assert max(radii[8.0]) / min(radii[8.0]) < 2.0 ** 1.5
    # Visible at the wide end, still a pixel at f/16, and never above the cap.
    assert sample.defocus_radius(2.0, 35, 1.0) >= 6.0
    assert sample.defocus_radius(16.0, 35, 1.0) >= 0.9
    assert sample.defocus_radius(1.0, 200, sample.DEPTH_RANGE[1]) == sample.DEFOCUS_CAP


def test_blur_lengths_are_plausible():
    low, high = sample.SHAKE_RATE_RANGE
    cap_low, _ = sample.SHAKE_CAP_RANGE
    stops = [float(s) for s in sample.SHUTTER_STOPS]
    slowest_fast = max(t for t in stops if sample.shutter_group(t) == "fast")
    fastest_slow = min(t for t in stops if sample.shutter_group(t) == "slow")
    assert sample.shake_length(slowest_fast, high, cap_low) < 1.5
    assert sample.shake_length(fastest_slow, low, cap_low) >= 6.0
    assert sample.shake_length(30.0, high, sample.SHAKE_CAP_RANGE[1]) <= 40.0


def test_settings_distribution_covers_both_shutter_groups():
    draws = [sample.draw_settings(np.random.default_rng((0, i))) for i in range(2000)]
    groups = [sample.shutter_group(s["exposure_time"]) for s in draws]
    for group in ("fast", "slow"):
        assert groups.count(group) >= 0.25 * len(draws), group
    assert groups.count("neither") > 0
    assert all(Fraction(s["exposure_fraction"]) in sample.SHUTTER_STOPS for s in draws)
    assert all(1.0 <= s["f_number"] <= 22.0 for s in draws)
    isos = [s["iso"] for s in draws]
    assert sum(iso in labels.ISO_LEVELS for iso in isos) >= 0.85 * len(draws)
    assert {80, 3200} <= set(isos)
    # The binary aperture and ISO tasks have examples on both sides too.
    apertures = [labels.task_spec("aperture").target(labels.aperture_class(s["f_number"]))
                 for s in draws]
    assert apertures.count(0) > 0.1 * len(draws) and apertures.count(1) > 0.1 * len(draws)
