"""Reading the converter's inputs from a local folder or from any file system TensorFlow knows.

A path with a scheme (``gs://bucket/photos``, ``hdfs://...``, ``s3://`` with tensorflow-io,
TensorFlow's in-memory ``ram://``) is listed and read through ``tf.io.gfile``; a plain path
through Python's own functions (``os.walk``, ``os.scandir``, ``open``), exactly as before.

Why not ``tf.io.gfile`` for local paths too (it reads them): `convert` runs in the local runner's
worker processes, which import no TensorFlow so that they start fast and stay small; importing it
takes a process from about 35 MB to about 590 MB of memory and seconds of start-up (see BUILD.md).
TensorFlow is therefore imported only when a path with a scheme is read. Both kinds give the same
listing and the same bytes (tests/test_gfile_inputs.py converts one folder from disk and from
``ram://`` and compares the records).

Errors of ``tf.io.gfile`` are raised as Python's: ``NotFoundError`` as `FileNotFoundError`,
``PermissionDeniedError`` as `PermissionError`, any other as `OSError`, so callers handle a
missing or unreadable file the same way whatever its file system.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

FILE, FOLDER, OTHER = "file", "folder", "other"


def is_remote(path) -> bool:
    """A path with a scheme (``gs://``, ``ram://``, ...): read through ``tf.io.gfile``."""
    return "://" in os.fspath(path)


def _gfile():
    import tensorflow as tf  # only for paths with a scheme: the workers stay TensorFlow-free
    return tf


def _os_error(error: Exception, path: str) -> OSError:
    """A ``tf.errors.OpError`` as the matching Python error."""
    tf = _gfile()
    message = f"{path}: {getattr(error, 'message', '') or type(error).__name__} (tf.io.gfile)"
    if isinstance(error, tf.errors.NotFoundError):
        return FileNotFoundError(message)
    if isinstance(error, tf.errors.PermissionDeniedError):
        return PermissionError(message)
    return OSError(message)


def isdir(path: str) -> bool:
    """Whether ``path`` is a folder (False when it does not exist or cannot be read)."""
    if is_remote(path):
        return _gfile().io.gfile.isdir(path)
    return os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names in folder ``path`` (folders without a trailing '/'), in no particular order."""
    if not is_remote(path):
        return os.listdir(path)
    tf = _gfile()
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    except tf.errors.OpError as e:
        raise _os_error(e, path) from e


def entries(folder: str) -> list[tuple[str, str, str]]:
    """``(name, path, kind)`` of everything directly in ``folder``; kind is `FILE`, `FOLDER` or
    `OTHER` (a local dangling link, socket, ...). Raises `OSError` when ``folder`` cannot be
    listed."""
    if not is_remote(folder):
        with os.scandir(folder) as found:
            return [(e.name, e.path, FILE if e.is_file() else FOLDER if e.is_dir() else OTHER)
                    for e in found]
    out = []
    for name in listdir(folder):
        path = os.path.join(folder, name)
        out.append((name, path, FOLDER if isdir(path) else FILE))
    return out


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top)``, top-down: the caller may sort or prune ``dirs`` in place. A folder that
    cannot be listed is passed over, as ``os.walk`` does."""
    if not is_remote(top):
        yield from os.walk(top)
        return
    try:
        found = entries(top)
    except OSError:
        return
    dirs = [name for name, _, kind in found if kind == FOLDER]
    files = [name for name, _, kind in found if kind != FOLDER]
    yield top, dirs, files
    for name in dirs:
        yield from walk(os.path.join(top, name))


def relpath(path: str, start: str) -> str:
    """``path`` relative to folder ``start``, with '/' separators."""
    if not is_remote(path):
        return os.path.relpath(path, start).replace(os.sep, "/")
    prefix = start.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not under {start!r}")
    return path[len(prefix):]


def read_bytes(path, limit: Optional[int] = None) -> bytes:
    """The file's bytes (at most ``limit``). Raises `OSError` (`FileNotFoundError`,
    `PermissionError`, ...) when it cannot be read."""
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    tf = _gfile()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except tf.errors.OpError as e:
        raise _os_error(e, path) from e


# Writing: through a temporary name and a rename, so a killed run leaves the old file or the new
# one, never half of one. The temporary name is ``<path>.tmp-<pid>`` (the converter's cleanup,
# `exif_keras.records.writer._TEMP_NAME`, matches it). Paths with a scheme go through
# ``tf.io.gfile``; plain paths through ``open`` and ``os.replace`` (no TensorFlow import).


def temp_path(path) -> str:
    """The temporary name `write_bytes_atomic` writes ``path`` under: ``<path>.tmp-<pid>``."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}"


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through ``<path>.tmp-<pid>`` and a rename (replacing ``path``).
    Raises `OSError` when it cannot be written."""
    path = os.fspath(path)
    tmp = temp_path(path)
    if not is_remote(path):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    tf = _gfile()
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except tf.errors.OpError as e:
        raise _os_error(e, path) from e


def write_text_atomic(path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, as `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, indent: Optional[int] = 2) -> None:
    """Writes ``obj`` as JSON (``indent``, keys in their order, a final newline) atomically."""
    import json

    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
