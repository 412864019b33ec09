r"""Look inside a trained model (the paper's figure 6):
python -m exif_keras.explain --model_dir=runs/<run> PHOTO [PHOTO ...] [--output_dir=explain/]

Writes one PNG per photo (``<output_dir>/<photo name>.png``) with

* the photo, its k evaluation patches outlined (the grid of evaluation and serving), each
  labelled with that patch's own prediction, and the whole photo's prediction in the title;
* the patch that speaks most for the photo's predicted class (the highest per-patch probability
  of that class), enlarged;
* the activations of the first convolution after the trunk (``head_conv1`` of the ``head``
  sub-model: the paper's "first non-VGG convolutional layer", figure 6 (c)) on that patch, one
  small map per filter (``--layer`` picks another layer of the head, e.g. ``head_relu1``).

The per-patch predictions and the rest: ``exif_keras/analysis/explainer.py``. Files that cannot
be read or decoded are reported on stderr with the reason and skipped; the exit status is
then 1 (2 for usage errors).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags

from exif_keras.analysis import explainer

# allow_override on the names other commands define too (train, export, make_records): a run
# loads one command, but the tests import them all into one process, where the command imported
# last owns the name.
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Run folder of exif_keras.train (model_config.json, run_config.json, best.weights.h5).",
    allow_override=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "explain", "Where the PNGs go.",
                                  allow_override=True)
_FIELD = flags.DEFINE_string("field", None, "The output to explain (default the model's first).",
                             allow_override=True)
_LAYER = flags.DEFINE_string("layer", explainer.DEFAULT_LAYER,
                             "Layer of the head whose activations are drawn.")


def main(argv: Sequence[str]) -> int:
    paths = argv[1:]
    if not _MODEL_DIR.value:
        print("explain: error: --model_dir is required (a training run folder)", file=sys.stderr)
        return 2
    if not paths:
        print("explain: error: give one or more photos (or folders) to explain", file=sys.stderr)
        return 2
    try:
        _, failed = explainer.run(paths, _MODEL_DIR.value, _OUTPUT_DIR.value, _FIELD.value,
                                  _LAYER.value)
    except explainer.ExplainError as e:
        print(f"explain: error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
