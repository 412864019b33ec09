"""Tests of exif_keras.common.exif: MIRFLICKR EXIF text files and EXIF embedded in JPEGs.

The oracle tests read the real-EXIF corpus at ``<repo>/../shared/corpora/real-exif`` (JPEGs from
public EXIF test suites and what exiftool 12.57 reads from them, ``exiftool.tsv``) and are skipped
when it is absent.
"""

from __future__ import annotations

import csv
import io
import math
import pathlib
import struct
import sys

import pytest
from PIL import Image

from exif_keras.common import exif as exif_lib
from exif_keras.common.exif import (
    ExifReading,
    Settings,
    apex_to_exposure_time,
    apex_to_f_number,
    parse_exif_text,
    read_embedded_exif,
    read_exif_text_file,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import mirflickr_fixtures as fx  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpora" / "real-exif"

REL = 1e-3


def close(a, b, rel=REL):
    return a is not None and b is not None and abs(a - b) <= rel * abs(b)


# ---------------------------------------------------------------------------------------------
# 1. Text files: value forms, labels, tolerance.

CLEAN_EXAMPLE = """\
-Camera
Canon EOS 400D DIGITAL
-Exposure
0.008 sec (1/125)
-Aperture
f/8.0
-Focal Length
35 mm
-ISO Speed
400
-Exposure Bias
-1/3 EV
-Date and Time (Original)
2008:06:21 16:12:37
-Flash
Flash did not fire
-Maximum Lens Aperture
f/3.5
"""

RAW_EXAMPLE = """\
-Make
Canon
-Model
Canon EOS 400D DIGITAL
-Exposure
1/60
-Aperture
80/10
-Exposure Program
2
-ISO Speed
400
-Shutter Speed
189/32
-Aperture
195/32
-Max Aperture Value
3/1
-Maximum Lens Aperture
35/10
-Focal Length
35/1
"""


def test_clean_example():
    reading = parse_exif_text(CLEAN_EXAMPLE)
    assert reading.exposure_time == pytest.approx(1 / 125)
    assert reading.f_number == 8.0
    assert reading.iso == 400
    assert reading.shutter_speed_apex is None and reading.aperture_apex is None
    assert reading.problems == []
    assert reading.settings() == Settings(pytest.approx(1 / 125), 8.0, 400.0,
                                          "exposure_time", "f_number")


def test_raw_example_duplicate_aperture_is_apex():
    reading = parse_exif_text(RAW_EXAMPLE)
    assert reading.exposure_time == pytest.approx(1 / 60)
    assert reading.f_number == 8.0          # the first -Aperture
    assert reading.iso == 400
    assert reading.shutter_speed_apex == 189 / 32
    assert reading.aperture_apex == 195 / 32  # the second -Aperture; max apertures ignored
    assert reading.problems == []
    settings = reading.settings()
    assert settings.exposure_time == pytest.approx(1 / 60)  # ExposureTime preferred over Tv
    assert settings.exposure_source == "exposure_time"
    assert settings.f_number == 8.0 and settings.aperture_source == "f_number"


def test_apex_conversions():
    assert apex_to_exposure_time(189 / 32) == 2.0 ** -(189 / 32)
    assert apex_to_exposure_time(189 / 32) == pytest.approx(1 / 60, rel=0.02)
    assert apex_to_exposure_time(-3) == 8.0
    assert apex_to_exposure_time(0) == 1.0
    assert apex_to_f_number(130 / 32) == 2.0 ** (65 / 32)
    assert apex_to_f_number(130 / 32) == pytest.approx(4.0876, rel=1e-4)
    assert apex_to_f_number(6) == 8.0
    for bad in (None, math.nan, math.inf, 4000.0, -20.0):
        assert apex_to_exposure_time(bad) is None
    for bad in (None, math.nan, -math.inf, 100.0, -3.0):
        assert apex_to_f_number(bad) is None


def test_apex_only_raw():
    reading = parse_exif_text("-Shutter Speed\n189/32\n-Aperture Value\n130/32\n-ISO\n200\n")
    assert reading.exposure_time is None and reading.f_number is None
    assert reading.shutter_speed_apex == 189 / 32 and reading.aperture_apex == 130 / 32
    settings = reading.settings()
    assert settings.exposure_time == 2.0 ** -(189 / 32)
    assert settings.f_number == 2.0 ** (65 / 32)
    assert settings.iso == 200
    assert settings.exposure_source == "shutter_speed_apex"
    assert settings.aperture_source == "aperture_apex"


def test_apex_used_when_other_invalid():
    reading = parse_exif_text("-Exposure\n0\n-Aperture\nf/0.0\n-Shutter Speed\n1/125 sec\n"
                              "-Aperture\nf/4.0\n")
    assert reading.exposure_time is None and reading.f_number is None
    assert "exposure_time:sentinel" in reading.problems
    assert "f_number:sentinel" in reading.problems
    settings = reading.settings()
    assert settings.exposure_time == pytest.approx(1 / 125)
    assert settings.exposure_source == "shutter_speed_apex"
    assert settings.f_number == pytest.approx(4.0)
    assert settings.aperture_source == "aperture_apex"


def test_settings_empty():
    assert ExifReading().settings() == Settings(None, None, None, None, None)


@pytest.mark.parametrize("value, expected", [
    ("0.008 sec (1/125)", 1 / 125),
    ("0.017 sec (1/60)", 1 / 60),          # the parenthesised fraction is exact
    ("0.3 sec (3/10)", 0.3),
    ("0.008 sec (1/0)", 0.008),            # a broken fraction: the decimal
    ("1/125", 1 / 125),
    ("1/125 sec", 1 / 125),
    ("1 / 125 s", 1 / 125),
    ("0.008 sec", 0.008),
    ("0.008", 0.008),
    ("2 sec", 2.0),
    ("2s", 2.0),
    ("10/1", 10.0),
    ("30", 30.0),
    ("1/8000", 1 / 8000),
])
def test_exposure_forms(value, expected):
    reading = parse_exif_text(f"-Exposure\n{value}\n")
    assert reading.exposure_time == pytest.approx(expected)
    assert reading.problems == []


@pytest.mark.parametrize("value, expected", [
    ("f/8.0", 8.0), ("F/2.8", 2.8), ("f8", 8.0), ("8", 8.0), ("80/10", 8.0), ("28/10", 2.8),
    ("f/1.4", 1.4), ("f/22", 22.0),
])
def test_f_number_forms(value, expected):
    reading = parse_exif_text(f"-Aperture\n{value}\n")
    assert reading.f_number == pytest.approx(expected)
    assert reading.problems == []


@pytest.mark.parametrize("value, expected", [
    ("400", 400.0), ("ISO 400", 400.0), ("iso400", 400.0), ("1600", 1600.0), ("1,600", 1600.0),
    ("12,800", 12800.0), ("100, 100", 100.0), ("400/1", 400.0), ("80", 80.0),
])
def test_iso_forms(value, expected):
    reading = parse_exif_text(f"-ISO Speed\n{value}\n")
    assert reading.iso == expected
    assert reading.problems == []


@pytest.mark.parametrize("label, value, field, expected, problem", [
    # uncertain and multiple values: the number is used, and flagged
    ("-ISO Speed", "May be 400", "iso", 400.0, "iso:uncertain"),
    ("-ISO Speed", "maybe 800", "iso", 800.0, "iso:uncertain"),
    ("-ISO Speed", "100, 200", "iso", 100.0, "iso:multiple"),
    ("-ISO Speed", "200 0", "iso", 200.0, "iso:multiple"),
    ("-ISO Speed", "100,200", "iso", 100.0, "iso:multiple"),
    # unparseable text
    ("-ISO Speed", "Error", "iso", None, "iso:dirty"),
    ("-ISO Speed", "n/a", "iso", None, "iso:dirty"),
    ("-ISO Speed", "Auto", "iso", None, "iso:dirty"),
    ("-Exposure", "Error", "exposure_time", None, "exposure_time:dirty"),
    ("-Aperture", "f/", "f_number", None, "f_number:dirty"),
    ("-Exposure", "1/125 1/60 abc", "exposure_time", None, "exposure_time:dirty"),
    # sentinels: unknown
    ("-ISO Speed", "0", "iso", None, "iso:sentinel"),
    ("-ISO Speed", "65535", "iso", None, "iso:sentinel"),
    ("-ISO Speed", "4294967295", "iso", None, "iso:sentinel"),
    ("-Exposure", "0", "exposure_time", None, "exposure_time:sentinel"),
    ("-Exposure", "0/1", "exposure_time", None, "exposure_time:sentinel"),
    ("-Exposure", "4294967295", "exposure_time", None, "exposure_time:sentinel"),
    ("-Exposure", "4294967295/1", "exposure_time", None, "exposure_time:sentinel"),
    ("-Exposure", "7200 sec", "exposure_time", None, "exposure_time:sentinel"),
    ("-Aperture", "f/0.0", "f_number", None, "f_number:sentinel"),
    ("-Aperture", "0/10", "f_number", None, "f_number:sentinel"),
    ("-Aperture", "4294967295", "f_number", None, "f_number:sentinel"),
    # invalid: x/0, non-finite, negative
    ("-Exposure", "1/0", "exposure_time", None, "exposure_time:invalid"),
    ("-Exposure", "0/0", "exposure_time", None, "exposure_time:invalid"),
    ("-Exposure", "inf", "exposure_time", None, "exposure_time:invalid"),
    ("-Exposure", "nan", "exposure_time", None, "exposure_time:invalid"),
    ("-Exposure", "-1/60", "exposure_time", None, "exposure_time:invalid"),
    ("-ISO Speed", "-100", "iso", None, "iso:invalid"),
    ("-ISO Speed", "Infinity", "iso", None, "iso:invalid"),
    ("-Aperture", "f/-2.8", "f_number", None, "f_number:invalid"),
    ("-Aperture", "28/0", "f_number", None, "f_number:invalid"),
    # APEX values out of range (raw)
    ("-Shutter Speed", "4000/1", "shutter_speed_apex", None, "shutter_speed_apex:invalid"),
    ("-Shutter Speed", "-20/1", "shutter_speed_apex", None, "shutter_speed_apex:sentinel"),
    ("-Shutter Speed", "1/0", "shutter_speed_apex", None, "shutter_speed_apex:invalid"),
    ("-Shutter Speed", "-inf", "shutter_speed_apex", None, "shutter_speed_apex:invalid"),
    ("-Aperture Value", "100/1", "aperture_apex", None, "aperture_apex:invalid"),
    ("-Aperture Value", "-4294967295", "aperture_apex", None, "aperture_apex:invalid"),
    # empty value line
    ("-ISO Speed", "", "iso", None, "iso:empty"),
    ("-Exposure", "   ", "exposure_time", None, "exposure_time:empty"),
])
def test_dirty_values(label, value, field, expected, problem):
    reading = parse_exif_text(f"{label}\n{value}\n-Flash\nFlash did not fire\n", variant="raw")
    assert getattr(reading, field) == expected
    assert reading.problems == [problem]
    # A field with a problem never leaks into the settings as an invalid number.
    settings = reading.settings()
    for name in ("exposure_time", "f_number", "iso"):
        value = getattr(settings, name)
        assert value is None or (math.isfinite(value) and value > 0)


def test_negative_apex_value_line_is_not_a_label():
    reading = parse_exif_text("-Shutter Speed\n-3/1\n-Aperture Value\n-1/2\n", variant="raw")
    assert reading.shutter_speed_apex == -3.0
    assert reading.settings().exposure_time == 8.0
    assert reading.aperture_apex == -0.5
    assert reading.settings().f_number == pytest.approx(2 ** -0.25)


@pytest.mark.parametrize("value, variant, expected_tv", [
    ("1/125", "clean", math.log2(125)),       # clean: a bare number is a time
    ("1/125 sec", "clean", math.log2(125)),
    ("0.008 sec", "clean", -math.log2(0.008)),
    ("2 sec", "clean", -1.0),
    ("1/125 sec", "raw", math.log2(125)),     # a unit always decides
    ("1/125", "raw", 1 / 125),                # raw: a bare number is APEX Tv
    ("189/32", "raw", 189 / 32),
    ("189/32", "auto", 189 / 32),             # nothing marks the file as clean
    ("1/125 sec", "auto", math.log2(125)),
])
def test_shutter_speed_clean_versus_raw(value, variant, expected_tv):
    reading = parse_exif_text(f"-Shutter Speed\n{value}\n", variant=variant)
    assert reading.shutter_speed_apex == pytest.approx(expected_tv)
    assert reading.problems == []


@pytest.mark.parametrize("value, variant, expected_f", [
    ("f/4.0", "clean", 4.0), ("4.0", "clean", 4.0), ("f/4.0", "raw", 4.0),
    ("4", "raw", 4.0),  # Av 4 -> f/4
    ("130/32", "raw", 2 ** (65 / 32)), ("6", "raw", 8.0),
])
def test_second_aperture_clean_versus_raw(value, variant, expected_f):
    reading = parse_exif_text(f"-Aperture\n56/10\n-Aperture\n{value}\n", variant=variant)
    assert reading.f_number == pytest.approx(5.6)
    assert apex_to_f_number(reading.aperture_apex) == pytest.approx(expected_f)
    assert reading.problems == []


def test_auto_variant_detection():
    # "sec" in the exposure marks clean: the bare shutter speed is a time.
    text = "-Exposure\n0.008 sec (1/125)\n-Shutter Speed\n1/125\n"
    assert parse_exif_text(text).shutter_speed_apex == pytest.approx(math.log2(125))
    # "mm" in the focal length marks clean too.
    text = "-Focal Length\n35 mm\n-Shutter Speed\n1/125\n-Aperture\n5.6\n-Aperture\n4\n"
    reading = parse_exif_text(text)
    assert reading.shutter_speed_apex == pytest.approx(math.log2(125))
    assert apex_to_f_number(reading.aperture_apex) == pytest.approx(4.0)
    # Nothing marks it: raw, the same values are APEX.
    text = "-Focal Length\n35/1\n-Shutter Speed\n1/125\n-Aperture\n5.6\n-Aperture\n4\n"
    reading = parse_exif_text(text)
    assert reading.shutter_speed_apex == pytest.approx(1 / 125)
    assert reading.aperture_apex == 4.0
    # Units in unrelated tags do not count.
    text = "-Exposure Bias\n0 sec\n-Shutter Speed\n189/32\n"
    assert parse_exif_text(text).shutter_speed_apex == 189 / 32


def test_unknown_variant():
    with pytest.raises(ValueError):
        parse_exif_text("-ISO\n100\n", variant="cooked")


@pytest.mark.parametrize("label, field", [
    ("-Exposure", "exposure_time"), ("-Exposure Time", "exposure_time"),
    ("-ExposureTime", "exposure_time"),
    ("-Shutter Speed", "shutter_speed_apex"), ("-Shutter Speed Value", "shutter_speed_apex"),
    ("-F-Number", "f_number"), ("-FNumber", "f_number"), ("-F Number", "f_number"),
    ("-Aperture", "f_number"), ("-Aperture Value", "aperture_apex"),
    ("-ISO", "iso"), ("-ISO Speed", "iso"), ("-ISO Speed Ratings", "iso"),
    ("-Photographic Sensitivity", "iso"),
    ("-EXPOSURE TIME", "exposure_time"), ("-iso speed", "iso"), ("- ISO Speed", "iso"),
])
def test_label_aliases(label, field):
    reading = parse_exif_text(f"{label}\n4\n", variant="raw")
    assert getattr(reading, field) == 4.0
    others = [name for name in exif_lib.FIELDS if name != field]
    assert all(getattr(reading, name) is None for name in others)


@pytest.mark.parametrize("label", [
    "-Maximum Lens Aperture", "-Max Aperture Value", "-Max Aperture", "-Exposure Bias",
    "-Exposure Program", "-Exposure Mode", "-Exposure Index", "-ISO Speed Latitude",
    "-Camera", "-Make", "-Model", "-Focal Length", "-Flash", "-Lens Aperture",
])
def test_other_labels_ignored(label):
    reading = parse_exif_text(f"{label}\n4\n")
    assert reading == ExifReading()


def test_fnumber_label_then_aperture_label():
    # An explicit F-Number does not consume the first -Aperture: that one is still the f-number.
    reading = parse_exif_text("-F-Number\n8\n-Aperture\n8\n-Aperture\n6\n", variant="raw")
    assert reading.f_number == 8.0 and reading.aperture_apex == 6.0
    assert reading.problems == []


def test_duplicate_labels():
    reading = parse_exif_text("-Exposure\n1/125\n-Exposure\n1/125\n-ISO\n100\n-ISO\n200\n")
    assert reading.exposure_time == pytest.approx(1 / 125)
    assert reading.iso == 100
    assert reading.problems == ["iso:conflict"]
    # The first *valid* value wins; the invalid one is still counted.
    reading = parse_exif_text("-ISO Speed\nError\n-ISO Speed\n400\n")
    assert reading.iso == 400 and reading.problems == ["iso:dirty"]
    # A third -Aperture conflicts with the second (APEX) one.
    reading = parse_exif_text("-Aperture\n8\n-Aperture\n6\n-Aperture\n5\n", variant="raw")
    assert reading.f_number == 8.0 and reading.aperture_apex == 6.0
    assert reading.problems == ["aperture_apex:conflict"]


def test_tolerant_layout():
    text = ("\ufeff-Camera \r\nNikon D70\r\n\r\n-EXPOSURE\r\n1/250  \r\n-aperture\r\n"
            "f/5.6\r\n-Flash\r\n\r\n-ISO Speed\r\n\r\n\r\n200\r\n-Shutter Speed")
    reading = parse_exif_text(text)
    assert reading.exposure_time == pytest.approx(1 / 250)
    assert reading.f_number == 5.6
    assert reading.iso == 200  # blank lines between a label and its value are skipped
    assert reading.problems == ["shutter_speed_apex:empty"]  # a label as the last line


def test_label_with_empty_value_before_next_label():
    reading = parse_exif_text("-ISO Speed\n-Exposure\n1/60\n-Aperture\n\n-Flash\nOff\n")
    assert reading.iso is None and reading.f_number is None
    assert reading.exposure_time == pytest.approx(1 / 60)
    assert reading.problems == ["iso:empty", "f_number:empty"]


def test_stray_lines_ignored():
    text = "-User Comment\nline one\nline two\n400\n-ISO Speed\n100\n"
    reading = parse_exif_text(text)
    assert reading.iso == 100 and reading.problems == []


@pytest.mark.parametrize("text", ["", "   \n\n", "\ufeff", "\r\n\r\n", "\ufeff\n \n"])
def test_empty_text(text):
    reading = parse_exif_text(text)
    assert reading == ExifReading(problems=["text:empty"])


def test_no_settings_is_not_a_problem():
    reading = parse_exif_text("-Camera\nCanon\n-Flash\nOff\n")
    assert reading == ExifReading()


def test_read_exif_text_file(tmp_path):
    # mirflickr1m layout: exif/<N // 10000>/<N>.txt
    path = fx.write_clean_exif(tmp_path / "exif" / "12" / "123456.txt", exposure_time=1 / 125,
                               f_number=8, iso=400)
    assert path.read_text() == ("-Exposure\n0.008 sec (1/125)\n-Aperture\nf/8.0\n"
                                "-ISO Speed\n400\n")
    reading = read_exif_text_file(path)
    assert (reading.exposure_time, reading.f_number, reading.iso) == (
        pytest.approx(1 / 125), 8.0, 400.0)
    assert read_exif_text_file(str(path)).iso == 400

    assert read_exif_text_file(tmp_path / "nope.txt").problems == ["text:missing"]
    assert read_exif_text_file(tmp_path / "nope" / "x.txt").problems == ["text:missing"]
    assert read_exif_text_file(tmp_path).problems == ["text:unreadable"]  # a directory

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert read_exif_text_file(empty).problems == ["text:empty"]

    odd = tmp_path / "odd.txt"
    odd.write_bytes(b"\xef\xbb\xbf-Camera\r\nCaf\xe9 \xff\xfe\r\n-ISO Speed\r\n800\r\n")
    reading = read_exif_text_file(odd)
    assert reading.iso == 800 and reading.problems == []

    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("-ISO Speed\r\n1600\r\n".encode("utf-16"))
    assert read_exif_text_file(utf16).iso == 1600

    raw = fx.write_raw_exif(tmp_path / "exif_raw" / "exif7.txt", exposure_time=1 / 60,
                            f_number=8, iso=400, shutter_apex=189 / 32, aperture_apex=130 / 32,
                            extra_lines=("-Make", "Canon"))
    assert raw.read_text() == ("-Exposure\n1/60\n-Aperture\n80/10\n-ISO Speed\n400\n"
                               "-Shutter Speed\n189/32\n-Aperture\n130/32\n-Make\nCanon\n")
    reading = read_exif_text_file(raw)
    assert reading.shutter_speed_apex == 189 / 32 and reading.aperture_apex == 130 / 32


def test_fixture_formats():
    assert fx.format_clean_text(exposure_time=1 / 125, f_number=8, iso=400,
                                shutter_apex=math.log2(125), aperture_apex=4) == (
        "-Exposure\n0.008 sec (1/125)\n-Aperture\nf/8.0\n-ISO Speed\n400\n"
        "-Shutter Speed\n1/125 sec\n-Aperture\nf/4.0\n")
    assert fx.format_raw_text(exposure_time=2, iso="May be 400", aperture_apex=6) == (
        "-Exposure\n2/1\n-ISO Speed\nMay be 400\n-Aperture Value\n192/32\n")
    assert fx.format_clean_text(exposure_time=2) == "-Exposure\n2 sec\n"
    assert fx.format_clean_text() == "\n"


# ---------------------------------------------------------------------------------------------
# Embedded EXIF: crafted files.

def _entry(tag, kind, values, order):
    """(tag, type, count, payload) of one IFD entry."""
    if kind == "ASCII":
        payload = values.encode("ascii") + b"\0"
        return tag, 2, len(payload), payload
    code, fmt = {"SHORT": (3, "H"), "LONG": (4, "L"), "RATIONAL": (5, "LL"),
                 "SRATIONAL": (10, "ll")}[kind]
    values = list(values)
    flat = [v for pair in values for v in pair] if len(fmt) == 2 else values
    return tag, code, len(values), struct.pack(order + fmt[0] * len(flat), *flat)


def _ifd(entries, start, order, next_offset=0, count=None):
    """The bytes of an IFD at ``start`` (offsets from the TIFF header), its data after it."""
    entries = sorted(entries)
    data_start = start + 2 + 12 * len(entries) + 4
    head, data = [], b""
    for tag, code, n, payload in entries:
        if len(payload) <= 4:
            field = payload.ljust(4, b"\0")
        else:
            field = struct.pack(order + "L", data_start + len(data))
            data += payload + (b"\0" if len(payload) % 2 else b"")
        head.append(struct.pack(order + "HHL", tag, code, n) + field)
    count = len(entries) if count is None else count
    return (struct.pack(order + "H", count) + b"".join(head)
            + struct.pack(order + "L", next_offset) + data)


def build_tiff(ifd0=(), exif_ifd=None, order="<", exif_pointer=None, ifd0_count=None,
               next_offset=0):
    """A TIFF (EXIF) structure: IFD0 entries and an optional Exif IFD; entries are
    (tag, kind, values). ``exif_pointer`` overrides the Exif IFD offset written in IFD0."""
    header = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    entries = [_entry(tag, kind, values, order) for tag, kind, values in ifd0]
    if exif_ifd is not None or exif_pointer is not None:
        probe = _ifd(entries + [_entry(0x8769, "LONG", [0], order)], 8, order)
        offset = 8 + len(probe) if exif_pointer is None else exif_pointer
        entries.append(_entry(0x8769, "LONG", [offset], order))
    out = header + _ifd(entries, 8, order, next_offset, ifd0_count)
    if exif_ifd is not None:
        out += _ifd([_entry(tag, kind, values, order) for tag, kind, values in exif_ifd],
                    len(out), order)
    return out


def _tiny_jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


TINY_JPEG = _tiny_jpeg()


def jpeg_with_app1(payload: bytes) -> bytes:
    """A small JPEG with ``payload`` as its APP1 segment (payload includes b"Exif\\0\\0")."""
    assert len(payload) + 2 <= 0xFFFF
    return TINY_JPEG[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + \
        TINY_JPEG[2:]


def read_jpeg_bytes(data: bytes) -> ExifReading:
    with Image.open(io.BytesIO(data)) as image:
        return read_embedded_exif(image)


GOOD_EXIF_IFD = [
    (0x829A, "RATIONAL", [(1, 125)]),
    (0x829D, "RATIONAL", [(56, 10)]),
    (0x8827, "SHORT", [400]),
    (0x9201, "SRATIONAL", [(189, 32)]),
    (0x9202, "RATIONAL", [(130, 32)]),
]


@pytest.mark.parametrize("order", ["<", ">"])
def test_embedded_good(order):
    reading = read_jpeg_bytes(jpeg_with_app1(
        b"Exif\0\0" + build_tiff([(0x010F, "ASCII", "Canon")], GOOD_EXIF_IFD, order=order)))
    assert reading.exposure_time == pytest.approx(1 / 125)
    assert reading.f_number == pytest.approx(5.6)
    assert reading.iso == 400
    assert reading.shutter_speed_apex == 189 / 32
    assert reading.aperture_apex == 130 / 32
    assert reading.problems == []


def test_embedded_hidden_exif_pointer():
    """Pillow's Exif.hide_offsets moves the Exif IFD pointer out of IFD0: still read."""
    data = jpeg_with_app1(b"Exif\0\0" + build_tiff([], GOOD_EXIF_IFD))
    with Image.open(io.BytesIO(data)) as image:
        image.getexif().get_ifd(0x8769)
        if not hasattr(image.getexif(), "hide_offsets"):
            pytest.skip("this Pillow has no Exif.hide_offsets")
        image.getexif().hide_offsets()
        reading = read_embedded_exif(image)
    assert reading.iso == 400 and reading.f_number == pytest.approx(5.6)
    assert reading.problems == []


def test_embedded_no_exif():
    assert read_jpeg_bytes(TINY_JPEG).problems == ["exif:absent"]
    # A valid TIFF structure with an empty IFD0 carries nothing either.
    assert read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + build_tiff())).problems == [
        "exif:absent"]


def test_embedded_dirty_values():
    tiff = build_tiff([], [
        (0x829A, "RATIONAL", [(1, 0)]),         # IFDRational(1, 0) -> nan
        (0x829D, "RATIONAL", [(0, 0)]),
        (0x8827, "SHORT", [200, 0]),            # a tuple: the first value
        (0x9201, "SRATIONAL", [(-96, 32)]),     # negative Tv: 8 s
        (0x9202, "RATIONAL", [(4294967295, 1)]),
    ])
    reading = read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + tiff))
    assert reading.exposure_time is None and reading.f_number is None
    assert reading.iso == 200
    assert reading.shutter_speed_apex == -3.0
    assert reading.aperture_apex is None
    assert sorted(reading.problems) == sorted([
        "exposure_time:invalid", "f_number:invalid", "iso:multiple", "aperture_apex:invalid"])
    settings = reading.settings()
    assert settings.exposure_time == 8.0 and settings.exposure_source == "shutter_speed_apex"
    assert settings.f_number is None and settings.aperture_source is None


def test_embedded_sentinels_and_iso_fallback():
    tiff = build_tiff([], [
        (0x829A, "RATIONAL", [(4294967295, 1)]),
        (0x829D, "RATIONAL", [(0, 1)]),
        (0x8827, "SHORT", [65535]),             # EXIF 2.3: the value is in ISOSpeed
        (0x8833, "LONG", [102400]),
    ])
    reading = read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + tiff))
    assert reading.iso == 102400
    assert sorted(reading.problems) == ["exposure_time:sentinel", "f_number:sentinel"]
    tiff = build_tiff([], [(0x8827, "SHORT", [0])])
    assert read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + tiff)).problems == ["iso:sentinel"]


def test_embedded_ifd0_fallback_and_ascii():
    tiff = build_tiff([(0x829A, "ASCII", "1/250"), (0x829D, "RATIONAL", [(8, 1)]),
                       (0x8827, "SHORT", [100])])
    reading = read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + tiff))
    assert reading.exposure_time == pytest.approx(1 / 250)
    assert reading.f_number == 8.0 and reading.iso == 100
    assert reading.problems == []
    # Exif IFD first, IFD0 only for what is absent there.
    tiff = build_tiff([(0x8827, "SHORT", [100]), (0x829D, "RATIONAL", [(8, 1)])],
                      [(0x8827, "SHORT", [800])])
    reading = read_jpeg_bytes(jpeg_with_app1(b"Exif\0\0" + tiff))
    assert reading.iso == 800 and reading.f_number == 8.0


CORRUPT_PAYLOADS = {
    "garbage header": b"Exif\0\0XX*\0\0\0\0\x08" + bytes(40),
    "truncated header": b"Exif\0\0MM\0*\0\0\0",
    "ifd0 past the end": b"Exif\0\0II*\0" + struct.pack("<L", 0x7FFFFFF0),
    "exif ifd past the end": b"Exif\0\0" + build_tiff(
        [(0x8827, "SHORT", [100])], exif_pointer=0x00FFFFF0),
    "exif ifd loops to ifd0": b"Exif\0\0" + build_tiff(
        [(0x8827, "SHORT", [100])], exif_pointer=8),
    "ifd0 next loops": b"Exif\0\0" + build_tiff(
        [(0x8827, "SHORT", [100])], GOOD_EXIF_IFD, next_offset=8),
    "huge entry count": b"Exif\0\0" + build_tiff(
        [(0x8827, "SHORT", [100])], GOOD_EXIF_IFD, ifd0_count=0xFFFF),
    "truncated structure": (b"Exif\0\0" + build_tiff([(0x8827, "SHORT", [100])],
                                                     GOOD_EXIF_IFD))[:60],
    "huge tag count": b"Exif\0\0II*\0\x08\0\0\0\x01\0" + struct.pack(
        "<HHLL", 0x829A, 5, 0x10000000, 26) + b"\0\0\0\0",
    "exif pointer is a tuple": b"Exif\0\0" + build_tiff([(0x8769, "LONG", [26, 26])]),
    "only the marker": b"Exif\0\0",
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(CORRUPT_PAYLOADS))
def test_embedded_corrupt_never_raises(name):
    data = jpeg_with_app1(CORRUPT_PAYLOADS[name])
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow may refuse the file; the converter counts that
        return
    with image:
        reading = read_embedded_exif(image)
    assert isinstance(reading, ExifReading)
    assert all(isinstance(code, str) and ":" in code for code in reading.problems)
    settings = reading.settings()
    assert settings.exposure_time is None or settings.exposure_time > 0
    if name in ("garbage header", "truncated header"):
        assert reading.problems == ["exif:corrupt"]
    if name in ("exif ifd past the end", "exif ifd loops to ifd0"):
        assert reading.iso == 100  # from IFD0
    if name == "ifd0 next loops":
        assert reading.iso == 400 and reading.problems == []


def test_embedded_parser_exception_is_corrupt():
    class Broken:
        info = {"exif": b"Exif\0\0II*\0"}

        def getexif(self):
            raise struct.error("unpack requires a buffer of 4 bytes")

    assert read_embedded_exif(Broken()).problems == ["exif:corrupt"]

    class BrokenIfd:
        info = {}

        def getexif(self):
            return self

        def __len__(self):
            return 1

        def get(self, tag):
            if tag == 0x8827:
                return (100,)
            return 26 if tag == 0x8769 else None

        def get_ifd(self, tag):
            raise RecursionError("loop")

    reading = read_embedded_exif(BrokenIfd())
    assert reading.iso == 100 and reading.problems == ["exif:corrupt"]


# ---------------------------------------------------------------------------------------------
# 2. Oracle: the real-EXIF corpus against exiftool.

COLUMNS = ("exposure_time_s", "f_number", "iso", "shutter_speed_value_s", "aperture_value_f")

# (path, column) -> why our value legitimately differs from exiftool's. None so far: on every
# file Pillow opens, every value agrees or both sides find it absent or invalid.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


def ours(reading: ExifReading, column: str):
    """Our value in exiftool's unit for a column of exiftool.tsv."""
    if column == "exposure_time_s":
        return reading.exposure_time
    if column == "f_number":
        return reading.f_number
    if column == "iso":
        return reading.iso
    if column == "shutter_speed_value_s":
        return apex_to_exposure_time(reading.shutter_speed_apex)
    return apex_to_f_number(reading.aperture_apex)


def oracle_value(row: dict, column: str):
    """exiftool's value (the first of a list), None when empty or not a number."""
    cell = row[column].strip()
    if not cell:
        return None
    try:
        return float(cell.split()[0])
    except ValueError:
        return None


def oracle_valid(column: str, x) -> bool:
    """The module's validity rules, restated independently, in exiftool's units. exiftool
    prints 0 for an APEX shutter speed |Tv| >= 100."""
    if x is None or not math.isfinite(x):
        return False
    if column == "shutter_speed_value_s":
        return 2.0 ** -40 <= x <= 3600
    if column == "aperture_value_f":
        return 0.5 <= x <= 2.0 ** 16
    if x <= 0 or x == 4294967295:
        return False
    if column == "iso" and x == 65535:
        return False
    return not (column == "exposure_time_s" and x > 3600)


@pytest.fixture(scope="module")
def corpus_rows():
    tsv = CORPUS / "exiftool.tsv"
    if not tsv.is_file():
        pytest.skip(f"real-EXIF corpus not found: expected {tsv} (a checkout of the shared "
                    "corpora next to the repository)")
    with open(tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows and set(COLUMNS) <= set(rows[0])
    return rows


def compare(rows_and_readings):
    """(agreements per column, disagreements) against exiftool."""
    agree = {column: 0 for column in COLUMNS}
    disagree = []
    for row, reading in rows_and_readings:
        for column in COLUMNS:
            expected, got = oracle_value(row, column), ours(reading, column)
            if oracle_valid(column, expected):
                ok = close(got, expected)
            else:
                ok = got is None
            if ok:
                agree[column] += oracle_valid(column, expected)
            elif (row["path"], column) not in KNOWN_DIFFERENCES:
                disagree.append((row["path"], column, expected, got, reading.problems))
    return agree, disagree


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_oracle_embedded(corpus_rows):
    pairs, unopenable = [], 0
    for row in corpus_rows:
        try:
            image = Image.open(CORPUS / row["path"])
        except Exception:  # noqa: BLE001 - not an image Pillow reads: the converter skips it
            unopenable += 1
            continue
        with image:
            reading = read_embedded_exif(image)  # must never raise
        pairs.append((row, reading))
    agree, disagree = compare(pairs)
    with_values = sum(any(oracle_valid(c, oracle_value(r, c)) for c in COLUMNS) for r, _ in pairs)
    print(f"\nreal-exif oracle: {len(pairs)} files opened ({unopenable} not), {with_values} with "
          f"settings; agreeing valid values per field: {agree}")
    assert disagree == []
    assert len(pairs) >= 250 and with_values >= 140
    assert agree["exposure_time_s"] >= 130 and agree["f_number"] >= 130 and agree["iso"] >= 100
    assert agree["shutter_speed_value_s"] >= 60 and agree["aperture_value_f"] >= 60
    # Corpus files whose EXIF Pillow cannot parse are reported, not raised.
    problems = {row["path"]: reading.problems for row, reading in pairs}
    assert problems["Pillow/Tests/images/invalid-exif.jpg"] == ["exif:corrupt"]
    assert problems["Pillow/Tests/images/hopper.jpg"] == ["exif:absent"]


def first_exif_app1(data: bytes):
    """The payload of the first APP1 ``Exif`` segment of JPEG bytes, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):
            return None
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        payload = data[pos + 4:pos + 2 + length]
        if length < 2 or len(payload) != length - 2:
            return None
        if marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            return payload
        pos += 2 + length
    return None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_oracle_exif_of_unopenable_files(corpus_rows):
    """Files Pillow cannot open (EXIF segments without picture data) still test the parser:
    their EXIF segment is moved into a small valid JPEG."""
    pairs = []
    for row in corpus_rows:
        path = CORPUS / row["path"]
        try:
            Image.open(path).close()
            continue
        except Exception:  # noqa: BLE001
            pass
        payload = first_exif_app1(path.read_bytes()[:1 << 20])
        if payload is None:
            continue
        reading = read_jpeg_bytes(jpeg_with_app1(payload))  # must never raise
        if "JPEG format error" in row["exiftool_warning"] + row["exiftool_error"]:
            continue  # exiftool gave up on the file before its EXIF: no oracle
        pairs.append((row, reading))
    agree, disagree = compare(pairs)
    print(f"\nreal-exif transplanted: {len(pairs)} files; agreeing valid values: {agree}")
    assert disagree == []
    assert len(pairs) >= 5


# ---------------------------------------------------------------------------------------------
# 3. MIRFLICKR-style text built from the oracle's values.

def _text_kwargs(row):
    kwargs = {}
    for column, name in (("exposure_time_s", "exposure_time"), ("f_number", "f_number")):
        value = oracle_value(row, column)
        if value is not None:
            kwargs[name] = value
    cells = row["iso"].split()
    if cells:
        kwargs["iso"] = ", ".join(cells) if len(cells) > 1 else float(cells[0])
    seconds = oracle_value(row, "shutter_speed_value_s")
    if seconds is not None and seconds > 0:
        kwargs["shutter_apex"] = -math.log2(seconds)
    f_apex = oracle_value(row, "aperture_value_f")
    if f_apex is not None and f_apex > 0:
        kwargs["aperture_apex"] = 2 * math.log2(f_apex)
    return kwargs


@pytest.mark.parametrize("form", ["clean", "raw"])
def test_text_round_trip_from_oracle(corpus_rows, form):
    formatter = fx.format_clean_text if form == "clean" else fx.format_raw_text
    pairs, checked = [], 0
    for row in corpus_rows:
        kwargs = _text_kwargs(row)
        if not kwargs:
            continue
        text = formatter(**kwargs, extra_lines=("-Make", row["make"] or "Unknown"))
        for variant in ("auto", form):
            reading = parse_exif_text(text, variant=variant)
            pairs.append((row, reading))
            # Every value the oracle has and the rules reject is counted in problems.
            for column, field in (("exposure_time_s", "exposure_time"), ("f_number", "f_number"),
                                  ("iso", "iso")):
                value = oracle_value(row, column)
                if value is not None and not oracle_valid(column, value):
                    assert any(code.startswith(field + ":") for code in reading.problems), (
                        row["path"], text, reading)
            if len(row["iso"].split()) > 1:
                assert "iso:multiple" in reading.problems
        checked += 1
    agree, disagree = compare(pairs)
    assert disagree == []
    assert checked >= 140 and agree["exposure_time_s"] >= 2 * 130
