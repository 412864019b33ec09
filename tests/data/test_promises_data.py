"""Promises of the input pipeline, the records and the labels that no other test held: each test
here fails when its promise is broken by a one-line change (see tests/MUTATION.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from exif_keras.common import labels, stops
from exif_keras.data import pipeline
from exif_keras.records import features
from exif_keras.records import manifest as records_manifest
from exif_keras.training import trainer

from fakes import jpeg, textured, write_split

P, K = 16, 1
N = 12  # records in the single shard, one fine shutter class each: the label names the record


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_shard")
    write_split(d, "train", [(textured(24, 24, seed=n), {"shutter": n}) for n in range(N)],
                shards=1)
    counts = {"train": {"shutter": {str(n): 1 for n in range(N)}}}
    (d / features.MANIFEST).write_text(json.dumps({"counts": counts}))
    return str(d)


def _order(data_dir, **kwargs) -> list[int]:
    config = pipeline.DataConfig(data_dir, batch_size=5, num_patches=K, patch_size=P,
                                 shuffle_buffer=64)
    ds = pipeline.make_dataset(config, "train", "shutter", "fine", **kwargs)
    return [int(v) for _, y in ds for v in y["shutter"].numpy()]


def test_every_epoch_has_a_new_order_drawn_from_seed_and_epoch_with_one_shard(one_shard):
    assert len(pipeline.list_shards(one_shard, "train")) == 1
    orders = [_order(one_shard, seed=7, epoch=e) for e in range(4)]
    for order in orders:
        assert sorted(order) == list(range(N))            # every record once per epoch
    assert len({tuple(o) for o in orders}) == 4, "each epoch its own example order"
    assert _order(one_shard, seed=7, epoch=2) == orders[2]  # a function of (seed, epoch)
    assert _order(one_shard, seed=8, epoch=2) != orders[2]  # ... of the seed too
    # without an epoch, successive passes of one pipeline reshuffle
    config = pipeline.DataConfig(one_shard, batch_size=N, num_patches=K, patch_size=P,
                                 shuffle_buffer=64)
    ds = pipeline.make_dataset(config, "train", "shutter", "fine", seed=7)
    passes = [tuple(int(v) for _, y in ds for v in y["shutter"].numpy()) for _ in range(3)]
    assert len(set(passes)) == 3
    # evaluation keeps the stored order
    assert _order(one_shard, is_training=False) == list(range(N))


def test_regression_target_is_nan_where_the_photo_has_no_usable_value():
    parser = pipeline.Parser("shutter", "regression")
    decoded = {"label/shutter": tf.constant([13, -1, 5], tf.int64),
               features.EXIF_KEYS["shutter"]: tf.constant([1.0, 1 / 8, 1 / 256], tf.float32)}
    target = parser.target(decoded)["shutter"].numpy()
    assert target[0] == pytest.approx(0.0) and np.isnan(target[1])
    assert target[2] == pytest.approx(-8.0)
    assert parser.keep(decoded).numpy().tolist() == [True, False, True]


def test_count_examples_counts_only_the_tasks_labelled_examples(one_shard):
    # binary shutter: fine 0..5 fast, 8..19 slow, 6 and 7 left out
    assert pipeline.count_examples(one_shard, "train", "shutter", "binary") == N - 2
    assert pipeline.count_examples(one_shard, "train", "shutter", "fine") == N
    assert pipeline.count_examples(one_shard, "validation", "shutter", "binary") == 0


def test_regression_stats_are_mean_and_std_in_stops(tmp_path):
    values = [1 / 1000, 1 / 250, 1 / 60, 1 / 8, 1.0]
    with tf.io.TFRecordWriter(os.path.join(tmp_path, features.SHARD_PATTERN.format(
            split="train", index=0, count=1))) as w:
        for n, t in enumerate(values + [None]):
            fine = -1 if t is None else labels.field_spec("shutter").classify(t)
            array = textured(8, 8, seed=n)
            w.write(features.make_example(
                encoded=jpeg(array), height=8, width=8, source_id=str(n), exposure_time=t,
                f_number=None, iso=None, labels={"shutter": fine}).SerializeToString())
    mean, std = pipeline.regression_stats(str(tmp_path), "shutter")
    s = np.log2(values)
    assert mean == pytest.approx(s.mean(), rel=1e-5) and std == pytest.approx(s.std(), rel=1e-5)
    assert stops.value_to_stops(1 / 8, "shutter") == pytest.approx(-3.0)


def test_verify_records_names_a_shard_listed_in_a_split_it_is_not_read_as(tmp_path):
    """Every split's unlisted shards are named, not only the first split's."""
    write_split(tmp_path, "train", [(textured(8, 8, seed=1), {"shutter": 1})], shards=1)
    write_split(tmp_path, "validation", [(textured(8, 8, seed=2), {"shutter": 1})], shards=1)
    train_name = features.SHARD_PATTERN.format(split="train", index=0, count=1)
    val_name = features.SHARD_PATTERN.format(split="validation", index=0, count=1)
    manifest = {"shards": {"train": {train_name: {"records": 1}},
                           "validation": {val_name: {"records": 1}}}}
    (tmp_path / features.MANIFEST).write_text(json.dumps(manifest))
    assert records_manifest.verify_records(str(tmp_path)) == 2
    stray = features.SHARD_PATTERN.format(split="validation", index=0, count=2)
    (tmp_path / stray).write_bytes((tmp_path / val_name).read_bytes())
    with pytest.raises(records_manifest.DamagedRecordsError, match=f"{stray}: not listed"):
        records_manifest.verify_records(str(tmp_path))


# ------------------------------------------------------------ labels and stops: the arithmetic

def test_task_specs_of_every_task_name_their_field_and_task():
    assert labels.task_spec("iso") == labels.task_spec("iso", "binary")  # binary by default
    for field in labels.FIELDS:
        spec = labels.field_spec(field)
        for task in labels.TASKS:
            t = labels.task_spec(field, task)
            assert (t.field, t.task, t.name) == (field, task, field)
        regression = labels.task_spec(field, "regression")
        # no classes; every fine class is a photo with a value, as in the fine task
        assert regression.class_names == () and regression.num_classes == 0
        assert regression.fine_to_target == tuple(range(spec.num_classes))
        assert [regression.target(c) for c in (-1, 0, spec.num_classes - 1,
                                               spec.num_classes)] == \
            [-1, 0, spec.num_classes - 1, -1]
        fine = labels.task_spec(field, "fine")
        assert fine.target(spec.num_classes) == labels.NO_LABEL   # one past the last class
        assert fine.class_names == spec.class_names
    with pytest.raises(ValueError, match="expected one of binary, fine, regression"):
        labels.task_spec("iso", "ternary")


def test_stops_conversions_keep_scalars_scalar_and_unknowns_nan():
    for value in (2.0, 1, None, float("nan")):
        assert isinstance(stops.value_to_stops(value, "shutter"), float)
    assert stops.value_to_stops(4, "shutter") == 2.0
    mixed = stops.value_to_stops([2.0, None, 4], "shutter")        # a list holding an unknown
    assert mixed.dtype == np.float64 and np.isnan(mixed[1]) and mixed[[0, 2]].tolist() == [1, 2]
    assert isinstance(stops.stops_to_value(2, "iso"), float)
    got = stops.tf_value_to_stops(tf.constant([0.0, -1.0, np.inf, np.nan, 2.0]), "shutter")
    got = got.numpy()
    assert np.isnan(got[:4]).all() and got[4] == pytest.approx(1.0)
    np.testing.assert_array_equal(np.isnan(stops.value_to_stops(
        np.array([0.0, -1.0, np.inf, np.nan, 2.0]), "shutter")), [True] * 4 + [False])


def test_class_counts_ignore_ids_outside_the_classes_and_keep_every_class():
    """The training split's fine class counts (the majority-class baseline, and the export's
    train_class_counts), read from the manifest: ids outside the classes are left out, every
    class has its count, 0 where it has no photo."""
    manifest = {"counts": {"train": {"iso": {"0": 1, "4": 2, "5": 1, "-1": 1}},
                           "validation": {"shutter": {"3": 7}}}}
    counts = trainer._train_class_counts(manifest, "iso")  # 5 classes
    assert counts == [1, 0, 0, 0, 2] and all(type(c) is int for c in counts)
    assert trainer._train_class_counts(manifest, "shutter") == [0] * 20
    one = {"counts": {"train": {"shutter": {"0": 1}}}}
    assert trainer._train_class_counts(one, "shutter") == [1] + [0] * 19
