"""Bad input through the real CLI: every case ends with its documented exit code and one clear
ERROR line that names the problem, never a traceback.

Exit codes (DESIGN.md): 0 ok, 1 other failure, 2 usage, 66 input not found, 78 bad configuration.
Runs that fail while loading weights use the fast random-init config and the default synthetic
source, so no inference is run except in the two positive controls.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from helpers import cli_env, error_lines, run_cli, run_in_process, run_summary, the_error
from safetensors.torch import save_file

EXIT_FAILURE, EXIT_USAGE, EXIT_DATAERR, EXIT_NOINPUT = 1, 2, 65, 66


def run_fast(config: Path, source: Path | str, *args: str, env: dict[str, str] | None = None):
    """`streamer run -c CONFIG --source SOURCE ARGS` in a subprocess."""
    return run_cli("run", "-c", str(config), "--source", str(source), *args, env=env)


def weights_error(config: Path, source: Path, key: str, path: Path, code: int) -> str:
    """Run with the weights setting `key` pointing at `path`: the one error, which names that file.
    In this process (these exit codes are also checked from a fresh one, in the COCO weights test)."""
    message = the_error(run_in_process("run", "-c", str(config), "--source", str(source), "--set", f"{key}={path}"), code)
    assert str(path) in message
    return message


# ---------------------------------------------------------------------------------------------
# Sources (each exit code once from a fresh process; the other cases in this one, which is quicker)


@pytest.mark.system
def test_missing_source_file(fast_config, tmp_path):
    missing = tmp_path / "nowhere" / "clip.mp4"
    message = the_error(run_cli("run", "-c", str(fast_config), "--source", str(missing)), EXIT_NOINPUT)
    assert str(missing) in message
    assert "no such file" in message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is a text file, not a video\n" * 20, id="text"),
        pytest.param(os.urandom(64 * 1024), id="random-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_file_that_is_not_a_video(fast_config, tmp_path, content):
    fake = tmp_path / "x.mp4"
    fake.write_bytes(content)
    message = the_error(run_in_process("run", "-c", str(fast_config), "--source", str(fake)), EXIT_FAILURE)
    assert str(fake) in message
    assert "not a readable video" in message


@pytest.mark.system
def test_unknown_uri_scheme(fast_config):
    message = the_error(run_cli("run", "-c", str(fast_config), "--source", "foo://x"), EXIT_USAGE)
    assert "foo://x" in message
    assert "unknown source scheme 'foo'" in message


def test_credentials_are_not_logged_for_unknown_scheme(fast_config):
    message = the_error(run_in_process("run", "-c", str(fast_config), "--source", "foo://alice:s3cret@cam/x"), EXIT_USAGE)
    assert "s3cret" not in message
    assert "foo://***@cam/x" in message


@pytest.mark.parametrize("layout", ["empty", "no-images", "glob"])
def test_image_folder_or_glob_without_images(fast_config, tmp_path, layout):
    folder = tmp_path / "frames"
    folder.mkdir()
    if layout == "no-images":
        (folder / "notes.txt").write_text("not an image")
        (folder / "clip.mp4").write_bytes(b"")
    target = str(folder / "*.png") if layout == "glob" else str(folder)
    message = the_error(run_in_process("run", "-c", str(fast_config), "--source", target), EXIT_NOINPUT)
    assert target in message
    assert "no image files found" in message
    assert message.endswith("; it holds videos: give one of them as the source") == (layout == "no-images")


def test_one_missing_source_among_several_fails_before_anything_runs(fast_config, small_video, tmp_path):
    missing = tmp_path / "gone.mp4"
    message = the_error(
        run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--source", str(missing)), EXIT_NOINPUT
    )
    assert str(missing) in message


# ---------------------------------------------------------------------------------------------
# Display


@pytest.mark.system
@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="DISPLAY-unset"),
        pytest.param({"DISPLAY": ":87"}, id="no-X-server-at-DISPLAY"),
    ],
)
def test_display_without_a_display(fast_config, small_video, env):
    result = run_cli("run", "-c", str(fast_config), "--source", str(small_video), "--display", env=cli_env(**env))
    message = the_error(result, EXIT_USAGE)
    assert "--display" in message
    assert "no display" in message


# ---------------------------------------------------------------------------------------------
# Weights files


def unet_state(classes: int) -> dict[str, torch.Tensor]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=classes)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Real smp Unet resnet18 state dicts: 6 classes (fits config.yaml) and 3 classes (does not)."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    good = unet_state(6)
    torch.save(good, folder / "unet6.pth")
    files["good.pth"] = folder / "unet6.pth"
    blob = (folder / "unet6.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    files["truncated.pth"] = folder / "truncated.pth"
    wrong = unet_state(3)
    save_file(wrong, str(folder / "unet3.safetensors"))
    torch.save(wrong, folder / "unet3.pth")
    files["wrong.safetensors"] = folder / "unet3.safetensors"
    files["wrong.pth"] = folder / "unet3.pth"
    return files


@pytest.mark.system
def test_semantic_weights_that_fit_load_and_run(fast_config, small_video, weights):
    """Positive control: a genuine state dict of the configured model loads with weights_only."""
    result = run_cli(
        "run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1",
        "--set", f"models.semantic.weights={weights['good.pth']}",
    )
    assert result.returncode == 0, result.stderr
    assert not error_lines(result.stderr), result.stderr


@pytest.mark.parametrize(
    "key, name",
    [("models.semantic.weights", "nonexistent.safetensors"), ("models.instance.weights", "nonexistent.pth")],
)
def test_missing_weights_file(fast_config, small_video, tmp_path, key, name):
    missing = tmp_path / name
    message = weights_error(fast_config, small_video, key, missing, EXIT_NOINPUT)
    assert message == f"{missing}: weights file not found"


def test_missing_semantic_pretrained_folder(fast_config, small_video, tmp_path):
    missing = tmp_path / "no_such_smp_folder"
    message = weights_error(fast_config, small_video, "models.semantic.weights", missing, EXIT_NOINPUT)
    assert message == f"{missing}: semantic weights not found (no such file or folder)"


@pytest.mark.parametrize("fmt", ["wrong.safetensors", "wrong.pth"])
def test_semantic_weights_of_the_wrong_shape(fast_config, small_video, weights, fmt):
    message = weights_error(fast_config, small_video, "models.semantic.weights", weights[fmt], EXIT_DATAERR)
    assert re.search(r"wrong shape for segmentation_head\.0\.\w+: file has \[3\b.*model expects \[6\b", message)


def test_a_mask_rcnn_with_other_classes_names_the_key_to_set(fast_config, small_video, tmp_path):
    path = tmp_path / "maskrcnn_3classes.safetensors"
    save_file({"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 1024)}, str(path))
    message = weights_error(fast_config, small_video, "models.instance.weights", path, EXIT_DATAERR)
    assert message == (f"{path}: this Mask R-CNN has 2 classes (and the background) but without models.instance.classes, "
                       "COCO's 90 are assumed; set models.instance.classes to its class names in label order, from label 1")


def user_mask_rcnn(folder: Path, classes: list[str]) -> Path:
    """A Mask R-CNN fine-tuned on the user's own classes (random values), as torch.save writes it."""
    from streamer.config import InstanceModel
    from streamer.inference.models import build_instance

    model = build_instance(InstanceModel(classes=tuple(classes), weights="none"))[0]
    path = folder / "my_maskrcnn.pth"
    torch.save(model.state_dict(), path)
    return path


def test_a_mask_rcnn_of_the_users_own_classes_loads_with_their_names(fast_config, small_video, tmp_path):
    path = user_mask_rcnn(tmp_path, ["van", "cyclist", "cone"])
    mapped = ["--set", f"models.instance.weights={path}", "--set", "models.instance.class_map={van: car, cyclist: person}"]
    result = run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1", *mapped,
                            "--set", "models.instance.classes=[van, cyclist, cone]")
    assert result.returncode == 0, result.stderr
    result = run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1", *mapped,
                            "--set", "models.instance.classes=[van, cyclist]")
    message = the_error(result, EXIT_DATAERR)
    assert "this Mask R-CNN has 3 classes (and the background) but models.instance.classes lists 2" in message


@pytest.mark.parametrize("form", ["training checkpoint", "DataParallel"])
def test_a_mask_rcnn_saved_as_training_scripts_save_it_loads(tmp_path, form):
    """torchvision's references/detection/train.py saves the weights beside the optimizer, its argparse
    arguments and the MultiStepLR milestones (a Counter); a model wrapped for several GPUs saves its
    keys under `module.`."""
    import argparse
    import collections

    from streamer.inference.models import read_state_dict

    plain = torch.load(user_mask_rcnn(tmp_path, ["van", "cyclist", "cone"]), weights_only=True)
    if form == "training checkpoint":
        saved = {"model": plain, "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "params": [0, 1]}]},
                 "lr_scheduler": {"milestones": collections.Counter({16: 1, 22: 1}), "gamma": 0.1},
                 "args": argparse.Namespace(lr=0.02, epochs=26, data_path="/data"), "epoch": 25}
    else:
        saved = {f"module.{key}": value for key, value in plain.items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(saved, path)
    state = read_state_dict(path)
    assert state.keys() == plain.keys() and all(torch.equal(state[k], plain[k]) for k in plain)


def test_instance_weights_with_missing_keys(fast_config, small_video, tmp_path):
    path = tmp_path / "maskrcnn_partial.safetensors"
    save_file({"roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024)}, str(path))
    message = weights_error(fast_config, small_video, "models.instance.weights", path, EXIT_DATAERR)
    assert re.search(r"weights do not fit the configured model: \d+ missing \(e\.g\. [\w.]+\) keys$", message)


@pytest.mark.parametrize(
    "name, make, problem",
    [
        pytest.param("truncated.pth", None, "not a loadable weights file", id="truncated-pth"),
        pytest.param("random.safetensors", lambda p: p.write_bytes(os.urandom(4096)), "not a loadable weights file",
                     id="random-safetensors"),
        pytest.param("random.pth", lambda p: p.write_bytes(os.urandom(4096)), "not a loadable weights file", id="random-pth"),
        pytest.param("empty.safetensors", lambda p: p.write_bytes(b""), "not a loadable weights file", id="empty-safetensors"),
        pytest.param("list.pth", lambda p: torch.save([torch.zeros(2)], p), "does not hold a state dict of tensors",
                     id="pth-not-a-dict"),
    ],
)
def test_unreadable_weights_file(fast_config, small_video, weights, tmp_path, name, make, problem):
    if make is None:
        path = weights[name]
    else:
        path = tmp_path / name
        make(path)
    message = weights_error(fast_config, small_video, "models.semantic.weights", path, EXIT_DATAERR)
    assert message.startswith(f"{path}: {problem}"), message
    assert "\x1b" not in message and "weights_only=False" not in message, "no terminal codes, no advice to load unsafely"


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_payload(path: Path, marker: Path, fmt: str) -> Path:
    payload = {"state_dict": {"encoder.conv1.weight": Payload(f"touch {marker}")}}
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    return path


@pytest.mark.parametrize(
    "key, fmt",
    [
        ("models.semantic.weights", "torch.save"),
        ("models.semantic.weights", "pickle"),
        ("models.instance.weights", "torch.save"),
    ],
)
def test_malicious_pth_is_refused_without_running_code(fast_config, small_video, tmp_path, fmt, key):
    # The payload is live: an unsafe load runs it.
    control_marker = tmp_path / "CONTROL"
    control = write_payload(tmp_path / "control.pth", control_marker, fmt)
    with contextlib.suppress(Exception):  # a bare pickle is no torch file, but it runs first
        torch.load(control, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "MARKER"
    evil = write_payload(tmp_path / "evil.pth", marker, fmt)
    message = weights_error(fast_config, small_video, key, evil, EXIT_DATAERR)
    assert not marker.exists(), "loading the weights ran code from the pickle"
    assert "\x1b" not in message and "weights_only=False" not in message, "one clean line, no advice to load unsafely"
    if fmt == "pickle":  # not even a torch file
        assert message == f"{evil}: not a loadable weights file (not a torch or safetensors file)"
        return
    assert re.fullmatch(rf"{re.escape(str(evil))}: holds pickled Python objects \((posix|os)\.system\), not only tensors, so it "
                        r"is refused \(streamer never runs code from a weights file\); save the state dict alone: "
                        r"torch\.save\(model\.state_dict\(\), path\), or use \.safetensors", message), message


@pytest.mark.system
def test_coco_weights_not_in_an_empty_torch_home(fast_config, small_video, tmp_path):
    """The message names the file and where torch looks for it; putting a file there is what it reads."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    url = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    env = cli_env(TORCH_HOME=str(torch_home))
    args = ("--set", "models.instance.weights=coco")
    message = the_error(run_fast(fast_config, small_video, *args, env=env), EXIT_NOINPUT)
    assert url in message  # which file
    expected = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]  # torch.hub.get_dir() is $TORCH_HOME/hub
    assert f"({expected})" in message  # where to place it
    assert [p for p in torch_home.rglob("*") if p.is_file()] == [], "nothing may be downloaded"

    # Following the advice: a file at that place is the one loaded (this one is garbage, so exit 65).
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"not really a checkpoint")
    message = the_error(run_fast(fast_config, small_video, *args, env=env), EXIT_DATAERR)
    assert str(expected) in message
    assert "not a loadable weights file" in message


# ---------------------------------------------------------------------------------------------
# Sanity: the same fixtures do work when nothing is wrong


@pytest.mark.system
def test_valid_small_run_still_works(fast_config, small_video):
    result = run_cli("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "2")
    assert result.returncode == 0, result.stderr
    assert not error_lines(result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert run_summary(result.stderr)["processed"] == 2
