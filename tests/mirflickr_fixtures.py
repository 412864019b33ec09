"""Writers of MIRFLICKR-style EXIF text files, for tests.

MIRFLICKR ships two forms per image: ``meta/exif/exif<N>.txt`` ("clean", values formatted for
people) and ``meta/exif_raw/exif<N>.txt`` ("raw", EXIF-native numbers); two lines per tag, a label
line ``-Label`` and a value line. These writers produce those forms for chosen settings:

=================  ==========================  =============================
parameter          clean                       raw
=================  ==========================  =============================
exposure_time (s)  ``-Exposure``               ``-Exposure``
                   ``0.008 sec (1/125)``       ``1/125``
f_number           ``-Aperture`` ``f/8.0``     ``-Aperture`` ``80/10``
iso                ``-ISO Speed`` ``400``      ``-ISO Speed`` ``400``
shutter_apex (Tv)  ``-Shutter Speed``          ``-Shutter Speed`` ``189/32``
                   ``1/125 sec`` (2**-Tv)
aperture_apex (Av) second ``-Aperture``        second ``-Aperture`` ``130/32``
                   ``f/4.1`` (2**(Av/2))
=================  ==========================  =============================

A value given as a ``str`` is written verbatim (for dirty values: ``"May be 400"``, ``"Error"``).
When ``aperture_apex`` is given without ``f_number`` it is written under ``-Aperture Value``: a
single ``-Aperture`` would be read as the f-number. ``extra_lines`` are written, verbatim, after
the settings (e.g. ``("-Camera", "Canon EOS 400D DIGITAL")``). Files end with a newline.
"""

from __future__ import annotations

import math
import pathlib
from fractions import Fraction
from typing import Iterable, Optional, Union

Value = Optional[Union[float, int, str]]


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _significant(x: float, digits: int = 4) -> str:
    """``x`` with ``digits`` significant digits, positional (no exponent), no trailing zeros."""
    if x == 0 or not math.isfinite(x):
        return repr(float(x))
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _reciprocal(t: float) -> Optional[int]:
    """n when t is 1/n (t < 1), else None."""
    if not (0 < t < 1):
        return None
    n = round(1.0 / t)
    return n if n > 0 and _close(n * t, 1.0) else None


def _rational(x: float, denominator: Optional[int] = None) -> str:
    """An EXIF-style rational ``num/den``; with ``denominator`` when it is exact."""
    if denominator is not None and _close(x * denominator, round(x * denominator)):
        return f"{round(x * denominator)}/{denominator}"
    fraction = Fraction(x).limit_denominator(1_000_000)
    return f"{fraction.numerator}/{fraction.denominator}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _f_text(n: float) -> str:
    if _close(n * 10, round(n * 10)):
        return f"f/{n:.1f}"
    return "f/" + _significant(n)


def clean_exposure_value(t: float) -> str:
    """``0.008 sec (1/125)``, ``2 sec``, ``0.004572 sec``."""
    n = _reciprocal(t)
    if n is not None:
        decimal = f"{t:.3f}".rstrip("0").rstrip(".")
        if decimal in ("", "0"):
            decimal = _significant(t, 1)
        return f"{decimal} sec (1/{n})"
    return f"{_significant(t)} sec"


def clean_shutter_value(t: float) -> str:
    """``1/125 sec``, ``2 sec``, ``0.01668 sec``."""
    n = _reciprocal(t)
    return f"1/{n} sec" if n is not None else f"{_significant(t)} sec"


def raw_exposure_value(t: float) -> str:
    n = _reciprocal(t)
    return f"1/{n}" if n is not None else _rational(t, 1)


def _lines(pairs: Iterable[tuple[str, str]], extra_lines: Iterable[str]) -> str:
    out = []
    for label, value in pairs:
        out.extend((label, value))
    out.extend(extra_lines)
    return "\n".join(out) + "\n"


def _pick(value: Value, formatter) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return formatter(float(value))


def format_clean_text(exposure_time: Value = None, f_number: Value = None, iso: Value = None,
                      shutter_apex: Value = None, aperture_apex: Value = None,
                      extra_lines: Iterable[str] = ()) -> str:
    """The text of a clean (meta/exif) file."""
    pairs = []
    for label, value, formatter in (
            ("-Exposure", exposure_time, clean_exposure_value),
            ("-Aperture", f_number, _f_text),
            ("-ISO Speed", iso, _number),
            ("-Shutter Speed", shutter_apex, lambda tv: clean_shutter_value(2.0 ** -tv)),
            ("-Aperture" if f_number is not None else "-Aperture Value", aperture_apex,
             lambda av: _f_text(2.0 ** (av / 2.0)))):
        text = _pick(value, formatter)
        if text is not None:
            pairs.append((label, text))
    return _lines(pairs, extra_lines)


def format_raw_text(exposure_time: Value = None, f_number: Value = None, iso: Value = None,
                    shutter_apex: Value = None, aperture_apex: Value = None,
                    extra_lines: Iterable[str] = ()) -> str:
    """The text of a raw (meta/exif_raw) file."""
    pairs = []
    for label, value, formatter in (
            ("-Exposure", exposure_time, raw_exposure_value),
            ("-Aperture", f_number, lambda n: _rational(n, 10)),
            ("-ISO Speed", iso, _number),
            ("-Shutter Speed", shutter_apex, lambda tv: _rational(tv, 32)),
            ("-Aperture" if f_number is not None else "-Aperture Value", aperture_apex,
             lambda av: _rational(av, 32))):
        text = _pick(value, formatter)
        if text is not None:
            pairs.append((label, text))
    return _lines(pairs, extra_lines)


def _write(path, text: str) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def write_clean_exif(path, exposure_time: Value = None, f_number: Value = None,
                     iso: Value = None, shutter_apex: Value = None, aperture_apex: Value = None,
                     extra_lines: Iterable[str] = ()) -> pathlib.Path:
    """Writes a clean MIRFLICKR EXIF file (parent folders created); returns its path."""
    return _write(path, format_clean_text(exposure_time, f_number, iso, shutter_apex,
                                          aperture_apex, extra_lines))


def write_raw_exif(path, exposure_time: Value = None, f_number: Value = None,
                   iso: Value = None, shutter_apex: Value = None, aperture_apex: Value = None,
                   extra_lines: Iterable[str] = ()) -> pathlib.Path:
    """Writes a raw MIRFLICKR EXIF file (parent folders created); returns its path."""
    return _write(path, format_raw_text(exposure_time, f_number, iso, shutter_apex,
                                        aperture_apex, extra_lines))
