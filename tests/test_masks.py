"""Instance masks inside their boxes: the same pixels as torchvision's paste into frame-sized maps
(the plain reference), and a model adapter that never hands over an N x H x W tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from streamer.config import load_config
from streamer.inference import models as models_module
from streamer.inference.masks import BoxMasks, paste_in_boxes
from streamer.inference.models import build_models, to_rgb_float, upload

HEIGHT, WIDTH = 90, 160


def test_pasting_into_boxes_gives_torchvision_pixels_for_any_box():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([
        [10.0, 20.0, 60.0, 70.0],  # inside
        [-15.3, -8.0, 30.2, 25.9],  # over the top left corner
        [140.0, 80.0, 200.0, 130.0],  # over the bottom right corner
        [50.2, 40.7, 50.4, 40.9],  # smaller than a pixel
        [0.0, 0.0, 160.0, 90.0],  # the whole frame
        [159.0, 89.0, 160.0, 90.0],  # the last pixel
    ])
    anywhere = torch.rand(20, 4, generator=generator) * torch.tensor([WIDTH, HEIGHT, 0, 0])  # the model clips its boxes to the frame
    anywhere[:, 2:] = anywhere[:, :2] + torch.rand(20, 2, generator=generator) * 80
    boxes = torch.cat([boxes, anywhere])
    masks = torch.rand(len(boxes), 1, 28, 28, generator=generator)
    local = paste_in_boxes(masks, boxes, (HEIGHT, WIDTH))
    expected = paste_masks_in_image(masks, boxes, (HEIGHT, WIDTH))[:, 0]
    assert torch.equal(local.dense(), expected)
    for n, (x0, y0, x1, y1) in enumerate(local.boxes):
        assert 0 <= y0 <= y1 <= HEIGHT and 0 <= x0 <= x1 <= WIDTH and local.mask(n).shape == (y1 - y0, x1 - x0)
    assert paste_in_boxes(masks[:0], boxes[:0], (HEIGHT, WIDTH)).dense().shape == (0, HEIGHT, WIDTH)
    outside = paste_in_boxes(masks[:2], torch.tensor([[170.0, 10.0, 190.0, 30.0], [10.0, -40.0, 30.0, -20.0]]), (HEIGHT, WIDTH))
    assert [outside.mask(n).numel() for n in range(2)] == [0, 0], "a box wholly outside the frame holds nothing"


def test_dense_masks_go_into_the_boxes_of_their_pixels_and_back():
    masks = torch.zeros(3, 6, 8)
    masks[0, 1:3, 2:5] = 0.7
    masks[1, 5, 7] = 0.2
    boxed = BoxMasks.from_dense(masks)
    assert boxed.boxes == ((2, 1, 5, 3), (7, 5, 8, 6), (0, 0, 0, 0))
    assert torch.equal(boxed.dense(), masks)
    assert torch.equal(boxed.mask(0), masks[0, 1:3, 2:5]) and boxed.mask(2).numel() == 0


@pytest.fixture(scope="module")
def many_detections():
    """A Mask R-CNN of random weights that keeps every detection (score threshold 0), capped at 40, of
    three classes, two of which the class map keeps (a kite is no street category)."""
    config = load_config(None, ["models.preset=demo", "models.instance.weights=none", "models.instance.classes=[car,kite,person]",
                                "models.instance.score_threshold=0.0",
                                "models.instance.detections_per_image=40", "models.instance.min_size=96",
                                "models.instance.max_size=160", "models.semantic.input_size=[160,96]", "runtime.device=cpu"])
    return build_models(config.models, config.categories(), torch.device("cpu"), "off")


@pytest.mark.parametrize("chunk", [64, 7], ids=["one-chunk", "in-chunks"])
def test_the_model_adapter_hands_over_masks_inside_their_boxes_with_torchvisions_pixels(many_detections, monkeypatch, chunk):
    monkeypatch.setattr(models_module, "MASK_CHUNK", chunk)  # the mask head sees `chunk` detections at a time
    models = many_detections
    image = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    (prediction,) = models.predict([image])
    masks = prediction.masks
    assert isinstance(masks, BoxMasks) and len(masks) >= 5, "random weights and no threshold: detections of mapped classes"
    assert all(source.shape == (30, 30) for source in masks.sources), "Mask R-CNN's 28 x 28, padded: nothing frame-sized"
    for n, (x0, y0, x1, y1) in enumerate(masks.boxes):
        assert masks.mask(n).shape == (y1 - y0, x1 - x0), "each mask at frame resolution only inside its box"
    assert prediction.capped, "40 detections of 40 allowed"
    # The same masks as torchvision's own forward, which pastes every detection into a full frame.
    with torch.inference_mode():
        (reference,) = models.instance([to_rgb_float(upload(image, models.device))])
    keep = models.candidates[reference["labels"]][:, 0] > 0
    assert len(reference["scores"]) == 40 and int(keep.sum()) == len(masks) < 40, "kites dropped before the mask head"
    assert torch.equal(prediction.scores, reference["scores"][keep])
    # The mask head sees fewer detections at once than in torchvision's forward, and the CPU's
    # convolution kernels are chosen by batch size: the same values, up to the last bits.
    torch.testing.assert_close(masks.dense(), reference["masks"][keep, 0], rtol=1e-5, atol=1e-6)


def test_the_proposal_counts_are_settings():
    config = load_config(None, ["models.preset=demo", "models.instance.proposals_pre_nms=123", "models.instance.proposals=45"])
    rpn = build_models(config.models, config.categories(), torch.device("cpu"), "off").instance.rpn
    assert (rpn.pre_nms_top_n(), rpn.post_nms_top_n()) == (123, 45)  # in eval mode: the "testing" counts
