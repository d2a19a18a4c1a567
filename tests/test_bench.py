"""`streamer bench` through the real CLI in a tiny configuration: every section of the JSON report is
there with sane numbers, and the project's fusion matched the reference loop. No timing is asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, the_error

from streamer.frames import Category
from streamer.inference.fusion import FusionParams, fuse
from streamer.tools.baselines import reference_fusion
from streamer.tools.bench.micro import random_scene

TINY = [
    "--size", "160x96", "--frames", "6", "--repeats", "1", "--memory-frames", "12",
    "--micro-sizes", "160x96,200x120", "--instances", "3,12", "--micro-repeats", "2",
    # the demo models, run small: Mask R-CNN and the Unet see 160x96
    "--set", "models.semantic.input_size=[160,96]", "--set", "models.instance.min_size=96",
    "--set", "models.instance.max_size=160",
]


def positive(stats: dict) -> bool:
    return all(stats[key] > 0 for key in ("median", "min", "max")) and stats["min"] <= stats["median"] <= stats["max"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    path = tmp_path_factory.mktemp("bench") / "sub" / "bench.json"
    result = run_cli("bench", *TINY, "--json", str(path), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(path.read_text()), result.stdout


def test_end_to_end_sections(report):
    data, _ = report
    e2e = data["end_to_end"]
    for mode in ("models_only", "sequential", "pipeline"):
        assert positive(e2e[mode]["fps"]), mode
        assert positive(e2e[mode]["seconds_per_frame"]), mode
        assert len(e2e[mode]["runs_fps"]) == 1
    assert all(value > 0 for value in e2e["ratios"].values())
    assert set(e2e["sequential"]["stage_ms_per_frame"]) == {"read", "models", "fusion", "overlay", "encode"}
    assert e2e["sequential"]["stage_ms_per_frame"]["models"] > 0
    assert "worker" in e2e["pipeline"]["thread_cpu_cores"]
    assert e2e["rss_mb"]["after_repeat"][0] > 0


def test_micro_benchmarks_and_identical_fusion(report):
    data, _ = report
    assert [(tuple(r["size"]), r["instances"]) for r in data["fusion"]] == [
        ((160, 96), 3), ((160, 96), 12), ((200, 120), 3), ((200, 120), 12)]
    for row in data["fusion"]:
        assert row["identical"] is True, row
        for key in ("fuse_ms", "reference_ms", "naive_ms"):
            assert positive(row[key]), (key, row)
        assert row["speedup_vs_reference"] > 0
        assert 0 < row["things_placed"] <= row["instances"]
    assert len(data["overlay"]) == 4
    for row in data["overlay"]:
        assert positive(row["ms"]) and row["threads"] == 1
    codec = data["codec"]
    assert codec["size"] == [160, 96] and codec["frames"] == 6
    assert positive(codec["encode_fps"]) and positive(codec["decode_fps"])


def test_memory_environment_and_targets(report):
    data, stdout = report
    memory = data["memory"]
    assert memory["frames"] == 12 and memory["processed"] == 12 and memory["checkpoint_frame"] == 1
    assert memory["rss_mb_at_checkpoint"] > 0 and memory["rss_mb_at_end"] > 0
    assert isinstance(memory["growth_pct"], float)
    env = data["environment"]
    for name in ("python", "torch", "torchvision", "smp", "av", "cv2", "numpy"):
        assert env["versions"][name], name
    assert env["cpu_count"] >= 1 and env["torch_threads"] >= 1 and env["cv2_threads"] >= 0
    assert len(env["load_average_start"]) == 3 and len(env["load_average_end"]) == 3
    assert env["rss_mb_start"] > 0 and env["rss_mb_peak"] >= env["rss_mb_end"] > 0
    settings = data["settings"]
    assert settings["device"] == "cpu" and settings["dtype"] == "float32"
    assert settings["size"] == [160, 96] and settings["source"].startswith("synthetic:street?seed=1000&frames=6")
    names = [t["name"] for t in data["targets"]]
    assert len(names) == 6
    assert all(t["met"] in (True, False, None) for t in data["targets"])
    identical = [t for t in data["targets"] if t["name"].startswith("every fusion output")][0]
    assert identical["met"] is True
    for heading in ("end to end", "fusion (ms, median; fuse on", "overlay (ms, one thread)", "codecs at 160x96", "memory: RSS", "targets:"):
        assert heading in stdout, heading


@pytest.mark.parametrize("args,code", [
    (["--size", "12x12"], 2),
    (["--frames", "0"], 2),
    (["--instances", "3,x"], 2),
    (["--memory-frames", "5"], 2),
])
def test_bad_arguments_are_usage_errors(args, code):
    result = run_cli("bench", *args, timeout=60)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("streamer bench: error: argument")


def test_bad_configuration_exits_78(tmp_path):
    message = the_error(run_cli("bench", "--set", "fusion.nope=1", timeout=60), 78)
    assert "fusion.nope" in message
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2\n")
    assert "not valid YAML" in the_error(run_cli("bench", "-c", str(bad), timeout=60), 78)


@pytest.mark.parametrize("count", [0, 1, 7, 40])
def test_reference_loop_gives_what_fuse_gives(count):
    categories = (Category(1, "road", False, (1, 1, 1)), Category(2, "sky", False, (2, 2, 2)),
                  Category(3, "car", True, (3, 3, 3)), Category(4, "person", True, (4, 4, 4)))
    is_thing = np.array([False, False, False, True, True])
    params = FusionParams(score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5, stuff_area_min=64, label_divisor=1000)
    semantic, masks, scores, labels = random_scene(240, 135, count, categories, seed=count)
    assert masks.shape == (count, 135, 240) and semantic.max() <= 4
    expected_map, expected_segments = reference_fusion(semantic, masks, scores, labels, is_thing, params)
    panoptic, segments = fuse(*(torch.from_numpy(a) for a in (semantic, masks, scores, labels, is_thing)), params)
    assert np.array_equal(panoptic.numpy(), expected_map)
    assert segments == expected_segments
