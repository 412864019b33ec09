"""Where the converter's images and EXIF come from: MIRFLICKR-25k, MIRFLICKR-1M, or any photo folder.

Each layout is turned into a sorted list of `Item`s (one per candidate image), so the converter
never needs to know about folder structures:

* ``mirflickr25k``: ``im<N>.jpg`` in ``input_dir``, Flickr's "clean" EXIF text in
  ``meta/exif/exif<N>.txt`` and the "raw" EXIF text in ``meta/exif_raw/exif<N>.txt``.
* ``mirflickr1m``: ``images/<N // 10000>/<N>.jpg`` and ``exif/<N // 10000>/<N>.txt``.
* ``photos``: any folder tree of JPEGs; the EXIF embedded in each file is read.

Hidden files and folders (a name starting with ``.``: ``.thumbnails``, ``.photoprism``, ``.git``)
and NAS index folders (``@eaDir``) hold thumbnails and copies of the archive's photos: converted,
they would put near-duplicates of one photo into different splits. Their JPEGs become items whose
``skip_reason`` is ``"hidden"`` (counted and listed like every other skip) unless
``include_hidden=True`` (``--include_hidden``).

``input_dir`` may be a local folder or any path ``tf.io.gfile`` reads (``gs://bucket/photos``):
every listing goes through `exif_keras.common.files`, which reads local paths with ``os`` as before.
"""

from __future__ import annotations

import dataclasses
import os
import re

from exif_keras.common import files
from exif_keras.common.errors import RecordsError

LAYOUTS = ("auto", "mirflickr25k", "mirflickr1m", "photos")
EXIF_VARIANTS = ("auto", "clean", "raw")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")

_IM25K = re.compile(r"^im(\d+)\.jpe?g$", re.IGNORECASE)
_IM1M = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
NAS_INDEX_FOLDERS = ("@eaDir",)   # Synology's thumbnail/index folders, one per photo folder
HIDDEN = "hidden"                  # the skip reason of items in hidden files or folders


class SourceError(RecordsError):
    """The input folder is not what the chosen layout expects."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One candidate image and where its EXIF is to be read from."""

    source_id: str                  # MIRFLICKR number as text, or path relative to input_dir
    image_path: str
    exif_paths: tuple[tuple[str, str], ...] = ()  # (variant, path) in order of preference
    embedded_exif: bool = False     # read the EXIF embedded in the JPEG (photos layout)
    skip_reason: str = ""           # set when listing already decides the skip (HIDDEN)


def is_hidden(name: str) -> bool:
    """A hidden file or folder (name starting with '.') or a NAS index folder (@eaDir)."""
    return name.startswith(".") or name in NAS_INDEX_FOLDERS


def _hidden_items(folder: str, input_dir: str) -> list[Item]:
    """Every JPEG-named file under a hidden ``folder``, as items skipped as HIDDEN."""
    items = []
    for root, dirs, names in files.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if name.lower().endswith(JPEG_SUFFIXES):
                items.append(_hidden_item(os.path.join(root, name), input_dir))
    return items


def _hidden_item(path: str, input_dir: str) -> Item:
    return Item(files.relpath(path, input_dir), path, (), skip_reason=HIDDEN)


def _has_im25k(input_dir: str) -> bool:
    try:
        return any(_IM25K.match(name) and kind == files.FILE
                   for name, _, kind in files.entries(input_dir))
    except OSError:
        return False


def detect_layout(input_dir: str) -> str:
    """Recognises mirflickr25k, mirflickr1m or falls back to photos."""
    if not files.isdir(input_dir):
        raise SourceError(f"--input_dir {input_dir!r} is not a directory")
    if files.isdir(os.path.join(input_dir, "meta", "exif")) or files.isdir(
            os.path.join(input_dir, "meta", "exif_raw")):
        if _has_im25k(input_dir):
            return "mirflickr25k"
    if files.isdir(os.path.join(input_dir, "images")) and files.isdir(
            os.path.join(input_dir, "exif")):
        return "mirflickr1m"
    # Anything else, im<N>.jpg without meta/ included, is read as photos with embedded EXIF.
    return "photos"


def _mirflickr25k_items(input_dir: str, exif_variant: str) -> list[Item]:
    clean_dir = os.path.join(input_dir, "meta", "exif")
    raw_dir = os.path.join(input_dir, "meta", "exif_raw")
    if exif_variant == "clean" and not files.isdir(clean_dir):
        raise SourceError(f"--exif_variant=clean but {clean_dir} does not exist")
    if exif_variant == "raw" and not files.isdir(raw_dir):
        raise SourceError(f"--exif_variant=raw but {raw_dir} does not exist")
    variants = {"clean": ("clean",), "raw": ("raw",), "auto": ("clean", "raw")}[exif_variant]
    items = []
    for name, path, kind in files.entries(input_dir):
        match = _IM25K.match(name)
        if not match or kind != files.FILE:
            continue
        number = int(match.group(1))
        paths = []
        for variant in variants:
            folder = clean_dir if variant == "clean" else raw_dir
            paths.append((variant, os.path.join(folder, f"exif{number}.txt")))
        items.append(Item(str(number), path, tuple(paths)))
    items.sort(key=lambda item: int(item.source_id))
    return items


def _mirflickr1m_items(input_dir: str, exif_variant: str,
                       include_hidden: bool = False) -> list[Item]:
    images_dir = os.path.join(input_dir, "images")
    exif_dir = os.path.join(input_dir, "exif")
    variant = "auto" if exif_variant == "auto" else exif_variant
    items, hidden = [], []
    for bucket in sorted(files.listdir(images_dir)):
        bucket_dir = os.path.join(images_dir, bucket)
        if not files.isdir(bucket_dir):
            continue
        if not include_hidden and is_hidden(bucket):
            hidden.extend(_hidden_items(bucket_dir, input_dir))
            continue
        for name, path, kind in files.entries(bucket_dir):
            if not include_hidden and kind == files.FOLDER and is_hidden(name):
                hidden.extend(_hidden_items(path, input_dir))
                continue
            match = _IM1M.match(name)
            if not match or kind != files.FILE:
                continue
            number = int(match.group(1))
            exif_path = os.path.join(exif_dir, str(number // 10000), f"{number}.txt")
            items.append(Item(str(number), path, ((variant, exif_path),)))
    items.sort(key=lambda item: int(item.source_id))
    return items + sorted(hidden, key=lambda item: item.source_id)


def _photo_items(input_dir: str, include_hidden: bool = False) -> list[Item]:
    items = []
    for root, dirs, names in files.walk(input_dir):
        dirs.sort()
        if not include_hidden:
            for name in [d for d in dirs if is_hidden(d)]:
                dirs.remove(name)
                items.extend(_hidden_items(os.path.join(root, name), input_dir))
        for name in sorted(names):
            if name.lower().endswith(JPEG_SUFFIXES):
                path = os.path.join(root, name)
                if not include_hidden and is_hidden(name):
                    items.append(_hidden_item(path, input_dir))
                    continue
                items.append(Item(files.relpath(path, input_dir), path, (), embedded_exif=True))
    items.sort(key=lambda item: item.source_id)
    return items


def list_items(input_dir: str, layout: str = "auto", exif_variant: str = "auto",
               include_hidden: bool = False) -> tuple[str, list[Item]]:
    """Returns (resolved layout, items sorted by source id). Items in hidden files or folders
    come with ``skip_reason=HIDDEN`` unless ``include_hidden``."""
    if layout not in LAYOUTS:
        raise SourceError(f"unknown --layout={layout!r}; expected one of {', '.join(LAYOUTS)}")
    if exif_variant not in EXIF_VARIANTS:
        raise SourceError(
            f"unknown --exif_variant={exif_variant!r}; expected one of {', '.join(EXIF_VARIANTS)}")
    if not files.isdir(input_dir):
        raise SourceError(f"--input_dir {input_dir!r} is not a directory")
    if layout == "auto":
        layout = detect_layout(input_dir)
    if layout == "mirflickr25k":
        items = _mirflickr25k_items(input_dir, exif_variant)
    elif layout == "mirflickr1m":
        for sub in ("images", "exif"):
            if not files.isdir(os.path.join(input_dir, sub)):
                raise SourceError(
                    f"--layout=mirflickr1m expects {os.path.join(input_dir, sub)} to exist")
        items = _mirflickr1m_items(input_dir, exif_variant, include_hidden)
    else:
        items = _photo_items(input_dir, include_hidden)
    if not any(not item.skip_reason for item in items):
        hidden = sum(item.skip_reason == HIDDEN for item in items)
        raise SourceError(f"no images found in {input_dir!r} for layout {layout}" + (
            f" ({hidden} in hidden or @eaDir folders, skipped; --include_hidden converts them)"
            if hidden else ""))
    return layout, items
