"""Build and load the semantic (segmentation-models-pytorch) and instance (torchvision Mask R-CNN) models.

Nothing is ever downloaded: weights come from local files, torch's hub cache or the Hugging Face
cache. `.pth` files are read with `torch.load(..., weights_only=True)` only.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from streamer import config as cfg
from streamer.errors import DataError, InputNotFound, UsageError
from streamer.frames import Category
from streamer.inference import backends, checkpoints, demo_models, exports
from streamer.inference.checkpoints import Kind
from streamer.inference.fusion import vote_categories
from streamer.inference.masks import paste_in_boxes
from streamer.inference.prediction import Prediction, SemanticNetwork

log = logging.getLogger(__name__)

COCO_CLASSES: list[str] = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
VOTE_MASK_THRESHOLD = 0.5  # mask pixels at least this likely vote for an instance's category
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours some libraries put in their messages
RANDOM_INIT_SEED = 0  # networks without weights (`weights: none`) start from this seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


# ---------------------------------------------------------------------------------------------
# Weights files


# Plain data that training checkpoints hold beside the weights, safe to rebuild: torchvision's
# references/detection/train.py saves its argparse arguments and MultiStepLR's milestones (a Counter).
PLAIN_DATA: list[Any] = [argparse.Namespace, collections.Counter]  # classes torch.load may rebuild
DATA_PARALLEL = "module."


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or `.pth` (weights only). One clear error for a bad file."""
    if not path.is_file():
        raise InputNotFound(f"{path}: weights file not found")
    state: Any  # whatever the file holds; checked below to be a dict of tensors
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(PLAIN_DATA), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on a raw pickle's protocol: the refusal below says it all
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler met something that is not a tensor
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), flags=re.IGNORECASE)
        if not found:
            raise DataError(f"{path}: not a loadable weights file (not a torch or safetensors file)") from None
        raise DataError(
            f"{path}: holds pickled Python objects ({found.group(1)}), not only tensors, so it is refused (streamer "
            "never runs code from a weights file); save the state dict alone: torch.save(model.state_dict(), path), "
            "or use .safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the same user-facing problem
        reason = ANSI_ESCAPE.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: not a loadable weights file ({type(exc).__name__}: {reason[:200]}); "
            "expected a state dict saved with torch.save(model.state_dict()) or safetensors"
        ) from None
    for wrapper in ("state_dict", "model"):  # a training checkpoint: the weights beside the optimizer's state
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: does not hold a state dict of tensors")
    if state and all(key.startswith(DATA_PARALLEL) for key in state):  # saved from a DataParallel/DDP wrapper
        state = {key[len(DATA_PARALLEL):]: value for key, value in state.items()}
    return state


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load with a one-line explanation of the first mismatch."""
    expected = module.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise DataError(
                f"{origin}: wrong shape for {key}: file has {list(tensor.shape)}, model expects "
                f"{list(expected[key].shape)}; do the weights match the configured architecture and classes?"
            )
    # BatchNorm's step counter does not matter to inference: BatchNorm fills in a missing one and
    # FrozenBatchNorm2d drops one it does not keep, so checkpoints load with or without it.
    counter = ".num_batches_tracked"
    missing = [k for k in expected if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in expected and not k.endswith(counter)]
    if missing or unexpected:
        detail = f"{len(missing)} missing (e.g. {missing[0]})" if missing else f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"
        raise DataError(f"{origin}: weights do not fit the configured model: {detail} keys")
    module.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Semantic model


def build_semantic(settings: cfg.SemanticModel) -> torch.nn.Module:
    """The smp network the settings name, with its weights (see checkpoints for where they come from)."""
    weights = checkpoints.semantic_weights(settings)
    if weights is None:  # random init
        return create_semantic(settings)
    if weights.kind is Kind.BUNDLED:
        model = demo_models.build_demo_semantic(len(settings.classes))
        load_weights(model, read_state_dict(demo_models.SEMANTIC_FILE), "demo semantic weights")
        return model
    if weights.kind is Kind.HUB:
        if not weights.present:
            raise InputNotFound(checkpoints.missing_message(weights, "none"))
        return build_pretrained(weights.file, settings, origin=weights.name)
    if weights.file.suffix not in checkpoints.WEIGHTS_SUFFIXES:
        if not weights.file.is_dir():
            raise InputNotFound(f"{weights.name}: semantic weights not found (no such file or folder)")
        return build_pretrained(weights.file, settings, origin=str(weights.path))
    model = create_semantic(settings)
    load_weights(model, read_state_dict(weights.file), weights.name)
    return model


def create_semantic(settings: cfg.SemanticModel) -> torch.nn.Module:
    """The configured smp architecture and encoder, randomly initialised (nothing downloaded)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(settings.arch, encoder_name=settings.encoder, encoder_weights=None, classes=len(settings.classes))
    except (KeyError, ValueError) as exc:
        raise cfg.ConfigError(f"models.semantic: cannot build {settings.arch} with encoder {settings.encoder}: {exc}") from None


def build_pretrained(folder: Path, settings: cfg.SemanticModel, origin: str) -> torch.nn.Module:
    """The network an smp `save_pretrained` folder describes (config.json: `_model_class` and the
    constructor's arguments; model.safetensors: the state dict), once checkpoints.pretrained_config
    found it fits the settings. Raises InputNotFound, DataError."""
    import segmentation_models_pytorch as smp

    arguments = checkpoints.pretrained_config(folder, settings, origin)
    arch = arguments.pop("_model_class")
    arguments["encoder_weights"] = None  # never fetch ImageNet weights: the state dict holds them all
    try:
        model = smp.create_model(arch, **arguments)
    except Exception as exc:  # noqa: BLE001 - smp raises several kinds for a config it cannot build
        raise DataError(f"{origin}: config.json does not describe a network smp can build ({type(exc).__name__}: {exc})") from None
    load_weights(model, read_state_dict(folder / "model.safetensors"), origin)
    return model


# ---------------------------------------------------------------------------------------------
# Instance model


def build_instance(settings: cfg.InstanceModel) -> tuple[torch.nn.Module, list[str]]:
    """The Mask R-CNN and the class names its labels index, with the proposal counts the settings give."""
    model, names = _build_instance(settings)
    for count, field in ((settings.proposals_pre_nms, "_pre_nms_top_n"), (settings.proposals, "_post_nms_top_n")):
        if count is not None:  # torchvision's RegionProposalNetwork keeps its counts per mode in these dicts
            getattr(model.rpn, field)["testing"] = count
    return model, names


def _build_instance(settings: cfg.InstanceModel) -> tuple[torch.nn.Module, list[str]]:
    if settings.weights == "demo":
        model, names = demo_models.build_demo_instance(
            settings.min_size, settings.max_size, settings.score_threshold, settings.detections_per_image
        )
        load_weights(model, read_state_dict(demo_models.INSTANCE_FILE), "demo instance weights")
        return model, names
    names = ["__background__", *settings.classes] if settings.classes else COCO_CLASSES
    options = dict(num_classes=len(names), min_size=settings.min_size, max_size=settings.max_size,
                   box_score_thresh=settings.score_threshold, box_detections_per_img=settings.detections_per_image)
    if settings.arch == "maskrcnn_resnet50_fpn":
        # As torchvision builds it to load its published weights: a ResNet-50 with frozen batch
        # norm (no num_batches_tracked in the state dict), 3 trainable layers, FPN.
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
        model = MaskRCNN(backbone, **options)
    else:  # v2 uses batch norm however it is built
        model = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **options)
    weights = checkpoints.instance_weights(settings)
    if weights is not None:
        if not weights.present and weights.kind is Kind.TORCH:
            raise InputNotFound(checkpoints.missing_message(weights, "none"))
        state = read_state_dict(weights.file)
        check_instance_classes(state, names, settings, str(weights.path))
        load_weights(model, state, str(weights.path))
    return model, names


def check_instance_classes(state: dict[str, torch.Tensor], names: list[str], settings: cfg.InstanceModel, origin: str) -> None:
    """The box classifier's rows (background included) must match the class names. Raises DataError."""
    classifier = state.get("roi_heads.box_predictor.cls_score.weight")
    if classifier is None or classifier.shape[0] == len(names):
        return
    listed = (f"models.instance.classes lists {len(names) - 1}" if settings.classes
              else "without models.instance.classes, COCO's 90 are assumed")
    raise DataError(
        f"{origin}: this Mask R-CNN has {classifier.shape[0] - 1} classes (and the background) but {listed}; "
        "set models.instance.classes to its class names in label order, from label 1"
    )


def category_candidates(class_names: list[str], settings: cfg.InstanceModel, categories: tuple[Category, ...]) -> torch.Tensor:
    """Model label index -> the panoptic category ids it may become, the default first: a
    len(class_names) x K long tensor, 0-padded (a row of zeros: the class is ignored)."""
    by_name = {c.name: c.id for c in categories}
    unknown = sorted(set(settings.class_map) - set(class_names))
    if unknown:
        log.info("models.instance.class_map: the instance model has no class %s; those entries are unused", ", ".join(unknown))
    rows = [[by_name[target] for target in settings.candidates(name)] for name in class_names]
    width = max([1] + [len(row) for row in rows])
    return torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Inference


def uses_autocast(device: torch.device, half: str) -> bool:
    """float16 autocast on CUDA unless runtime.half is off; float32 everywhere else."""
    return device.type == "cuda" and half != "off"


class PanopticModels:
    """The two networks on one device, with the pre- and post-processing around them.

    `semantic`: an smp-style network, N x 3 x H x W normalised RGB (settings.semantic.mean, std)
    -> N x C x H x W logits, a torch module or an exported copy run by another backend
    (streamer.inference.backends); `instance`: a torchvision Mask R-CNN whose labels index
    `class_names`; `build_models` makes both from the config. A `Predictor` (inference.prediction)."""

    def __init__(self, semantic: SemanticNetwork, instance: MaskRCNN, class_names: list[str], settings: cfg.Models,
                 categories: tuple[Category, ...], device: torch.device, half: str):
        self.device = device
        self.autocast = uses_autocast(device, half)
        self.input_size = settings.semantic.input_size
        # NHWC on a GPU: cuDNN's fp16 convolutions run on tensor cores without layout transposes
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        if isinstance(semantic, torch.nn.Module):
            semantic = semantic.to(device).eval().to(memory_format=self.memory_format)
        self.semantic = semantic
        self.instance = instance.to(device).eval()
        self.candidates = category_candidates(class_names, settings.instance, categories).to(device)
        self.mean = torch.tensor(settings.semantic.mean, device=device).view(1, 3, 1, 1) / 255.0
        self.std = torch.tensor(settings.semantic.std, device=device).view(1, 3, 1, 1) / 255.0
        self.is_thing = torch.tensor([False] + [c.isthing for c in categories], device=device)
        self.detections_cap = instance.roi_heads.detections_per_img

    def _precision(self):
        if self.autocast:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Run both models on BGR uint8 frames (any sizes)."""
        uploaded = [upload(image, self.device) for image in images]
        tensors = [to_rgb_float(image) for image in uploaded]
        with self._precision():
            semantic = self._semantic(tensors)
            detections = detect(self.instance, tensors, self.candidates[:, 0] > 0)  # classes the class map ignores: no mask
        predictions = []
        for image, sem, det in zip(uploaded, semantic, detections):
            candidates = self.candidates[det["labels"]]
            height, width = sem.shape
            masks = paste_in_boxes(det["masks"].float(), det["boxes"], (height, width))
            predictions.append(
                Prediction(
                    image=image,
                    semantic=sem,
                    masks=masks,
                    scores=det["scores"].float(),
                    categories=vote_categories(sem, masks, candidates, VOTE_MASK_THRESHOLD),
                    capped=det["found"] >= self.detections_cap,
                )
            )
        return predictions

    def _semantic(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Class maps (category ids) at each image's own size, from one batch at the network's input size."""
        size = (self.input_size[1], self.input_size[0])
        x = torch.cat([F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False) for rgb in images])
        logits = self.semantic(((x - self.mean) / self.std).contiguous(memory_format=self.memory_format))
        return [
            F.interpolate(one[None].float(), size=rgb.shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0) + 1
            for one, rgb in zip(logits, images)
        ]


MASK_CHUNK = 64  # detections through the mask head at once: its activations stay bounded whatever their number


def detect(model: MaskRCNN, images: list[torch.Tensor], kept: torch.Tensor) -> list[dict[str, Any]]:
    """torchvision's Mask R-CNN in eval mode, with its masks computed only for the detections whose
    label `kept` (a bool per label) marks, MASK_CHUNK at a time, and left box-relative. Per image:
    "boxes" (N x 4, x0 y0 x1 y1 in the image's pixels), "labels", "scores", "masks" (N x 1 x 28 x
    28 probabilities) of the kept detections, and "found" (all detections, kept or not). The steps
    of GeneralizedRCNN.forward and RoIHeads.forward; each detection's mask is the same as theirs,
    without the paste into a frame-sized map (see streamer.inference.masks)."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference
    from torchvision.models.detection.transform import resize_boxes

    sizes = [tuple(image.shape[-2:]) for image in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    heads = model.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, batch.image_sizes)
    results = []
    for index, (found, resized, original) in enumerate(zip(labels, batch.image_sizes, sizes)):
        keep = kept[found]
        box, score, label = boxes[index][keep], scores[index][keep], found[keep]
        own = {level: feature[index : index + 1] for level, feature in features.items()}
        masks = [maskrcnn_inference(heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(own, [box[i : i + MASK_CHUNK]], [resized]))),
                                    [label[i : i + MASK_CHUNK]])[0] for i in range(0, len(box), MASK_CHUNK)]
        results.append({"boxes": resize_boxes(box, resized, original), "labels": label, "scores": score, "found": len(found),
                        "masks": torch.cat(masks) if masks else box.new_zeros((0, 1, 28, 28))})
    return results


def build_models(settings: cfg.Models, categories: tuple[Category, ...], device: torch.device, half: str) -> PanopticModels:
    """Both networks built and loaded as the config says (see build_semantic, build_instance), the
    semantic one run by models.semantic.backend (an export made and verified first when the cache
    has none: streamer.inference.exports). Raises InputNotFound (exit 66) naming the `streamer
    models` command when cached weights are missing, ConfigError (78) when the backend's library is
    not installed, DataError (65) for a corrupt export, CannotCreate (73) when an export cannot be written."""
    checkpoints.require(settings)
    backends.require_library(settings.semantic.backend)  # before minutes of loading: one line naming the extra
    with torch.random.fork_rng(devices=[]):  # `weights: none` builds the same random networks every run
        torch.manual_seed(RANDOM_INIT_SEED)
        network = build_semantic(settings.semantic)
        instance, class_names = build_instance(settings.instance)
    # the threads torch runs this frame on (InferencePool set them on this thread): the backend's too
    semantic = exports.load_semantic(network, settings.semantic, torch.get_num_threads(), preset=settings.preset)
    return PanopticModels(semantic, instance, class_names, settings, categories, device, half)


def imagenet_normalize(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB floats in [0, 1] -> normalised by ImageNet's mean and std, as smp's and
    timm's encoders expect."""
    mean, std = _imagenet_stats(rgb.device)
    return (rgb - mean) / std


@functools.lru_cache(maxsize=8)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as 1 x 3 x 1 x 1 tensors in [0, 1] units on `device`, made once per device."""
    return (torch.tensor(cfg.IMAGENET_MEAN, device=device).view(1, 3, 1, 1) / 255.0,
            torch.tensor(cfg.IMAGENET_STD, device=device).view(1, 3, 1, 1) / 255.0)


def upload(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """A BGR uint8 H x W x 3 frame on the device. To a GPU it goes through pinned memory (torch
    caches those blocks), so the copy runs asynchronously."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_rgb_float(image: torch.Tensor) -> torch.Tensor:
    """BGR uint8 H x W x 3 -> RGB float 3 x H x W in [0, 1]."""
    return image.permute(2, 0, 1).flip(0).float().div_(255.0)
