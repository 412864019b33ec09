"""Predicting from photos with an exported model: everything of ``python -m exif_keras.predict``
but its flags (see that command's docstring for the output).

:class:`Predictor` loads a version folder and runs its ``serving_default`` signature, so the
predictions are exactly what TensorFlow Serving answers for the same bytes; :func:`run` finds the
photos, skips the unreadable ones and those over the export's pixel limit (read from the headers,
as the served model does), reads each photo's own EXIF and prints one line per photo and a
summary: the class and its agreement with the EXIF value for a binary model, the estimated
settings and their error in stops for a fine, regression or joint model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import warnings
from typing import Iterable, Mapping, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf

from exif_keras.common import exif as exif_lib
from exif_keras.common import labels, stops
from exif_keras.common.errors import ServingError
from exif_keras.common.images import DEFAULT_MAX_PIXELS, JPEG_MAGIC, PNG_MAGIC
from exif_keras.modeling import run_folder
from exif_keras.serving import exporter, signature
from exif_keras.training import evaluation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_BATCH_SIZE = 16


class PredictError(ServingError):
    """A usage problem (no model, bad version): printed without a traceback, exit status 2."""


# ------------------------------------------------------------------------------------- the model

def resolve_version_dir(model: str, version: Optional[int] = None) -> str:
    """The version folder to load: ``model/<version>``, the latest complete one, or ``model``
    itself when it is a version folder (holds saved_model.pb)."""
    if not tf.io.gfile.isdir(model):
        raise PredictError(f"model folder {model!r} does not exist (export one with "
                           f"`python -m exif_keras.export --model_dir=runs/<field>`)")
    if version is not None:
        path = os.path.join(model, str(version))
        if not exporter.is_complete_version(path):
            available = [v for v in exporter.version_numbers(model)
                         if exporter.is_complete_version(os.path.join(model, str(v)))]
            raise PredictError(f"no version {version} in {model!r} (available: "
                               f"{', '.join(map(str, available)) or 'none'})")
        return path
    if exporter.is_complete_version(model):
        return model
    path = exporter.latest_version_dir(model)
    if path is None:
        raise PredictError(f"{model!r} holds no exported version (no <number>/saved_model.pb)")
    return path


@dataclasses.dataclass
class Predictor:
    """A loaded export: its serving signature and what assets.extra/exif_keras.json says."""

    path: str
    signature: object
    metadata: dict

    @classmethod
    def load(cls, model: str, version: Optional[int] = None) -> "Predictor":
        path = resolve_version_dir(model, version)
        loaded = tf.saved_model.load(path)
        if signature.SIGNATURE_NAME not in loaded.signatures:
            raise PredictError(f"{path} has no {signature.SIGNATURE_NAME!r} signature")
        metadata = {}
        meta_path = os.path.join(path, exporter.ASSETS_EXTRA, exporter.METADATA_FILENAME)
        if tf.io.gfile.exists(meta_path):
            with tf.io.gfile.GFile(meta_path) as f:
                metadata = json.load(f)
        predictor = cls(path, loaded.signatures[signature.SIGNATURE_NAME], metadata)
        predictor._loaded = loaded  # keeps the variables alive
        return predictor

    @property
    def max_pixels(self) -> int:
        """The export's pixel limit (exif_keras.json), else the converter's default."""
        return int(self.metadata.get("max_pixels", DEFAULT_MAX_PIXELS))

    @property
    def heads(self) -> tuple:
        """The model's heads (labels.TaskSpec) from exif_keras.json (older exports: one)."""
        m = self.metadata
        if m.get("heads"):
            return tuple(run_folder.task_from_json(h) for h in m["heads"])
        if all(k in m for k in ("field", "task", "class_names", "fine_to_target")):
            return (labels.TaskSpec(m["field"], m["task"], tuple(m["class_names"]),
                                    tuple(m["fine_to_target"])),)
        return ()

    @property
    def majority_stops(self) -> dict:
        """{field: the training split's most frequent class, in stops}: the constant answer the
        estimates must beat, for the fine heads whose training class counts the export records."""
        out = {}
        for head in self.metadata.get("heads") or ():
            counts = head.get("train_class_counts")
            if counts and sum(counts) > 0:
                field = head["field"]
                out[field] = float(stops.class_values(field)[stops.majority_class(counts)])
        return out

    @property
    def interval(self) -> Optional[float]:
        """The probability mass of the served intervals (exif_keras.json; None for exports made
        before intervals were served)."""
        value = self.metadata.get("interval")
        return None if value is None else float(value)

    def interval_mass(self, field: str) -> Optional[float]:
        """The mass level of ``field``'s served intervals (exif_keras.json "interval_masses": the
        level calibration fitted so they cover ``interval``), for ``stops.interval_classes`` on
        this export's probabilities; None for exports without intervals."""
        masses = self.metadata.get("interval_masses") or {}
        return float(masses[field]) if field in masses else self.interval

    @property
    def temperatures(self) -> dict:
        """{head: temperature} the export's model applies (exif_keras.json; {} before calibration
        was recorded: T = 1)."""
        return {k: float(v) for k, v in (self.metadata.get("temperatures") or {}).items()}

    @property
    def task(self) -> Optional[labels.TaskSpec]:
        """The one head of a single-field model (None for a joint model or without metadata)."""
        heads = self.heads
        return heads[0] if len(heads) == 1 else None

    def __call__(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Runs the signature on encoded images; raises tf.errors.InvalidArgumentError when one
        of them is not an image or does not decode."""
        out = self.signature(**{signature.INPUT_NAME: tf.constant(list(images), tf.string)})
        return {k: v.numpy() for k, v in out.items()}


# ------------------------------------------------------------------------------------- the files

def find_images(paths: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files, [(path, reason)] for paths that do not exist). Folders are searched
    recursively for IMAGE_EXTENSIONS, in sorted order; files are taken as given."""
    files, errors = [], []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names)
                          if n.lower().endswith(IMAGE_EXTENSIONS)]
            files += found
        elif os.path.exists(path):
            files.append(path)
        else:
            errors.append((path, "no such file or folder"))
    return files, errors


def image_problem(data: bytes) -> Optional[str]:
    """Why these bytes cannot be an input (None when they can): the signature's magic check."""
    if not data:
        return "empty file"
    if not (data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC)):
        return signature.NOT_AN_IMAGE
    return None


_image_sizes = tf.function(signature.image_sizes,
                           input_signature=[tf.TensorSpec([None], tf.string)])


def pixel_problem(data: bytes, max_pixels: int) -> Optional[str]:
    """Why a JPEG or PNG is refused for its size (None when it is not): the served model's pixel
    check on its header, nothing decoded. A header that does not parse is left to the model."""
    try:
        height, width = (int(v) for v in _image_sizes(tf.constant([data]))[0].numpy())
    except tf.errors.InvalidArgumentError:
        return None
    if height * width > max_pixels:
        return signature.TOO_MANY_PIXELS.format(width, height, width * height, max_pixels)
    return None


# ------------------------------------------------------------------------------------------ EXIF

def read_settings(data: bytes) -> Optional[dict]:
    """{"exposure_time", "f_number", "iso"} (None for absent values) of the embedded EXIF, or None
    when the photo has none or Pillow cannot read it. Never raises."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" and the like
            values = _pillow_settings(Image, data)
    except Exception:  # noqa: BLE001 - unreadable EXIF is "no EXIF", never a failure
        return None
    out = {}
    for key, value in values.items():
        try:
            value = None if value is None else float(value)
        except (TypeError, ValueError):
            value = None
        out[key] = value if value is not None and math.isfinite(value) and value > 0 else None
    return out if any(v is not None for v in out.values()) else None


def _pillow_settings(Image, data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        settings = exif_lib.read_embedded_exif(image).settings()
        return {k: getattr(settings, k, None) for k in ("exposure_time", "f_number", "iso")}


def format_value(field: str, value: float) -> str:
    if field == "shutter":
        if value < 1:
            return f"1/{round(1 / value)} s" if round(1 / value) > 1 else f"{value:g} s"
        return f"{value:g} s"
    if field == "aperture":
        return f"f/{value:.2g}" if value < 10 else f"f/{value:.0f}"
    return f"ISO {value:g}"


def exif_truth(task: labels.TaskSpec, settings: Optional[dict]) -> Optional[dict]:
    """The photo's own value of the task's field and its class: {"value", "text", "class_id"}
    (class_id None when the task leaves the value out), or None without that EXIF field."""
    if not settings:
        return None
    value = settings.get(stops.SETTINGS[task.field])
    if value is None:
        return None
    fine = labels.field_spec(task.field).classify(value)
    target = task.target(fine)
    return {"value": value, "text": format_value(task.field, value),
            "class_id": None if target == labels.NO_LABEL else int(target)}


# ------------------------------------------------------------------------------------------- run

@dataclasses.dataclass
class Result:
    path: str
    class_id: int
    class_name: str
    probabilities: list
    exif: Optional[dict]

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.class_id])


def _predict_batch(predictor: Predictor, batch: list[tuple[str, bytes]],
                   failed: list[tuple[str, str]]) -> list[tuple[str, bytes, dict]]:
    """(path, data, outputs of that photo) for each photo of the batch that runs; a failing batch
    is retried photo by photo so one bad file does not take the others down."""
    try:
        out = predictor([data for _, data in batch])
    except tf.errors.InvalidArgumentError as e:
        if len(batch) == 1:
            failed.append((batch[0][0], exporter.first_line(e.message)
                           .replace(f"{signature.INPUT_NAME}[0] has ", "")
                           .replace(f"{signature.INPUT_NAME}[0] ", "")))
            return []
        done = []
        for item in batch:
            done += _predict_batch(predictor, [item], failed)
        return done
    return [(path, data, {k: v[i] for k, v in out.items()})
            for i, (path, data) in enumerate(batch)]


def summarize(results: Sequence[Result], failed: Sequence[tuple[str, str]],
              class_names: Sequence[str]) -> dict:
    with_class = [r for r in results if r.exif and r.exif.get("class_id") is not None]
    per_class = []
    for i, name in enumerate(class_names):
        rows = [r for r in with_class if r.exif["class_id"] == i]
        agree = sum(r.class_id == i for r in rows)
        per_class.append({"class_name": name, "photos": len(rows), "agree": agree,
                          "rate": agree / len(rows) if rows else None})
    agree = sum(r.class_id == r.exif["class_id"] for r in with_class)
    return {
        "photos": len(results),
        "failed": len(failed),
        "with_exif": sum(r.exif is not None for r in results),
        "with_exif_class": len(with_class),
        "agree": agree,
        "agreement": agree / len(with_class) if with_class else None,
        "per_class": per_class,
    }


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_text(summary: dict, field: Optional[str]) -> str:
    lines = [f"{summary['photos']} photo(s) predicted, {summary['failed']} failed."]
    if field and summary["with_exif"]:
        lines.append(f"{summary['with_exif']} with EXIF {field}; {summary['with_exif_class']} of "
                     f"them in this task's classes; the prediction agrees for "
                     f"{summary['agree']} ({_pct(summary['agreement'])}).")
        if summary["with_exif_class"]:
            width = max(len("EXIF class"), *(len(c["class_name"]) for c in summary["per_class"]))
            lines.append(f"  {'EXIF class':<{width}}  photos  agree    rate")
            for c in summary["per_class"]:
                lines.append(f"  {c['class_name']:<{width}}  {c['photos']:>6}  {c['agree']:>5}"
                             f"  {_pct(c['rate']):>6}")
    return "\n".join(lines)


def _line(result: Result, class_names: Sequence[str], as_json: bool) -> str:
    exif = None
    if result.exif is not None:
        cid = result.exif["class_id"]
        exif = {"value": result.exif["value"], "text": result.exif["text"], "class_id": cid,
                "class_name": None if cid is None else class_names[cid],
                "agrees": None if cid is None else cid == result.class_id}
    if as_json:
        return json.dumps({"path": result.path, "class_id": result.class_id,
                           "class_name": result.class_name,
                           "probability": round(result.probability, 6),
                           "probabilities": [round(float(p), 6) for p in result.probabilities],
                           "exif": exif})
    text = f"{result.path}  {result.class_name}  {result.probability:.3f}"
    if exif is not None:
        if exif["class_id"] is None:
            text += f"  | EXIF {exif['text']}: not in this task's classes"
        else:
            text += (f"  | EXIF {exif['text']}: {exif['class_name']}, "
                     f"{'agrees' if exif['agrees'] else 'differs'}")
    return text


# ---------------------------------------------------------------- estimates (fine / joint models)

def interval_of(outputs: Mapping, field: str) -> Optional[dict]:
    """One photo's served interval of ``field``: {"low", "high"} (the field's units, at the class
    edges), "low_class"/"high_class" and "text" (``1/250-1/30 s``); None when the export serves
    no interval for it (a binary or regression head, or an export made before intervals)."""
    low_key = f"{field}_{signature.OUTPUT_LOW}"
    high_key = f"{field}_{signature.OUTPUT_HIGH}"
    if low_key not in outputs or high_key not in outputs:
        return None
    low, high = float(outputs[low_key]), float(outputs[high_key])
    lo, hi = stops.interval_classes_of_values(field, low, high)
    return {"low": low, "high": high, "low_class": lo, "high_class": hi,
            "width_stops": float(hi - lo + 1), "text": stops.interval_text(field, lo, hi)}


def estimate_of(outputs: dict, fields: Sequence[str]) -> dict:
    """{field: {"value", "stops", "text", "interval"}} of one photo's served estimate
    (``interval``: :func:`interval_of`, None where the export serves none)."""
    out = {}
    for field in fields:
        value = float(outputs[stops.SETTINGS[field]])
        s = stops.value_to_stops(value, field)
        out[field] = {"value": value, "stops": s, "text": stops.standard_text(s, field),
                      "interval": interval_of(outputs, field)}
    return out


def consistency(outputs: Mapping, settings: Optional[Mapping], fields: Sequence[str],
                threshold: float = stops.DEFAULT_CONSISTENCY_THRESHOLD) -> Optional[dict]:
    """Is the EXIF a photo claims plausible for its pixels? For each fine field in ``fields``
    whose probabilities the export serves (``<field>_probabilities``) and whose value the photo's
    EXIF (``settings``, as :func:`read_settings`) gives inside the classes: the claimed value, its
    class (``stops.claimed_class``), the calibrated probability of that class and a verdict,
    ``consistent`` or ``unlikely`` (below ``threshold``). Per photo: ``score``, the sum of -log p
    over those fields (0 when all are certain; larger is less plausible), ``verdict``
    (``unlikely`` when any field is) and ``threshold``. None when no field can be checked."""
    probabilities, claimed, values = {}, {}, {}
    for field in fields:
        key = f"{field}_{signature.OUTPUT_PROBABILITIES}"
        value = (settings or {}).get(stops.SETTINGS[field])
        if key not in outputs or value is None:
            continue
        c = stops.claimed_class(field, value)
        p = np.asarray(outputs[key], np.float64)
        if c == labels.NO_LABEL or p.shape != (labels.field_spec(field).num_classes,):
            continue
        probabilities[field], claimed[field], values[field] = p, c, value
    if not claimed:
        return None
    check = stops.consistency(probabilities, claimed, threshold)
    return {
        "fields": {f: {"value": values[f], "text": format_value(f, values[f]),
                       "class_id": claimed[f], "probability": check["probability"][f],
                       "verdict": stops.UNLIKELY if check["unlikely"][f] else stops.CONSISTENT}
                   for f in claimed},
        "score": check["score"],
        "verdict": stops.UNLIKELY if check["unlikely_any"] else stops.CONSISTENT,
        "threshold": float(threshold),
    }


def estimate_truth(field: str, estimate: dict, settings: Optional[dict]) -> Optional[dict]:
    """The photo's own EXIF value of ``field`` beside the estimate: its text, the signed error in
    stops (estimate minus EXIF), and whether the paper's binary group agrees (None when the EXIF
    value is in neither group). None without that EXIF value."""
    value = (settings or {}).get(stops.SETTINGS[field])
    if value is None:
        return None
    error = stops.stop_error(field, estimate["value"], value)
    group = labels.task_spec(field, "binary").target(labels.field_spec(field).classify(value))
    predicted_group = int(estimate["stops"] > evaluation.binary_threshold(field))
    interval = estimate.get("interval")
    return {"value": value, "text": format_value(field, value), "error_stops": error,
            "binary_agrees": None if group == labels.NO_LABEL else predicted_group == group,
            # the EXIF value inside the served interval (None: no interval served)
            "in_interval": None if interval is None else stops.in_interval(
                field, value, interval["low"], interval["high"])}


def estimate_line(path: str, estimate: dict, truth: dict,
                  check: Optional[dict] = None) -> str:
    """``photo.jpg  1/125 s (1/250-1/30 s)  f/5.6 (f/4-8)  ISO 400 (ISO 200-800)  | EXIF 1/250 s:
    shutter +1.0 stops, inside  | consistent (score 1.2)``: the estimates with their intervals
    (where served), the photo's own EXIF with the error and whether it lies in the interval, and
    the consistency verdict (:func:`consistency`, where the photo's EXIF allows one)."""
    text = f"{path}  " + "  ".join(
        e["text"] + (f" ({e['interval']['text']})" if e.get("interval") else "")
        for e in estimate.values())
    known = [(f, t) for f, t in truth.items() if t is not None]
    if known:
        text += "  | EXIF " + ", ".join(
            f"{t['text']}: {stops.format_stop_error(f, t['error_stops'])}"
            + ("" if t.get("in_interval") is None else
               (", inside" if t["in_interval"] else ", outside")) for f, t in known)
    if check is not None:
        text += f"  | {verdict_text(check)}"
    return text


def verdict_text(check: dict) -> str:
    """``unlikely (score 7.2; shutter)``: a photo's consistency check (:func:`consistency`) in
    words, the fields it found unlikely named; what predict prints and the page shows."""
    unlikely = [f for f, c in check["fields"].items() if c["verdict"] == stops.UNLIKELY]
    return (f"{check['verdict']} (score {check['score']:.1f}"
            + (f"; {', '.join(unlikely)}" if unlikely else "") + ")")


def estimate_summary(rows: Sequence[dict], failed: Sequence, fields: Sequence[str],
                     majority_stops: Optional[Mapping[str, float]] = None) -> dict:
    """Per field: photos with that EXIF value, the MAE in stops, the same for always answering
    the training split's most frequent class (``majority_stops``; None where unknown), the
    within-one-stop rate and the binary agreement of the estimates."""
    per_field = {}
    for field in fields:
        truths = [r["exif"][field] for r in rows if r["exif"].get(field)]
        errors = np.array([abs(t["error_stops"]) for t in truths], np.float64)
        binary = [t["binary_agrees"] for t in truths if t["binary_agrees"] is not None]
        constant = (majority_stops or {}).get(field)
        per_field[field] = {
            "with_exif": len(truths),
            "mae_stops": float(errors.mean()) if len(errors) else None,
            "majority_mae_stops": float(np.mean([
                abs(stops.value_to_stops(t["value"], field) - constant) for t in truths]))
            if truths and constant is not None else None,
            "within_one_stop": float(np.mean(errors <= 1.0)) if len(errors) else None,
            "binary_photos": len(binary),
            "binary_agreement": float(np.mean(binary)) if binary else None,
        }
        inside = [t["in_interval"] for t in truths if t.get("in_interval") is not None]
        checked = [r["consistency"]["fields"][field] for r in rows
                   if r.get("consistency") and field in r["consistency"]["fields"]]
        per_field[field].update(
            interval_photos=len(inside),
            interval_coverage=float(np.mean(inside)) if inside else None,
            checked=len(checked),
            unlikely=sum(c["verdict"] == stops.UNLIKELY for c in checked))
    checked = [r["consistency"] for r in rows if r.get("consistency")]
    return {"photos": len(rows), "failed": len(failed), "fields": per_field,
            "consistency": {"checked": len(checked),
                            "unlikely": sum(c["verdict"] == stops.UNLIKELY for c in checked),
                            "threshold": checked[0]["threshold"] if checked else None}}


def estimate_summary_text(summary: dict) -> str:
    lines = [f"{summary['photos']} photo(s) predicted, {summary['failed']} failed."]
    rows = [[field, s["with_exif"], s["mae_stops"], s["majority_mae_stops"],
             _pct(s["within_one_stop"]), f"{_pct(s['binary_agreement'])} of {s['binary_photos']}"]
            for field, s in summary["fields"].items() if s["with_exif"]]
    if rows:
        lines.append(evaluation.format_table(
            rows, ["field", "with EXIF", "MAE stops", "majority MAE", "within 1 stop",
                   "binary agrees"]))
    rows = [[field, f"{_pct(s.get('interval_coverage'))} of {s.get('interval_photos', 0)}",
             f"{s.get('unlikely', 0)} of {s.get('checked', 0)}"]
            for field, s in summary["fields"].items()
            if s.get("interval_photos") or s.get("checked")]
    if rows:
        lines.append(evaluation.format_table(
            rows, ["field", "EXIF inside the interval", "EXIF unlikely"]))
    check = summary.get("consistency") or {}
    if check.get("checked"):
        lines.append(f"consistency: {check['unlikely']} of {check['checked']} photo(s) with EXIF "
                     f"flagged unlikely (a claimed class below probability {check['threshold']:g})"
                     f".")
    return "\n".join(lines)


def run(paths: Sequence[str], model: str, version: Optional[int] = None,
        batch_size: int = DEFAULT_BATCH_SIZE, as_json: bool = False,
        out: Optional[TextIO] = None, err: Optional[TextIO] = None,
        consistency_threshold: float = stops.DEFAULT_CONSISTENCY_THRESHOLD) -> int:
    """The CLI without flags: prints results to ``out`` and failures to ``err``; returns the exit
    status (0 all predicted, 1 some path failed, 2 usage error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not paths:
        print("predict: error: no PATH given (image files or folders)", file=err)
        return 2
    if batch_size < 1:
        print("predict: error: --batch_size must be at least 1", file=err)
        return 2
    if not 0.0 < consistency_threshold <= 1.0:
        print("predict: error: --consistency_threshold must be in (0, 1]", file=err)
        return 2
    try:
        predictor = Predictor.load(model, version)
    except PredictError as e:
        print(f"predict: error: {e}", file=err)
        return 2
    heads = predictor.heads
    if heads and not signature.plain_signature(heads):
        return _run_estimates(predictor, paths, batch_size, as_json, out, err,
                              consistency_threshold)
    task = predictor.task
    class_names = (list(task.class_names) if task else predictor.metadata.get("class_names"))

    failed: list[tuple[str, str]] = []
    results: list[Result] = []
    for path, data, outputs in _predictions(predictor, paths, batch_size, failed, err):
        cid = int(outputs[signature.OUTPUT_CLASS_IDS])
        truth = exif_truth(task, read_settings(data)) if task else None
        result = Result(path, cid, _decode(outputs[signature.OUTPUT_CLASS_NAMES]),
                        outputs[signature.OUTPUT_PROBABILITIES].tolist(), truth)
        results.append(result)
        print(_line(result, class_names or [], as_json), file=out, flush=True)

    summary = summarize(results, failed, class_names or [])
    if as_json:
        print(json.dumps({"summary": summary}), file=out)
    else:
        print(summary_text(summary, task.field if task else None), file=out)
    return 1 if failed else 0


def _predictions(predictor: Predictor, paths: Sequence[str], batch_size: int,
                 failed: list, err: TextIO):
    """(path, bytes, outputs of that photo) for every photo under ``paths`` that the model
    answers, in order; every other path is appended to ``failed`` and reported on ``err``."""

    def report(path, reason, skipped=True):
        failed.append((path, reason))
        print(f"{path}: {'skipped: ' if skipped else ''}{reason}", file=err)

    for batch in _read_inputs(paths, batch_size, report, predictor.max_pixels):
        batch_failed: list[tuple[str, str]] = []
        yield from _predict_batch(predictor, batch, batch_failed)
        for path, reason in batch_failed:
            report(path, reason)


def _read_inputs(paths: Sequence[str], batch_size: int, report, max_pixels: int):
    """Batches [(path, bytes)] of the readable images under ``paths`` (within the export's pixel
    limit, read from the headers); the others reported."""
    files, missing = find_images(paths)
    for path, reason in missing:
        report(path, reason, skipped=False)
    batch = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            report(path, f"cannot read: {e.strerror or e}")
            continue
        problem = image_problem(data) or pixel_problem(data, max_pixels)
        if problem:
            report(path, problem)
            continue
        batch.append((path, data))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_estimates(predictor: Predictor, paths, batch_size, as_json, out, err,
                   consistency_threshold: float = stops.DEFAULT_CONSISTENCY_THRESHOLD) -> int:
    """predict for fine, regression and joint models: the estimated settings per photo with
    their intervals, each beside the file's own EXIF value, the error in stops and whether the
    value lies in the interval, and the EXIF consistency verdict."""
    heads = predictor.heads
    fields = [h.field for h in heads if h.task in ("fine", "regression")]
    classes = [h for h in heads if h.task == "binary"]
    failed, rows = [], []
    for path, data, outputs in _predictions(predictor, paths, batch_size, failed, err):
        estimate = estimate_of(outputs, fields)
        settings = read_settings(data)
        truth = {f: estimate_truth(f, estimate[f], settings) for f in fields}
        check = consistency(outputs, settings, [h.field for h in heads if h.task == "fine"],
                            consistency_threshold)
        row = {"path": path, "estimate": estimate, "exif": truth, "consistency": check,
               "classes": {h.field: _decode(outputs[f"{h.field}_{signature.OUTPUT_CLASS_NAMES}"])
                           for h in classes}}
        if signature.OUTPUT_EXIF_TEXT in outputs:
            row["exif_text"] = _decode(outputs[signature.OUTPUT_EXIF_TEXT])
        if signature.OUTPUT_EXIF_RANGE_TEXT in outputs:
            row["exif_range_text"] = _decode(outputs[signature.OUTPUT_EXIF_RANGE_TEXT])
        rows.append(row)
        line = (json.dumps(row) if as_json else
                estimate_line(path, estimate, truth, check) + "".join(
                    f"  [{f}: {c}]" for f, c in row["classes"].items()))
        print(line, file=out, flush=True)
    summary = estimate_summary(rows, failed, fields, predictor.majority_stops)
    print(json.dumps({"summary": summary}) if as_json else estimate_summary_text(summary),
          file=out)
    return 1 if failed else 0


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
