"""Weights files in the exact layouts the presets' publishers use, with random values.

- torchvision: the Mask R-CNN v2 state dict (91 COCO classes) under its published file name;
- smp hub: `save_pretrained` folders (config.json + model.safetensors) of Segformer-b2 with 19
  classes and decoder width 768 (smp-hub/segformer-b2-1024x1024-city-160k) and of UPerNet with a
  ConvNeXt-small encoder and 150 classes (smp-hub/upernet-convnext-small).
Sizes match the published files (Segformer-b2: 109.5 MB, UPerNet: 323.9 MB), so downloads and
copies move as many bytes as the real ones. The sha256 of the checkpoint cannot match the 8 hex
digits in its published name: tests that need it accepted pass --allow-unverified.
"""
from __future__ import annotations

from pathlib import Path

V2_CHECKPOINT = "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
SEGFORMER_B2 = "smp-hub/segformer-b2-1024x1024-city-160k"
UPERNET = "smp-hub/upernet-convnext-small"


def build(folder: Path) -> dict[str, Path]:
    """Write the three into `folder`; returns name -> path (the checkpoint file; the two folders)."""
    import segmentation_models_pytorch as smp
    import torch
    import torchvision

    torch.manual_seed(0)
    checkpoint = folder / V2_CHECKPOINT
    instance = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    torch.save(instance.state_dict(), checkpoint)
    segformer = folder / "segformer-b2-city"
    smp.create_model("Segformer", encoder_name="mit_b2", encoder_weights=None, classes=19,
                     decoder_segmentation_channels=768).save_pretrained(segformer)
    upernet = folder / "upernet-convnext-small"
    smp.create_model("UPerNet", encoder_name="tu-convnext_small", encoder_weights=None, classes=150,
                     decoder_channels=512).save_pretrained(upernet)
    return {V2_CHECKPOINT: checkpoint, SEGFORMER_B2: segformer, UPERNET: upernet}


def mirror_files(published: dict[str, Path], *repos: str) -> dict[str, Path]:
    """URL paths of a download mirror serving the checkpoint and the given hub models."""
    files = {f"/models/{V2_CHECKPOINT}": published[V2_CHECKPOINT]}
    for repo in repos:
        for name in ("config.json", "model.safetensors"):
            files[f"/{repo}/resolve/main/{name}"] = published[repo] / name
    return files
