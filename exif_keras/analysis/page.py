r"""The page of ``python -m exif_keras.serve``: drop a photo, see how it was taken and why.

A Gradio ``gr.Blocks`` page over one export (any: joint, fine, binary):

* **the answer** (one batched event, API name ``/estimate``): a headline as a camera writes it
  (``1/125 s, f/5.6, ISO 400``; a binary model: its class and probability), a table (setting |
  estimate | the photo's own EXIF | error in stops, as ``predict`` computes them; a binary model:
  class | probability | EXIF | agreement) and one ``gr.Label`` of class probabilities per
  classification head. An export with intervals (``<field>_low``/``<field>_high``, the
  calibration of issue 17) adds each field's likely range and whether the EXIF lies in it; a fine
  head adds the EXIF consistency verdict (:func:`exif_keras.serving.predictor.consistency`), in
  the headline as ``predict`` words it and per field in the table. The numbers come from the export's ``serving_default`` signature through
  :class:`exif_keras.serving.predictor.Predictor`, the very call ``predict`` makes, on the
  uploaded file's bytes unchanged (a ``gr.File`` input: Gradio's image input re-encodes greyscale,
  CMYK and RGBA files); the table's texts are ``predict``'s own functions
  (``estimate_of``, ``estimate_truth``, ``stops.format_stop_error``, ``format_value``).
* **the evidence** (a second event, ``/evidence``, run after the answer): the photo with the k
  evaluation patches outlined, each labelled with its own estimate (``gr.AnnotatedImage``), and
  the figure ``explain`` draws (:func:`exif_keras.analysis.explainer.draw`: the patches, the
  patch that speaks most for the predicted class, its activation maps). It needs the training run
  folder (the export's ``source_model_dir``, or ``--model_dir``); without it the page says so and
  the answer still works.

Under load the answer's event is queued with a concurrency limit and batched: Gradio hands up to
``max_batch_size`` waiting uploads to one call, which checks each file (magic number, header size:
nothing decoded before the pixel limit is checked; all headers in one call) and runs the good ones
through the signature in as few model calls as :data:`MODEL_CALL_PATCH_PIXELS` allows (the
server's memory; a failing call is retried photo by photo, as ``predict`` does).

A file that cannot be answered (not an image, a truncated JPEG, a photo smaller than a patch, a
header over the export's ``max_pixels``) gets one sentence in the headline (:func:`problem_text`)
and empty outputs; the page serves the next upload as before.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from exif_keras.common import stops
from exif_keras.common.errors import AnalysisError
from exif_keras.data import patches
from exif_keras.serving import exporter, predictor, signature

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_CONCURRENCY = 1      # model calls at once (each takes a batch of up to max_batch_size)
# One model call takes at most this many patch pixels (k x P x P per photo): a batch of uploads
# is cut into calls of at most 32 patches of 128 px (4 photos of the paper's k = 8 x 128 px; the
# demo's 16 x 32 px: 32 photos, so max_batch_size decides). The activations of VGG16's first
# blocks grow with it (about 70 MB per patch at 128 px) and the CPU time per photo does not fall
# beyond it (measured 318 vs 322 ms per photo at 8 and 4 photos a call): the server's peak memory
# stays under 1.5 GB at no cost in throughput.
MODEL_CALL_PATCH_PIXELS = 32 * 128 * 128
TOP_CLASSES = 5              # classes shown per gr.Label
EVIDENCE_MAX_SIDE = 1024     # the annotated photo is shown at most this large (boxes scaled)
# Gradio's queue keeps a record of its last events (10000 by default) and, by default, sums them
# up through pandas after every event (for its monitoring page, which this page does not offer):
# a cost per request that grows with the number of requests served. Summed up every 100 events
# over the last 1000 (set before the queue is made; the environment's own values win).
QUEUE_SUMMARY_ENV = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": "100",
                     "GRADIO_ANALYTICS_MAX_EVENTS": "1000"}
EXAMPLES = 3                 # example photos from the built-in sample, when present
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto",
                "Helvetica Neue", "Arial", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")

ESTIMATE_HEADERS = ["setting", "estimate", "the photo's EXIF", "error in stops"]
RANGE_HEADER = "likely range"   # after "estimate", for exports with intervals (<field>_low/_high)
INSIDE_HEADER = "EXIF in the range"
CHECK_HEADER = "EXIF plausible"  # fine heads: the consistency verdict per field
CLASS_HEADERS = ["setting", "class", "probability", "the photo's EXIF", "agrees with EXIF"]


class PageError(AnalysisError):
    """A usage problem (no export, no run folder where one is required)."""


_image_sizes = tf.function(signature.image_sizes,
                           input_signature=[tf.TensorSpec([None], tf.string)])


# ------------------------------------------------------------------------------ the answer

@dataclasses.dataclass
class Answer:
    """What the page shows for one upload: ``problem`` (one sentence) or the rest."""

    headline: str = ""
    rows: list = dataclasses.field(default_factory=list)
    probabilities: dict = dataclasses.field(default_factory=dict)   # field -> {class: p}
    problem: Optional[str] = None


def problem_text(problem: str) -> str:
    """One readable sentence for a refused file (the reasons of predictor/signature)."""
    problem = problem.rstrip(".")
    if problem == signature.NOT_AN_IMAGE:
        return "This file is not a JPEG or PNG image; please upload a photo."
    if problem == "empty file":
        return "This file is empty; please upload a photo."
    return f"This photo cannot be used: {problem}."


def header_sizes(items: Sequence[bytes]) -> list[Optional[tuple[int, int]]]:
    """(height, width) from each JPEG's or PNG's header, nothing decoded: one call for all, or,
    when one header does not parse, one call each (None for those that do not parse)."""
    if not items:
        return []
    try:
        return [(int(h), int(w)) for h, w in _image_sizes(tf.constant(list(items))).numpy()]
    except tf.errors.InvalidArgumentError:
        if len(items) == 1:
            return [None]
        return [size for data in items for size in header_sizes([data])]


def size_problem(data: bytes, max_pixels: int, patch_size: int,
                 size: Optional[tuple[int, int]] = None) -> Optional[str]:
    """The header checks, nothing decoded: over the pixel limit (the served model's message) or
    smaller than one patch on either side. None when the header does not parse (the decoder
    then gives the reason) or the size is fine. ``size``: the header's (height, width) when
    already read (:func:`header_sizes`)."""
    size = size or header_sizes([data])[0]
    if size is None:
        return None
    height, width = size
    if height * width > max_pixels:
        return signature.TOO_MANY_PIXELS.format(width, height, width * height, max_pixels)
    if min(height, width) < patch_size:
        return (f"it is {width}x{height} pixels, smaller than one {patch_size}x{patch_size} "
                f"patch of the model")
    return None


def _decoder_reason(error: tf.errors.InvalidArgumentError) -> str:
    text = exporter.first_line(error.message)
    for prefix in (f"{signature.INPUT_NAME}[0] has ", f"{signature.INPUT_NAME}[0] "):
        text = text.replace(prefix, "")
    return f"its data does not decode (a truncated or corrupt file: {text.rstrip('.')})"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def verdict_text(check: dict) -> str:
    """``the photo's EXIF: unlikely (score 7.2; shutter)``, as predict words the verdict."""
    return f"the photo's EXIF: {predictor.verdict_text(check)}"


def _error_cell(field: str, error: Optional[float]) -> str:
    text = stops.format_stop_error(field, error)   # "shutter +1.0 stops" / "shutter: no EXIF"
    return "-" if error is None else text[len(field) + 1:]


class Page:
    """One loaded export (and, when found, its run folder's explainer): the page's functions,
    testable without a server."""

    def __init__(self, model: str, version: Optional[int] = None, model_dir: Optional[str] = None,
                 layer: Optional[str] = None):
        try:
            self.predictor = predictor.Predictor.load(model, version)
        except predictor.PredictError as e:
            raise PageError(str(e)) from e
        meta = self.predictor.metadata
        self.heads = self.predictor.heads
        self.patch_size = int(meta.get("patch_size", patches.PATCH_SIZE))
        self.plain = not self.heads or signature.plain_signature(self.heads)
        self.fields = [h.field for h in self.heads if h.task in ("fine", "regression")]
        self.class_heads = [h for h in self.heads if h.task in ("binary", "fine")]
        outputs = (meta.get("signature") or {}).get("outputs") or ()
        # exports with intervals (issue 17) serve <field>_low and <field>_high
        self.ranges = any(f"{h.field}_{signature.OUTPUT_LOW}" in outputs for h in self.heads)
        self.checks = any(h.task == "fine" for h in self.heads)
        self.model_dir = model_dir or meta.get("source_model_dir")
        self.explainer, self.evidence_note = None, ""
        self._layer = layer
        self.name = os.path.basename(os.path.dirname(os.path.abspath(self.predictor.path)))

    # -- the answer

    @property
    def headers(self) -> list:
        if not self.fields:
            return CLASS_HEADERS
        headers = list(ESTIMATE_HEADERS)
        if self.ranges:
            headers = headers[:2] + [RANGE_HEADER] + headers[2:] + [INSIDE_HEADER]
        if self.checks:
            headers.append(CHECK_HEADER)
        return headers

    def check(self, data: bytes, size: Optional[tuple[int, int]] = None) -> Optional[str]:
        """Why these bytes are refused before the model runs (one sentence), or None. ``size``:
        the header's (height, width) when already read."""
        problem = predictor.image_problem(data) or size_problem(
            data, self.predictor.max_pixels, self.patch_size, size)
        return problem_text(problem) if problem else None

    @property
    def call_size(self) -> int:
        """Photos one model call takes at most (:data:`MODEL_CALL_PATCH_PIXELS`)."""
        k = int(self.predictor.metadata.get("num_patches", 1) or 1)
        return max(1, MODEL_CALL_PATCH_PIXELS // (k * self.patch_size ** 2))

    def answer_batch(self, items: Sequence[Optional[bytes]]) -> list[Answer]:
        """One Answer per upload (None: nothing uploaded): the checks (all headers read in one
        call), then the good files through the model, as few calls as
        :data:`MODEL_CALL_PATCH_PIXELS` allows (a failing call retried photo by photo)."""
        answers: list[Optional[Answer]] = [None] * len(items)
        good = []
        images = [i for i, data in enumerate(items)
                  if data is not None and not predictor.image_problem(data)]
        try:   # every header in one call
            sizes = dict(zip(images, header_sizes([items[i] for i in images])))
        except Exception:  # noqa: BLE001 - read again one by one below
            sizes = {}
        for i, data in enumerate(items):
            if data is None:
                answers[i] = Answer()
                continue
            try:
                problem = self.check(data, sizes.get(i))
            except Exception as e:  # noqa: BLE001 - a sentence, never a traceback
                problem = problem_text(f"its header cannot be read ({type(e).__name__})")
            if problem:
                answers[i] = Answer(problem=problem)
            else:
                good.append(i)
        step = self.call_size
        results = [r for start in range(0, len(good), step)
                   for r in self._run([items[i] for i in good[start:start + step]])]
        for i, outputs in zip(good, results):
            try:
                answers[i] = (Answer(problem=problem_text(outputs)) if isinstance(outputs, str)
                              else self.describe(items[i], outputs))
            except Exception as e:  # noqa: BLE001
                answers[i] = Answer(problem=problem_text(f"the answer failed ({e})"))
        return answers

    def answer(self, data: Optional[bytes]) -> Answer:
        return self.answer_batch([data])[0]

    def _run(self, batch: list[bytes]) -> list:
        """Per photo its outputs {name: value} or the reason it failed (str)."""
        if not batch:
            return []
        try:
            out = self.predictor(batch)
        except tf.errors.InvalidArgumentError as e:
            if len(batch) == 1:
                return [_decoder_reason(e)]
            return [r for data in batch for r in self._run([data])]
        return [{k: v[i] for k, v in out.items()} for i in range(len(batch))]

    def describe(self, data: bytes, outputs: dict) -> Answer:
        """The headline, the table and the probabilities of one photo's outputs."""
        settings = predictor.read_settings(data)
        answer = Answer()
        for head in self.class_heads:
            key = (signature.OUTPUT_PROBABILITIES if self.plain
                   else f"{head.field}_{signature.OUTPUT_PROBABILITIES}")
            p = np.asarray(outputs[key], np.float64)
            answer.probabilities[head.field] = {n: float(v) for n, v in zip(head.class_names, p)}
        if not self.fields:   # binary heads only: class, probability, EXIF agreement
            parts = []
            for head in self.class_heads:
                p = answer.probabilities[head.field]
                cid = int(np.argmax(list(p.values())))
                name, prob = head.class_names[cid], list(p.values())[cid]
                truth = predictor.exif_truth(head, settings)
                exif, agrees = "no EXIF", "-"
                if truth is not None:
                    exif = truth["text"]
                    agrees = ("not in this task's classes" if truth["class_id"] is None
                              else "agrees" if truth["class_id"] == cid else "differs")
                answer.rows.append([head.field, name, f"{prob:.3f}", exif, agrees])
                parts.append(f"{name} ({prob:.3f})")
            answer.headline = ", ".join(parts)
            return answer
        estimate = predictor.estimate_of(outputs, self.fields)
        fine = [h.field for h in self.heads if h.task == "fine"]
        check = predictor.consistency(outputs, settings, fine) if fine else None
        for field in self.fields:
            truth = predictor.estimate_truth(field, estimate[field], settings)
            interval = estimate[field].get("interval")
            row = [field, estimate[field]["text"]]
            if self.ranges:
                row.append(interval["text"] if interval else "-")
            row += [truth["text"] if truth else "no EXIF",
                    _error_cell(field, truth["error_stops"] if truth else None)]
            if self.ranges:
                inside = (truth or {}).get("in_interval")
                row.append("-" if inside is None else "inside" if inside else "outside")
            if fine:
                claim = (check or {}).get("fields", {}).get(field)
                row.append("-" if claim is None else
                           f"{claim['verdict']} (p {claim['probability']:.2f})")
            answer.rows.append(row)
        answer.headline = ", ".join(e["text"] for e in estimate.values())
        intervals = [e["interval"]["text"] for e in estimate.values() if e.get("interval")]
        if intervals:
            answer.headline += "\n\nlikely range: " + ", ".join(intervals)
        if check is not None:
            answer.headline += "\n\n" + verdict_text(check)
        return answer

    # -- the evidence

    def load_explainer(self):
        """The run folder's explainer (None, with a note, when there is none)."""
        from exif_keras.analysis import explainer

        if self.explainer is not None or self.evidence_note:
            return self.explainer
        if not self.model_dir:
            self.evidence_note = ("The evidence needs the training run folder "
                                  "(serve --model_dir=runs/<run>).")
            return None
        try:
            self.explainer = explainer.Explainer.load(
                self.model_dir, self._layer or explainer.DEFAULT_LAYER)
        except explainer.ExplainError as e:
            self.evidence_note = (f"No evidence: the training run folder {self.model_dir} "
                                  f"cannot be used ({e}).")
        return self.explainer

    def evidence(self, data: Optional[bytes], title: str = "") -> tuple:
        """(annotated photo (image, [((x1, y1, x2, y2), label)]) or None, explain's figure as an
        array or None, a note). Nothing for a refused file."""
        if data is None or self.check(data):
            return None, None, ""
        ex = self.load_explainer()
        if ex is None:
            return None, None, self.evidence_note
        try:
            image = patches.decode_image(tf.constant(data)).numpy()
        except tf.errors.InvalidArgumentError:
            return None, None, ""
        from exif_keras.analysis import explainer

        explanation = ex.explain(image)
        labels_ = self.patch_labels(explanation)
        scale = min(1.0, EVIDENCE_MAX_SIDE / max(image.shape[:2]))
        shown = image
        if scale < 1.0:
            size = [max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))]
            shown = tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8).numpy()
        boxes = []
        for (y, x, size), label in zip(explanation.boxes, labels_):
            box = tuple(int(round(v * scale)) for v in (x, y, x + size, y + size))
            boxes.append((box, label))
        # explain's figure, its pixels taken from the canvas (what render would write as a PNG,
        # without the PNG's encoding and decoding: about 160 ms of CPU less per photo)
        figure = explainer.draw(explanation, ex.class_names[explanation.field], title)
        figure.canvas.draw()
        drawn = np.array(figure.canvas.buffer_rgba())[..., :3]
        return (shown, boxes), drawn, ""

    def patch_labels(self, explanation) -> list[str]:
        """Each patch's own estimate: its settings in camera notation (fine heads) or its class
        and probability (binary), from the explainer's per-patch predictions."""
        from exif_keras.common import figures

        fine = {f: p for f, p in explanation.per_patch.items() if f in self.fields}
        count = len(explanation.boxes)
        if fine:
            texts = stops.estimates(fine)["exif_text"]
            texts = [texts] if isinstance(texts, str) else list(texts)
            return [f"patch {i}: {texts[i]}" for i in range(count)]
        out = []
        names = self.explainer.class_names[explanation.field]
        for i in range(count):
            p = explanation.per_patch[explanation.field][i]
            cls = int(np.argmax(p))
            out.append(f"patch {i}: {figures.short_name(names[cls])} {p[cls]:.2f}")
        return out


# --------------------------------------------------------------------------------- the page

def sample_examples(folder: str = os.path.join("data", "sample"),
                    count: int = EXAMPLES) -> list[str]:
    """A few photos of the built-in sample (sorted), when it is there."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg")))
    return [os.path.join(folder, n) for n in names[:count]]


def _read(path) -> Optional[bytes]:
    if path is None:
        return None
    path = getattr(path, "name", path)
    with open(path, "rb") as f:
        return f.read()


def theme():
    """Gradio's default theme with the system's fonts: the page loads no font file."""
    import gradio as gr

    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS)


def build(page: Page, examples: Sequence[str] = (),
          max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          concurrency_limit: int = DEFAULT_CONCURRENCY):
    """The gr.Blocks of ``page`` (not launched; see :func:`launch`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    for name, value in QUEUE_SUMMARY_ENV.items():
        os.environ.setdefault(name, value)
    import gradio as gr

    with gr.Blocks(title=f"exif-keras: {page.name}", analytics_enabled=False) as blocks:
        gr.Markdown(f"# How was this photo taken?\nDrop a JPEG or PNG: the model "
                    f"`{page.name}` estimates its settings from the pixels alone and shows the "
                    f"patches it looked at.")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="photo (JPEG or PNG)", type="filepath",
                                elem_id="photo")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[photo],
                                label="examples from the built-in sample")
            with gr.Column(scale=2):
                headline = gr.Markdown(elem_id="headline")
        table = gr.Dataframe(headers=page.headers, label="estimate and the photo's EXIF",
                             interactive=False, elem_id="table",
                             column_count=(len(page.headers), "fixed"))
        with gr.Row():
            labels_ = [gr.Label(num_top_classes=TOP_CLASSES,
                                label=f"{h.field}: class probabilities",
                                elem_id=f"probabilities-{h.field}")
                       for h in page.class_heads]
        # the photo sent as a JPEG (Gradio's default WebP costs half as much again to encode)
        annotated = gr.AnnotatedImage(label="the k patches, each with its own estimate",
                                      elem_id="patches", show_legend=True, format="jpeg")
        note = gr.Markdown(elem_id="evidence-note")
        gr.Markdown("A look inside (what `explain` draws): the patches, the one that speaks most "
                    "for the predicted class, and its activation maps.")
        figure = gr.Image(show_label=False, elem_id="figure", interactive=False, format="png")

        def estimate(paths):
            try:
                answers = page.answer_batch([_read(p) for p in paths])
            except Exception as e:  # noqa: BLE001 - a sentence, never a traceback
                answers = [Answer(problem=f"The model failed on this batch ({type(e).__name__}); "
                                  f"please try again.")] * len(paths)
            out = [[a.problem or a.headline for a in answers],
                   [a.rows or None for a in answers]]
            for head in page.class_heads:
                out.append([a.probabilities.get(head.field) for a in answers])
            return tuple(out)

        def evidence(path):
            try:
                return page.evidence(_read(path), os.path.basename(str(path or "")))
            except Exception as e:  # noqa: BLE001 - a sentence, never a traceback
                return None, None, f"No evidence for this photo ({type(e).__name__}: {e})."

        event = photo.change(estimate, [photo], [headline, table, *labels_], batch=True,
                             max_batch_size=max_batch_size, concurrency_limit=concurrency_limit,
                             api_name="estimate")
        event.then(evidence, [photo], [annotated, figure, note], concurrency_limit=1,
                   api_name="evidence")
    return blocks


def launch(blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True, **kwargs):
    """Starts the page on http://host:port: never shared, no analytics, system fonts."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    return blocks.launch(server_name=host, server_port=port, share=False, ssr_mode=False,
                         prevent_thread_lock=not block, theme=theme(), quiet=True,
                         footer_links=["api"], **kwargs)
