"""Decompression bombs for tests: a few hundred bytes whose header claims a huge image.

A real JPEG/PNG header (a valid SOF0 segment, a valid IHDR chunk with its CRC) followed by almost
no image data: what a header check must refuse, and what a decoder would allocate
width x height x 3 bytes for before finding out that the data is missing.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def jpeg_header_bomb(width: int, height: int) -> bytes:
    """An 8x8 baseline JPEG whose SOF0 header is rewritten to say ``width`` x ``height``."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")   # marker, length (2 bytes), precision (1), height, width
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (8-bit RGB), with one tiny IDAT."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
