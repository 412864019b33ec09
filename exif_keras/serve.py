r"""A page for a person with a photo:
python -m exif_keras.serve --model=models/exif_all [--host=127.0.0.1] [--port=7860]

Starts a Gradio page on http://127.0.0.1:7860 over any export (joint, fine, binary): drop a JPEG or
PNG and see the estimate as a camera writes it, a table beside the photo's own EXIF (error in
stops, as ``predict`` computes it), the class probabilities, and the evidence (the k patches, each
with its own estimate; the figure ``explain`` draws). The evidence needs the training run folder:
the export's ``source_model_dir``, or ``--model_dir``.

The same page answers scripts (``gradio_client``, API name ``/estimate``). It works offline: no
analytics (``GRADIO_ANALYTICS_ENABLED=False``, set here), never a share link, system fonts only.
Requests are queued (``--concurrency``) and batched (``--max_batch_size`` uploads per model call).

The library behind it: ``exif_keras/analysis/page.py``. Needs the ``serve`` extra
(``pip install -e '.[serve]'``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"   # before gradio is imported anywhere

from absl import app, flags  # noqa: E402

from exif_keras.analysis import page as page_lib  # noqa: E402

# allow_override on the names other commands define too (predict, export, explain): a run loads
# one command, but the tests import them all into one process, where the command imported last
# owns the name.
_MODEL = flags.DEFINE_string(
    "model", None, "Exported model folder (models/exif_<field>) or one of its version folders.",
    allow_override=True)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number to write (export) / load (predict, serve); default: the "
    "next one (export), the latest (predict, serve).", allow_override=True)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Training run folder for the evidence (default: the export's "
    "source_model_dir).", allow_override=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (127.0.0.1: this "
                            "machine only; 0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 7860, "Port to listen on.")
_MAX_BATCH_SIZE = flags.DEFINE_integer(
    "max_batch_size", page_lib.DEFAULT_MAX_BATCH_SIZE,
    "Uploads waiting in the queue that one model call takes at most.")
_CONCURRENCY = flags.DEFINE_integer(
    "concurrency", page_lib.DEFAULT_CONCURRENCY, "Model calls (batches) running at once.")
_EXAMPLES = flags.DEFINE_string(
    "examples", os.path.join("data", "sample"),
    "Folder whose first few JPEGs are offered as examples (skipped when absent).")


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        print(f"serve: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if not _MODEL.value:
        print("serve: error: --model is required (e.g. --model=models/exif_shutter)",
              file=sys.stderr)
        return 2
    if _MAX_BATCH_SIZE.value < 1 or _CONCURRENCY.value < 1:
        print("serve: error: --max_batch_size and --concurrency must be at least 1",
              file=sys.stderr)
        return 2
    try:
        page = page_lib.Page(_MODEL.value, _VERSION.value, _MODEL_DIR.value)
    except page_lib.PageError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    blocks = page_lib.build(page, page_lib.sample_examples(_EXAMPLES.value),
                            _MAX_BATCH_SIZE.value, _CONCURRENCY.value)
    logging.getLogger("httpx").setLevel(logging.WARNING)   # gradio's own startup requests
    print(f"serve: {page.predictor.path} on http://{_HOST.value}:{_PORT.value} "
          f"(Ctrl-C stops)", flush=True)
    page_lib.launch(blocks, _HOST.value, _PORT.value)
    return 0


if __name__ == "__main__":
    app.run(main)
