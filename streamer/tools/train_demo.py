"""Train the bundled demo models from scratch on synthetic street scenes.

    python -m streamer.tools.train_demo --out streamer/inference/weights --seed 0 [--device cpu|cuda] [--minutes M]

Scenes are rendered on the fly (`streamer.inputs.synthetic.StreetScene`) from training seeds 0..899 only;
evaluation uses seeds >= 1000, which training never sees. Every sample is a pure function of
(--seed, model, sample index): scene seed, frame, scale, crop, flip and photometric augmentation are
drawn from numpy Generators keyed by those numbers, so the data order does not depend on worker
processes, and a run is repeatable for a seed on a given device (bit for bit on CPU; CUDA kernels
may add rounding noise). The number of steps is fixed by the arguments, never by a clock.

The defaults are sized to finish both models in about 75 minutes on 2 CPU cores (measured: see
CPU_SECONDS_PER_STEP); `--minutes M` scales both step counts to a budget of M minutes with those
same measured rates. Writes `demo_semantic.safetensors` and `demo_instance.safetensors` (float16
tensors) into --out and logs the losses.

The demo models' sizes and thresholds come from the packaged default configuration (demo_config);
`--eval-seeds` / `--eval-only` score them exactly as `streamer eval` does (tools/evaluate.py).
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from streamer.config import Config, load_config, packaged_config_path
from streamer.frames import LABEL_DIVISOR
from streamer.inference.demo_models import (
    INSTANCE_CLASSES,
    INSTANCE_FILE,
    SEMANTIC_FILE,
    build_demo_instance,
    build_demo_semantic,
)
from streamer.inference.models import PanopticModels, imagenet_normalize, load_weights, read_state_dict, to_rgb_float
from streamer.inference.worker import InferencePool
from streamer.inputs.synthetic import CAR, CATEGORIES, PERSON, SCENE_SIZE, SceneFrame, StreetScene
from streamer.service.build import fusion_params
from streamer.tools.evaluate import score
from streamer.tools.pq import PQResult, format_pq_table

log = logging.getLogger("streamer.tools.train_demo")

TRAIN_SEEDS = 900  # scene seeds 0 .. 899 (evaluation uses >= 1000)
EVAL_SEED0 = 1000
NATIVE_SIZE = SCENE_SIZE  # the camera resolution the demo is evaluated at: the synthetic street's
FRAMES_PER_SCENE = 3000  # frame indices drawn from 0 .. 2999 (200 s at 15 fps)
GROUP = 8  # consecutive samples share one scene (and its render size): setting one up costs ~20 renders
IGNORE = 255
THING_LABELS = {CAR: INSTANCE_CLASSES.index("car"), PERSON: INSTANCE_CLASSES.index("person")}  # category -> label

# Measured on the 2-core development machine (Xeon, torch.set_num_threads(2), nothing else running),
# data rendering included; the instance steps get slower as training finds more positive proposals
# (0.85 s early, 1.1 s late). On a busy machine use --threads 1: two OpenMP threads fighting another
# process for two cores can run 10-20 times slower.
CPU_SECONDS_PER_STEP = {"semantic": 1.8, "instance": 1.1}
DEFAULTS: dict[str, dict[str, Any]] = {
    "semantic": {"steps": 800, "batch": 8, "crop": (384, 256), "lr": 2e-3},
    "instance": {"steps": 2800, "batch": 2, "crop": (576, 384), "lr": 1e-3},
}
DEFAULT_MINUTES = sum(DEFAULTS[m]["steps"] * CPU_SECONDS_PER_STEP[m] for m in DEFAULTS) / 60


# --------------------------------------------------------------------------------------------
# samples: pure functions of (seed, task, index)


@dataclass(frozen=True)
class TaskData:
    """What one model's samples look like."""

    name: str  # "semantic" | "instance"
    code: int  # keys the random streams
    crop: tuple[int, int]  # (width, height) of a training sample, in network pixels
    upscale: float  # network pixels per camera pixel (Mask R-CNN resizes 360 -> min_size)
    scale_range: tuple[float, float]  # render size relative to NATIVE_SIZE


class SceneCache:
    """The last few StreetScenes of this process (setting one up costs ~20 renders)."""

    def __init__(self, size: int = 4) -> None:
        self._scenes: OrderedDict[tuple[int, int, int], StreetScene] = OrderedDict()
        self._size = size

    def get(self, seed: int, size: tuple[int, int]) -> StreetScene:
        key = (seed, *size)
        scene = self._scenes.pop(key, None) or StreetScene(seed, size)
        self._scenes[key] = scene
        while len(self._scenes) > self._size:
            self._scenes.popitem(last=False)
        return scene


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter (brightness, contrast, saturation, channel gains, gamma), blur and noise on BGR uint8."""
    x: np.ndarray = image.astype(np.float32) / 255.0  # float32 throughout; cv2 types its results loosely
    if rng.random() < 0.8:
        gains = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        x = x * gains * np.float32(rng.uniform(0.7, 1.3))  # channel tint and brightness
        mean = x.mean()
        x = (x - mean) * np.float32(rng.uniform(0.7, 1.3)) + mean  # contrast
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * np.float32(rng.uniform(0.6, 1.4))  # saturation
        x = np.clip(x, 0.0, 1.0) ** np.float32(rng.uniform(0.8, 1.25))  # gamma
    if rng.random() < 0.25:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.4, 1.2)))
    if rng.random() < 0.3:
        x = x + rng.normal(0.0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_sample(task: TaskData, seed: int, index: int, cache: SceneCache) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index` of a task: (BGR uint8 crop, panoptic int32 crop), both at network resolution.

    The scene is rendered at the camera size times a random scale, photometrically augmented at that
    size (as a camera would), then upscaled by `task.upscale` (as the model's own resize does at
    inference), randomly cropped to `task.crop` (zero-padded where smaller) and maybe mirrored.
    """
    group = np.random.default_rng([seed, task.code, 0, index // GROUP])
    scene_seed = int(group.integers(TRAIN_SEEDS))
    scale = float(group.uniform(*task.scale_range))
    size = (max(32, round(NATIVE_SIZE[0] * scale)), max(32, round(NATIVE_SIZE[1] * scale)))
    rng = np.random.default_rng([seed, task.code, 1, index])
    frame = cache.get(scene_seed, size).render(int(rng.integers(FRAMES_PER_SCENE)))

    crop_w, crop_h = task.crop
    src_w, src_h = crop_w / task.upscale, crop_h / task.upscale  # the crop in rendered pixels
    x0 = float(rng.uniform(0, max(0.0, size[0] - src_w)))
    y0 = float(rng.uniform(0, max(0.0, size[1] - src_h)))
    # The rendered pixels the crop reads (with a pixel of margin for interpolation) get augmented.
    xa, ya = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
    xb, yb = min(size[0], math.ceil(x0 + src_w) + 2), min(size[1], math.ceil(y0 + src_h) + 2)
    image = _photometric(frame.image[ya:yb, xa:xb], rng)
    # One affine map (scale about pixel centres, then shift) for image and labels, as cv2.resize does.
    s = task.upscale
    matrix = np.array([[s, 0, (s - 1) / 2 - (x0 - xa) * s], [0, s, (s - 1) / 2 - (y0 - ya) * s]], np.float64)
    out_image = cv2.warpAffine(image, matrix, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    panoptic = cv2.warpAffine(frame.panoptic[ya:yb, xa:xb].astype(np.float32), matrix, (crop_w, crop_h),
                              flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    panoptic = np.rint(panoptic).astype(np.int32)  # category * 1000 + instance < 2**24: exact in float32
    if rng.random() < 0.5:
        out_image, panoptic = out_image[:, ::-1], panoptic[:, ::-1]
    return np.ascontiguousarray(out_image), np.ascontiguousarray(panoptic)


def semantic_target(panoptic: np.ndarray) -> np.ndarray:
    """Panoptic map -> class index 0..5 (category id - 1), IGNORE where padded."""
    target = panoptic // LABEL_DIVISOR - 1
    return np.where(panoptic < 0, IGNORE, target).astype(np.int64)


def instance_target(panoptic: np.ndarray, min_area: int = 4) -> dict[str, np.ndarray]:
    """Panoptic map -> Mask R-CNN target: boxes (x0, y0, x1, y1), labels, masks (N x H x W uint8)."""
    ids = np.unique(panoptic)
    ids = ids[np.isin(ids // LABEL_DIVISOR, list(THING_LABELS))]
    boxes, labels, masks = [], [], []
    for value in ids:
        mask = panoptic == value
        if mask.sum() < min_area:
            continue
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        boxes.append([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
        labels.append(THING_LABELS[int(value) // LABEL_DIVISOR])
        masks.append(mask)
    h, w = panoptic.shape
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "masks": np.array(masks, np.uint8).reshape(-1, h, w),
    }


class SampleSet(torch.utils.data.Dataset):
    """Index k -> one training sample (numpy), rendered on demand in whichever process asks."""

    def __init__(self, task: TaskData, seed: int, length: int) -> None:
        self.task, self.seed, self.length = task, seed, length
        self._cache: SceneCache | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if self._cache is None:
            self._cache = SceneCache()
        image, panoptic = make_sample(self.task, self.seed, index, self._cache)
        if self.task.name == "semantic":
            return image, semantic_target(panoptic)
        return image, instance_target(panoptic)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _loader(dataset: SampleSet, batch: int, workers: int) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {"num_workers": workers, "collate_fn": list, "batch_size": batch, "shuffle": False}
    if workers > 0:
        kwargs.update(worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=False)
    return torch.utils.data.DataLoader(dataset, **kwargs)


def to_network(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """BGR uint8 H x W x 3 -> RGB float 3 x H x W in [0, 1]: the models' own preprocessing."""
    return to_rgb_float(torch.from_numpy(image).to(device))


@functools.lru_cache(maxsize=1)
def demo_config() -> Config:
    """The packaged default configuration: the demo models' sizes, thresholds and class table
    (read once; the config is immutable)."""
    return load_config(packaged_config_path())


# --------------------------------------------------------------------------------------------
# training


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2 % of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _resize_to(model: torch.nn.Module, min_size: int, max_size: int) -> None:
    """Set the Mask R-CNN's resize (its GeneralizedRCNNTransform; torch types a submodule only as Module)."""
    transform: Any = model.transform
    transform.min_size = (min_size,)
    transform.max_size = max_size


def train_model(task: TaskData, steps: int, batch: int, lr: float, seed: int, device: torch.device,
                workers: int, log_every: int = 50) -> tuple[torch.nn.Module, list[float]]:
    """Trains one model for exactly `steps` steps; returns it (in eval mode) and the per-step losses."""
    torch.manual_seed(seed * 1009 + task.code)
    if task.name == "semantic":
        model = build_demo_semantic(len(CATEGORIES))
    else:
        model = demo_instance(demo_config())
        # Training crops are already at network scale: the model's resize must leave them alone.
        _resize_to(model, task.crop[1], max(task.crop))
    model.to(device).train()
    optimizer = _optimizer(model, lr)
    warmup = min(300, max(1, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup))
    losses: list[float] = []
    parts: dict[str, float] = {}
    started = time.monotonic()
    loader = _loader(SampleSet(task, seed, steps * batch), batch, workers)
    for step, samples in enumerate(loader):
        if task.name == "semantic":
            x = torch.stack([to_network(image, device) for image, _ in samples])
            y = torch.stack([torch.from_numpy(t) for _, t in samples]).to(device)
            logits = model(imagenet_normalize(x))
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
            terms = {"ce": loss.detach()}
        else:
            images = [to_network(image, device) for image, _ in samples]
            targets = [{k: torch.from_numpy(v).to(device) for k, v in t.items()} for _, t in samples]
            terms = model(images, targets)
            loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"{task.name}: loss is {value} at step {step}")
        losses.append(value)
        for key, term in terms.items():
            parts[key] = parts.get(key, 0.0) + float(term.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            elapsed = time.monotonic() - started
            detail = " ".join(f"{k.replace('loss_', '')}={v / n:.4f}" for k, v in parts.items())
            log.info("%s step %d/%d loss %.4f (%s) lr %.2e %.2f s/step", task.name, step + 1, steps,
                     sum(losses[-n:]) / n, detail, scheduler.get_last_lr()[0], elapsed / (step + 1))
            parts = {}
    if task.name == "instance":
        settings = demo_config().models.instance
        _resize_to(model, settings.min_size, settings.max_size)
    return model.eval(), losses


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> int:
    """Writes the state dict as safetensors, floating tensors in float16; returns the file size."""
    from safetensors.torch import save_file

    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path.stat().st_size


def load_demo_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Strict load of a demo safetensors file (float16 on disk, cast to the model's dtype)."""
    load_weights(model, read_state_dict(path), str(path))
    return model


def demo_instance(config: Config) -> torch.nn.Module:
    """The demo Mask R-CNN with the packaged configuration's sizes and thresholds (random weights)."""
    settings = config.models.instance
    model, _ = build_demo_instance(settings.min_size, settings.max_size, settings.score_threshold, settings.detections_per_image)
    return model


def task_data(name: str, crop: tuple[int, int] | None = None) -> TaskData:
    if name == "semantic":
        return TaskData("semantic", 1, crop or DEFAULTS["semantic"]["crop"], 1.0, (0.75, 1.3))
    upscale = demo_config().models.instance.min_size / NATIVE_SIZE[1]
    return TaskData("instance", 2, crop or DEFAULTS["instance"]["crop"], upscale, (0.8, 1.25))


# --------------------------------------------------------------------------------------------
# quick evaluation on unseen seeds


def evaluate(semantic: torch.nn.Module, instance: torch.nn.Module, config: Config, device: torch.device,
             seeds: list[int], frames: list[int]) -> dict[str, PQResult]:
    """PQ of the three fusions on frames `frames` of each scene seed, scored exactly as `streamer eval`
    scores them: the models' own preprocessing (PanopticModels), the configured fusion."""
    models = PanopticModels(semantic, instance, list(INSTANCE_CLASSES), config.models, config.categories(), device, "off")
    pool = InferencePool(1, torch.get_num_threads())
    try:
        return score(scene_frames(seeds, frames), pool, models, fusion_params(config), config.categories())[0]
    finally:
        pool.close()


def scene_frames(seeds: list[int], frames: list[int]) -> Iterator[SceneFrame]:
    """Frames `frames` of the synthetic street of each seed, at NATIVE_SIZE, with ground truth."""
    for seed in seeds:
        scene = StreetScene(seed, NATIVE_SIZE)
        yield from (scene.render(index) for index in frames)


# --------------------------------------------------------------------------------------------
# command line


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamer.tools.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=SEMANTIC_FILE.parent, help="folder for the .safetensors files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"scale both step counts to this CPU budget (defaults: {DEFAULT_MINUTES:.0f} min on 2 cores)")
    p.add_argument("--only", choices=("both", "semantic", "instance"), default="both")
    for name, d in DEFAULTS.items():
        p.add_argument(f"--{name}-steps", type=int, default=None, help=f"default {d['steps']}")
        p.add_argument(f"--{name}-batch", type=int, default=d["batch"])
        p.add_argument(f"--{name}-crop", type=_size, default=d["crop"], help="WxH")
        p.add_argument(f"--{name}-lr", type=float, default=d["lr"])
    p.add_argument("--workers", type=int, default=0, help="data loader processes (0: render in the main process)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--log-file", type=Path, default=None)
    p.add_argument("--eval-seeds", type=int, default=0, help="after training, evaluate on this many seeds from 1000")
    p.add_argument("--eval-frames", type=int, default=30, help="frames per evaluation seed")
    p.add_argument("--eval-stride", type=int, default=10, help="evaluate frames 0, stride, 2 * stride, ...")
    p.add_argument("--eval-only", action="store_true", help="evaluate the weights in --out, train nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logging goes to stderr (and --log-file) through this module's logger only, so calling main()
    # from Python leaves the root logger as it was.
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log_file:
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log_file))
    formatter = logging.Formatter("%(asctime)s %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _run(args)
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(level)
        log.propagate = propagate


def _run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    out: Path = args.out
    names = ("semantic", "instance") if args.only == "both" else (args.only,)
    factor = 1.0 if args.minutes is None else args.minutes / DEFAULT_MINUTES
    if not args.eval_only:
        for name in names:
            steps = getattr(args, f"{name}_steps") or max(1, round(DEFAULTS[name]["steps"] * factor))
            batch = getattr(args, f"{name}_batch")
            task = task_data(name, getattr(args, f"{name}_crop"))
            lr = getattr(args, f"{name}_lr")
            log.info("training %s: %d steps, batch %d, crop %dx%d, lr %.1e, seed %d, device %s",
                     name, steps, batch, *task.crop, lr, args.seed, device)
            started = time.monotonic()
            model, losses = train_model(task, steps, batch, lr, args.seed, device, args.workers, args.log_every)
            seconds = time.monotonic() - started
            path = out / (SEMANTIC_FILE.name if name == "semantic" else INSTANCE_FILE.name)
            final = float(np.mean(losses[-50:]))
            meta = {"model": name, "steps": str(steps), "batch": str(batch), "crop": f"{task.crop[0]}x{task.crop[1]}",
                    "lr": str(lr), "seed": str(args.seed), "device": str(device), "train_seeds": f"0-{TRAIN_SEEDS - 1}",
                    "seconds": f"{seconds:.0f}", "final_loss": f"{final:.4f}"}
            size = save_weights(model, path, meta)
            log.info("%s: %d steps in %.0f s (%.3f s/step), final loss %.4f; wrote %s (%.2f MB)", name, steps,
                     seconds, seconds / steps, final, path, size / 1e6)
    if args.eval_seeds > 0 or args.eval_only:
        config = demo_config()
        semantic = load_demo_weights(build_demo_semantic(len(CATEGORIES)), out / SEMANTIC_FILE.name)
        instance = load_demo_weights(demo_instance(config), out / INSTANCE_FILE.name)
        seeds = list(range(EVAL_SEED0, EVAL_SEED0 + max(1, args.eval_seeds)))
        frames = list(range(0, args.eval_stride * args.eval_frames, args.eval_stride))
        results = evaluate(semantic, instance, config, device, seeds, frames)
        text = "\n\n".join(f"[{method}]\n{format_pq_table(result)}" for method, result in results.items())
        log.info("evaluation on seeds %d..%d, %d frames each (stride %d), %s:\n%s", seeds[0], seeds[-1],
                 args.eval_frames, args.eval_stride, device, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
