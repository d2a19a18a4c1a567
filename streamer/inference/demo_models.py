"""Small demo models, trained from scratch on the synthetic street scenes and bundled with the package.

They let the default command show real panoptic output offline. Both builders create the
architecture only (nothing is ever downloaded); the trained weights are the `.safetensors` files in
`streamer/inference/weights/` (stored in float16 to keep the package small: a strict `load_state_dict` casts
them to the model's dtype). `streamer.tools.train_demo` trains them; `weights/MODEL_CARD.md` says how.

This module imports neither the config nor the model-loading code, so it runs where only torch,
torchvision and segmentation-models-pytorch are installed.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

DEMO_DIR = Path(__file__).parent / "weights"
SEMANTIC_FILE = DEMO_DIR / "demo_semantic.safetensors"
INSTANCE_FILE = DEMO_DIR / "demo_instance.safetensors"

SEMANTIC_ARCH = "Unet"
SEMANTIC_ENCODER = "tu-mobilenetv3_large_075"
SEMANTIC_DECODER_CHANNELS = (64, 48, 32, 24, 16)
INSTANCE_CLASSES = ["__background__", "car", "person"]
FPN_CHANNELS = 96


def build_demo_semantic(num_classes: int = 6) -> nn.Module:
    """Unet with a MobileNetV3-Large-0.75 encoder (random init) and a slim decoder."""
    import segmentation_models_pytorch as smp

    return smp.create_model(
        SEMANTIC_ARCH,
        encoder_name=SEMANTIC_ENCODER,
        encoder_weights=None,
        decoder_channels=SEMANTIC_DECODER_CHANNELS,
        classes=num_classes,
    )


class _MobileNetFPN(nn.Module):
    """MobileNetV3-Large body (reduced tail) with a 4-level FPN starting at stride 4, plus a max-pool level."""

    def __init__(self, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        features = mobilenet_v3_large(weights=None, reduced_tail=True).features
        # strides 4, 8, 16, 32: the last block of each resolution (index 16, the 1x1 head conv, is left out)
        self.returns = {3: "0", 6: "1", 12: "2", 15: "3"}
        self.body = nn.Sequential(*list(features)[:16])
        in_channels = [features[i].out_channels for i in self.returns]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.returns:
                feats[self.returns[i]] = x
        return self.fpn(feats)


def build_demo_instance(
    min_size: int, max_size: int, score_threshold: float, detections_per_image: int
) -> tuple[nn.Module, list[str]]:
    """A light Mask R-CNN (MobileNetV3 + FPN-96, small heads, anchors from 8 px) and its class names."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    backbone = _MobileNetFPN(FPN_CHANNELS)
    c = backbone.out_channels
    anchors = AnchorGenerator(
        sizes=((8, 16), (24, 32), (48, 64), (96, 128), (192, 256)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,  # height / width: cars are wide, people tall
    )
    names = ["0", "1", "2", "3"]
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_test=300,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, len(INSTANCE_CLASSES)),
        box_batch_size_per_image=256,
        box_score_thresh=score_threshold,
        box_detections_per_img=detections_per_image,
        mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, [c, c, c, c], 1),
        mask_predictor=MaskRCNNPredictor(c, c, len(INSTANCE_CLASSES)),
    )
    return model, list(INSTANCE_CLASSES)
