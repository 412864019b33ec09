"""Camera settings (exposure time, f-number, ISO) from MIRFLICKR EXIF text files and embedded EXIF.

Two sources, one result type. `ExifReading` holds what a source says, field by field, after the
validity rules below (an invalid value is stored as ``None``, and the reason goes to ``problems``);
`ExifReading.settings()` turns it into the normalised `Settings` the converter bins with
`exif_keras.common.labels`. Nothing here raises on bad *content*: every oddity becomes a
machine-readable code in ``problems`` so the converter can count it.

Fields
------
``exposure_time`` (ExposureTime, s), ``f_number`` (FNumber), ``iso`` (ISOSpeedRatings /
PhotographicSensitivity), ``shutter_speed_apex`` (ShutterSpeedValue, APEX Tv: t = 2**-Tv) and
``aperture_apex`` (ApertureValue, APEX Av: N = 2**(Av/2)). `settings()` prefers ExposureTime over
the APEX shutter speed and FNumber over the APEX aperture; APEX is used only when the other field is
absent or invalid, and ``exposure_source`` / ``aperture_source`` say which one was used.

Validity rules (the same for text files and embedded EXIF)
----------------------------------------------------------
``<field>`` is the `ExifReading` attribute a code is about; one value can get two codes (``May be
0``: ``iso:uncertain`` and ``iso:sentinel``).

* empty value line: no value, ``<field>:empty``.
* unparseable text (``Error``, ``n/a``, ``Auto``, ``f/``): no value, ``<field>:dirty``.
* not a number: a rational with zero denominator (``1/0``, ``0/0``, and Pillow's
  IFDRational(x, 0), which is nan), ``inf``, ``nan``: no value, ``<field>:invalid``.
* negative exposure time, f-number or ISO: no value, ``<field>:invalid`` (APEX Tv and Av may be
  negative: Tv = -3 is 8 s).
* 0 and 4294967295 (0xFFFFFFFF) for exposure time, f-number (``f/0.0``) and ISO, and 65535 for
  ISO: what firmware writes for "unknown", no value, ``<field>:sentinel``. For embedded EXIF an
  ISO that is absent or rejected falls back to ISOSpeed (0x8833), then RecommendedExposureIndex
  (0x8832): EXIF 2.3 writes 65535 in PhotographicSensitivity when the value is there.
  APEX 0 is kept (Tv 0 = 1 s, Av 0 = f/1).
* exposure time over 3600 s (also as Tv < -log2 3600): not a real exposure, ``<field>:sentinel``.
* Tv over 40 (under 1e-12 s) or Av outside [-2, 32] (f/0.5 ... f/65536): ``<field>:invalid``.
* ``May be 400`` (also ``maybe``, ``approx.``, ``about``, ``~``): the number is used,
  ``<field>:uncertain``.
* a list, ``100, 100`` / ``200 0`` in text or a tuple in EXIF: the first value is used and judged
  on its own; ``<field>:multiple`` only if the values differ. A comma after one or two leading
  digits groups thousands instead (``1,600``, ``12,800``); ``100,200`` is a list.
* the same field twice (duplicate labels, ``-F-Number`` and ``-Aperture``): the first valid value
  is kept; ``<field>:conflict`` only if a later valid value differs.

File and container codes: ``text:empty`` (nothing but white space), ``text:missing`` (no such
file), ``text:unreadable`` (any other OS error), ``text:truncated`` (over 4 MiB, the rest
ignored), ``exif:absent`` (no EXIF, or a valid empty one), ``exif:corrupt`` (Pillow failed on the
EXIF structure or read no tag from bytes that are no valid TIFF structure; whatever could still be
read is kept).

MIRFLICKR text files
--------------------
Two lines per tag: a label line ``-Label`` (a dash, then a letter) and a value line. Labels are
matched case-insensitively ignoring spaces and punctuation; unknown labels (``-Camera``,
``-Exposure Bias``, ``-Maximum Lens Aperture``, ``-Max Aperture Value``, ...) are skipped. Blank
lines are skipped; a label followed by another label or by the end of the file has an empty value.
A value may itself begin with a dash when it is a negative number (``-3/1``). CRLF, a BOM, trailing
spaces and undecodable bytes (replaced) are tolerated.

Labels: exposure time ``Exposure``, ``Exposure Time``; APEX shutter ``Shutter Speed``, ``Shutter
Speed Value``; f-number ``F-Number``, ``FNumber``, ``F Number`` and the *first* ``Aperture``; APEX
aperture ``Aperture Value`` and the *second* (and any later) ``Aperture``; ISO ``ISO Speed``,
``ISO``, ``ISO Speed Ratings``, ``Photographic Sensitivity``.

Value forms: numbers, rationals (``1/60``, ``80/10``, ``189/32``), clean forms ``0.008 sec
(1/125)`` (the parenthesised value is used when it is a valid number, else the decimal), ``1/125
sec``, ``2 sec``, ``f/8.0``, ``ISO 400``.

Clean versus raw (what a ``Shutter Speed`` / second ``Aperture`` value means):

* A unit in the value always decides: a value with ``sec`` (or ``2s``, ``2"``) is a time in
  seconds, a value with ``f/`` (or ``f8``) is an f-number; either is converted to APEX for
  ``shutter_speed_apex`` / ``aperture_apex`` (Tv = -log2 t, Av = 2 log2 N).
* A bare number (``1/125``, ``189/32``, ``4.0``) is the converted quantity (a time, an f-number) in
  the ``"clean"`` variant, and the EXIF-native APEX value (Tv, Av) in the ``"raw"`` variant.
* ``"auto"`` picks ``"clean"`` when any value of an exposure, shutter speed or aperture label
  contains ``sec`` or ``f/``, or the ``Focal Length`` value contains ``mm``; else ``"raw"``.

Exposure and f-number labels (``Exposure``, first ``Aperture``, ``F-Number``) always hold a time /
an f-number, in both variants. A single ``-Aperture`` is read as the f-number even if the camera
wrote only ApertureValue: the text gives no way to tell.

Embedded EXIF (Pillow)
----------------------
`read_embedded_exif` reads the Exif sub-IFD (0x8769) of ``image.getexif()`` and falls back to IFD0
for a tag absent there. Any exception from Pillow while parsing is caught and reported as
``exif:corrupt``. Pillow itself may emit ``UserWarning`` ("Possibly corrupt EXIF data") for tags it
skips; callers that want silence filter those warnings.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from typing import Any, Iterable, Optional

from exif_keras.common import files

FIELDS = ("exposure_time", "f_number", "iso", "shutter_speed_apex", "aperture_apex")
VARIANTS = ("auto", "clean", "raw")

MAX_EXPOSURE_S = 3600.0
MAX_TV = 40.0              # 2**-40 s ~ 1e-12 s
MIN_AV, MAX_AV = -2.0, 32.0
ALL_ONES_32 = 4294967295.0
MAX_TEXT_BYTES = 4 << 20
MAX_EXIF_BYTES = 16 << 20

# EXIF tags.
TAG_EXIF_IFD = 0x8769
TAG_EXPOSURE_TIME = 0x829A
TAG_F_NUMBER = 0x829D
TAG_ISO = 0x8827                 # ISOSpeedRatings, called PhotographicSensitivity since EXIF 2.3
TAG_RECOMMENDED_EXPOSURE_INDEX = 0x8832
TAG_ISO_SPEED = 0x8833
TAG_SHUTTER_SPEED_VALUE = 0x9201
TAG_APERTURE_VALUE = 0x9202


@dataclasses.dataclass(frozen=True)
class Settings:
    """Normalised camera settings: seconds, f-number, ISO; ``None`` when unknown."""

    exposure_time: Optional[float]
    f_number: Optional[float]
    iso: Optional[float]
    exposure_source: Optional[str]  # "exposure_time" | "shutter_speed_apex" | None
    aperture_source: Optional[str]  # "f_number" | "aperture_apex" | None


@dataclasses.dataclass
class ExifReading:
    """What one source says; invalid values are ``None`` with their reason in ``problems``."""

    exposure_time: Optional[float] = None        # ExposureTime, seconds
    f_number: Optional[float] = None             # FNumber
    iso: Optional[float] = None                  # ISOSpeedRatings / PhotographicSensitivity
    shutter_speed_apex: Optional[float] = None   # ShutterSpeedValue Tv (APEX): t = 2**-Tv
    aperture_apex: Optional[float] = None        # ApertureValue Av (APEX): N = 2**(Av/2)
    problems: list[str] = dataclasses.field(default_factory=list)

    def add_problem(self, code: str) -> None:
        if code not in self.problems:
            self.problems.append(code)

    def settings(self) -> Settings:
        exposure, exposure_source = _valid_or_none(self.exposure_time, "exposure_time"), None
        if exposure is not None:
            exposure_source = "exposure_time"
        else:
            exposure = apex_to_exposure_time(self.shutter_speed_apex)
            if exposure is not None:
                exposure_source = "shutter_speed_apex"
        f_number, aperture_source = _valid_or_none(self.f_number, "f_number"), None
        if f_number is not None:
            aperture_source = "f_number"
        else:
            f_number = apex_to_f_number(self.aperture_apex)
            if f_number is not None:
                aperture_source = "aperture_apex"
        return Settings(exposure_time=exposure, f_number=f_number,
                        iso=_valid_or_none(self.iso, "iso"),
                        exposure_source=exposure_source, aperture_source=aperture_source)


# ---------------------------------------------------------------------------------------------
# Validity and APEX conversions.

def _check(value: Optional[float], kind: str) -> Optional[str]:
    """The problem suffix ('invalid', 'sentinel') of a value of ``kind``, or None when valid.

    ``kind`` is a field name; 'shutter_speed_apex' and 'aperture_apex' mean the APEX values.
    """
    if value is None:
        return None
    if not math.isfinite(value):
        return "invalid"
    if kind == "shutter_speed_apex":
        if value > MAX_TV:
            return "invalid"
        if value < -math.log2(MAX_EXPOSURE_S):
            return "sentinel"
        return None
    if kind == "aperture_apex":
        return None if MIN_AV <= value <= MAX_AV else "invalid"
    if value < 0:
        return "invalid"
    if value == 0 or value == ALL_ONES_32:
        return "sentinel"
    if kind == "iso" and value == 65535:
        return "sentinel"
    if kind == "exposure_time" and value > MAX_EXPOSURE_S:
        return "sentinel"
    return None


def _valid_or_none(value: Optional[float], kind: str) -> Optional[float]:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if _check(value, kind) else value


def apex_to_exposure_time(tv: Optional[float]) -> Optional[float]:
    """Exposure time in seconds of an APEX shutter speed value Tv (2**-Tv), None if invalid."""
    tv = _valid_or_none(tv, "shutter_speed_apex")
    return None if tv is None else 2.0 ** -tv


def apex_to_f_number(av: Optional[float]) -> Optional[float]:
    """F-number of an APEX aperture value Av (2**(Av/2)), None if invalid."""
    av = _valid_or_none(av, "aperture_apex")
    return None if av is None else 2.0 ** (av / 2.0)


def exposure_time_to_apex(seconds: float) -> float:
    return -math.log2(seconds)


def f_number_to_apex(f_number: float) -> float:
    return 2.0 * math.log2(f_number)


# ---------------------------------------------------------------------------------------------
# Parsing one value.

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_NUM_RE = re.compile(rf"^{_NUM}$")
_RATIONAL_RE = re.compile(rf"^({_NUM})/({_NUM})$")
_NONFINITE_RE = re.compile(r"^([+-]?)(?:inf|infinity|nan)$")
_THOUSANDS_RE = re.compile(r"^[+]?\d{1,2}(?:,\d{3})+(?:\.\d*)?$")
_UNCERTAIN_RE = re.compile(r"^(?:may\s*be|maybe|approx(?:imately|\.)?|about|around|ca\.|~|≈)\s*")
_PAREN_RE = re.compile(r"^(.*?)\s*\(([^()]*)\)$")
_TIME_UNIT_RE = re.compile(r"\s*(?:seconds?|secs?|s|\"|'')$")
_F_PREFIX_RE = re.compile(r"^f\s*/?\s*(?=[\d.+-])")
_ISO_PREFIX_RE = re.compile(r"^iso\s*:?\s*")
_APEX_UNIT_RE = re.compile(r"\s*(?:ev|apex)$")
_HAS_TIME_UNIT_RE = re.compile(r"sec|\d\s*s$|\d\s*s\s*\(|\d\s*\"")
_HAS_F_UNIT_RE = re.compile(r"^\s*(?:(?:may\s*be|maybe|~)\s*)?f\s*/?\s*[\d.]")


def _scalar(token: str) -> Optional[float]:
    """A number, a rational (x/0 -> nan) or inf/nan; None when ``token`` is none of these."""
    if _NUM_RE.match(token):
        return float(token)
    match = _RATIONAL_RE.match(token)
    if match:
        numerator, denominator = float(match.group(1)), float(match.group(2))
        if denominator == 0:
            return math.nan
        try:
            return numerator / denominator
        except OverflowError:
            return math.inf
    if _NONFINITE_RE.match(token):
        if "nan" in token:
            return math.nan
        return -math.inf if token.startswith("-") else math.inf
    return None


def _number_list(text: str) -> Optional[list[float]]:
    text = text.strip()
    if not text:
        return None
    if _THOUSANDS_RE.match(text):
        return [float(text.replace(",", ""))]
    text = re.sub(r"\s*/\s*", "/", text)
    tokens = [token for token in re.split(r"[,;\s]+", text) if token]
    if not tokens:
        return None
    values = [_scalar(token) for token in tokens]
    if any(value is None for value in values):
        return None
    return values  # type: ignore[return-value]


def _differ(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return not (math.isnan(a) and math.isnan(b))
    return abs(a - b) > 1e-6 * max(abs(a), abs(b))


def _parse_value(text: str, unit: str) -> tuple[Optional[float], list[str]]:
    """Parses a value in ``unit`` ('time', 'fnumber', 'iso', 'apex'): (number, flags).

    Flags: 'empty', 'dirty' (then the number is None), 'uncertain', 'multiple'. The number is not
    checked for validity here.
    """
    flags: list[str] = []
    s = text.replace("\u2212", "-").replace("\u00a0", " ").strip().lower()
    if not s:
        return None, ["empty"]
    match = _UNCERTAIN_RE.match(s)
    if match and match.end() < len(s):
        flags.append("uncertain")
        s = s[match.end():].strip()
    candidates = [s]
    if unit == "time":
        match = _PAREN_RE.match(s)
        if match:
            candidates = [match.group(2).strip(), match.group(1).strip()]
        candidates = [_TIME_UNIT_RE.sub("", c).strip() for c in candidates]
    elif unit == "fnumber":
        candidates = [_F_PREFIX_RE.sub("", s)]
    elif unit == "iso":
        candidates = [_ISO_PREFIX_RE.sub("", s)]
    elif unit == "apex":
        candidates = [_APEX_UNIT_RE.sub("", s)]
    fallback = None
    for candidate in candidates:
        values = _number_list(candidate)
        if not values:
            continue
        if len(values) > 1 and any(_differ(values[0], v) for v in values[1:]):
            result_flags = flags + ["multiple"]
        else:
            result_flags = flags
        if math.isfinite(values[0]) and values[0] > 0 or len(candidates) == 1:
            return values[0], result_flags
        if fallback is None:
            fallback = (values[0], result_flags)
    if fallback is not None:
        return fallback
    return None, flags + ["dirty"]


class _Collector:
    """Fills the fields of an ExifReading: first valid value wins, problems recorded."""

    def __init__(self, reading: ExifReading):
        self.reading = reading

    def offer(self, field: str, value: Optional[float], flags: Iterable[str] = (),
              check_as: Optional[str] = None, convert=None) -> bool:
        """Offers ``value`` for ``field``; ``check_as`` the kind it is checked as before
        ``convert`` (e.g. a time checked as exposure_time, then turned into Tv). True if taken."""
        for flag in flags:
            self.reading.add_problem(f"{field}:{flag}")
        if value is None:
            return False
        problem = _check(value, check_as or field)
        if problem is None and convert is not None:
            try:
                value = convert(value)
            except (ValueError, OverflowError):
                problem = "invalid"
            else:
                problem = _check(value, field)
        if problem is not None:
            self.reading.add_problem(f"{field}:{problem}")
            return False
        current = getattr(self.reading, field)
        if current is None:
            setattr(self.reading, field, float(value))
            return True
        if _differ(current, value):
            self.reading.add_problem(f"{field}:conflict")
        return False


# ---------------------------------------------------------------------------------------------
# MIRFLICKR text files.

_LABELS = {
    "exposure": "exposure", "exposuretime": "exposure",
    "shutterspeed": "shutter", "shutterspeedvalue": "shutter",
    "aperture": "aperture",
    "fnumber": "fnumber",
    "aperturevalue": "aperture_value",
    "iso": "iso", "isospeed": "iso", "isospeedratings": "iso", "isospeedrating": "iso",
    "photographicsensitivity": "iso",
    "focallength": "focal_length",
}
_LABEL_LINE_RE = re.compile(r"^-\s*[^\W\d_]")
_NONFINITE_VALUE_RE = re.compile(r"^-\s*(?:inf|infinity|nan)\s*$", re.IGNORECASE)


def _label_key(line: str) -> str:
    return re.sub(r"[\W_]+", "", line.lstrip("-").lower())


def _pairs(text: str) -> list[tuple[str, Optional[str]]]:
    """(normalised label, value or None) pairs, in file order."""
    pairs: list[tuple[str, Optional[str]]] = []
    pending: Optional[str] = None
    for raw_line in text.replace("\ufeff", "").splitlines():
        line = raw_line.strip()
        if not line:
            continue
        is_label = bool(_LABEL_LINE_RE.match(line))
        if is_label and pending is not None and _NONFINITE_VALUE_RE.match(line):
            is_label = False
        if is_label:
            if pending is not None:
                pairs.append((pending, None))
            pending = _label_key(line)
        elif pending is not None:
            pairs.append((pending, line))
            pending = None
        # else: a line that belongs to no label (a multi-line value): ignored.
    if pending is not None:
        pairs.append((pending, None))
    return pairs


def _looks_clean(pairs: list[tuple[str, Optional[str]]]) -> bool:
    for label, value in pairs:
        kind = _LABELS.get(label)
        if value is None or kind is None:
            continue
        lowered = value.lower()
        if kind == "focal_length":
            if "mm" in lowered:
                return True
        elif kind != "iso" and ("sec" in lowered or "f/" in lowered):
            return True
    return False


def parse_exif_text(text: str, variant: str = "auto") -> ExifReading:
    """Parses the text of a MIRFLICKR EXIF file (see the module docstring for the rules)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    reading = ExifReading()
    if text is None or not text.replace("\ufeff", "").strip():
        reading.add_problem("text:empty")
        return reading
    pairs = _pairs(text)
    if variant == "auto":
        variant = "clean" if _looks_clean(pairs) else "raw"
    clean = variant == "clean"
    out = _Collector(reading)
    apertures_seen = 0
    for label, value in pairs:
        kind = _LABELS.get(label)
        if kind is None or kind == "focal_length":
            continue
        value = value if value is not None else ""
        if kind == "exposure":
            number, flags = _parse_value(value, "time")
            out.offer("exposure_time", number, flags)
        elif kind == "iso":
            number, flags = _parse_value(value, "iso")
            out.offer("iso", number, flags)
        elif kind == "fnumber" or (kind == "aperture" and apertures_seen == 0):
            if kind == "aperture":
                apertures_seen += 1
            number, flags = _parse_value(value, "fnumber")
            out.offer("f_number", number, flags)
        elif kind in ("aperture", "aperture_value"):
            if kind == "aperture":
                apertures_seen += 1
            if clean or _HAS_F_UNIT_RE.match(value.lower()):
                number, flags = _parse_value(value, "fnumber")
                out.offer("aperture_apex", number, flags, check_as="f_number",
                          convert=f_number_to_apex)
            else:
                number, flags = _parse_value(value, "apex")
                out.offer("aperture_apex", number, flags)
        elif kind == "shutter":
            if clean or _HAS_TIME_UNIT_RE.search(value.lower()):
                number, flags = _parse_value(value, "time")
                out.offer("shutter_speed_apex", number, flags, check_as="exposure_time",
                          convert=exposure_time_to_apex)
            else:
                number, flags = _parse_value(value, "apex")
                out.offer("shutter_speed_apex", number, flags)
    return reading


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8", errors="replace")


def read_exif_text_file(path: Any, variant: str = "auto") -> ExifReading:
    """Reads and parses a MIRFLICKR EXIF text file; never raises for a bad or missing file."""
    try:
        data = files.read_bytes(path, MAX_TEXT_BYTES + 1)  # local, or gs://... via tf.io.gfile
    except (FileNotFoundError, NotADirectoryError):
        return ExifReading(problems=["text:missing"])
    except (OSError, TypeError, ValueError):
        return ExifReading(problems=["text:unreadable"])
    truncated = len(data) > MAX_TEXT_BYTES
    reading = parse_exif_text(_decode(data[:MAX_TEXT_BYTES]), variant)
    if truncated:
        reading.add_problem("text:truncated")
    return reading


# ---------------------------------------------------------------------------------------------
# EXIF embedded in an image (Pillow).

def _exif_scalar(value: Any) -> Optional[float]:
    """A float of one Pillow EXIF number (IFDRational with zero denominator -> nan)."""
    if isinstance(value, (str, bytes, bytearray)):
        return None
    denominator = getattr(value, "denominator", None)
    numerator = getattr(value, "numerator", None)
    if denominator is not None and numerator is not None:
        try:
            if denominator == 0:
                return math.nan
            return float(numerator) / float(denominator)
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _exif_value(value: Any, unit: str) -> tuple[Optional[float], list[str]]:
    """(number, flags) of a Pillow EXIF value: a number, a rational, a tuple of them or text."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:256]).split(b"\0", 1)[0].decode("ascii", errors="replace")
    if isinstance(value, str):
        return _parse_value(value[:256], unit)
    if isinstance(value, (tuple, list)):
        items = list(value[:64])
        if not items:
            return None, ["empty"]
        numbers = [_exif_scalar(item) for item in items]
        if numbers[0] is None:
            return None, ["dirty"]
        others = [n for n in numbers[1:] if n is not None]
        flags = ["multiple"] if any(_differ(numbers[0], n) for n in others) else []
        return numbers[0], flags
    number = _exif_scalar(value)
    return (None, ["dirty"]) if number is None else (number, [])


def _broken_tiff(raw: Any) -> bool:
    """Whether EXIF bytes that gave Pillow no tag are broken, rather than a valid empty IFD0."""
    if not isinstance(raw, (bytes, bytearray)):
        return False
    data = re.sub(b"^(?:Exif\x00\x00)+", b"", bytes(raw))
    if not data:
        return False
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return True
    try:
        (offset,) = struct.unpack_from(order + "L", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
    except struct.error:
        return True
    return count != 0


def read_embedded_exif(image: Any) -> ExifReading:
    """Reads the camera settings from the EXIF of an opened PIL image; never raises."""
    reading = ExifReading()
    try:
        info = getattr(image, "info", None) or {}
        raw = info.get("exif")
        if isinstance(raw, (bytes, bytearray)) and len(raw) > MAX_EXIF_BYTES:
            reading.add_problem("exif:corrupt")
            return reading
        exif = image.getexif()
        ifd0_size = len(exif)
    except Exception:  # noqa: BLE001 - any failure of Pillow's parser means broken EXIF
        reading.add_problem("exif:corrupt")
        return reading
    try:
        # Asked even when IFD0 shows no pointer: Pillow may hold it aside (Exif.hide_offsets).
        exif_ifd = exif.get_ifd(TAG_EXIF_IFD) or {}
    except Exception:  # noqa: BLE001
        reading.add_problem("exif:corrupt")
        exif_ifd = {}
    if ifd0_size == 0 and not exif_ifd:
        if not reading.problems:
            reading.add_problem("exif:corrupt" if _broken_tiff(raw) else "exif:absent")
        return reading
    ifds: list[Any] = [exif_ifd, exif]  # IFD0 last: some cameras put the settings there

    def values_of(tag: int) -> list[Any]:
        found = []
        for ifd in ifds:
            try:
                value = ifd.get(tag)
            except Exception:  # noqa: BLE001
                reading.add_problem("exif:corrupt")
                continue
            if value is not None:
                found.append(value)
        return found

    def read_field(field: str, tags: tuple[int, ...], unit: str) -> None:
        """The first valid value among the tags' values; problems of the one used, or of all."""
        problems: list[str] = []
        for tag in tags:
            for value in values_of(tag):
                number, flags = _exif_value(value, unit)
                candidate = ExifReading()
                taken = _Collector(candidate).offer(field, number, flags)
                if taken:
                    setattr(reading, field, getattr(candidate, field))
                    for code in candidate.problems:
                        reading.add_problem(code)
                    return
                problems.extend(candidate.problems)
        for code in problems:
            reading.add_problem(code)

    read_field("exposure_time", (TAG_EXPOSURE_TIME,), "time")
    read_field("f_number", (TAG_F_NUMBER,), "fnumber")
    read_field("iso", (TAG_ISO, TAG_ISO_SPEED, TAG_RECOMMENDED_EXPOSURE_INDEX), "iso")
    read_field("shutter_speed_apex", (TAG_SHUTTER_SPEED_VALUE,), "apex")
    read_field("aperture_apex", (TAG_APERTURE_VALUE,), "apex")
    return reading
