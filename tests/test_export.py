"""COCO panoptic export as its users see it: `streamer synth`, `run --export-dir`, `export-json`.

The export is read back with a small loader written here (json + OpenCV PNG decoding), not with
streamer's own code, so a mistake in the writer cannot hide behind the same mistake in a reader.
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import decode_video, mask_bbox, popen_cli, probe, run_cli, run_in_process, the_error, wait_until

from streamer.boxes import to_coco
from streamer.inputs.sources import open_source

SIZE = (160, 96)
FPS = 15.0
SYNTH_SEED = 3  # a scene with three cars/people moving from the first frame on
SYNTH_FRAMES = 12
PNG_NAME = re.compile(r"^\d{6}\.png$")


# --------------------------------------------------------------------------------------------
# an independent reader of COCO panoptic exports


def read_ids(path: Path) -> np.ndarray:
    """PNG -> H x W segment ids, id = R + 256*G + 256*256*B (OpenCV decodes to BGR)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None, f"{path}: missing or not a decodable PNG"
    assert bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3, f"{path}: expected 8-bit RGB, got {bgr.dtype} {bgr.shape}"
    blue, green, red = (bgr[..., channel].astype(np.int64) for channel in range(3))
    return red + 256 * green + 256 * 256 * blue


def check_frame(ids: np.ndarray, segments_info: list[dict], categories: dict[int, dict], where: str,
                thing_fields: tuple[str, ...] = ()) -> None:
    """One PNG against its segments_info: same ids both ways, exact areas and boxes, known categories."""
    listed = [s["id"] for s in segments_info]
    assert len(listed) == len(set(listed)), f"{where}: duplicate segment ids {listed}"
    present = set(np.unique(ids).tolist()) - {0}
    assert present == set(listed), f"{where}: ids in the PNG {sorted(present)} != ids in segments_info {sorted(listed)}"
    stuff_seen: set[int] = set()
    for segment in segments_info:
        label = f"{where} segment {segment['id']}"
        mask = ids == segment["id"]
        assert segment["category_id"] in categories, f"{label}: unknown category {segment['category_id']}"
        assert segment["area"] == int(mask.sum()), f"{label}: area {segment['area']} != {int(mask.sum())} pixels"
        assert tuple(segment["bbox"]) == mask_bbox(mask), f"{label}: bbox {segment['bbox']} != pixels' {mask_bbox(mask)}"
        assert segment.get("iscrowd", 0) in (0, 1), label
        if categories[segment["category_id"]]["isthing"]:
            for name in thing_fields:
                assert name in segment, f"{label}: a thing without {name!r}"
        else:
            assert segment["category_id"] not in stuff_seen, f"{label}: stuff category split in two segments"
            stuff_seen.add(segment["category_id"])


def load_export(folder: Path, thing_fields: tuple[str, ...] = ()) -> dict:
    """Read FOLDER/panoptic.json and every PNG it names; assert the COCO panoptic contract."""
    coco = json.loads((folder / "panoptic.json").read_text())
    assert {"images", "annotations", "categories"} <= coco.keys()
    categories = {c["id"]: c for c in coco["categories"]}
    assert len(categories) == len(coco["categories"]), "duplicate category ids"
    for category in coco["categories"]:
        assert {"id", "name", "isthing", "color", "supercategory"} <= category.keys(), category
        assert category["isthing"] in (0, 1) and len(category["color"]) == 3, category
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == len(coco["images"]), "duplicate image ids"
    assert sorted(images) == sorted(a["image_id"] for a in coco["annotations"]), "images and annotations differ"
    assert len({a["image_id"] for a in coco["annotations"]}) == len(coco["annotations"]), "duplicate annotations"
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        name = annotation["file_name"]
        assert name == f"{annotation['image_id']:06d}.png", f"annotation {annotation['image_id']} names {name}"
        assert Path(image["file_name"]).stem == Path(name).stem, f"image {image['file_name']} vs annotation {name}"
        ids = read_ids(folder / "panoptic" / name)
        assert ids.shape == (image["height"], image["width"]), f"{name}: {ids.shape} vs image {image['width']}x{image['height']}"
        check_frame(ids, annotation["segments_info"], categories, name, thing_fields)
    return coco


def load_finished_export(folder: Path, frames: int, thing_fields: tuple[str, ...]) -> dict:
    """load_export of a finished export of `frames` frames at SIZE: every PNG, no leftover files."""
    assert png_names(folder) == {f"{k:06d}.png" for k in range(frames)}
    assert not [p.name for p in (folder / "panoptic").iterdir() if not PNG_NAME.match(p.name)], "leftover files"
    coco = load_export(folder, thing_fields)
    assert sorted(image["id"] for image in coco["images"]) == list(range(frames))
    assert all((image["width"], image["height"]) == SIZE for image in coco["images"])
    return coco


def png_names(folder: Path) -> set[str]:
    """The finished PNGs (NNNNNN.png), not temporary files."""
    return {p.name for p in (folder / "panoptic").iterdir() if PNG_NAME.match(p.name)}


def snapshot(folder: Path) -> dict[str, bytes]:
    """The export's files (the lock file beside them names whoever ran last, and is no part of it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".streamer.lock"}


def synth(out: Path, seed: int = SYNTH_SEED, frames: int = SYNTH_FRAMES) -> Path:
    result = run_cli("synth", "--seed", str(seed), "--frames", str(frames), "--size", f"{SIZE[0]}x{SIZE[1]}",
                     "--fps", str(FPS), "--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    return out


# --------------------------------------------------------------------------------------------
# fixtures shared by the module (each command runs once)


@pytest.fixture(scope="module")
def synth_export(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("synth") / "scene")


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory, module_config) -> Path:
    """Mask R-CNN weights that see cars everywhere, so things really reach the export.

    The random-init models of the fast config detect nothing. Here every layer stays random except
    the heads: the box classifier calls each proposal a car with probability about 0.88, the box
    regressor keeps the proposal, and the mask head fills the box.
    """
    import torch
    from safetensors.torch import save_file

    from streamer.config import load_config
    from streamer.inference.models import COCO_CLASSES, build_instance

    settings = load_config(module_config).models.instance
    torch.manual_seed(0)
    model = build_instance(settings.model_copy(update={"weights": "none"}))[0]
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    del model
    classifier = "roi_heads.box_predictor.cls_score"
    state[f"{classifier}.weight"].zero_()
    state[f"{classifier}.bias"].fill_(-10.0)
    state[f"{classifier}.bias"][0] = 8.0  # background
    state[f"{classifier}.bias"][COCO_CLASSES.index("car")] = 10.0
    state["roi_heads.box_predictor.bbox_pred.weight"].zero_()
    state["roi_heads.box_predictor.bbox_pred.bias"].zero_()
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"].zero_()
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"].fill_(10.0)
    path = tmp_path_factory.mktemp("weights") / "cars_everywhere.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))
    return path


RUN_FRAMES = 4


@pytest.fixture(scope="module")
def run_export(tmp_path_factory, module_config, detector_weights) -> Path:
    out = tmp_path_factory.mktemp("run") / "export"
    source = f"synthetic:street?seed=1001&frames={RUN_FRAMES}&size={SIZE[0]}x{SIZE[1]}"
    result = run_in_process("run", "-c", str(module_config), "--source", source, "--export-dir", str(out),
                            "--set", f"models.instance.weights={detector_weights}")
    assert result.returncode == 0, result.stderr
    return out


# --------------------------------------------------------------------------------------------
# streamer synth


@pytest.mark.system
def test_synth_writes_video_pngs_and_consistent_json(synth_export):
    info = probe(synth_export / "video.mp4")
    assert info["codec"] == "h264"
    assert (info["frames"], info["width"], info["height"]) == (SYNTH_FRAMES, *SIZE)
    assert info["times"] == pytest.approx([k / FPS for k in range(SYNTH_FRAMES)], abs=1e-3)
    coco = load_finished_export(synth_export, SYNTH_FRAMES, thing_fields=("track_id",))

    from streamer.inputs.synthetic import CATEGORIES

    exported = [(c["id"], c["name"], c["isthing"], c["color"]) for c in coco["categories"]]
    assert exported == [(c.id, c.name, int(c.isthing), list(c.color)) for c in CATEGORIES]
    things = [s for a in coco["annotations"] for s in a["segments_info"] if s["category_id"] in {c.id for c in CATEGORIES if c.isthing}]
    assert things, "the chosen scene should have cars or people; the track_id check would be empty"
    for annotation in coco["annotations"]:
        tracks = [s["track_id"] for s in annotation["segments_info"] if "track_id" in s]
        assert len(tracks) == len(set(tracks)), f"frame {annotation['image_id']}: a track id used twice"


@pytest.mark.system
def test_synth_ground_truth_is_aligned_with_the_video_frames(synth_export):
    from streamer.inputs.synthetic import StreetScene

    scene = StreetScene(SYNTH_SEED, SIZE, FPS)
    rendered = [scene.render(k) for k in range(SYNTH_FRAMES)]
    decoded = decode_video(synth_export / "video.mp4")
    assert len(decoded) == SYNTH_FRAMES
    coco = json.loads((synth_export / "panoptic.json").read_text())
    annotations = {a["image_id"]: a for a in coco["annotations"]}
    images = [r.image.astype(np.int16) for r in rendered]

    for k in range(SYNTH_FRAMES):
        truth = rendered[k]
        # the PNG and the JSON hold exactly the scene's ground truth of frame k
        assert np.array_equal(read_ids(synth_export / "panoptic" / f"{k:06d}.png"), truth.panoptic), f"PNG {k}"
        expected = [{"id": s.id, "category_id": s.category_id, "area": s.area, "bbox": to_coco(s.box), "track_id": s.track_id}
                    for s in truth.segments]
        actual = [{key: s.get(key) for key in ("id", "category_id", "area", "bbox", "track_id")}
                  for s in annotations[k]["segments_info"]]
        assert sorted(actual, key=lambda s: s["id"]) == sorted(expected, key=lambda s: s["id"]), f"segments_info {k}"

        # the video frame k is the scene's image k: close up to codec noise ...
        frame = decoded[k].astype(np.int16)
        assert frame.shape == images[k].shape
        assert np.abs(frame - images[k]).mean() < 8, f"video frame {k} is not the scene's frame {k}"
        # ... and, where the scene moves, clearly closer to k than to its neighbours
        for j in (k - 1, k + 1):
            if not 0 <= j < SYNTH_FRAMES:
                continue
            moving = np.abs(images[k] - images[j]).max(axis=-1) > 30
            assert moving.sum() >= 50, f"frames {k} and {j}: too little motion to tell them apart"
            to_own = np.abs(frame - images[k])[moving].mean()
            to_neighbour = np.abs(frame - images[j])[moving].mean()
            assert to_own < 0.5 * to_neighbour, f"video frame {k} looks like scene frame {j} ({to_own:.1f} vs {to_neighbour:.1f})"


@pytest.mark.system
def test_synth_is_deterministic_per_seed(synth_export, tmp_path):
    again = synth(tmp_path / "again")
    other = synth(tmp_path / "other", seed=SYNTH_SEED + 1)
    assert png_names(again) == png_names(synth_export)
    for name in sorted(png_names(synth_export)):
        assert (again / "panoptic" / name).read_bytes() == (synth_export / "panoptic" / name).read_bytes(), name
    assert json.loads((again / "panoptic.json").read_text()) == json.loads((synth_export / "panoptic.json").read_text())

    differs = [name for name in sorted(png_names(synth_export))
               if not np.array_equal(read_ids(other / "panoptic" / name), read_ids(synth_export / "panoptic" / name))]
    assert differs, "another seed gave the very same ground truth"
    assert json.loads((other / "panoptic.json").read_text())["annotations"] != json.loads((synth_export / "panoptic.json").read_text())["annotations"]


@pytest.mark.system
def test_synth_refuses_to_overwrite_a_scene(synth_export):
    before = snapshot(synth_export)
    result = run_cli("synth", "--seed", "9", "--frames", "2", "--size", "160x96", "--out", str(synth_export), timeout=60)
    assert the_error(result, 73) == f"{synth_export}: already holds a synthetic scene; --overwrite replaces it, or choose another --out"
    assert snapshot(synth_export) == before


# --------------------------------------------------------------------------------------------
# streamer run --export-dir


def test_run_export_is_well_formed(run_export):
    coco = load_finished_export(run_export, RUN_FRAMES, thing_fields=("score",))
    thing_ids = {c["id"] for c in coco["categories"] if c["isthing"]}
    things = [s for a in coco["annotations"] for s in a["segments_info"] if s["category_id"] in thing_ids]
    assert things, "the detector weights should have put cars into the export"
    assert all(0 < s["score"] <= 1 for s in things)
    lines = (run_export / "segments.jsonl").read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in lines] == list(range(RUN_FRAMES))


def test_export_images_writes_each_frame_where_its_file_name_points(tmp_path, module_config):
    source = f"synthetic:street?seed=1002&frames=3&size={SIZE[0]}x{SIZE[1]}"
    out = tmp_path / "export"
    result = run_in_process("run", "-c", str(module_config), "--source", source, "--export-dir", str(out),
                            "--set", "output.export_images=true")
    assert result.returncode == 0, result.stderr
    coco = json.loads((out / "panoptic.json").read_text())
    reader = open_source(source)
    for image in sorted(coco["images"], key=lambda i: i["id"]):
        frame, _ = reader.read()
        jpeg = cv2.imread(str(out / "images" / image["file_name"]))
        assert jpeg is not None and jpeg.shape == (image["height"], image["width"], 3)
        assert np.abs(jpeg.astype(int) - frame).mean() < 3  # the frame itself, through JPEG
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:06d}.jpg" for k in range(3)]


def test_frames_are_not_exported_unless_asked(run_export):
    assert not (run_export / "images").exists()


@pytest.mark.system
def test_second_run_into_an_export_folder_fails_and_keeps_it(run_export, module_config):
    before = snapshot(run_export)
    source = f"synthetic:street?seed=7&frames=2&size={SIZE[0]}x{SIZE[1]}"
    result = run_cli("run", "-c", str(module_config), "--source", source, "--export-dir", str(run_export))
    assert str(run_export) in the_error(result, 73)  # EX_CANTCREAT: that output cannot be created
    assert snapshot(run_export) == before, "the existing export was changed"


@pytest.mark.system
@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_export_json_without_an_export_is_noinput(tmp_path, kind):
    folder = tmp_path / "nothing"
    if kind == "empty":
        folder.mkdir()
    result = run_cli("export-json", str(folder), timeout=60)
    assert the_error(result, 66).startswith(f"{folder}: no export here")
    assert not (folder / "panoptic.json").exists()


@pytest.mark.system
def test_killed_run_keeps_finished_frames_and_export_json_rebuilds(tmp_path, fast_config):
    out = tmp_path / "export"
    source = f"synthetic:street?seed=1001&frames=400&size={SIZE[0]}x{SIZE[1]}"
    process = popen_cli("run", "-c", str(fast_config), "--source", source, "--export-dir", str(out))
    try:
        def three_pngs() -> bool:
            assert process.poll() is None, f"the run ended before it was killed: {process.communicate()[1]}"
            return (out / "panoptic").is_dir() and len(png_names(out)) >= 3

        wait_until(three_pngs, timeout=180, every=0.05, what="3 PNGs")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "panoptic.json").exists(), "the run finished instead of being killed"

    text = (out / "segments.jsonl").read_text()
    complete = text.split("\n")[:-1]  # a last piece without its newline was cut off by the kill
    lines = [json.loads(line) for line in complete]
    assert len(lines) >= 2
    assert [line["image_id"] for line in lines] == list(range(len(lines))), "frames missing or out of order"
    categories = {c["id"]: c for c in json.loads((out / "categories.json").read_text())}
    for line in lines:
        ids = read_ids(out / "panoptic" / line["file_name"])  # every line names a complete PNG
        assert ids.shape == (line["height"], line["width"]) == (SIZE[1], SIZE[0])
        check_frame(ids, line["segments_info"], categories, line["file_name"], ("score",))
    # at most the one PNG renamed just before the kill has no line yet
    assert len(png_names(out) - {line["file_name"] for line in lines}) <= 1

    (out / "panoptic" / ".999999.tmp.png").write_bytes(b"\x89PNG\r\n")  # as if killed while writing one
    result = run_cli("export-json", str(out), timeout=60)
    assert result.returncode == 0, result.stderr
    coco = load_export(out, thing_fields=("score",))
    assert sorted(image["id"] for image in coco["images"]) == [line["image_id"] for line in lines]
    assert sorted(a["file_name"] for a in coco["annotations"]) == [line["file_name"] for line in lines]


@pytest.mark.system
def test_export_json_skips_a_truncated_last_line_with_a_warning(tmp_path):
    out = synth(tmp_path / "scene", frames=5)
    lines_file = out / "segments.jsonl"
    complete = lines_file.read_text().splitlines()
    assert len(complete) == 5
    (out / "panoptic.json").unlink()
    with open(lines_file, "a") as handle:  # a sixth line cut in the middle, as by a crash
        handle.write(complete[-1][: len(complete[-1]) // 2])
    result = run_cli("export-json", str(out), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "segments.jsonl" in warnings[0], result.stderr
    coco = load_export(out, thing_fields=("track_id",))
    assert sorted(image["id"] for image in coco["images"]) == list(range(5))


@pytest.mark.system
def test_a_run_that_failed_at_start_up_does_not_block_the_retry(tmp_path, fast_config):
    out = tmp_path / "export"
    source = f"synthetic:street?seed=1001&frames=1&size={SIZE[0]}x{SIZE[1]}"
    failed = run_cli("run", "-c", str(fast_config), "--source", source, "--export-dir", str(out),
                     "--set", f"models.instance.weights={tmp_path / 'missing.safetensors'}")
    assert f"{tmp_path / 'missing.safetensors'}: weights file not found" in the_error(failed, 66)
    retry = run_in_process("run", "-c", str(fast_config), "--source", source, "--export-dir", str(out))
    assert retry.returncode == 0, retry.stderr
    assert png_names(out) == {"000000.png"}
    load_export(out)
