"""Promises of prediction, the export and its serving limits that no other test held: each test
here fails when its promise is broken by a one-line change (see tests/MUTATION.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from exif_keras.common import stops
from exif_keras.common.images import PNG_MAGIC
from exif_keras.serving import predictor, signature


def _estimate(field, value):
    s = stops.value_to_stops(value, field)
    return {"value": value, "stops": s, "text": stops.standard_text(s, field)}


@pytest.mark.parametrize("field,exif,agreeing,other", [
    ("shutter", 1 / 500, 1 / 1000, 1 / 4),      # fast: 1/250 s or shorter; slow: 1/30 s or longer
    ("shutter", 1 / 8, 2.0, 1 / 250),
    ("aperture", 2.0, 2.8, 8.0),                # wide <= f/2.8, narrow >= f/5.6 (Av 6)
    ("aperture", 11.0, 5.6, 2.8),
    ("iso", 100, 100, 800),                     # ISO 100 against ISO 800
    ("iso", 800, 1600, 100),
])
def test_binary_agreement_same_group_agrees_other_group_does_not(field, exif, agreeing, other):
    settings = {stops.SETTINGS[field]: exif}
    same = predictor.estimate_truth(field, _estimate(field, agreeing), settings)
    differ = predictor.estimate_truth(field, _estimate(field, other), settings)
    assert same["binary_agrees"] is True
    assert differ["binary_agrees"] is False


def test_binary_agreement_is_none_outside_the_groups_and_without_exif():
    # 1/125 s is in neither shutter group: no agreement either way
    truth = predictor.estimate_truth("shutter", _estimate("shutter", 1 / 500),
                                   {"exposure_time": 1 / 125})
    assert truth["binary_agrees"] is None
    assert truth["error_stops"] == pytest.approx(np.log2((1 / 500) / (1 / 125)))
    assert predictor.estimate_truth("shutter", _estimate("shutter", 1 / 500), {}) is None
    assert predictor.estimate_truth("shutter", _estimate("shutter", 1 / 500), None) is None


def test_binary_agreement_in_the_estimate_summary():
    rows = [{"exif": {"shutter": predictor.estimate_truth(
        "shutter", _estimate("shutter", est), {"exposure_time": exif})}}
        for est, exif in ((1 / 1000, 1 / 500), (1.0, 1 / 500), (1 / 1000, 1 / 125),
                          (1 / 2, 1 / 4))]
    summary = predictor.estimate_summary(rows, [], ["shutter"], {"shutter": -9.0})
    field = summary["fields"]["shutter"]
    assert field["binary_photos"] == 3 and field["binary_agreement"] == pytest.approx(2 / 3)
    assert field["with_exif"] == 4
    assert field["within_one_stop"] == pytest.approx(0.5)
    # |-9 - log2 t| for t = 1/500, 1/500, 1/125, 1/4
    want = np.mean([abs(-9 - np.log2(t)) for t in (1 / 500, 1 / 500, 1 / 125, 1 / 4)])
    assert field["majority_mae_stops"] == pytest.approx(want)


def _png(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def _jpeg(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_pixel_limit_is_inclusive_and_reads_both_sides():
    # 40 x 30 = 1200 pixels: at the limit passes, one pixel under it is refused
    for data in (_png(40, 30), _jpeg(40, 30)):
        assert predictor.pixel_problem(data, 1200) is None
        problem = predictor.pixel_problem(data, 1199)
        assert problem is not None and "40x30 = 1200 pixels" in problem and "1199" in problem
    sizes = signature.image_sizes(tf.constant([_png(40, 30), _jpeg(7, 50)])).numpy()
    assert sizes.tolist() == [[30, 40], [50, 7]]


def test_served_pixel_check_names_the_first_photo_over_the_limit():
    sizes = tf.constant([[30, 40], [10, 10], [50, 40]], tf.int64)
    signature.check_pixels(sizes, 2000)  # 1200, 100, 2000: none over
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[0\] has 40x30 = 1200 pixels, over the limit of 1199"):
        signature.check_pixels(sizes, 1199)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] has 40x50"):
        signature.check_pixels(sizes, 1500)


def test_not_an_image_is_refused_before_decoding():
    good = [_png(4, 4), _jpeg(4, 4)]
    signature.check_image_bytes(tf.constant(good))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] is not a JPEG or PNG"):
        signature.check_image_bytes(tf.constant([good[0], b"GIF89a....", good[1]]))
    assert predictor.image_problem(b"") == "empty file"
    assert predictor.image_problem(b"GIF89a") == "not a JPEG or PNG image"
    assert predictor.image_problem(b"\xff\xd8\xff\xe0") is None
    assert predictor.image_problem(PNG_MAGIC) is None
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG"):
        signature.preprocess(tf.constant([b"<html>"]), 1, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 100 pixels"):
        signature.preprocess(tf.constant([_png(40, 30)]), 1, 8, max_pixels=100)
    assert signature.preprocess(tf.constant([_png(40, 30)]), 1, 8, max_pixels=1200).shape == \
        (1, 1, 8, 8, 3)
