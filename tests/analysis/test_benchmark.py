"""Tests of the speed benchmark (exif_keras/analysis/benchmarks.py, timing.py and the command
exif_keras/benchmark.py) on a tiny configuration.

Structure only: every section present, rates positive, ratios computed, the text, Markdown and JSON
reports well formed. Timings are never asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import pytest

from exif_keras.analysis import benchmarks, timing

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPORT_AVAILABLE = benchmarks.exporter is not None


def tiny_config(work_dir, **overrides) -> benchmarks.BenchConfig:
    """--quick with a scratch trunk at P=32: every section, a few seconds each."""
    base = dict(backbone="scratch", num_patches=2, patch_size=32, filters=4, batch_size=2,
                num_images=12, repeats=2, steps=1, pipeline_batch_size=4,
                serving_batch_sizes=(1, 3), work_dir=str(work_dir))
    base.update(overrides)
    return benchmarks.BenchConfig.quick_config(**base)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("benchmark")
    policy = keras.config.dtype_policy().name
    out = benchmarks.run_benchmark(tiny_config(work_dir))
    assert keras.config.dtype_policy().name == policy  # restored
    return out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_measurement(m, rounds):
    for key in ("images_per_s", "images_per_s_min", "images_per_s_max", "ms_per_image",
                "images_per_cpu_s", "cores_used"):
        assert _positive(m[key]), key
    assert m["images_per_s_min"] <= m["images_per_s"] <= m["images_per_s_max"]
    assert m["rounds"] == rounds and len(m["samples"]) == rounds
    assert all(s["images"] > 0 and s["wall_s"] > 0 for s in m["samples"])


def _check_ratio(r, of, to):
    assert (r["of"], r["to"]) == (of, to)
    for key in ("wall", "wall_paired", "per_cpu", "per_cpu_paired"):
        assert _positive(r[key]), key


def test_every_section_present_with_positive_rates(result):
    assert list(result["sections"]) == list(benchmarks.SECTIONS)
    config = result["config"]
    assert config["quick"] and config["resolved"]["batch_size"] == 2
    for name, section in result["sections"].items():
        if name == "serving" and not EXPORT_AVAILABLE:
            assert "skipped" in section
            continue
        assert "skipped" not in section, section.get("skipped")
        assert section["baseline"] in section["measurements"] or name in ("serving", "convert")
        for m in section["measurements"].values():
            _check_measurement(m, rounds=2)
        assert isinstance(section["notes"], list)
    assert result["seconds"] > 0


def test_convert_section(result):
    convert = result["sections"]["convert"]
    beam = benchmarks.beam_available() is None
    assert set(convert["measurements"]) == {"make_records_sample", "pillow_decode_sample"} | (
        {"beam_direct_sample"} if beam else set())
    _check_ratio(convert["ratios"]["make_records_vs_pillow_decode_sample"],
                 "make_records_sample", "pillow_decode_sample")
    if beam:  # the DirectRunner beside the local runner, on the same files
        _check_ratio(convert["ratios"]["beam_direct_vs_make_records_sample"],
                     "beam_direct_sample", "make_records_sample")
        assert convert["measurements"]["beam_direct_sample"]["images_per_round"] == 12
    else:
        assert any("beam_direct skipped" in n for n in convert["notes"])
    # Every file of the sample, once per round, on both sides.
    assert convert["measurements"]["pillow_decode_sample"]["images_per_round"] == 12
    assert convert["measurements"]["make_records_sample"]["images_per_round"] == 12


def test_pipeline_section(result):
    pipeline = result["sections"]["pipeline"]
    assert set(pipeline["measurements"]) == {"make_dataset_eval", "make_dataset_train",
                                             "decode_jpeg"}
    # Every sample photo has a fine shutter class: both sides see the same records.
    assert pipeline["records_kept_by_pipeline"] == pipeline["records"] > 0
    _check_ratio(pipeline["ratios"]["eval_vs_decode"], "make_dataset_eval", "decode_jpeg")
    _check_ratio(pipeline["ratios"]["train_vs_decode"], "make_dataset_train", "decode_jpeg")
    assert set(pipeline["goal_met"]) == {"eval_vs_decode", "train_vs_decode"}
    # One batch per round of pipeline_batch_size images.
    assert pipeline["measurements"]["decode_jpeg"]["images_per_round"] == 4


def test_train_and_patch_modes_sections(result):
    train = result["sections"]["train"]
    assert set(train["measurements"]) == {"train_step_folded", "trunk_forward"}
    _check_ratio(train["ratios"]["train_step_vs_trunk_forward"], "train_step_folded",
                 "trunk_forward")
    flops = train["flops_per_patch"]
    assert flops["trunk"] > 0 and flops["head"] > 0
    assert flops["trunk_trainable"]  # scratch: its backward is counted in the ceiling
    assert 0 < flops["ceiling_train_vs_trunk"] < 1
    assert isinstance(train["goal_met"]["train_step_vs_trunk_forward"], bool)
    assert train["batch_size"] == 2 and train["dtype_policy"] == "float32"

    modes = result["sections"]["patch_modes"]
    assert set(modes["measurements"]) == {"train_step_folded", "train_step_time_distributed"}
    _check_ratio(modes["ratios"]["folded_vs_time_distributed"], "train_step_folded",
                 "train_step_time_distributed")
    # One interleaved measurement serves both sections: the folded figures are the same.
    assert modes["measurements"]["train_step_folded"] == train["measurements"]["train_step_folded"]


@pytest.mark.skipif(not EXPORT_AVAILABLE, reason="exif_keras.serving is not importable")
def test_serving_section(result):
    serving = result["sections"]["serving"]
    assert set(serving["measurements"]) == {f"{kind}_b{b}" for b in (1, 3)
                                            for kind in ("savedmodel", "keras", "decode_patch")}
    for b in (1, 3):
        _check_ratio(serving["ratios"][f"savedmodel_vs_keras_b{b}"], f"savedmodel_b{b}",
                     f"keras_b{b}")
        info = serving["per_batch_size"][str(b)]
        for key in ("savedmodel_ms_per_photo", "keras_ms_per_photo", "decode_patch_ms_per_photo"):
            assert _positive(info[key]), key
        # The SavedModel and the in-process model are the same network on the same pixels.
        assert info["max_abs_probability_difference"] < 1e-4
    assert serving["image_size"] == [500, 375]


def test_precision_section(result):
    precision = result["sections"]["precision"]
    assert set(precision["measurements"]) == {f"{p}_{what}" for p in ("float32", "bfloat16")
                                              for what in ("train_step", "trunk_forward")}
    assert precision["dtype_policies"] == {"float32": "float32", "bfloat16": "mixed_bfloat16"}
    for what in ("train_step", "trunk_forward"):
        _check_ratio(precision["ratios"][f"bfloat16_vs_float32_{what}"], f"bfloat16_{what}",
                     f"float32_{what}")
    assert precision["trunk_batch_patches"] == benchmarks.PRECISION_TRUNK_PATCHES
    assert set(precision["cpu_bfloat16_flags"]) <= {"avx512_bf16", "amx_bf16"}
    rows = [r for r in benchmarks.table_rows(result) if r[0] == "precision"]
    assert [r[7] for r in rows if r[1].startswith("float32")] == ["1 (base)", "1 (base)"]


def test_reports(result):
    text = benchmarks.format_text(result)
    for name in ("make_dataset_eval", "decode_jpeg", "train_step_folded", "trunk_forward",
                 "train_step_time_distributed", "FLOP ceiling", "machine:"):
        assert name in text, name
    markdown = benchmarks.format_markdown(result)
    assert "**Machine:**" in markdown and result["machine"]["tensorflow"] in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(benchmarks.table_rows(result))
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert json.loads(json.dumps(result)) == result       # JSON-ready


def test_machine_info():
    info = benchmarks.machine_info()
    assert info["cpu"] and info["cpu_count"] >= 1 and info["tensorflow"]
    assert isinstance(info["gpus"], list)


def test_config_validation_and_resolution():
    with pytest.raises(ValueError, match="sections"):
        benchmarks.BenchConfig(sections=("pipeline", "nope"))
    with pytest.raises(ValueError, match="batch_size"):
        benchmarks.BenchConfig(batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        benchmarks.BenchConfig(mixed_precision="maybe")
    assert benchmarks.BenchConfig(mixed_precision="bfloat16").resolved(gpu=False)["mixed_precision"]
    cpu = benchmarks.BenchConfig().resolved(gpu=False)
    gpu = benchmarks.BenchConfig().resolved(gpu=True)
    assert (cpu["batch_size"], gpu["batch_size"]) == (8, 32)
    assert not cpu["mixed_precision"] and gpu["mixed_precision"]
    assert cpu["serving_steps"] == {1: 8, 32: 1}
    assert benchmarks.BenchConfig(mixed_precision="on").resolved(gpu=False)["mixed_precision"]
    quick = benchmarks.BenchConfig.quick_config()
    assert (quick.num_patches, quick.patch_size, quick.num_images) == (2, 64, 32)


def test_cli_quick_flags_and_json(tmp_path):
    out = tmp_path / "figures.json"
    argv = ["benchmark", "--quick", "--sections=pipeline", "--num_images=8", "--repeats=1",
            "--pipeline_batch_size=4", f"--work_dir={tmp_path / 'work'}", f"--json_out={out}",
            "--markdown"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "exif_keras.benchmark", *argv[1:]], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    printed = done.stdout
    assert "| pipeline | make_dataset_eval |" in printed and "**Command:**" in printed
    saved = json.loads(out.read_text())
    assert list(saved["sections"]) == ["pipeline"]
    config = saved["config"]
    # --quick presets what was not given; explicit flags win.
    assert (config["num_patches"], config["patch_size"], config["steps"]) == (2, 64, 2)
    assert (config["num_images"], config["repeats"]) == (8, 1)
    assert "--quick" in saved["command"]


def test_ratio_is_of_over_to_on_known_samples():
    """A ratio says how fast ``of`` runs relative to ``to``: twice as many images per second is
    2.0, not 0.5 (an inverted ratio would turn every speed claim in BUILD.md upside down)."""
    S = timing.Sample
    samples = {"fast": [S(1.0, 2.0, 40), S(1.0, 2.0, 44), S(1.0, 1.0, 36)],
               "slow": [S(1.0, 1.0, 20), S(2.0, 2.0, 44), S(1.0, 1.0, 18)]}
    r = timing.ratio(samples, "fast", "slow")
    assert (r["of"], r["to"]) == ("fast", "slow")
    assert r["wall"] == pytest.approx(40 / 20)                       # medians 40 and 20 img/s
    assert r["wall_paired"] == pytest.approx(2.0)                    # per round: 2, 2, 2
    assert r["per_cpu"] == pytest.approx(22 / 20)                    # medians 22 and 20 img/CPU-s
    assert r["per_cpu_paired"] == pytest.approx(1.0)                 # 20/20, 22/22, 36/18
    assert timing.ratio(samples, "slow", "fast")["wall"] == pytest.approx(0.5)
