"""What the tool accepts as a photo, declared once for the converter (records) and serving.

Both stages refuse a decompression bomb by its header before decoding it, with the same default
limit (``make_records --max_pixels`` and ``export --max_pixels``), and serving recognises a JPEG
or PNG by its first bytes. The converter imports no TensorFlow, so neither does this module.
"""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 64_000_000   # --max_pixels of make_records and export (decompression bombs)

JPEG_MAGIC = b"\xff\xd8\xff"          # what tf.io.is_jpeg checks
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
