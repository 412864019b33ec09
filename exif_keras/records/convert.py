"""Converts one candidate image into the fields of one record, or a reason to skip it.

This is the converter's per-image work, run in worker processes: read the file once, open it
with Pillow once (header, embedded EXIF, decode), check it, bin its EXIF, and keep the original
JPEG bytes whenever TensorFlow can decode them as they are. It imports no TensorFlow so that the
workers start fast and stay small (`fileio` imports it only to read a path with a scheme, such as
``gs://``).

Every file ends as exactly one `Converted` with ``record`` set, or with ``skip_reason`` set to one
of `SKIP_REASONS`.

Corrupt JPEG data (:func:`jpeg_data_error`): libjpeg decodes a JPEG whose entropy-coded data is
damaged (a flipped bit, a cut) with mere *warnings* ("Corrupt JPEG data: bad Huffman code",
"premature end of data segment", "Premature end of JPEG file") into grey or smeared blocks, and
Pillow and ``tf.io.decode_jpeg`` both accept the result. Each JPEG is therefore decoded once more
with simplejpeg's ``strict=True`` (libjpeg-turbo, every warning an error); stray bytes and
APPn/COM segments of the *header* are left out of that check (they do not touch the pixels, and
real cameras write some), so only the image data decides. See BUILD.md for the measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from typing import Optional

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from exif_keras.common import exif as exif_lib
from exif_keras.common import files, labels
from exif_keras.common.images import DEFAULT_MAX_PIXELS
from exif_keras.records import sources
from exif_keras.records.sources import Item

SKIP_REASONS = {
    "unreadable": "the file could not be read (permissions, I/O error, vanished)",
    "empty_file": "the file has zero bytes",
    "not_an_image": "Pillow does not recognise the bytes as an image",
    "decompression_bomb": "width x height exceeds --max_pixels",
    "corrupt_image": "the image is truncated or its data does not decode",
    "corrupt_jpeg_data": "the JPEG's compressed data has errors (libjpeg: 'Corrupt JPEG data', "
                         "'Premature end of JPEG file'): it would decode to grey or smeared blocks",
    sources.HIDDEN: "in a hidden file or folder (name starting with '.') or a NAS index folder "
                    "(@eaDir): thumbnails and copies; --include_hidden converts them",
    "too_small": "the shorter side is below --min_side",
    "no_label": "no field (shutter, aperture, iso) has a class",
}

# What the converter does when the bytes are not a plain RGB/greyscale JPEG.
CONVERTED_REASONS = {
    "jpeg_cmyk": "a CMYK or YCCK JPEG, re-encoded as RGB",
    "jpeg_other_mode": "a JPEG in a mode other than RGB or L, re-encoded as RGB",
    "not_jpeg": "another format under a JPEG name (PNG, GIF, ...), re-encoded as JPEG",
}

REENCODE_QUALITY = 95
_LEVELS = np.arange(256, dtype=np.float64)
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.9), ("test", 1.0))


def stable_hash(source_id: str) -> int:
    """A 64-bit hash of the image id that never changes between runs, machines or Python versions."""
    return int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big")


def split_of(source_id: str) -> str:
    """80/10/10 split by the image id alone: adding images never moves an old one."""
    fraction = stable_hash(source_id) / 2.0 ** 64
    for split, upper in SPLIT_FRACTIONS:
        if fraction < upper:
            return split
    return "test"


def shard_of(source_id: str, num_shards: int) -> int:
    """Shard within the split, from other bits of the hash than the split."""
    digest = hashlib.sha256(("shard:" + source_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


@dataclasses.dataclass
class Options:
    min_side: int = 128
    max_pixels: int = DEFAULT_MAX_PIXELS
    pixel_stats: bool = True   # accumulate per-channel sums (training split only)
    check_jpeg_data: bool = True  # skip JPEGs whose compressed data has errors (jpeg_data_error)


@dataclasses.dataclass
class Record:
    encoded: bytes
    height: int
    width: int
    exposure_time: Optional[float]
    f_number: Optional[float]
    iso: Optional[float]
    labels: dict
    converted: Optional[str] = None                  # a CONVERTED_REASONS key
    channel_sum: Optional[np.ndarray] = None         # float64 [3]
    channel_sumsq: Optional[np.ndarray] = None       # float64 [3]
    pixels: int = 0


@dataclasses.dataclass
class Converted:
    source_id: str
    path: str
    split: str
    record: Optional[Record] = None
    skip_reason: Optional[str] = None
    detail: str = ""
    problems: tuple = ()          # EXIF problems noticed (exif.ExifReading.problems)
    exif_sources: tuple = ()      # e.g. ("exposure_time", "f_number") or APEX sources used


def _settings_from_text(item: Item) -> tuple[exif_lib.Settings, list[str]]:
    """Reads the item's EXIF text files in order of preference; later ones fill gaps only."""
    problems: list[str] = []
    merged = {"exposure_time": None, "f_number": None, "iso": None,
              "exposure_source": None, "aperture_source": None}
    for variant, path in item.exif_paths:
        reading = exif_lib.read_exif_text_file(path, variant=variant)
        problems.extend(f"{variant}:{p}" if variant in ("clean", "raw") else p
                        for p in reading.problems)
        settings = reading.settings()
        if merged["exposure_time"] is None and settings.exposure_time is not None:
            merged["exposure_time"] = settings.exposure_time
            merged["exposure_source"] = settings.exposure_source
        if merged["f_number"] is None and settings.f_number is not None:
            merged["f_number"] = settings.f_number
            merged["aperture_source"] = settings.aperture_source
        if merged["iso"] is None and settings.iso is not None:
            merged["iso"] = settings.iso
    return exif_lib.Settings(**merged), problems


def _encoded_for_tf(data: bytes, image: Image.Image) -> tuple[bytes, Optional[str]]:
    """The bytes to store: the original when TF decodes them as they are, else one re-encode."""
    fmt = (image.format or "").upper()
    if fmt in ("JPEG", "MPO") and image.mode in ("RGB", "L"):
        return data, None
    if fmt in ("JPEG", "MPO"):
        reason = "jpeg_cmyk" if image.mode in ("CMYK", "YCbCr") else "jpeg_other_mode"
    else:
        reason = "not_jpeg"
    rgb = image.convert("RGB") if image.mode not in ("RGBA", "LA", "PA", "P") else \
        _flatten_alpha(image)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=REENCODE_QUALITY)
    return out.getvalue(), reason


_APP_OR_COM = frozenset(range(0xE0, 0xF0)) | {0xFE}
_SOS = 0xDA
_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}   # RSTn, SOI, EOI, TEM: no length field


def _image_data_only(data: bytes) -> bytes:
    """SOI, the header segments decoding needs (DQT, DHT, SOF, DRI...) and everything from the first
    SOS on: no APPn or COM segment, no stray byte between segments. The original bytes when the
    header cannot be walked (the strict decode then judges them as they are)."""
    if not data.startswith(b"\xff\xd8"):
        return data
    kept, i, n = [b"\xff\xd8"], 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF or data[i + 1] in (0x00, 0xFF):
            i += 1                  # a stray byte, or a fill byte before a marker
            continue
        marker = data[i + 1]
        if marker == _SOS:
            kept.append(data[i:])
            return b"".join(kept)
        if marker in _STANDALONE:
            return data
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end <= i + 3 or end > n:
            return data
        if marker not in _APP_OR_COM:
            kept.append(data[i:end])
        i = end
    return data


def jpeg_data_error(data: bytes, cmyk: bool = False) -> Optional[str]:
    """libjpeg's complaint when the JPEG's image data does not decode cleanly, else None.

    A strict libjpeg-turbo decode (simplejpeg, ``strict=True``: warnings are errors) of the image
    data alone (:func:`_image_data_only`). Greyscale output (CMYK for a 4-component JPEG, which
    libjpeg cannot turn into grey): every component is still entropy-decoded, the colour conversion
    is saved."""
    try:
        simplejpeg.decode_jpeg(_image_data_only(data), colorspace="CMYK" if cmyk else "GRAY",
                               strict=True)
    except Exception as e:  # noqa: BLE001 - ValueError for libjpeg's messages, others on garbage
        return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    return None


def _flatten_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _quiet_pillow() -> None:
    """Pillow warns about corrupt EXIF and malformed MPO files; those are counted, not printed.
    A decompression-bomb warning becomes an error (and a skip reason)."""
    warnings.simplefilter("ignore")
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def convert_item(item: Item, options: Options) -> Converted:
    """Never raises for bad input: every failure becomes a skip reason."""
    split = split_of(item.source_id)
    result = Converted(item.source_id, item.image_path, split)

    def skip(reason: str, detail: str = "") -> Converted:
        result.skip_reason = reason
        result.detail = detail[:200]
        return result

    if item.skip_reason:  # decided when listing (a file in a hidden folder)
        return skip(item.skip_reason)

    # Text EXIF is cheap: bin it first and don't decode images nobody can learn from.
    settings = None
    if not item.embedded_exif:
        settings, problems = _settings_from_text(item)
        result.problems = tuple(problems)
        if all(v < 0 for v in labels.classify_all(
                settings.exposure_time, settings.f_number, settings.iso).values()):
            return skip("no_label", "EXIF text gives no usable shutter, aperture or ISO")

    try:
        data = files.read_bytes(item.image_path)  # a local path, or gs://... through tf.io.gfile
    except OSError as e:
        return skip("unreadable", f"{type(e).__name__}: {e}")
    if not data:
        return skip("empty_file")

    Image.MAX_IMAGE_PIXELS = options.max_pixels
    try:
        with warnings.catch_warnings():
            _quiet_pillow()
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return skip("decompression_bomb", str(e))
    except UnidentifiedImageError:
        # Not str(e): it names the BytesIO object by its address, different on every run.
        return skip("not_an_image", f"Pillow cannot identify the format (first bytes {data[:8]!r})")
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on garbage headers
        return skip("corrupt_image", f"{type(e).__name__}: {e}")

    with image:
        width, height = image.size
        if width * height > options.max_pixels:
            return skip("decompression_bomb", f"{width}x{height} pixels")
        if item.embedded_exif:
            with warnings.catch_warnings():
                _quiet_pillow()
                reading = exif_lib.read_embedded_exif(image)
            result.problems = tuple(reading.problems)
            settings = reading.settings()
            if all(v < 0 for v in labels.classify_all(
                    settings.exposure_time, settings.f_number, settings.iso).values()):
                return skip("no_label", "embedded EXIF gives no usable shutter, aperture or ISO")
        if min(width, height) < options.min_side:
            return skip("too_small", f"{width}x{height} < {options.min_side}")
        try:
            with warnings.catch_warnings():
                _quiet_pillow()
                image.load()
        except Exception as e:  # noqa: BLE001 - truncated, corrupt, unsupported coding
            return skip("corrupt_image", f"{type(e).__name__}: {e}")
        if options.check_jpeg_data and (image.format or "").upper() in ("JPEG", "MPO"):
            error = jpeg_data_error(data, cmyk=image.mode == "CMYK")
            if error:
                return skip("corrupt_jpeg_data", error)
        try:
            encoded, converted = _encoded_for_tf(data, image)
            record = Record(encoded=encoded, height=height, width=width,
                            exposure_time=settings.exposure_time, f_number=settings.f_number,
                            iso=settings.iso,
                            labels=labels.classify_all(settings.exposure_time, settings.f_number,
                                                       settings.iso),
                            converted=converted)
            if options.pixel_stats and split == "train":
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                # Exact sums over every pixel from Pillow's per-channel histogram (C, one pass):
                # a tenth of the cost of summing a float array of the image.
                hist = np.asarray(rgb.histogram(), dtype=np.float64).reshape(3, 256)
                record.channel_sum = hist @ _LEVELS
                record.channel_sumsq = hist @ np.square(_LEVELS)
                record.pixels = width * height
        except Exception as e:  # noqa: BLE001 - a mode Pillow cannot convert
            return skip("corrupt_image", f"{type(e).__name__}: {e}")
    result.record = record
    result.exif_sources = tuple(s for s in (settings.exposure_source, settings.aperture_source) if s)
    return result


def convert_path(args: tuple[Item, Options]) -> Converted:
    """Pool entry point (one picklable argument)."""
    item, options = args
    try:
        return convert_item(item, options)
    except MemoryError:
        result = Converted(item.source_id, item.image_path, split_of(item.source_id))
        result.skip_reason = "decompression_bomb"
        result.detail = "MemoryError while decoding"
        return result

