"""`streamer bench` through the real CLI in a tiny configuration: every section of the JSON report is
there with sane numbers, the project's fusion matched the reference loop and the tracker kept every
object's track. No timing is asserted."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import cli_env, run_cli, the_error

from streamer.frames import Category
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.masks import BoxMasks
from streamer.tools.baselines import reference_fusion
from streamer.tools.bench import micro
from streamer.tools.bench.micro import random_scene, tracking_and_counting
from streamer.tools.bench.options import BenchOptions, load_bench_config
from streamer.tools.bench.report import targets

TINY = [
    "--size", "160x96", "--frames", "6", "--repeats", "1", "--memory-frames", "12",
    "--micro-sizes", "160x96,200x120", "--instances", "3,12", "--micro-repeats", "2", "--tracking-frames", "8",
    "--detections", "200x120:20", "--semantic-frames", "2", "--backends", "torch,onnxruntime",
    # the demo models, run small: Mask R-CNN and the Unet see 160x96
    "--set", "models.semantic.input_size=[160,96]", "--set", "models.instance.min_size=96",
    "--set", "models.instance.max_size=160",
]


def positive(stats: dict) -> bool:
    return (all(stats[key] > 0 and math.isfinite(stats[key]) for key in ("median", "min", "max"))
            and stats["min"] <= stats["median"] <= stats["max"])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    folder = tmp_path_factory.mktemp("bench")
    path = folder / "sub" / "bench.json"
    # the ONNX Runtime export is made into this cache, not the user's
    result = run_cli("bench", *TINY, "--json", str(path), timeout=240, env=cli_env(XDG_CACHE_HOME=str(folder / "cache")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(path.read_text()), result.stdout


@pytest.mark.system
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


@pytest.mark.system
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
    assert [(tuple(r["size"]), r["instances"]) for r in data["tracking"]] == [
        ((160, 96), 3), ((160, 96), 12), ((200, 120), 3), ((200, 120), 12)]
    for row in data["tracking"]:
        assert row["frames"] == 8 and row["timed_frames"] == 4 and row["threads"] == 1, row
        for key in ("ms", "tracking_ms", "counting_ms", "analytics_ms", "speed_ms", "zone_time_ms", "heatmap_ms"):
            assert positive(row[key]) and row[key]["n"] == 4, (key, row)
        assert row["tracks"] == row["kept_tracks"] == row["objects_counted"] == row["instances"], row
    (detections,) = data["detections"]
    assert detections["size"] == [200, 120] and detections["detections_per_image"] == 20 and detections["in_flight"] >= 1
    assert detections["kept"] == 20 and detections["capped"] is True, "score threshold 0: as many as allowed, all kept"
    assert positive(detections["ms_per_frame"]) and detections["peak_rss_mb"] > 0 and detections["cuda_peak_mb"] is None
    codec = data["codec"]
    assert codec["size"] == [160, 96] and codec["frames"] == 6
    assert positive(codec["encode_fps"]) and positive(codec["decode_fps"])


@pytest.mark.system
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
    assert len(names) == 10
    assert settings["tracking_frames"] == 8
    assert all(t["met"] in (True, False, None) for t in data["targets"])
    assert all(t["verdict"] in ("met", "missed", "busy", "not measured") for t in data["targets"])
    identical = [t for t in data["targets"] if t["name"].startswith("every fusion output")][0]
    assert identical["met"] is True
    tracking = "tracking + counting (ms per frame, median, one thread; ocsort, 2 lines, 1 zone, 4 of 8 frames timed)"
    for heading in ("end to end", "fusion (ms, median; fuse on", "overlay (ms, one thread)", tracking, "codecs at 160x96", "memory: RSS",
                    "many detections (models + fusion", "targets:"):
        assert heading in stdout, heading


@pytest.mark.system
def test_the_load_it_ran_under_and_the_semantic_network_per_backend(report):
    data, stdout = report
    load = data["load"]
    assert load["neighbours"] == 0 and load["quiet_limit_cores"] > 0
    assert set(load["sections"]) == {"end_to_end", "memory", "codec", "backends", "fusion", "tracking", "detections"}
    for window in [load["run"], *load["sections"].values()]:
        assert window["seconds"] > 0 and window["cores"] >= 1 and window["own_cores"] > 0
        assert window["others_cores"] >= 0  # Linux: read from /proc/stat
    assert load["run"]["seconds"] >= sum(w["seconds"] for w in load["sections"].values()) - 0.1
    assert "load: other processes kept" in stdout
    timing = [t for t in data["targets"] if "others_cores" in t]
    assert {"pipeline", "fusion", "overlay", "tracking"} <= {t["name"].split(" ")[0] for t in timing}
    assert not any("RSS" in t["name"] or "identical to" in t["name"] for t in timing)  # memory and identity do not depend on load
    backends = data["backends"]
    assert backends["input_size"] == [160, 96] and backends["frames"] == 2
    torch_row = backends["semantic"]["torch"]
    assert torch_row["ms"] > 0 and torch_row["ms_stats"]["n"] == 2 and len(torch_row["runs_ms"]) == 1
    assert torch_row["vs_torch"] == 1.0 and torch_row["dtype"] == "float32"
    onnx_row = backends["semantic"]["onnxruntime"]  # the same frames through the export `run` would use
    assert onnx_row["ms"] > 0 and onnx_row["ms_stats"]["n"] == 2 and onnx_row["vs_torch"] == round(torch_row["ms"] / onnx_row["ms"], 3)
    assert "semantic network alone at 160x96" in stdout


@pytest.mark.system
@pytest.mark.parametrize("args,code", [
    (["--size", "12x12"], 2),
    (["--frames", "0"], 2),
    (["--instances", "3,x"], 2),
    (["--memory-frames", "5"], 2),
    (["--detections", "200x120"], 2),
    (["--neighbour", "x"], 2),
    (["--semantic-frames", "-1"], 2),
])
def test_bad_arguments_are_usage_errors(args, code):
    result = run_cli("bench", *args, timeout=60)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("streamer bench: error: argument")


@pytest.mark.system
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
    semantic_t, masks_t, scores_t, labels_t, is_thing_t = (torch.from_numpy(a) for a in (semantic, masks, scores, labels, is_thing))
    panoptic, segments = fuse(semantic_t, BoxMasks.from_dense(masks_t), scores_t, labels_t, is_thing_t, params)
    assert np.array_equal(panoptic.numpy(), expected_map)
    assert segments == expected_segments


@pytest.fixture(scope="module")
def tracking_setup():
    options = BenchOptions(
        config=None, overrides=(), device="cpu", size=(160, 96), frames=2, repeats=1, seed=7,
        micro_sizes=((192, 108), (320, 180)), instances=(3, 12), micro_repeats=1, tracking_frames=12, memory_frames=0,
        detection_cases=(), torch_threads=None, cv2_threads=None,
    )
    return options, load_bench_config(options)


def test_tracking_and_counting_keeps_every_objects_track(tracking_setup):
    options, config = tracking_setup
    rows = tracking_and_counting(options, config)
    assert [(tuple(r["size"]), r["instances"]) for r in rows] == [
        ((192, 108), 3), ((192, 108), 12), ((320, 180), 3), ((320, 180), 12)]
    for row in rows:
        assert row["tracker"] == "ocsort" and row["lines"] == 2 and row["zones"] == 1 and row["threads"] == 1
        assert row["frames"] == 12 and row["timed_frames"] == 7  # 5 frames of warm-up
        for key in ("ms", "tracking_ms", "counting_ms"):
            assert positive(row[key]) and row[key]["n"] == 7, (key, row)
        assert row["ms"]["min"] >= row["tracking_ms"]["min"]
        # one track id per object for the whole run, each counted once as an object
        assert row["tracks"] == row["kept_tracks"] == row["objects_counted"] == row["instances"], row
        assert row["events"] >= 0


def test_the_kept_tracks_check_notices_objects_that_swap_places(tracking_setup, monkeypatch):
    """Objects that jump to another object's place every frame (same category: the boxes move two
    along) cannot keep a track each: the row says so, and the target is missed."""
    options, config = tracking_setup
    moving = micro.moving_objects

    def jumping(*args, **kwargs):
        labels, boxes = moving(*args, **kwargs)
        return labels, np.stack([np.roll(frame, 2 * index, axis=0) for index, frame in enumerate(boxes)])

    monkeypatch.setattr(micro, "moving_objects", jumping)
    rows = tracking_and_counting(dataclasses.replace(options, micro_sizes=((320, 180),), instances=(12,)), config)
    assert rows[0]["kept_tracks"] == 0 and rows[0]["tracks"] == rows[0]["instances"]  # the tracks stay with the places


@pytest.mark.system
def test_the_tracking_target_reads_the_1080p_row_at_50_objects():
    def report(ms: float, kept: int) -> dict:
        row = {"size": [1920, 1080], "instances": 50, "ms": {"median": ms}, "kept_tracks": kept}
        return {"end_to_end": {"ratios": {"pipeline_vs_models_only": 1.0, "pipeline_vs_sequential": 1.0}}, "fusion": [],
                "overlay": [], "tracking": [dict(row, instances=10), row], "memory": None}

    def verdict(data: dict) -> tuple:
        target = [t for t in targets(data) if t["name"].startswith("tracking + counting")][0]
        return target["value"], target["met"]

    assert verdict(report(1.5, 50)) == (1.5, True)
    assert verdict(report(2.5, 50)) == (2.5, False)
    assert verdict(report(1.5, 49)) == (1.5, False)  # a tracker that loses tracks meets nothing
    assert verdict({**report(1.5, 50), "tracking": []}) == (None, None)
