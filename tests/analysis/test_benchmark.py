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
from exif_keras.modeling import backbones
from exif_keras.modeling import model as model_lib
from exif_keras.training import devices

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPORT_AVAILABLE = benchmarks.exporter is not None


# Every section but "limits", which has its own smoke test (test_limits_*) on its own run.
FIXTURE_SECTIONS = tuple(s for s in benchmarks.SECTIONS if s != "limits")


def tiny_config(work_dir, **overrides) -> benchmarks.BenchConfig:
    """--quick with a scratch trunk at P=32: every section, a few seconds each."""
    base = dict(backbone="scratch", num_patches=2, patch_size=32, filters=4, batch_size=2,
                num_images=12, repeats=2, steps=1, pipeline_batch_size=4,
                serving_batch_sizes=(1, 3), work_dir=str(work_dir), sections=FIXTURE_SECTIONS)
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
    assert list(result["sections"]) == list(FIXTURE_SECTIONS)
    config = result["config"]
    assert config["quick"] and config["resolved"]["batch_size"] == 2
    for name, section in result["sections"].items():
        if name == "serving" and not EXPORT_AVAILABLE:
            assert "skipped" in section
            continue
        if name == "precision" and devices.onednn_refuses("mixed_bfloat16"):
            assert "skipped" in section  # test_precision_section checks the reason
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
    refused = devices.onednn_refuses("mixed_bfloat16")
    if refused:  # a bfloat16 CPU held below it by ONEDNN_MAX_CPU_ISA: skipped, saying why
        assert precision == {"skipped": refused}
        return
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


# ------------------------------------------------------------------------------------- limits

LIMITS_MEASUREMENTS = {"matmul_ceiling", "paper_trunk_forward", "paper_train_step",
                       "demo_trunk_forward", "demo_train_step"}
VGG_CONVS_TO_BLOCK3 = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
                       "block3_conv1", "block3_conv2", "block3_conv3"]


def hand_flops(backbone, trunk_layer, patch_size, divisor, filters, dense_units=256):
    """(trunk, head) FLOPs of one patch counted by hand from the architecture (VGG16's widths,
    3x3 "same" convolutions, 2x2 pools; the head's 1x1, 2x2, 3x3, 2x2 convolutions of F filters
    and its dense layer), without Keras' shapes."""
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    size, cin, trunk = patch_size, 3, 0
    for name, _ in backbones.VGG16_LAYERS:
        block = int(name[len("block")])
        if name.endswith("pool"):
            size //= 2
        else:
            cout = widths[block] if backbone == "vgg16" else max(1, widths[block] // divisor)
            trunk += 2 * size * size * 3 * 3 * cin * cout
            cin = cout
        if name == trunk_layer:
            break
    head = 0
    for kernel in (1, 2, 3, 2):
        head += 2 * size * size * kernel * kernel * cin * filters
        cin = filters
    head += 2 * (size * size * filters) * dense_units
    return trunk, head


def test_per_patch_flops_counts_the_layers():
    """per_patch_flops (from the Keras layers' shapes) against a count by hand."""
    config = model_lib.ModelConfig(num_classes=2, num_patches=3, patch_size=16,
                                   backbone="scratch", trunk_layer="block2_conv1",
                                   scratch_width_divisor=8, filters=4, backbone_weights=None)
    cost = benchmarks.per_patch_flops(model_lib.build_model(config))
    trunk, head = hand_flops("scratch", "block2_conv1", 16, 8, 4)
    # block1_conv1 16x16 3->8, block1_conv2 8->8, pool, block2_conv1 8x8 8->16
    assert trunk == 2 * 9 * (16 * 16 * 3 * 8 + 16 * 16 * 8 * 8 + 8 * 8 * 8 * 16)
    assert (cost["trunk"], cost["head"]) == (trunk, head)
    assert cost["trunk_trainable"] and cost["train_step_per_patch"] == 3 * trunk + 3 * head


@pytest.fixture(scope="module")
def limits_result(tmp_path_factory):
    """The limits section alone, --quick: a VGG16 "paper" at P=32 and a "demo" read from a
    flagfile that includes another (a two-convolution scratch trunk, so that it traces fast)."""
    folder = tmp_path_factory.mktemp("limits")
    (folder / "base.flags").write_text("--backbone=scratch\n--patch_size=64\n--filters=4\n"
                                       "--scratch_width_divisor=8\n--batch_size=32\n")
    (folder / "demo.flags").write_text(f"# the demo\n--flagfile={folder / 'base.flags'}\n"
                                       "--trunk_layer=block1_conv2\n--patch_size=16\n"
                                       "--num_patches=8\n--verbose=2\n")
    config = benchmarks.BenchConfig.quick_config(
        sections=("limits",), num_patches=2, patch_size=32, batch_size=2, repeats=2, steps=1,
        work_dir=str(folder / "work"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmarks, "DEMO_FLAGFILE", str(folder / "demo.flags"))
        out = benchmarks.run_benchmark(config)
    out["flagfile"] = str(folder / "demo.flags")
    return out


def test_limits_section_fractions_of_the_ceiling(limits_result):
    assert list(limits_result["sections"]) == ["limits"]
    limits = limits_result["sections"]["limits"]
    assert set(limits["measurements"]) == LIMITS_MEASUREMENTS
    assert limits["baseline"] == "matmul_ceiling" and _positive(limits["ceiling_gflops_per_s"])
    assert limits["matmul"]["size"] == 512 and limits["matmul"]["dtype"] == "float32"
    for name, m in limits["measurements"].items():
        _check_measurement(m, rounds=2)
        for key in ("gflops_per_s", "fraction_of_ceiling", "fraction_of_ceiling_paired",
                    "fraction_of_ceiling_per_cpu"):
            assert _positive(m[key]), (name, key)
    ceiling = limits["measurements"]["matmul_ceiling"]
    assert ceiling["fraction_of_ceiling"] == 1.0
    assert ceiling["flops_per_call"] == 2 * 512 ** 3
    assert ceiling["gflops_per_s"] == pytest.approx(limits["ceiling_gflops_per_s"])
    # Achieved FLOP/s = images/s x FLOPs per image, over the ceiling's.
    forward = limits["measurements"]["paper_trunk_forward"]
    assert forward["gflops_per_s"] == pytest.approx(
        forward["images_per_s"] * forward["flops_per_image"] / 1e9)
    assert forward["fraction_of_ceiling"] == pytest.approx(
        forward["gflops_per_s"] / limits["ceiling_gflops_per_s"])
    # Every trunk convolution alone: VGG16's seven to block3_conv3, the demo's two.
    assert [r["layer"] for r in limits["layers"]["paper"]] == VGG_CONVS_TO_BLOCK3
    assert [r["layer"] for r in limits["layers"]["demo"]] == ["block1_conv1", "block1_conv2"]
    for rows in limits["layers"].values():
        for row in rows:
            assert _positive(row["gflops_per_s"]) and _positive(row["fraction_of_ceiling"])
    # B*k folded patches of block1_conv2's input: 16x16, 64 / 8 channels
    assert limits["layers"]["demo"][1]["input_shape"] == [2 * 2, 16, 16, 8]
    assert limits["layers"]["demo"][1]["kernel"] == [3, 3, 8, 8]
    assert isinstance(limits["notes"], list)


def test_limits_flops_per_image_from_the_layers(limits_result):
    """Both configurations' FLOPs per image equal a count by hand of what they record."""
    limits = limits_result["sections"]["limits"]
    for name, c in limits["configurations"].items():
        trunk, head = hand_flops(c["backbone"], c["trunk_layer"], c["patch_size"],
                                 c["scratch_width_divisor"], c["filters"])
        k = c["num_patches"]
        assert c["trunk_trainable"] == (c["backbone"] == "scratch"), name
        backward = 3 if c["trunk_trainable"] else 1
        assert c["flops_per_image"] == {"trunk_forward": k * trunk,
                                        "train_step": k * (backward * trunk + 3 * head)}, name
        assert limits["measurements"][f"{name}_trunk_forward"]["flops_per_image"] == k * trunk
        assert (sum(r["flops_per_image"] for r in limits["layers"][name]) == k * trunk)
    paper, demo = limits["configurations"]["paper"], limits["configurations"]["demo"]
    assert (paper["backbone"], paper["patch_size"], paper["batch_size"]) == ("vgg16", 32, 2)
    # The demo from its flagfile (and the one it includes), shrunk by --quick to the train
    # batch and the quick k.
    assert demo["source"] == os.path.relpath(limits_result["flagfile"])
    assert (demo["backbone"], demo["trunk_layer"], demo["patch_size"], demo["filters"],
            demo["scratch_width_divisor"]) == ("scratch", "block1_conv2", 16, 4, 8)
    assert (demo["batch_size"], demo["num_patches"]) == (2, 2)


def test_limits_reports_and_isa(limits_result):
    limits = limits_result["sections"]["limits"]
    onednn = limits["onednn"]
    assert onednn["isa"] is None or onednn["isa"].strip()
    assert onednn["onednn_max_cpu_isa"] == os.environ.get("ONEDNN_MAX_CPU_ISA")
    assert onednn["consistent"] in (True, False, None)
    rows = [r for r in benchmarks.table_rows(limits_result) if r[0] == "limits"]
    assert [r[1] for r in rows][0] == "matmul_ceiling" and rows[0][7] == "1 (base)"
    assert all(r[7].endswith("x") and r[8].endswith("x") for r in rows[1:])
    text = benchmarks.format_text(limits_result)
    assert "of the ceiling" in text and "block3_conv3" in text
    markdown = benchmarks.format_markdown(limits_result)
    assert "| paper | trunk_forward |" in markdown and "| demo | block1_conv2 |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 4 + len(benchmarks.table_rows(limits_result)) + len(
        benchmarks.limits_rows(limits_result))
    assert json.loads(json.dumps(limits_result)) == limits_result
    # No section needed the generated sample: none was made.
    assert not os.path.exists(os.path.join(limits_result["config"]["work_dir"], "records"))


def test_onednn_isa_limit_check():
    avx512 = "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions"
    amx = "Intel AVX-512 with Intel DL Boost and bfloat16 support and Intel AMX"
    assert benchmarks.isa_consistent("AVX2", "Intel AVX2")
    assert benchmarks.isa_consistent("avx2_vnni", "Intel AVX2 with Intel DL Boost")
    assert not benchmarks.isa_consistent("AVX2", avx512)
    assert not benchmarks.isa_consistent("AVX512_CORE_BF16", amx)
    assert benchmarks.isa_consistent("AVX512_CORE_AMX", amx)
    assert benchmarks.isa_consistent("AVX512_CORE", "Intel AVX2")
    assert benchmarks.isa_consistent("ALL", avx512) is None
    assert benchmarks.isa_consistent(None, avx512) is None
    assert benchmarks.isa_consistent("AVX2", None) is None
    info = benchmarks.onednn_info(avx512, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert info["consistent"] is False and "the limit did not take effect" in info["note"]
    assert (info["max_cpu_isa_variable"], info["onednn_max_cpu_isa"]) == (
        "ONEDNN_MAX_CPU_ISA", "AVX2")
    info = benchmarks.onednn_info("Intel AVX2", {"DNNL_MAX_CPU_ISA": "AVX2"})
    assert info["consistent"] and info["note"] is None and info["onednn_max_cpu_isa"] is None
    assert benchmarks.onednn_info("Intel AVX2", {})["consistent"] is None


def test_demo_settings_follow_the_demo_flagfile(tmp_path):
    """The demo's model as pipelines/demo.flags sets it (its plain --name=value lines), and the
    built-in constants where the file is missing or does not parse."""
    settings, source = benchmarks.demo_settings()
    assert source == os.path.relpath(REPO / "pipelines" / "demo.flags")
    given = dict(line[2:].split("=", 1) for line in
                 (REPO / "pipelines" / "demo.flags").read_text().splitlines()
                 if line.startswith("--") and "=" in line)
    for name, value in settings.items():
        if name in given:
            assert str(value) == given[name], name
    assert settings["backbone"] == "scratch"
    missing, source = benchmarks.demo_settings(str(tmp_path / "none.flags"))
    assert missing == benchmarks.DEMO_DEFAULTS and source.startswith("built-in constants")
    (tmp_path / "bad.flags").write_text("--patch_size=many\n")
    bad, source = benchmarks.demo_settings(str(tmp_path / "bad.flags"))
    assert bad == benchmarks.DEMO_DEFAULTS and "did not parse" in source


def test_goal_line_and_the_papers_batch_match_the_issue_and_the_flagfiles():
    """The benchmark's goal line is issue 16's 0.85x, and the batch its train note names is the
    one every paper flagfile trains with."""
    assert benchmarks.GOAL_RATIO == 0.85
    for path in sorted((REPO / "pipelines").glob("paper_*.flags")):
        lines = path.read_text().splitlines()
        batch = [line.split("=", 1)[1] for line in lines if line.startswith("--batch_size=")]
        inherits = any(line.startswith("--flagfile=pipelines/paper_") for line in lines)
        assert batch == [str(benchmarks.PAPER_BATCH_SIZE)] or (inherits and not batch), path.name


def test_train_notes_say_why_and_name_the_papers_batch():
    cost = {"trunk": 100, "head": 3, "trunk_trainable": False, "ceiling_train_vs_trunk": 0.91}
    assert benchmarks.train_notes(0.86, cost, 10, 8) == []                     # goal met
    below = benchmarks.train_notes(0.84, cost, 16_864_514, 8)
    assert "0.840x" in below[0] and "could reach 0.91x" in below[1]
    assert "16,864,514 parameters" in below[1]
    assert "--batch_size=32" in below[2] and "8/32" in below[2] and len(below) == 3
    assert len(benchmarks.train_notes(0.84, cost, 10, 32)) == 2    # the paper's batch already
    out_of_reach = dict(cost, ceiling_train_vs_trunk=0.6, trunk_trainable=True)
    notes = benchmarks.train_notes(0.5, out_of_reach, 10, 8)
    assert len(notes) == 2 and "cannot exceed 0.60x" in notes[1] and "trainable" in notes[1]
