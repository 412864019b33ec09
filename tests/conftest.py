"""Shared fixtures. The tests mirror the packages (tests/common, records, data, modeling,
training, serving, analysis); this folder is on sys.path, so the fixture modules beside this file
(mirflickr_fixtures, image_bombs) import from anywhere below it.

Everything is generated at test time and tiny: a 48-photo sample of the built-in synthetic
camera, its records, run folders written through `exif_keras.modeling.run_folder` itself."""

from __future__ import annotations

import pathlib

import pytest

from exif_keras.records import sample, writer

REPO = pathlib.Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "real-exif"   # tests that need it skip without it


def pytest_runtest_setup(item):
    """``@pytest.mark.dtype_policy("mixed_bfloat16")``: skip, saying why, where oneDNN cannot run
    that policy's convolutions (a bfloat16 CPU held to AVX2 by ONEDNN_MAX_CPU_ISA, as the
    reference conditions of BUILD.md's speed table are)."""
    for marker in item.iter_markers("dtype_policy"):
        from exif_keras.training import devices

        reason = devices.onednn_refuses(marker.args[0])
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> pathlib.Path:
    """48 photos of the built-in sample (seed 3), MIRFLICKR-25k layout: the same path as
    `make demo`, only smaller. Read-only: convert it, never write into it."""
    root = tmp_path_factory.mktemp("sample48") / "sample"
    sample.generate_sample(str(root), count=48, seed=3, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def sample_records(sample_photos, tmp_path_factory) -> pathlib.Path:
    """The 48 photos converted to records with the converter's defaults. Read-only."""
    out = tmp_path_factory.mktemp("records48") / "records"
    writer.run(str(sample_photos), str(out), workers=2, progress=False)
    return out
