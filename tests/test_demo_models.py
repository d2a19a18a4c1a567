"""The bundled demo models: files, strict safetensors loading, inference shapes, deterministic training."""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch

from streamer.inference.demo_models import (
    INSTANCE_CLASSES,
    INSTANCE_FILE,
    SEMANTIC_FILE,
    build_demo_instance,
    build_demo_semantic,
)
from streamer.inputs.synthetic import StreetScene
from streamer.tools.train_demo import (
    SceneCache,
    demo_config,
    demo_instance,
    instance_target,
    load_demo_weights,
    main,
    make_sample,
    semantic_target,
    task_data,
    train_model,
)

MAX_BYTES = 15 * 1024 * 1024


def safetensors_header(path) -> dict:
    """The JSON header of a safetensors file (an 8-byte little-endian length, then JSON): no pickle inside."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_bundled_files_exist_and_are_small():
    assert SEMANTIC_FILE.is_file() and INSTANCE_FILE.is_file()
    assert SEMANTIC_FILE.stat().st_size + INSTANCE_FILE.stat().st_size <= MAX_BYTES
    for path in (SEMANTIC_FILE, INSTANCE_FILE):
        header = safetensors_header(path)
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
        assert dtypes <= {"F16", "I64"}, dtypes
        assert int(header["__metadata__"]["seed"]) >= 0


def test_the_trainer_takes_the_demo_settings_from_the_packaged_config():
    config = demo_config()
    instance = config.models.instance
    assert config.models.semantic.weights == instance.weights == "demo"
    assert task_data("instance").upscale == instance.min_size / 360  # the camera height it is evaluated at
    model = demo_instance(config)
    assert model.transform.min_size == (instance.min_size,) and model.transform.max_size == instance.max_size
    assert model.roi_heads.score_thresh == instance.score_threshold
    assert model.roi_heads.detections_per_img == instance.detections_per_image


def small_frame():
    return StreetScene(1000, (160, 96)).render(30)


def test_semantic_loads_strictly_and_runs():
    model = load_demo_weights(build_demo_semantic(6), SEMANTIC_FILE).eval()  # strict=True inside
    assert all(p.dtype == torch.float32 for p in model.parameters())
    frame = small_frame()
    x = torch.from_numpy(frame.image[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    with torch.inference_mode():
        logits = model((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                       / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert logits.shape == (1, 6, 96, 160)
    assert torch.isfinite(logits).all()


def test_instance_loads_strictly_and_runs():
    model, classes = build_demo_instance(min_size=96, max_size=160, score_threshold=0.5, detections_per_image=20)
    assert classes == INSTANCE_CLASSES == ["__background__", "car", "person"]
    load_demo_weights(model, INSTANCE_FILE).eval()
    frame = small_frame()
    x = torch.from_numpy(frame.image[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        (out,) = model([x])
    n = out["boxes"].shape[0]
    assert n <= 20
    assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
    assert out["masks"].shape == (n, 1, 96, 160)
    assert ((out["labels"] >= 1) & (out["labels"] <= 2)).all()
    assert (out["scores"] >= 0.5).all()


def test_strict_load_rejects_a_mismatch():
    from safetensors.torch import load_file

    state = load_file(str(SEMANTIC_FILE))
    dropped = next(k for k in state if k.endswith(".weight"))
    state.pop(dropped)
    with pytest.raises(RuntimeError, match=rf'Missing key\(s\) in state_dict: "{re.escape(dropped)}"'):
        build_demo_semantic(6).load_state_dict(state, strict=True)


def test_samples_and_targets():
    task = task_data("instance", crop=(96, 96))
    image, panoptic = make_sample(task, seed=0, index=3, cache=SceneCache())
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and panoptic.shape == (96, 96)
    again, _ = make_sample(task, seed=0, index=3, cache=SceneCache())
    assert np.array_equal(image, again)
    target = instance_target(panoptic)
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 96, 96)
    sem = semantic_target(panoptic)
    assert sem.dtype == np.int64 and set(np.unique(sem)) <= {0, 1, 2, 3, 4, 5, 255}


@pytest.mark.parametrize("name,crop", [("semantic", (64, 64)), ("instance", (96, 96))])
def test_tiny_training_is_deterministic(name, crop):
    runs = []
    for _ in range(2):
        model, losses = train_model(task_data(name, crop), steps=2, batch=2, lr=1e-3, seed=7,
                                    device=torch.device("cpu"), workers=0, log_every=1)
        runs.append((losses, model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert len(losses_a) == 2 and all(np.isfinite(losses_a))
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_command_line_writes_loadable_files(tmp_path):
    rc = main(["--out", str(tmp_path), "--seed", "1", "--semantic-steps", "1", "--instance-steps", "1",
               "--semantic-batch", "1", "--instance-batch", "1", "--semantic-crop", "64x64",
               "--instance-crop", "96x96", "--log-every", "1"])
    assert rc == 0
    load_demo_weights(build_demo_semantic(6), tmp_path / SEMANTIC_FILE.name)
    model, _ = build_demo_instance(96, 160, 0.5, 10)
    load_demo_weights(model, tmp_path / INSTANCE_FILE.name)
