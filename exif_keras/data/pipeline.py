"""The tf.data input pipeline: TFRecord shards -> batches of image patches and target labels.

Modelled on TF Model Garden's ``official/vision/dataloaders``: a :class:`Decoder` turns serialized
``tf.train.Example`` protos into a dict of tensors (no image decoding: parsing only), a
:class:`Parser` turns that dict into ``(patches, label)``, and :func:`make_dataset` wires them into
a ``tf.data.Dataset``. Everything runs in the graph.

Decisions (each one named by a constant or function here or in ``patches.py``, which holds
what serving shares with training: decoding, padding, the grid, the crops):

* **Filter before decode.** The label is mapped fine class -> task target from the cheaply parsed
  ``label/<field>``; examples whose target is -1 are dropped before their JPEG is decoded
  (:meth:`Parser.select`, on each parse batch).
* **JPEG decoding** (:func:`patches.decode_image`): ``channels=3`` always (greyscale becomes 3 equal
  channels); ``dct_method=DCT_METHOD`` = ``"INTEGER_ACCURATE"`` (libjpeg's ISLOW IDCT). TF's
  default ``""`` is ``"INTEGER_FAST"`` (IFAST): measured on 500x375 q90 JPEGs, it was no faster
  (within 2 %, both are SIMD in libjpeg-turbo) but changes ~2/3 of the pixel values by 1-4 levels,
  i.e. the low bits where sensor noise, one of the cues this project learns from, lives; ACCURATE
  also gives exactly Pillow's pixels. Non-JPEG bytes (PNG, BMP, GIF: serving) go through
  ``tf.io.decode_image``. The serving export must call this same function so that its pixels,
  and hence its patches, are exactly the evaluation ones.
* **Padding** (:func:`patches.pad_to_min_size`): an image smaller than a patch in a dimension is
  zero-padded symmetrically up to the patch size in that dimension (the extra pixel of an odd
  padding goes to the bottom/right, as in ``tf.image.resize_with_crop_or_pad``). Zero rather than
  reflect padding because it works for any size (reflection needs the image to be larger than the
  padding) and invents no image content; such images are rare (MIRFLICKR is ~500x375, patches are
  128).
* **Evaluation grid** (:func:`patches.grid_shape`, :func:`patches.grid_offsets`): ``k = rows *
  cols`` with ``rows`` the largest divisor of ``k`` not above ``sqrt(k)`` (k=8: 2x4, 4: 2x2, 9: 3x3,
  1: 1x1 = the centre crop; a prime k gives a 1 x k strip, so prefer composite k). The longer grid
  side goes along the longer image side (a landscape image gets 2 rows x 4 columns, a portrait one 4
  rows x 2 columns; square counts as landscape). Along an axis of slack ``D = size - P`` the ``n``
  offsets run from 0 to D evenly: ``floor(i * D / (n - 1))`` for the first half, mirrored as ``D -
  offset[n - 1 - i]`` for the second half, so the grid is exactly mirror-symmetric and touches all
  four borders; a lone (or odd-count middle) offset is ``floor(D / 2)``, the centre crop of
  ``tf.image.resize_with_crop_or_pad``. Patches come in raster order (row by row, left to right).
* **Training crops**: k independent uniform PxP crops (top-left offsets uniform over [0, D]) per
  image per epoch, drawn with stateless random ops from a per-element seed. The seeds come from
  ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, two numbers per example in
  the order of the shuffled stream (zipped with its batches, ``2 * batch_size`` at a time), so
  every epoch (every new iterator, or every pass through ``repeat``) gets fresh crops.
* **Seeding / repeatability**: ``make_dataset(config, ..., seed=S)`` derives three seeds from S:
  file-order shuffle ``S``, example shuffle ``S + 1``, crop seeds ``S + 2``, and makes the pipeline
  deterministic (``tf.data.Options.deterministic``), so two runs with the same ``--seed`` see the
  same examples in the same order with the same crops, epoch by epoch, while successive epochs still
  differ. A training script makes ``--seed`` repeat a run by passing it here (``seed=FLAGS.seed``);
  ``tf.random.set_seed`` alone is not enough, since with ``seed=None`` a training pipeline is
  non-deterministic (parallel stages may reorder elements: no head-of-line blocking). Evaluation
  pipelines are always deterministic and ordered (sorted shards, no shuffle).
* **Parsing**: records are parsed ``PARSE_BATCH`` at a time with ``tf.io.parse_example`` (batch,
  parse, filter and map the labels, unbatch): measured twice as fast as ``parse_single_example``
  per record (22k vs 11k records/s on 2 cores); only the two features needed (``image/encoded``,
  ``label/<field>``) are parsed.
* **Decoding and cutting a batch at a time** (:meth:`Parser.batch_fn`): the examples are batched
  as encoded bytes and one function decodes and cuts the whole batch, stacking all its patches
  once, rather than a map per image followed by ``batch``: tf.data's cost is per element and per
  stage, and the per-image map stacked each image's patches before ``batch`` copied them again.
  Measured on 2 otherwise idle cores under ``ONEDNN_MAX_CPU_ISA=AVX2`` (``python -m
  exif_keras.benchmark --sections=pipeline``, batch 32), make_dataset's images per CPU-second
  against plain ``decode_jpeg`` of the same records went from 0.76x / 0.78x (evaluation /
  training) to 0.87-0.90x / 0.97-0.99x (BUILD.md); on a loaded machine the gain shrinks, the
  patches' copies then waiting on shared memory bandwidth. Batches over ``UNROLL_MAX`` images
  are cut by a loop (an unrolled graph of 128 images traces for 2 s, once per epoch's dataset).
  The patches, labels and order are exactly those of the per-image pipeline
  (tests/data/test_dataset.py).
* **Checking records** (:func:`exif_keras.records.manifest.verify_records`): before training, every
  shard the manifest lists must exist with its recorded record count (read from the TFRecord
  framing, one seek per record), and, when asked, its recorded sha256; a damaged shard is named at
  once instead of failing mid-epoch with a DataLossError.
* **cache=True** caches the filtered, parsed records (JPEG bytes + label) in memory, before the
  shuffle: decoding and cropping still happen every epoch, so training crops stay fresh.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.data import patches
from exif_keras.records import features
from exif_keras.records.manifest import read_manifest

PARSE_BATCH = 64        # records parsed per tf.io.parse_example call
UNROLL_MAX = 64         # batches of up to this many images are cut by an unrolled graph
BATCH_PARALLEL_IMAGES = 4  # images decoded and cut concurrently by the loop over a batch
MAX_CYCLE_LENGTH = 8    # shards read concurrently by interleave
SEED_OFFSETS = {"files": 0, "shuffle": 1, "crops": 2}  # seed + offset for each random stage


# --------------------------------------------------------------------------------------- decoding

class Decoder:
    """Serialized ``tf.train.Example`` (scalar or batch) -> dict of tensors, keyed as in features.

    ``keys`` restricts parsing to those features (default: the whole record contract). The image
    is *not* decoded here: that is the Parser's job, after filtering.
    """

    def __init__(self, keys: Optional[Sequence[str]] = None):
        spec = features.feature_spec()
        if keys is not None:
            unknown = sorted(set(keys) - set(spec))
            if unknown:
                raise ValueError(f"unknown feature keys {unknown}; known: {sorted(spec)}")
            spec = {k: spec[k] for k in keys}
        self._spec = spec

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._spec)

    def decode(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return tf.io.parse_example(serialized, self._spec)


# ----------------------------------------------------------------------------------------- parser

class Parser:
    """Decoded record dict -> (patches uint8 [k, P, P, 3], labels), for one or several heads.

    ``labels`` is a dict keyed by head name (the field: ``{"shutter": int32}``), as Model Garden's
    parsers return labels: a single field is the one-key case of the same path. A head without a
    target for an example holds ``labels.NO_LABEL`` (-1), which the losses and metrics mask; an
    example is kept when at least one head has a target.
    """

    def __init__(self, fields, task: str = "binary", num_patches: int = patches.NUM_PATCHES,
                 patch_size: int = patches.PATCH_SIZE, dct_method: Optional[str] = None,
                 pad: bool = True):
        self.pad = pad
        self.heads = labels.task_specs(fields, task)
        self.task = task
        self.num_patches = int(num_patches)
        self.patch_size = int(patch_size)
        self.dct_method = dct_method
        patches.grid_shape(self.num_patches)  # validates
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The features the parser reads."""
        return (features.IMAGE_ENCODED,
                *(features.LABEL_KEYS[head.field] for head in self.heads),
                *(features.EXIF_KEYS[head.field] for head in self.heads
                  if head.task == "regression"))

    @staticmethod
    def _head_target(head: labels.TaskSpec, decoded: dict) -> tf.Tensor:
        fine = tf.cast(decoded[features.LABEL_KEYS[head.field]], tf.int32)
        table = tf.constant(head.fine_to_target, tf.int32)
        size = len(head.fine_to_target)
        valid = (fine >= 0) & (fine < size)
        return tf.where(valid, tf.gather(table, tf.clip_by_value(fine, 0, size - 1)),
                        labels.NO_LABEL)

    def target(self, decoded: dict) -> dict[str, tf.Tensor]:
        """{head name: task target} of the decoded labels (any shape): int32 class, -1 when left
        out; for a regression head the float32 EXIF value in stops, NaN when left out."""
        out = {}
        for head in self.heads:
            target = self._head_target(head, decoded)
            if head.task == "regression":
                value = stops.tf_value_to_stops(decoded[features.EXIF_KEYS[head.field]],
                                                head.field)
                target = tf.where(target >= 0, value, float("nan"))
            out[head.name] = target
        return out

    @staticmethod
    def _labelled(targets: dict[str, tf.Tensor]) -> tf.Tensor:
        """True where at least one of the targets (of :meth:`target`) is present."""
        labelled = [tf.math.is_finite(t) if t.dtype.is_floating else t >= 0
                    for t in targets.values()]
        return labelled[0] if len(labelled) == 1 else tf.reduce_any(tf.stack(labelled), axis=0)

    def keep(self, decoded: dict) -> tf.Tensor:
        """Filter predicate: True where the example has a target for at least one head."""
        return self._labelled(self.target(decoded))

    def select(self, decoded: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """A parsed batch of records -> (encoded images [n], {head: target [n]}) of the examples
        with a target for at least one head (:meth:`keep`), in their order: the label filter
        and the targets, computed for a whole parse batch at once (no copy when all are kept)."""
        targets = self.target(decoded)
        keep = self._labelled(targets)
        encoded = decoded[features.IMAGE_ENCODED]
        return tf.cond(
            tf.reduce_all(keep), lambda: (encoded, targets),
            lambda: (tf.boolean_mask(encoded, keep),
                     {name: tf.boolean_mask(target, keep) for name, target in targets.items()}))

    def _patches(self, encoded: tf.Tensor, is_training: bool, seed: Optional[tf.Tensor] = None,
                 jpeg: bool = False) -> list[tf.Tensor]:
        """One encoded image -> its k patches, uint8 [P, P, 3] each (not stacked). ``jpeg``: the
        bytes are known to be a JPEG, decoded as patches.decode_image decodes a JPEG (same op,
        same arguments, the same pixels) without its per-image format switch."""
        image = (patches.decode_jpeg(encoded, self.dct_method) if jpeg else
                 patches.decode_image(encoded, self.dct_method))
        return patches.patch_slices(image, self.num_patches, self.patch_size, is_training,
                                    seed=seed if is_training else None, pad=self.pad)

    def parse_fn(self, is_training: bool) -> Callable[..., tuple[tf.Tensor, dict]]:
        """fn(decoded, seed=None) -> (patches, labels) of one record, through the public
        ``patches.decode_image`` and ``patches.extract_patches`` (what serving cuts). make_dataset
        cuts whole batches (:meth:`batch_fn`); this one-record form is for callers that map
        records one by one, and the reference the batched pipeline is tested against. ``seed``
        (shape [2]) drives the training crops statelessly; it is ignored for evaluation."""

        def _parse(decoded: dict, seed: Optional[tf.Tensor] = None):
            image = patches.decode_image(decoded[features.IMAGE_ENCODED], self.dct_method)
            cropped = patches.extract_patches(image, self.num_patches, self.patch_size,
                                              is_training, pad=self.pad,
                                              seed=seed if is_training else None)
            return cropped, self.target(decoded)

        return _parse

    def batch_fn(self, is_training: bool,
                 batch_size: Optional[int] = None) -> Callable[..., tuple[tf.Tensor, dict]]:
        """fn(encoded [n], labels, seeds=None) -> (patches uint8 [n, k, P, P, 3], labels): a batch
        of selected records (:meth:`select`) decoded and cut, the same patches as
        :meth:`parse_fn` image by image. ``seeds`` (int [>= 2n]) drives the training crops: image
        i's seed is ``seeds[2i:2i + 2]``.

        One call per batch rather than a map per image then ``batch``: tf.data's cost is per
        element and per stage, and the batch is stacked once from the patches' slices (a
        per-image map stacks them, then ``batch`` copies them again). A full batch
        (``batch_size`` images, at most ``UNROLL_MAX``) of JPEGs, the case of every batch but an
        epoch's last from make_records' records, is cut by a graph unrolled over its images;
        any other batch by a loop over them that decodes any format."""
        k, size = self.num_patches, self.patch_size
        unroll = batch_size is not None and batch_size <= UNROLL_MAX
        # One image's patches as a function, traced once and called per image.
        if is_training:
            one = tf.function(lambda image, seed: self._patches(image, True, seed, jpeg=True),
                              autograph=False)
        else:
            one = tf.function(lambda image: self._patches(image, False, jpeg=True),
                              autograph=False)

        def unrolled(encoded, seeds):
            images = tf.unstack(encoded, num=batch_size)
            cuts = ([one(image, seed) for image, seed in
                     zip(images, tf.unstack(seeds, num=batch_size))] if is_training else
                    [one(image) for image in images])
            return tf.stack([crop for cut in cuts for crop in cut])

        def looped(encoded, seeds, jpeg):
            n = tf.shape(encoded)[0]
            crops = tf.TensorArray(tf.uint8, size=n * k, element_shape=[size, size, 3])
            slots = tf.reshape(tf.range(n * k), [n, k])   # where image i's patches go

            def body(i, crops):
                cut = self._patches(encoded[i], is_training, seeds[i] if is_training else None,
                                    jpeg=jpeg)
                for slot, crop in zip(tf.unstack(slots[i], num=k), cut):
                    crops = crops.write(slot, crop)
                return i + 1, crops

            _, crops = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), crops),
                                     parallel_iterations=BATCH_PARALLEL_IMAGES)
            return crops.stack()

        def _batch(encoded: tf.Tensor, targets: dict, seeds: Optional[tf.Tensor] = None):
            n = tf.shape(encoded)[0]
            if is_training:
                seeds = tf.reshape(seeds[:2 * n], [n, 2])
            fast = tf.reduce_all(tf.io.is_jpeg(encoded))
            if unroll:
                fast = tf.logical_and(fast, tf.equal(n, batch_size))
            out = tf.cond(fast,
                          lambda: (unrolled(encoded, seeds) if unroll else
                                   looped(encoded, seeds, jpeg=True)),
                          lambda: looped(encoded, seeds, jpeg=False))
            out = tf.reshape(out, [-1, k, size, size, 3])
            out.set_shape([encoded.shape[0], k, size, size, 3])
            return out, targets

        return _batch


# ---------------------------------------------------------------------------------------- dataset

def shard_glob(data_dir: str, split: str) -> str:
    """Glob of a split's shards, matching features.SHARD_PATTERN."""
    return os.path.join(data_dir, f"{split}-*-of-*.tfrecord")


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of ``split``; ValueError naming the directory and pattern if none."""
    pattern = shard_glob(data_dir, split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord shards for split {split!r} in {data_dir!r} "
                         f"(pattern {os.path.basename(pattern)!r}, i.e. "
                         f"{features.SHARD_PATTERN!r})")
    return files


def _stage_seed(seed: Optional[int], stage: str, epoch: Optional[int] = None) -> Optional[int]:
    """The seed of one random stage: ``seed + offset``, or, for a given ``epoch``, a number drawn
    from (seed, epoch, stage) so that epoch e's order and crops are the same whichever process
    runs it (a run resumed at epoch e sees what the uninterrupted run saw)."""
    if seed is None:
        return None
    if epoch is None:
        return int(seed) + SEED_OFFSETS[stage]
    entropy = [int(seed) % 2**32, int(epoch), SEED_OFFSETS[stage]]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] >> 1)


def read_records(data_dir: str, split: str, is_training: bool, seed: Optional[int] = None,
                 num_parallel_calls=tf.data.AUTOTUNE, epoch: Optional[int] = None,
                 shard: Optional[tuple[int, int]] = None) -> tf.data.Dataset:
    """Serialized records of a split: shards shuffled per epoch (training) or sorted, interleaved.

    ``shard=(count, index)``: only the shards ``index::count`` of the sorted names (one worker's
    part of a multi-worker run); ValueError when that leaves none."""
    files = list_shards(data_dir, split)
    if shard is not None:
        count, index = shard
        mine = files[index::count]
        if not mine:
            raise ValueError(f"input pipeline {index} of {count} has no {split} shard in "
                             f"{data_dir!r} ({len(files)} shards): write at least {count} shards "
                             f"(python -m exif_keras.make_records with a smaller --shard_size)")
        files = mine
        ds = tf.data.Dataset.from_tensor_slices(files)
        if is_training:
            ds = ds.shuffle(len(files), seed=_stage_seed(seed, "files", epoch),
                            reshuffle_each_iteration=epoch is None)
    else:
        ds = tf.data.Dataset.list_files(shard_glob(data_dir, split), shuffle=is_training,
                                        seed=_stage_seed(seed, "files", epoch))
    return ds.interleave(tf.data.TFRecordDataset,
                         cycle_length=min(len(files), MAX_CYCLE_LENGTH), block_length=1,
                         num_parallel_calls=num_parallel_calls)


def _all_images_fit(data_dir: str, patch_size: int) -> bool:
    """True when the records' manifest says no image is smaller than a patch (make_records skips
    images whose shorter side is below --min_side): the pipeline then needs no padding ops."""
    try:
        return read_manifest(data_dir)["options"]["min_side"] >= patch_size
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return False


@dataclasses.dataclass
class DataConfig:
    """The data section of the training configuration (``TrainConfig.data``): where the records
    are and how they are cut into batches of patches. Each field is the train flag of its name
    (``training/config.py`` generates the flags from this metadata)."""

    data_dir: str = dataclasses.field(default="data/records", metadata=dict(
        help="Records written by make_records."))
    batch_size: int = dataclasses.field(default=32, metadata=dict(
        help="Images per batch.", lower_bound=1))
    num_patches: int = dataclasses.field(default=patches.NUM_PATCHES, metadata=dict(
        help="Patches k per image.", lower_bound=1))
    patch_size: int = dataclasses.field(default=patches.PATCH_SIZE, metadata=dict(
        help="Patch side P in pixels.", lower_bound=8))
    shuffle_buffer: int = dataclasses.field(default=1024, metadata=dict(
        help="Examples in the shuffle buffer."))
    verify_records: bool = dataclasses.field(default=False, metadata=dict(
        help="Also check every shard's sha256 against manifest.json before training (a full "
             "read); the record counts are always checked."))


def make_dataset(config: DataConfig, split: str, field, task: str = "binary",
                 is_training: Optional[bool] = None, seed: Optional[int] = None,
                 repeat: bool = False, drop_remainder: bool = False,
                 cache: bool = False, num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic: Optional[bool] = None, epoch: Optional[int] = None,
                 shard: Optional[tuple[int, int]] = None) -> tf.data.Dataset:
    """Batches (patches uint8 [B, k, P, P, 3], {head: labels int32 [B]}) of ``split`` of the
    records in ``config.data_dir``, ``config.batch_size`` images of ``config.num_patches``
    patches of ``config.patch_size`` pixels, shuffled through ``config.shuffle_buffer``.

    ``field``: one field, a comma list, "all" or a sequence (see labels.parse_fields): one label
    per field, -1 where an image has none (kept when it has at least one).

    ``is_training`` defaults to ``split == "train"``: shuffled shards and examples, random crops;
    otherwise sorted shards, stored order, the evaluation grid. ``seed`` makes a training run
    repeatable (see the module docstring). ``deterministic`` defaults to True for evaluation or
    when ``seed`` is given, else False. ``repeat`` repeats forever (fresh crops and order each
    pass). ``epoch``: the dataset of that one training epoch, its file order, example order and
    crops drawn from (seed, epoch) alone (see :func:`_stage_seed`); without it, successive
    iterations reshuffle. ``shard=(count, index)`` reads only shards ``index::count`` (see
    read_records). Raises ValueError when the split has no shards.
    """
    data_dir, batch_size = config.data_dir, config.batch_size
    num_patches, patch_size = config.num_patches, config.patch_size
    if is_training is None:
        is_training = split == "train"
    if deterministic is None:
        deterministic = (not is_training) or seed is not None
    parser = Parser(field, task, num_patches=num_patches, patch_size=patch_size,
                    pad=not _all_images_fit(data_dir, patch_size))
    decoder = Decoder(keys=parser.keys)

    ds = read_records(data_dir, split, is_training, seed, num_parallel_calls, epoch=epoch,
                      shard=shard)
    # Parse, filter on the parsed labels (dropped images are never decoded) and compute the
    # targets a parse batch at a time; then (encoded image, labels) per example.
    ds = ds.batch(PARSE_BATCH).map(lambda serialized: parser.select(decoder.decode(serialized)),
                                   num_parallel_calls=num_parallel_calls).unbatch()
    if cache:
        ds = ds.cache()
    if is_training:
        ds = ds.shuffle(config.shuffle_buffer, seed=_stage_seed(seed, "shuffle", epoch),
                        reshuffle_each_iteration=epoch is None)
    if repeat:
        ds = ds.repeat()
    # Decoding and cutting run a batch at a time (Parser.batch_fn): tf.data's cost is per element
    # and per stage, and a per-image map would copy every patch twice more.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    cut = parser.batch_fn(is_training, batch_size)
    if is_training:
        # Two numbers of one random stream per example, in the order of the shuffled stream:
        # example i of the stream gets numbers 2i and 2i + 1 (a batch takes 2 * batch_size).
        crop_seeds = tf.data.Dataset.random(seed=_stage_seed(seed, "crops", epoch),
                                            rerandomize_each_iteration=epoch is None)
        ds = tf.data.Dataset.zip(ds, crop_seeds.batch(2 * batch_size))
        ds = ds.map(lambda batch, seeds: cut(*batch, seeds),
                    num_parallel_calls=num_parallel_calls)
    else:
        ds = ds.map(cut, num_parallel_calls=num_parallel_calls)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.with_options(options)


# --------------------------------------------------------------------------------------- manifest

def count_examples(data_dir: str, split: str, field, task: str = "binary") -> int:
    """Examples of ``split`` with a target for at least one of the fields (see make_dataset).

    One field: from manifest["counts"][split][field] (fine class index as a string -> count); a
    split or field absent from the counts has 0 examples; a manifest without "counts" is a
    ValueError. Several fields: the manifest counts each field alone, so the union is counted
    from the records' labels (parsed only, no image decoded)."""
    manifest = read_manifest(data_dir)
    heads = labels.task_specs(field, task)
    if not isinstance(manifest.get("counts"), dict):
        raise ValueError(f"{features.MANIFEST} of {data_dir!r} has no 'counts'")
    if len(heads) == 1:
        per_class = manifest["counts"].get(split, {}).get(heads[0].field, {})
        return sum(int(n) for fine, n in per_class.items()
                   if heads[0].target(int(fine)) != labels.NO_LABEL)
    if not any(manifest["counts"].get(split, {}).get(h.field) for h in heads):
        return 0
    parser = Parser([h.field for h in heads], task)
    decoder = Decoder(keys=parser.keys[1:])
    ds = read_records(data_dir, split, is_training=False).batch(1024).map(decoder.decode)
    return int(sum(int(tf.reduce_sum(tf.cast(parser.keep(batch), tf.int32)))
                   for batch in ds))


def regression_stats(data_dir: str, field: str, split: str = "train") -> tuple[float, float]:
    """(mean, std) in stops of a regression target over a split, computed once from the records'
    EXIF values (parsed only, no image decoded): the standardisation of a regression head."""
    parser = Parser(field, "regression")
    decoder = Decoder(keys=parser.keys[1:])
    ds = read_records(data_dir, split, is_training=False).batch(1024).map(decoder.decode)
    values = np.concatenate([parser.target(batch)[field].numpy() for batch in ds] or [[]])
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError(f"no {split} example has a {field} value for regression")
    return float(values.mean()), float(max(values.std(), 1e-3))
