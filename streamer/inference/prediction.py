"""What every consumer of the models uses, whichever inference backend ran them.

`Prediction` is both models' raw output for one frame; a `Predictor` turns frames into
Predictions (streamer.inference.models.PanopticModels is the one the pipeline builds); a
`SemanticNetwork` is the semantic network alone, as a torch module or an exported copy run by
ONNX Runtime or OpenVINO (streamer.inference.backends). Fusion, tracking, rendering, the exports and
the evaluation read only these types, so nothing downstream knows which backend ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from streamer.inference.masks import BoxMasks


@dataclass(frozen=True)
class Prediction:
    """Both models' raw output for one frame, on the model device, at frame resolution."""

    image: torch.Tensor  # H x W x 3 uint8 BGR, the frame as uploaded
    semantic: torch.Tensor  # H x W category ids
    masks: BoxMasks  # N mask probabilities, each inside its box
    scores: torch.Tensor  # N
    categories: torch.Tensor  # N category ids
    capped: bool  # the model returned detections_per_image detections: there may have been more


class Predictor(Protocol):
    """Frames in, Predictions out. `is_thing`: a bool per category id (index 0: void), on the
    models' device, that fusion needs beside the Predictions."""

    is_thing: torch.Tensor

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """One Prediction per BGR uint8 H x W x 3 frame (any sizes), in order."""
        ...


class SemanticNetwork(Protocol):
    """The semantic network: N x 3 x H x W float32 normalised RGB at its input size -> N x C x H x W
    float logits, on the device of its input. A torch module, or an exported copy
    (streamer.inference.backends)."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...
