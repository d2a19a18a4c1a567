"""The bench's report: the settings and machine it ran with, the targets it met or missed, and the
text table."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import cv2
import torch

from streamer import __version__
from streamer.config import Config
from streamer.inference import demo_models
from streamer.inference.models import uses_autocast
from streamer.inference.worker import available_cores, thread_layout
from streamer.tools.bench.load import QUIET_OTHERS_CORES, verdict
from streamer.tools.bench.measure import rss_mb
from streamer.tools.bench.options import BenchOptions, config_path

# Goals from the performance issues; read from the results, never asserted.
PIPELINE_VS_MODELS = 0.90
PIPELINE_VS_SEQUENTIAL = 1.0
FUSION_SPEEDUP = 15.0
DETECTIONS_PEAK_MB = 2500e6 / 2**20  # 2.5 GB, in MiB
OVERLAY_MS = 10.0
TRACKING_MS = 2.0
ANALYTICS_MS = 1.0  # issue 31: speed + time in zones + heatmap per frame, 1080p x 50 objects, one core
RSS_GROWTH_PCT = 5.0
TARGET_SIZE = (1920, 1080)
TARGET_INSTANCES = 50


def settings(options: BenchOptions, config: Config, device: torch.device) -> dict[str, Any]:
    semantic, instance = config.models.semantic, config.models.instance
    demo_semantic, demo_instance = semantic.weights == "demo", instance.weights == "demo"  # the demo ignores arch/encoder
    return {
        "config": str(config_path(options)), "overrides": list(options.overrides), "source": options.source(),
        "size": list(options.size), "frames": options.frames, "repeats": options.repeats,
        "device": str(device), "dtype": "float16 (autocast)" if uses_autocast(device, config.runtime.half) else "float32",
        "parallel_frames_and_torch_threads": list(thread_layout(device.type, available_cores(), config.runtime.parallel_frames,
                                                                config.runtime.torch_threads)),
        "semantic_model": {
            "weights": semantic.weights, "arch": demo_models.SEMANTIC_ARCH if demo_semantic else semantic.arch,
            "encoder": demo_models.SEMANTIC_ENCODER if demo_semantic else semantic.encoder, "input_size": list(semantic.input_size),
        },
        "instance_model": {
            "weights": instance.weights, "arch": "Mask R-CNN, MobileNetV3-FPN" if demo_instance else instance.arch,
            "min_size": instance.min_size, "max_size": instance.max_size,
        },
        "micro_sizes": [list(s) for s in options.micro_sizes], "instances": list(options.instances),
        "micro_repeats": options.micro_repeats, "tracking_frames": options.tracking_frames,
        "memory_frames": options.memory_frames, "detection_cases": [[list(size), count] for size, count in options.detection_cases],
        "neighbours": options.neighbours, "semantic_frames": options.semantic_frames,
    }


def environment(device: torch.device) -> dict[str, Any]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, package in (("torch", "torch"), ("torchvision", "torchvision"), ("smp", "segmentation-models-pytorch"),
                          ("av", "av"), ("numpy", "numpy"), ("timm", "timm")):
        try:
            versions[name] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cv2"] = cv2.__version__
    versions["streamer"] = __version__
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": available_cores(),  # affinity, capped by a cgroup CPU quota
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                        if k in os.environ},
        "versions": versions,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "rss_mb_start": rss_mb(),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the performance issue with the measured value and whether it was met (None:
    not measured in this run)."""
    ratios = report["end_to_end"]["ratios"]
    out = [
        {"name": "pipeline >= 0.90 x models only", "value": ratios["pipeline_vs_models_only"],
         "met": ratios["pipeline_vs_models_only"] >= PIPELINE_VS_MODELS, "section": "end_to_end"},
        {"name": "pipeline >= 1.0 x sequential loop", "value": ratios["pipeline_vs_sequential"],
         "met": ratios["pipeline_vs_sequential"] >= PIPELINE_VS_SEQUENTIAL, "section": "end_to_end"},
    ]
    fusion = [r for r in report["fusion"] if tuple(r["size"]) == TARGET_SIZE and r["instances"] == TARGET_INSTANCES]
    out.append({
        "name": "fusion 1080p x 50 instances >= 15x the reference loop, identical output",
        "value": fusion[0]["speedup_vs_reference"] if fusion else None,
        "met": (fusion[0]["speedup_vs_reference"] >= FUSION_SPEEDUP and fusion[0]["identical"]) if fusion else None,
        "section": "fusion",
    })
    overlay = [r for r in report["overlay"] if tuple(r["size"]) == TARGET_SIZE]
    worst = max((r["ms"]["median"] for r in overlay), default=None)
    out.append({"name": "overlay 1080p < 10 ms on one core (every instance count)", "value": worst,
                "met": worst < OVERLAY_MS if worst is not None else None, "section": "fusion"})
    tracking = [r for r in report["tracking"] if tuple(r["size"]) == TARGET_SIZE and r["instances"] == TARGET_INSTANCES]
    out.append({
        "name": "tracking + counting 1080p x 50 objects < 2 ms per frame on one core, every track kept",
        "value": tracking[0]["ms"]["median"] if tracking else None,
        "met": (tracking[0]["ms"]["median"] < TRACKING_MS and tracking[0]["kept_tracks"] == tracking[0]["instances"])
        if tracking else None, "section": "tracking",
    })
    out.append({
        "name": "analytics (speed + time in zones + heatmap) 1080p x 50 objects < 1 ms per frame on one core",
        "value": tracking[0]["analytics_ms"]["median"] if tracking and "analytics_ms" in tracking[0] else None,
        "met": tracking[0]["analytics_ms"]["median"] < ANALYTICS_MS if tracking and "analytics_ms" in tracking[0] else None,
        "section": "tracking",
    })
    for size, count in (((3840, 2160), 100), ((1920, 1080), 300)):
        case = [r for r in report.get("detections", []) if tuple(r["size"]) == size and r["detections_per_image"] == count]
        peak = case[0]["peak_rss_mb"] if case else None
        out.append({"name": f"{size[0]}x{size[1]} x {count} detections: peak RSS <= 2.5 GB (MiB)", "value": peak,
                    "met": peak <= DETECTIONS_PEAK_MB if peak is not None else None})
    memory = report.get("memory")
    growth = memory["growth_pct"] if memory else None
    out.append({"name": "RSS at frame N within 5% of frame N/10", "value": growth,
                "met": abs(growth) <= RSS_GROWTH_PCT if growth is not None else None})
    identical = all(r["identical"] for r in report["fusion"]) if report["fusion"] else None
    out.append({"name": "every fusion output identical to the reference loop", "value": identical, "met": identical})
    return [judged(target, report.get("load")) for target in out]


def judged(target: dict[str, Any], load: dict[str, Any] | None) -> dict[str, Any]:
    """A target with its verdict (load.verdict). A timing target (one with a `section`) carries the
    load of that part of the run; a miss while other processes kept the machine busy becomes
    "busy": `met` None (not measured) and `compared` what the reading alone said. Memory and
    identity targets do not depend on the load."""
    section = target.pop("section", None)
    window = (load or {}).get("sections", {}).get(section) if section else None
    others = window["others_cores"] if window else None
    quiet_limit = (load or {}).get("quiet_limit_cores", QUIET_OTHERS_CORES)
    result = {**target, "verdict": verdict(target["met"], others, quiet_limit) if section else verdict(target["met"], None)}
    if section:
        result["others_cores"] = others
    if result["verdict"] == "busy":
        result["compared"], result["met"] = target["met"], None
    return result


def format_report(report: dict[str, Any]) -> str:
    s, env, e2e = report["settings"], report["environment"], report["end_to_end"]
    width, height = s["size"]
    fusion_threads = report["fusion"][0]["torch_threads"] if report["fusion"] else "-"
    fusion_title = f"fusion (ms, median; fuse on {fusion_threads} threads)"
    lines = [
        f"streamer bench: {s['device']} ({s['dtype']}), synthetic street {width}x{height}, {s['frames']} frames x {s['repeats']} repeats",
        f"machine: {env['cpu']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, cv2 threads {env['cv2_threads']}"
        + (f", GPU {env['gpu']}" if env["gpu"] else "")
        + f"; load average {env['load_average_start'][0]:.2f} at start, {env['load_average_end'][0]:.2f} at end",
        "",
        f"{'end to end':<34}{'fps median':>11}{'[min - max]':>17}{'ms/frame':>10}",
    ]
    names = {"models_only": "(a) models only (the limit)", "sequential": "(b) sequential loop, one thread",
             "pipeline": "(c) threaded pipeline"}
    for mode, label in names.items():
        fps = e2e[mode]["fps"]
        lines.append(f"  {label:<32}{fps['median']:>11.2f}{_spread(fps):>17}{1000 / fps['median']:>10.0f}")
    ratios = e2e["ratios"]
    lines += [
        f"  pipeline / models only {ratios['pipeline_vs_models_only']:.3f}   pipeline / sequential {ratios['pipeline_vs_sequential']:.3f}",
        "  sequential loop, ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in e2e["sequential"]["stage_ms_per_frame"].items()),
        "  pipeline, CPU cores busy by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in e2e["pipeline"]["thread_cpu_cores"].items()),
        "",
        fusion_title,
        f"{'  size x instances':<28}{'fuse':>9}{'reference':>11}{'naive':>9}{'speedup':>9}{'identical':>11}",
    ]
    for row in report["fusion"]:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['instances']}"
        lines.append(f"{label:<28}{row['fuse_ms']['median']:>9.1f}{row['reference_ms']['median']:>11.1f}{row['naive_ms']['median']:>9.1f}"
                     f"{row['speedup_vs_reference']:>8.1f}x{'yes' if row['identical'] else 'NO':>11}")
    lines += ["", "overlay (ms, one thread)", f"{'  size x instances':<28}{'median':>9}{'[min - max]':>17}"]
    for row in report["overlay"]:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['instances']}"
        ms = row["ms"]
        lines.append(f"{label:<28}{ms['median']:>9.2f}{_spread(ms):>17}")
    lines += _tracking_lines(report["tracking"])
    lines += _detection_lines(report.get("detections", []))
    codec = report["codec"]
    lines += ["", f"codecs at {codec['size'][0]}x{codec['size'][1]}: H.264 decode {codec['decode_fps']['median']:.0f} fps, "
                  f"encode {codec['encode_fps']['median']:.0f} fps (medians)"]
    memory = report["memory"]
    if memory:
        lines.append(f"memory: RSS {_mb(memory['rss_mb_at_checkpoint'])} at frame {memory['checkpoint_frame']}, "
                     f"{_mb(memory['rss_mb_at_end'])} at frame {memory['frames']} ({_pct(memory['growth_pct'])})")
    else:
        after = e2e["rss_mb"]["after_repeat"]
        lines.append("memory: RSS after each repeat " + ", ".join(_mb(v) for v in after) + " (long run off: --memory-frames N)")
    lines += _backend_lines(report.get("backends"))
    lines += ["", _load_line(report.get("load")), "", "targets:"]
    for target in report["targets"]:
        value = target["value"]
        shown = "" if value is None or isinstance(value, bool) else f" ({value:.2f})"
        if target["verdict"] == "busy":
            lines.append(f"  not measured: machine busy (load {target['others_cores']:.2f}): {target['name']}{shown}")
            continue
        said = {"met": "met", "missed": "MISSED", "not measured": "not measured"}[target["verdict"]]
        lines.append(f"  {said:<13}{target['name']}{shown}")
    lines.append(f"\n{report['seconds']:.0f} s in all")
    return "\n".join(lines)


def _load_line(load: dict[str, Any] | None) -> str:
    """What other processes took of this process's CPUs while the bench ran (its "load")."""
    if not load or not load.get("run"):
        return "load: not known"
    run = load["run"]
    others = "unknown" if run["others_cores"] is None else f"{run['others_cores']:.2f}"
    busiest = max((w["others_cores"] for w in load["sections"].values() if w["others_cores"] is not None), default=None)
    neighbours = f"; {load['neighbours']} CPU-bound neighbour process(es) started by the bench" if load["neighbours"] else ""
    return (f"load: other processes kept {others} of {run['cores']} cores busy on average"
            + (f" (busiest part {busiest:.2f})" if busiest is not None else "")
            + f"{neighbours}; a timing target is judged only below {load['quiet_limit_cores']:.2f}")


def _backend_lines(backends: dict[str, Any] | None) -> list[str]:
    """The semantic network alone per backend (nothing when it was not measured)."""
    if not backends:
        return []
    width, height = backends["input_size"]
    lines = ["", f"semantic network alone at {width}x{height} ({backends['frames']} frames, one at a time, backends in turn)",
             f"{'  backend':<28}{'ms/frame':>10}{'[min - max]':>19}{'vs torch':>10}  dtype"]
    for name, row in backends["semantic"].items():
        if "error" in row:
            lines.append(f"{'  ' + name:<28}  not run: {row['error']}")
            continue
        stats = row["ms_stats"]
        spread = f"[{stats['min']:.1f} - {stats['max']:.1f}]"
        lines.append(f"{'  ' + name:<28}{row['ms']:>10.1f}{spread:>19}{row.get('vs_torch', float('nan')):>9.2f}x  {row['dtype']}")
    return lines


def _tracking_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The tracking + counting table of the text report (nothing when it was not measured)."""
    if not rows:
        return []
    first = rows[0]
    zones = f"{first['zones']} zone{'s' if first['zones'] != 1 else ''}"
    lines = ["", f"tracking + counting (ms per frame, median, one thread; {first['tracker']}, {first['lines']} lines, {zones}, "
                 f"{first['timed_frames']} of {first['frames']} frames timed)",
             f"{'  size x objects':<28}{'total':>9}{'tracking':>10}{'counting':>10}{'[min - max]':>17}{'tracks kept':>13}"
             f"{'analytics':>11}{'speed':>7}{'zones':>7}{'heatmap':>9}"]
    for row in rows:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['instances']}"
        ms = row["ms"]
        kept = f"{row['kept_tracks']}/{row['instances']}"
        analytics = "".join(f"{row[key]['median']:>{width}.2f}" if key in row else f"{'-':>{width}}"
                            for key, width in (("analytics_ms", 11), ("speed_ms", 7), ("zone_time_ms", 7), ("heatmap_ms", 9)))
        lines.append(f"{label:<28}{ms['median']:>9.2f}{row['tracking_ms']['median']:>10.2f}{row['counting_ms']['median']:>10.2f}"
                     f"{_spread(ms):>17}{kept:>13}{analytics}")
    return lines


def _detection_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The many-detections table of the text report (nothing when it was not measured)."""
    if not rows:
        return []
    lines = ["", "many detections (models + fusion, random-weight Mask R-CNN; ms per frame, median; peak memory of the case)",
             f"{'  size x detections':<28}{'in flight':>10}{'kept':>6}{'ms/frame':>10}{'peak RSS':>11}{'CUDA peak':>11}"]
    for row in rows:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['detections_per_image']}"
        lines.append(f"{label:<28}{row['in_flight']:>10}{row['kept']:>6}{row['ms_per_frame']['median']:>10.0f}"
                     f"{_mb(row['peak_rss_mb']):>11}{_mb(row['cuda_peak_mb']):>11}")
    return lines


def _spread(stats: dict[str, float]) -> str:
    return f"[{stats['min']:.2f} - {stats['max']:.2f}]"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"
