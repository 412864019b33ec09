"""Tiny exports and photos for the page's tests (test_page, test_page_browser, test_page_load):
a joint fine model of the three fields and a binary shutter model, random weights, k = 2 patches of
32 pixels, each exported through exif_keras.serving.exporter with its run folder beside it."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading

import keras
import numpy as np
from PIL import Image, TiffImagePlugin

from exif_keras.common import labels
from exif_keras.modeling import model as model_lib
from exif_keras.modeling import run_folder
from exif_keras.serving import exporter

K, P = 2, 32
# the output layers scaled: peaked probabilities, so that photos with other pixels get other answers
LOGIT_SCALE = {"joint": 3000.0, "binary": 100.0}


def make_run(model_dir: str, kind: str, seed: int = 4) -> None:
    """A run folder as train leaves it: ``kind`` "joint" (fine heads of all fields) or "binary"
    (the shutter's fast/slow head)."""
    heads = (labels.task_specs("all", "fine") if kind == "joint"
             else [labels.task_spec("shutter", "binary")])
    flat = {"field": "all", "task": "fine"} if kind == "joint" else {"field": "shutter",
                                                                     "task": "binary"}
    config = model_lib.ModelConfig(
        heads=tuple(model_lib.HeadConfig(h.name, h.num_classes) for h in heads), num_patches=K,
        patch_size=P, backbone="scratch", backbone_weights=None, filters=4, dense_units=8)
    run_folder.save_model_config(config, model_dir)
    run_folder.save_run_config(run_folder.run_config(heads, flat), model_dir)
    keras.utils.set_random_seed(seed)
    model = model_lib.build_model(config)
    for layer in model.layers:
        if layer.name.endswith("_logits"):
            layer.kernel.assign(layer.kernel * LOGIT_SCALE[kind])
    model.save_weights(os.path.join(model_dir, run_folder.BEST_WEIGHTS))


def make_export(root: str, kind: str) -> str:
    """root/runs/<kind> and its export root/models/exif_<kind>/1; returns the export folder."""
    run_dir = os.path.join(root, "runs", kind)
    os.makedirs(run_dir)
    make_run(run_dir, kind)
    export_dir = os.path.join(root, "models", f"exif_{kind}")
    exporter.export_model(run_dir, export_dir, write_config=False)
    return export_dir


def textured(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 3 % 256, xx * 5 % 256, (yy + xx) % 256], axis=-1)
    return np.clip(base + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)


def exif_block(exposure=(1, 250), f_number=(56, 10), iso=400) -> Image.Exif:
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x829A] = TiffImagePlugin.IFDRational(*exposure)
    ifd[0x829D] = TiffImagePlugin.IFDRational(*f_number)
    ifd[0x8827] = iso
    return exif


def photos(seed: int = 0, size=(48, 64)) -> dict[str, bytes]:
    """The four kinds of file the page must answer as predict does: an RGB JPEG with EXIF, a
    greyscale JPEG, a CMYK JPEG (EXIF too) and an RGBA PNG."""
    rgb = Image.fromarray(textured(*size, seed))
    out = {}
    for name, image, fmt, kwargs in (
            ("rgb.jpg", rgb, "JPEG", {"quality": 90, "exif": exif_block()}),
            ("grey.jpg", rgb.convert("L"), "JPEG", {"quality": 90}),
            ("cmyk.jpg", rgb.convert("CMYK"), "JPEG",
             {"quality": 90, "exif": exif_block((1, 30), (28, 10), 1600)}),
            ("rgba.png", rgb.convert("RGBA"), "PNG", {})):
        if image.mode == "RGBA":
            alpha = np.asarray(image).copy()
            alpha[..., 3] = np.linspace(40, 255, size[1], dtype=np.uint8)[None, :]
            image = Image.fromarray(alpha, "RGBA")
        buf = io.BytesIO()
        image.save(buf, fmt, **kwargs)
        out[name] = buf.getvalue()
    return out


def write(folder: str, files: dict[str, bytes]) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(folder, name)
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(blocks):
    """The page on a free loopback port for the duration; yields its URL."""
    from exif_keras.analysis import page as page_lib

    port = free_port()
    page_lib.launch(blocks, "127.0.0.1", port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


class BatchRecorder:
    """Wraps Page.answer_batch to record the size of every model batch."""

    def __init__(self, page):
        self.sizes, self._lock, self._inner = [], threading.Lock(), page.answer_batch
        page.answer_batch = self

    def __call__(self, items):
        with self._lock:
            self.sizes.append(len(items))
        return self._inner(items)


def as_predict_line(page, answer) -> str:
    """The page's answer for a fine or joint export written the way ``predict`` prints a photo
    (after its path): the page shows predict's numbers iff this equals predict's line."""
    from exif_keras.analysis import page as page_lib

    headers = page.headers
    cell = {h: i for i, h in enumerate(headers)}
    exif_col, error_col = cell[page_lib.ESTIMATE_HEADERS[2]], cell[page_lib.ESTIMATE_HEADERS[3]]
    parts, exif = [], []
    for row in answer.rows:
        text = row[1]
        if page_lib.RANGE_HEADER in cell and row[cell[page_lib.RANGE_HEADER]] != "-":
            text += f" ({row[cell[page_lib.RANGE_HEADER]]})"
        parts.append(text)
        if row[exif_col] != "no EXIF":
            item = f"{row[exif_col]}: {row[0]} {row[error_col]}"
            if page_lib.INSIDE_HEADER in cell and row[cell[page_lib.INSIDE_HEADER]] != "-":
                item += f", {row[cell[page_lib.INSIDE_HEADER]]}"
            exif.append(item)
    line = "  ".join(parts)
    if exif:
        line += "  | EXIF " + ", ".join(exif)
    verdict = [p for p in answer.headline.split("\n\n") if p.startswith("the photo's EXIF: ")]
    if verdict:
        line += "  | " + verdict[0][len("the photo's EXIF: "):]
    return line
