"""Presets: their tables match the published datasets, they validate, explicit keys override them;
the class map's candidates and the semantic vote that picks among them (the rider rule)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ROOT

from streamer import presets
from streamer.config import Models, load_config
from streamer.inference.fusion import vote_categories
from streamer.inference.masks import BoxMasks

# Cityscapes' 19 train ids in order (cityscapesScripts labels.py); things: person ... bicycle.
CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
# ADE20K's things (0-based indices into the 150 classes), as its panoptic split counts them.
ADE20K_THINGS = {7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45, 47,
                 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87,
                 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124,
                 125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149}


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_validates_and_describes_the_files_it_needs(name):
    from streamer.inference import checkpoints
    from streamer.inference.demo_models import INSTANCE_CLASSES
    from streamer.inference.models import COCO_CLASSES

    models = Models.model_validate({"preset": name})
    assert set(models.instance.class_map) <= set(COCO_CLASSES) | set(INSTANCE_CLASSES), "a typo maps nothing"
    preset = presets.get(name)
    assert preset.title and preset.licence and preset.speed
    cached = {w.name for w in checkpoints.needed(models) if w.kind in (checkpoints.Kind.TORCH, checkpoints.Kind.HUB)}
    assert set(preset.weights) == cached, "models list and fetch describe exactly the files the models load"


def test_cityscapes_presets_follow_the_train_id_order():
    for name in ("cityscapes", "cityscapes-fast"):
        classes = Models.model_validate({"preset": name}).semantic.classes
        assert [c.name for c in classes] == CITYSCAPES
        assert [c.name for c in classes if c.isthing] == CITYSCAPES[11:]
        assert classes[0].color == (128, 64, 128) and classes[-1].color == (119, 11, 32)


def test_ade20k_preset_has_its_150_classes_and_100_things():
    classes = Models.model_validate({"preset": "ade20k"}).semantic.classes
    assert len(classes) == 150
    assert [c.name for c in classes[:8]] == ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed"]
    assert {i for i, c in enumerate(classes) if c.isthing} == ADE20K_THINGS


def write(path, text):
    path.write_text(text)
    return path


def test_explicit_keys_override_the_preset_key_by_key(tmp_path):
    config = write(tmp_path / "c.yaml", "source: {uri: clip.mp4}\nmodels:\n  preset: cityscapes\n"
                                        "  semantic: {input_size: [1024, 512]}\n  instance: {class_map: {car: car}}\n")
    models = load_config(config).models
    assert models.semantic.input_size == (1024, 512)  # the file's
    assert models.semantic.weights == "smp-hub/segformer-b2-1024x1024-city-160k"  # the preset's
    assert len(models.semantic.classes) == 19
    assert models.instance.class_map == {"car": "car"}, "a map replaces the preset's whole"
    overridden = load_config(config, ["models.semantic.input_size=[512, 256]"]).models
    assert overridden.semantic.input_size == (512, 256), "--set beats the file"
    demo = load_config(config, ["models.preset=demo", "models.instance.class_map={car: car}"]).models
    assert demo.semantic.weights == "demo" and demo.semantic.input_size == (1024, 512)


def test_the_shipped_config_takes_any_preset_whole():
    for name in presets.names():
        models = load_config(ROOT / "config.yaml", [f"models.preset={name}"]).models
        assert models == Models.model_validate({"preset": name})


def vote_reference(semantic, masks, candidates, threshold):
    """A plain loop: count each candidate's pixels under each mask, first wins ties."""
    chosen = []
    for mask, options in zip(masks, candidates.tolist()):
        inside = mask >= threshold
        counts = [int(((semantic == c) & inside).sum()) if c > 0 else -1 for c in options]
        chosen.append(options[counts.index(max(counts))])
    return torch.tensor(chosen, dtype=torch.long)


def test_the_rider_rule_on_hand_made_predictions():
    person, rider, road = 12, 13, 1
    semantic = torch.full((8, 8), road)
    semantic[0:4, 0:4] = rider  # a rider on the left
    semantic[4:8, 4:8] = person  # a pedestrian on the right
    masks = torch.zeros(4, 8, 8)
    masks[0, 0:4, 0:3] = 0.9  # over the rider
    masks[1, 4:8, 4:7] = 0.9  # over the pedestrian
    masks[2, 0:2, 4:8] = 0.9  # over road only: no candidate seen, the default stays
    masks[3, 0:4, 0:3] = 0.4  # under the mask threshold: no votes
    candidates = torch.tensor([[person, rider]] * 4)
    assert vote_categories(semantic, BoxMasks.from_dense(masks), candidates, 0.5).tolist() == [rider, person, person, person]


def test_vote_matches_a_plain_loop_on_random_predictions():
    generator = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, 6, (24, 32), generator=generator)
    masks = torch.rand(12, 24, 32, generator=generator)
    candidates = torch.randint(0, 6, (12, 3), generator=generator)
    candidates[:, 0] = torch.randint(1, 6, (12,), generator=generator)  # a default always
    candidates[:4, 1:] = 0  # some instances have no alternatives
    assert torch.equal(vote_categories(semantic, BoxMasks.from_dense(masks), candidates, 0.5), vote_reference(semantic, masks, candidates, 0.5))


def test_candidates_table_from_a_class_map():
    from streamer.inference.models import COCO_CLASSES, category_candidates

    config = load_config(ROOT / "config.yaml", ["models.preset=cityscapes"])
    table = category_candidates(COCO_CLASSES, config.models.instance, config.categories())
    ids = {c.name: c.id for c in config.categories()}
    assert table[COCO_CLASSES.index("person")].tolist() == [ids["person"], ids["rider"]]
    assert table[COCO_CLASSES.index("car")].tolist() == [ids["car"], 0]
    assert table[COCO_CLASSES.index("dog")].tolist() == [0, 0]


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_the_instance_network_is_the_one_torchvision_published_weights_for(arch):
    """Same parameter count as torchvision's weights metadata, and the checkpoint name in the preset
    files is the one in torchvision's URL (the cache file name torch.hub gives it)."""
    import torchvision.models.detection as detection

    from streamer.config import InstanceModel
    from streamer.inference import checkpoints
    from streamer.inference.models import build_instance

    published = {"maskrcnn_resnet50_fpn": detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                 "maskrcnn_resnet50_fpn_v2": detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1}[arch]
    model, names = build_instance(InstanceModel(arch=arch, weights="none"))
    assert sum(p.numel() for p in model.parameters()) == published.meta["num_params"]
    assert names == list(published.meta["categories"])
    assert checkpoints.COCO_URLS[arch] == published.url


def test_a_v2_checkpoint_saved_without_batch_norm_counters_loads():
    """Whether or not the published file kept BatchNorm's num_batches_tracked, it loads strictly."""
    from streamer.config import InstanceModel
    from streamer.inference.models import build_instance, load_weights

    model = build_instance(InstanceModel(arch="maskrcnn_resnet50_fpn_v2", weights="none"))[0]
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(model.state_dict())
    load_weights(model, state, "v2 without counters")


@pytest.mark.parametrize("env", [{}, {"TORCH_HOME": "/srv/torch"}, {"XDG_CACHE_HOME": "/srv/cache"},
                                 {"TORCH_HOME": "~/models", "XDG_CACHE_HOME": "/srv/cache"}])
def test_the_checkpoint_cache_is_where_torch_looks(monkeypatch, env):
    """Found without importing torch, so it must agree with torch.hub.get_dir()."""
    import torch

    from streamer.inference import checkpoints

    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert checkpoints.torch_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"
