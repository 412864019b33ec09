r"""Predict from photos with an exported model:
python -m exif_keras.predict --model=models/exif_shutter [--version=N] [--json] PATH...

PATHs are image files or folders (searched recursively for *.jpg, *.jpeg, *.png, any case); a file
named explicitly is tried whatever its extension. The SavedModel (the latest complete version
unless --version) runs in batches through its ``serving_default`` signature, so the predictions
are exactly what TensorFlow Serving answers for the same bytes.

Output, one line per photo::

    photos/a.jpg  fast: 1/250 s or shorter  0.873  | EXIF 1/500 s: fast: 1/250 s or shorter, agrees

The EXIF part appears when the photo carries the field in its own EXIF (read with
:func:`exif_keras.common.exif.read_embedded_exif`, binned with the task's grouping from the export's
``assets.extra/exif_keras.json``); a value that the task leaves out (e.g. 1/125 s for the binary
shutter task) is shown as "not in this task's classes". At the end: how many photos were
predicted and, when some had EXIF, how many predictions agree with it, per class.

``--json`` writes one JSON object per line instead: per photo ``{"path", "class_id",
"class_name", "probability", "probabilities", "exif"}`` (``exif``: null, or ``{"value", "text",
"class_id", "class_name", "agrees"}`` with null class/agrees when the value is outside the
task's classes), then one last line ``{"summary": {...}}``.

A fine or joint model (``models/exif_all``) prints the estimated settings instead, each with
its interval (the shortest run of classes holding the export's ``interval``, 80% by default, of
the calibrated probability; exports made before intervals show none) and beside the photo's own
EXIF value, the error in stops and whether the value lies inside the interval, then the EXIF
consistency verdict (``photo.jpg  1/125 s (1/250-1/30 s)  f/5.6 (f/4-8)  ISO 400 (ISO 200-800)
| EXIF 1/250 s: shutter +1.0 stops, inside  | consistent (score 1.9)``: ``unlikely`` when the
calibrated probability of a claimed value's class is below ``--consistency_threshold``, default
0.05; the score is the sum of -log p over the fields checked). The summary gives per field the
photos with EXIF, the MAE in stops, the MAE of always answering the training split's most
frequent class (the bar an estimate must clear; recorded in exif_keras.json by exports of runs
trained since it was added), the within-one-stop rate, the binary agreement, the share of EXIF
values inside their interval and the claims flagged unlikely. ``--json`` carries each photo's
``estimate.<field>.interval``, ``exif.<field>.in_interval`` and ``consistency``, and the
summary's.

A file that cannot be read or decoded is reported on stderr with the reason and skipped; the
others still run (a batch that fails is retried photo by photo). A photo whose header gives more
pixels than the export's ``max_pixels`` (exif_keras.json; the served model refuses it too) is
skipped the same way, before anything is decoded. The exit status is 1 when any
path failed, 2 for usage errors (no such model, no PATH).

The library behind it: ``exif_keras/serving/predictor.py``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags

from exif_keras.common import stops
from exif_keras.serving import predictor

# allow_override on the names other commands define too (export, train, benchmark): a run loads
# one command, but the tests import them all into one process, where the command imported last
# owns the name.
_MODEL = flags.DEFINE_string(
    "model", None, "Exported model folder (models/exif_<field>) or one of its version folders.")
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number to write (export) / load (predict); default: the next "
    "one (export), the latest (predict).", allow_override=True)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", predictor.DEFAULT_BATCH_SIZE, "Photos per call of the model.",
    allow_override=True)
_JSON = flags.DEFINE_boolean(
    "json", False, "One JSON object per line (photos, then a summary) instead of text.")
_CONSISTENCY_THRESHOLD = flags.DEFINE_float(
    "consistency_threshold", stops.DEFAULT_CONSISTENCY_THRESHOLD,
    "Fine models: a photo's claimed EXIF value whose class has a calibrated probability below "
    "this is flagged unlikely (the consistency check).", lower_bound=1e-9, upper_bound=1.0,
    allow_override=True)


def main(argv: Sequence[str]) -> int:
    if not _MODEL.value:
        print("predict: error: --model is required (e.g. --model=models/exif_shutter)",
              file=sys.stderr)
        return 2
    return predictor.run(list(argv[1:]), _MODEL.value, _VERSION.value, _BATCH_SIZE.value,
                         _JSON.value, consistency_threshold=_CONSISTENCY_THRESHOLD.value)


if __name__ == "__main__":
    app.run(main)
