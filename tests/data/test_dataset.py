"""Tests of the tf.data input pipeline (exif_keras/dataset.py) on tiny TFRecords written here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from exif_keras.common import labels
from exif_keras.data import patches, pipeline
from exif_keras.records import features
from exif_keras.records import manifest as records_manifest

from fakes import jpeg, textured, write_split

P = 32   # patch size used throughout: small keeps the tests fast
K = 4    # patches per image


def make_dataset(data_dir, split, field, task="binary", batch_size=32,
                 num_patches=patches.NUM_PATCHES, patch_size=patches.PATCH_SIZE,
                 shuffle_buffer=1024, **kwargs):
    """pipeline.make_dataset with its data section built from keyword arguments."""
    config = pipeline.DataConfig(data_dir, batch_size=batch_size, num_patches=num_patches,
                                 patch_size=patch_size, shuffle_buffer=shuffle_buffer)
    return pipeline.make_dataset(config, split, field, task, **kwargs)


# ------------------------------------------------------------------------------------- helpers

def coord_image(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] whose pixels encode their coordinates (values 1..255: 0 marks padding)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy % 255 + 1, xx % 255 + 1, (yy // 255) * 16 + xx // 255 + 1],
                    axis=-1).astype(np.uint8)


def where_is(patch: np.ndarray) -> tuple[int, int]:
    """Top-left (y, x) of a coordinate-image patch, from its first pixel."""
    r, g, b = (int(v) - 1 for v in patch[0, 0])
    return (b // 16) * 255 + r, (b % 16) * 255 + g


def decoded_jpeg(array: np.ndarray) -> np.ndarray:
    return patches.decode_image(tf.constant(jpeg(array))).numpy()


def grid_reference(height: int, width: int, k: int, p: int) -> list[tuple[int, int]]:
    """Plain-Python reference of the documented evaluation grid (sizes after padding)."""
    short = max(d for d in range(1, int(k ** 0.5) + 1) if k % d == 0)
    long = k // short
    rows, cols = (short, long) if width >= height else (long, short)

    def axis(slack, n):
        if n == 1:
            return [slack // 2]
        out = []
        for i in range(n):
            out.append(i * slack // (n - 1) if 2 * i <= n - 1
                       else slack - (n - 1 - i) * slack // (n - 1))
        return out

    ys, xs = axis(height - p, rows), axis(width - p, cols)
    return [(y, x) for y in ys for x in xs]


SIZES = [(48, 64), (20, 50), (120, 90), (300, 400)]  # one smaller than P, one large

# fine shutter classes: 0..5 -> binary 0, 6 and 7 -> left out, 8..19 -> binary 1
SHUTTER_FINE = [0, 6, 9, -1, 5, 19, 7, 2, 12, 3]


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    train = []
    for n, fine in enumerate(SHUTTER_FINE):
        h, w = SIZES[n % len(SIZES)]
        train.append((textured(h, w, seed=n, grey=(n == 4)), {"shutter": fine, "iso": 0}))
    write_split(d, "train", train, shards=2)
    validation = [(textured(*SIZES[n % len(SIZES)], seed=100 + n), {"shutter": fine})
                  for n, fine in enumerate([0, 10, 6, 4, 15])]
    write_split(d, "validation", validation, shards=1)
    counts = {"train": {"shutter": {}}, "validation": {"shutter": {}}}
    for split, recs in (("train", train), ("validation", validation)):
        for _, fine in recs:
            key = str(fine["shutter"])
            counts[split]["shutter"][key] = counts[split]["shutter"].get(key, 0) + 1
    manifest = {"counts": counts,
                "pixel_stats": {"train": {"mean": [120.0, 110.5, 100.0], "std": [60, 61, 62]}}}
    (d / features.MANIFEST).write_text(json.dumps(manifest))
    return str(d), train, validation


def run(ds, head: str = "shutter") -> tuple[np.ndarray, np.ndarray]:
    crops, labels_ = zip(*[(p.numpy(), y[head].numpy()) for p, y in ds])
    return np.concatenate(crops), np.concatenate(labels_)


# ------------------------------------------------------------------------ patches (no records)

def test_grid_shape():
    assert patches.grid_shape(1) == (1, 1)
    assert patches.grid_shape(8) == (2, 4)
    assert patches.grid_shape(9) == (3, 3)
    assert patches.grid_shape(12) == (3, 4)
    assert patches.grid_shape(7) == (1, 7)
    with pytest.raises(ValueError):
        patches.grid_shape(0)


@pytest.mark.parametrize("height,width,k", [(375, 500, 8), (500, 375, 8), (100, 100, 4),
                                            (91, 200, 9), (64, 77, 1), (40, 300, 5),
                                            # slacks that n - 1 does not divide: the second
                                            # half's positions are mirrored, not floor(i D / g)
                                            (375, 501, 8), (120, 333, 5)])
def test_eval_grid_matches_reference_and_is_symmetric(height, width, k):
    image = coord_image(height, width)
    crops = patches.extract_patches(tf.constant(image), k, P, is_training=False).numpy()
    assert crops.shape == (k, P, P, 3) and crops.dtype == np.uint8
    expected = grid_reference(height, width, k, P)
    assert [where_is(p) for p in crops] == expected
    for (y, x), patch in zip(expected, crops):
        np.testing.assert_array_equal(patch, image[y:y + P, x:x + P])
    ys = sorted({y for y, _ in expected})
    xs = sorted({x for _, x in expected})
    # exact mirror symmetry, except that a middle position (odd count) is floor(slack / 2);
    # the grid reaches the borders
    for offsets, slack in ((ys, height - P), (xs, width - P)):
        n = len(offsets)
        for i in range(n // 2):
            assert offsets[i] + offsets[n - 1 - i] == slack
        if n % 2:
            assert offsets[n // 2] == slack // 2
        if n > 1:
            assert offsets[0] == 0 and offsets[-1] == slack
    again = patches.extract_patches(tf.constant(image), k, P, is_training=False).numpy()
    np.testing.assert_array_equal(crops, again)


def test_eval_grid_known_positions():
    # the project default on a MIRFLICKR-sized landscape image: 2 rows x 4 columns, P=128
    ys, xs = patches.grid_offsets(375, 500, 8, 128)
    assert ys.numpy().tolist() == [0, 0, 0, 0, 247, 247, 247, 247]
    assert xs.numpy().tolist() == [0, 124, 248, 372] * 2
    ys, xs = patches.grid_offsets(500, 375, 8, 128)  # portrait: 4 rows x 2 columns
    assert ys.numpy().tolist() == [0, 0, 124, 124, 248, 248, 372, 372]
    assert xs.numpy().tolist() == [0, 247] * 4
    ys, xs = patches.grid_offsets(101, 130, 1, 64)   # k=1: the centre crop
    assert (ys.numpy().tolist(), xs.numpy().tolist()) == ([18], [33])
    centre = tf.image.resize_with_crop_or_pad(tf.constant(coord_image(101, 130)), 64, 64)
    patch = patches.extract_patches(tf.constant(coord_image(101, 130)), 1, 64, False)[0]
    np.testing.assert_array_equal(patch.numpy(), centre.numpy())


@pytest.mark.parametrize("height,width", [(300, 400), (P, P), (P + 1, 5 * P), (10, 100)])
def test_random_crops_lie_inside_the_image(height, width):
    image = coord_image(height, width)
    padded = patches.pad_to_min_size(tf.constant(image), P).numpy()
    ph, pw = padded.shape[:2]
    seen = set()
    for s in range(20):
        crops = patches.extract_patches(tf.constant(image), K, P, is_training=True,
                                          seed=tf.constant([s, 7], tf.int64)).numpy()
        assert crops.shape == (K, P, P, 3) and crops.dtype == np.uint8
        for patch in crops:
            hits = [(y, x) for y in range(ph - P + 1) for x in range(pw - P + 1)
                    if np.array_equal(padded[y:y + P, x:x + P], patch)] if height < P else None
            if hits is None:
                y, x = where_is(patch)
                assert 0 <= y <= height - P and 0 <= x <= width - P
                np.testing.assert_array_equal(patch, image[y:y + P, x:x + P])
                seen.add((y, x))
            else:
                assert hits, "crop not found in the padded image"
                seen.add(hits[0])
    if (height - P + 1) * (width - P + 1) > 50:
        assert len(seen) > 20  # really random, not a fixed set of positions


def test_random_crops_stateless_and_unseeded():
    image = tf.constant(coord_image(200, 300))
    seed = tf.constant([3, 4], tf.int64)
    a = patches.extract_patches(image, K, P, True, seed=seed).numpy()
    b = patches.extract_patches(image, K, P, True, seed=seed).numpy()
    c = patches.extract_patches(image, K, P, True, seed=tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = patches.extract_patches(image, K, P, True).numpy()  # stateful path works too
    assert d.shape == (K, P, P, 3)


def test_small_image_is_zero_padded_symmetrically():
    image = coord_image(10, 21)
    for training in (False, True):
        crops = patches.extract_patches(tf.constant(image), 3, P, training,
                                          seed=tf.constant([1, 2])).numpy()
        assert crops.shape == (3, P, P, 3)
        for patch in crops:  # the whole image, centred, odd extra pixel bottom/right
            top, left = (P - 10) // 2, (P - 21) // 2
            np.testing.assert_array_equal(patch[top:top + 10, left:left + 21], image)
            assert patch.sum() == image.astype(np.int64).sum()
    # padded in one dimension only: 20 x 100 image, P=32 -> rows padded, columns cropped
    wide = coord_image(20, 100)
    crops = patches.extract_patches(tf.constant(wide), 2, P, False).numpy()
    np.testing.assert_array_equal(crops[0, 6:26], wide[:, 0:P])
    np.testing.assert_array_equal(crops[1, 6:26], wide[:, 100 - P:])
    assert not crops[:, :6].any() and not crops[:, 26:].any()


def test_decode_image_greyscale_png_and_jpeg():
    grey = textured(30, 40, 0, grey=True)
    out = patches.decode_image(tf.constant(jpeg(grey))).numpy()
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    rgb = textured(30, 40, 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    np.testing.assert_array_equal(patches.decode_image(tf.constant(buf.getvalue())).numpy(), rgb)


# ------------------------------------------------------------------------- decoder and parser

def test_decoder_and_parser_targets(records_dir):
    data_dir, train, _ = records_dir
    serialized = list(tf.data.TFRecordDataset(pipeline.list_shards(data_dir, "train")))
    batch = pipeline.Decoder().decode(tf.stack(serialized))
    assert set(batch) == set(features.feature_spec())
    one = pipeline.Decoder(keys=[features.IMAGE_ENCODED]).decode(serialized[0])
    assert list(one) == [features.IMAGE_ENCODED] and one[features.IMAGE_ENCODED].shape == []
    parser = pipeline.Parser("shutter", "binary", num_patches=K, patch_size=P)
    ids = [int(s) for s in batch[features.IMAGE_SOURCE_ID].numpy()]
    spec = labels.task_spec("shutter", "binary")
    expected = [spec.target(SHUTTER_FINE[i]) for i in ids]
    assert list(parser.target(batch)) == ["shutter"]
    assert parser.target(batch)["shutter"].numpy().tolist() == expected
    assert parser.target(batch)["shutter"].dtype == tf.int32
    # out-of-range fine labels are left out, not an error
    assert parser.target({"label/shutter": tf.constant([20, 99, -5], tf.int64)})[
        "shutter"].numpy().tolist() == [-1, -1, -1]
    crops, label = parser.parse_fn(False)(one | {"label/shutter": tf.constant(9, tf.int64)})
    assert crops.shape == (K, P, P, 3) and crops.dtype == tf.uint8
    assert int(label["shutter"]) == 1
    with pytest.raises(ValueError):
        pipeline.Decoder(keys=["image/nope"])


# ------------------------------------------------------------------------------------- dataset

def test_eval_dataset_shapes_filter_labels_and_determinism(records_dir):
    data_dir, train, _ = records_dir
    ds = make_dataset(data_dir, "train", "shutter", batch_size=3, num_patches=K,
                              patch_size=P, is_training=False)
    shapes = [(p.shape, p.dtype, y["shutter"].shape, y["shutter"].dtype) for p, y in ds]
    assert shapes[0] == ((3, K, P, P, 3), tf.uint8, (3,), tf.int32)
    crops, got = run(ds)
    kept = [(i, labels.task_spec("shutter", "binary").target(f))
            for i, f in enumerate(SHUTTER_FINE)]
    kept = [(i, t) for i, t in kept if t >= 0]
    assert len(got) == len(kept) == 7          # 6, 7 and -1 dropped
    assert sorted(got.tolist()) == sorted(t for _, t in kept)
    # eval order: shards sorted, interleaved one record at a time: 0, 1, 2, ... here
    assert got.tolist() == [t for _, t in kept]
    # each example's patches are exactly the grid crops of the decoded JPEG
    for (i, _), example_patches in zip(kept, crops):
        image = np.asarray(patches.pad_to_min_size(
            tf.constant(decoded_jpeg(train[i][0])), P))
        for (y, x), patch in zip(grid_reference(*image.shape[:2], K, P), example_patches):
            np.testing.assert_array_equal(patch, image[y:y + P, x:x + P])
    again, _ = run(ds)
    np.testing.assert_array_equal(crops, again)
    # fine task keeps every labelled example; drop_remainder gives full batches only
    fine = make_dataset(data_dir, "train", "shutter", task="fine", batch_size=4,
                                num_patches=K, patch_size=P, drop_remainder=True,
                                is_training=False)
    assert [int(y["shutter"].shape[0]) for _, y in fine] == [4, 4]  # 9 labelled: 2 full batches


def test_training_crops_fresh_each_epoch_and_repeatable_with_seed(records_dir):
    data_dir, _, _ = records_dir
    kwargs = dict(batch_size=4, num_patches=K, patch_size=P, seed=123, shuffle_buffer=16)
    ds = make_dataset(data_dir, "train", "shutter", **kwargs)
    e1, y1 = run(ds)
    e2, y2 = run(ds)
    assert e1.shape == (7, K, P, P, 3) and sorted(y1.tolist()) == sorted(y2.tolist())
    assert not np.array_equal(e1, e2)                       # fresh crops / order per epoch
    same = make_dataset(data_dir, "train", "shutter", **kwargs)
    f1, z1 = run(same)
    f2, z2 = run(same)
    np.testing.assert_array_equal(e1, f1)                    # same seed: same run
    np.testing.assert_array_equal(e2, f2)
    np.testing.assert_array_equal(y1, z1)
    other = make_dataset(data_dir, "train", "shutter", **(kwargs | {"seed": 124}))
    assert not np.array_equal(run(other)[0], e1)
    # with repeat(), successive passes of one stream differ too
    stream = make_dataset(data_dir, "train", "shutter", repeat=True, cache=True,
                                  **(kwargs | {"batch_size": 7}))
    it = iter(stream)
    a, b = next(it)[0].numpy(), next(it)[0].numpy()
    assert a.shape == (7, K, P, P, 3) and not np.array_equal(a, b)


def test_several_fields_mask_missing_labels_and_keep_any_labelled(records_dir):
    data_dir, train, _ = records_dir
    parser = pipeline.Parser("iso,shutter", "binary")
    assert [h.name for h in parser.heads] == ["shutter", "iso"]  # canonical order
    decoded = {"label/shutter": tf.constant([0, 6, 6, -1], tf.int64),
               "label/iso": tf.constant([-1, 0, 1, 3], tf.int64)}
    target = parser.target(decoded)
    assert target["shutter"].numpy().tolist() == [0, -1, -1, -1]
    assert target["iso"].numpy().tolist() == [-1, 0, -1, 1]
    assert parser.keep(decoded).numpy().tolist() == [True, True, False, True]
    # every train record has iso class 0 (binary ISO 100): all are kept, shutter masked as -1
    ds = make_dataset(data_dir, "train", "shutter,iso", batch_size=4, num_patches=K,
                              patch_size=P, is_training=False)
    _, shutter = run(ds, "shutter")
    _, iso = run(ds, "iso")
    assert len(iso) == len(train) and set(iso.tolist()) == {0}
    expected = [labels.task_spec("shutter", "binary").target(f) for f in SHUTTER_FINE]
    assert shutter.tolist() == expected                          # -1 kept, as a mask
    assert pipeline.count_examples(data_dir, "train", "shutter,iso", "binary") == len(train)
    assert pipeline.count_examples(data_dir, "train", "shutter", "binary") == 7


def test_an_epoch_is_a_function_of_seed_and_epoch(records_dir):
    data_dir, _, _ = records_dir
    kwargs = dict(batch_size=4, num_patches=K, patch_size=P, seed=7, shuffle_buffer=16)
    first = run(make_dataset(data_dir, "train", "shutter", epoch=3, **kwargs))
    again = run(make_dataset(data_dir, "train", "shutter", epoch=3, **kwargs))
    np.testing.assert_array_equal(first[0], again[0])      # a new pipeline, the same epoch
    np.testing.assert_array_equal(first[1], again[1])
    other = run(make_dataset(data_dir, "train", "shutter", epoch=4, **kwargs))
    assert not np.array_equal(first[0], other[0])
    assert pipeline._stage_seed(7, "crops", 3) == 1341321889  # pinned: resumes must not change
    assert pipeline._stage_seed(7, "crops", 3) != pipeline._stage_seed(7, "crops", 4)
    assert pipeline._stage_seed(7, "files", 3) != pipeline._stage_seed(7, "shuffle", 3)


def test_left_out_examples_are_never_decoded(tmp_path):
    # a record whose bytes are not an image, with a label the task leaves out: the filter runs on
    # the parsed label before decoding, so the pipeline must not even notice
    path = tmp_path / features.SHARD_PATTERN.format(split="validation", index=0, count=1)
    with tf.io.TFRecordWriter(str(path)) as w:
        for encoded, fine in ((b"not an image", 7), (jpeg(textured(40, 40, 0)), 2)):
            ex = features.make_example(encoded=encoded, height=40, width=40, source_id="x",
                                       exposure_time=None, f_number=None, iso=None,
                                       labels={"shutter": fine})
            w.write(ex.SerializeToString())
    ds = make_dataset(str(tmp_path), "validation", "shutter", num_patches=K, patch_size=P)
    crops, got = run(ds)
    assert got.tolist() == [0] and crops.shape == (1, K, P, P, 3)
    fine = make_dataset(str(tmp_path), "validation", "shutter", task="fine",
                                num_patches=K, patch_size=P)
    with pytest.raises(tf.errors.InvalidArgumentError):
        run(fine)  # ...whereas the fine task keeps it, and decoding it fails


def test_empty_dir_and_missing_split(tmp_path, records_dir):
    with pytest.raises(ValueError, match="train-") as info:
        make_dataset(str(tmp_path), "train", "shutter")
    assert str(tmp_path) in str(info.value)
    data_dir, _, _ = records_dir
    with pytest.raises(ValueError, match="test"):
        make_dataset(data_dir, "test", "shutter")


# ------------------------------------------------------------------------------------ manifest

def test_manifest_counts_and_stats(records_dir, tmp_path):
    data_dir, _, _ = records_dir
    assert pipeline.count_examples(data_dir, "train", "shutter", "binary") == 7
    assert pipeline.count_examples(data_dir, "train", "shutter", "fine") == 9
    assert pipeline.count_examples(data_dir, "validation", "shutter", "binary") == 4
    assert pipeline.count_examples(data_dir, "train", "aperture", "binary") == 0  # not counted
    assert pipeline.count_examples(data_dir, "test", "shutter", "binary") == 0
    with pytest.raises(ValueError, match="field"):
        pipeline.count_examples(data_dir, "train", "focus", "binary")
    (tmp_path / features.MANIFEST).write_text("{}")
    with pytest.raises(ValueError, match="counts"):
        pipeline.count_examples(str(tmp_path), "train", "shutter", "binary")
    manifest = records_manifest.read_manifest(data_dir)
    mean, std = records_manifest.dataset_mean_std(manifest)
    assert mean == [120.0, 110.5, 100.0] and std == [60.0, 61.0, 62.0]
    with pytest.raises(ValueError, match="pixel_stats"):
        records_manifest.dataset_mean_std({"counts": {}})
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        records_manifest.read_manifest(str(tmp_path / "nowhere"))


def _per_image_reference(config, split, field, is_training, seed, epoch=None):
    """The pipeline as it was before batches were cut at once: make_dataset's stages with one
    ``Parser.parse_fn`` map per image (its crop seed the next two numbers of the stream), then
    ``batch``. The batched pipeline must give exactly its patches, labels and order."""
    parser = pipeline.Parser(field, "binary", num_patches=config.num_patches,
                             patch_size=config.patch_size)
    decoder = pipeline.Decoder(keys=parser.keys)
    ds = pipeline.read_records(config.data_dir, split, is_training, seed, epoch=epoch)
    ds = ds.batch(pipeline.PARSE_BATCH).map(decoder.decode).unbatch().filter(parser.keep)
    parse = parser.parse_fn(is_training)
    if is_training:
        ds = ds.shuffle(config.shuffle_buffer, seed=pipeline._stage_seed(seed, "shuffle", epoch),
                        reshuffle_each_iteration=epoch is None)
        crop_seeds = tf.data.Dataset.random(seed=pipeline._stage_seed(seed, "crops", epoch),
                                            rerandomize_each_iteration=epoch is None).batch(2)
        ds = tf.data.Dataset.zip(ds, crop_seeds).map(lambda d, s: parse(d, seed=s))
    else:
        ds = ds.map(parse)
    return ds.batch(config.batch_size)


def test_batches_cut_at_once_equal_the_per_image_pipeline_for_any_format(tmp_path):
    """Parser.batch_fn (full JPEG batches unrolled, a short or mixed batch looped) against the
    per-image reference: the same patches, labels and order, training crops included, with a
    PNG and a greyscale JPEG among the records and a short last batch."""
    d = tmp_path / "records"
    d.mkdir()
    writer = tf.io.TFRecordWriter(str(d / features.SHARD_PATTERN.format(
        split="train", index=0, count=1)))
    for n in range(11):
        h, w = SIZES[n % len(SIZES)]
        array = textured(h, w, seed=n, grey=(n == 3))
        if n == 5:   # a PNG: the generic decode, looped
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, "PNG")
            encoded, image_format = buf.getvalue(), "png"
        else:
            encoded, image_format = jpeg(array), "jpeg"
        writer.write(features.make_example(
            encoded=encoded, height=h, width=w, source_id=str(n), exposure_time=None,
            f_number=None, iso=None, labels={"shutter": SHUTTER_FINE[n % len(SHUTTER_FINE)]},
            image_format=image_format).SerializeToString())
    writer.close()
    config = pipeline.DataConfig(str(d), batch_size=3, num_patches=K, patch_size=P,
                                 shuffle_buffer=16)
    for is_training, seed, epoch in ((False, None, None), (True, 11, None), (True, 11, 2)):
        got = run(pipeline.make_dataset(config, "train", "shutter", is_training=is_training,
                                        seed=seed, epoch=epoch))
        want = run(_per_image_reference(config, "train", "shutter", is_training,
                                        seed if seed is not None else 0, epoch))
        assert got[0].shape == (8, K, P, P, 3)       # 11 records, 3 without a binary label
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
