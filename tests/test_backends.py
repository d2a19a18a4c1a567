"""The semantic network through ONNX Runtime and OpenVINO: exported into the user's cache, verified
against torch before it is kept (argmax agreement >= 99.5 % of the pixels), keyed so that changed
weights or a changed size make a new export, and the same Predictions downstream. Bad inputs: a
missing library (exit 78), a corrupt export or another model's (65, removed), a full or read-only
cache (73, nothing half-written)."""
from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_in_process, the_error, tmpfs

from streamer.config import Models, SemanticModel, load_config
from streamer.errors import CannotCreate, ConfigError, DataError
from streamer.inference import backends, exports
from streamer.inference.models import build_models, build_semantic, create_semantic
from streamer.inputs.synthetic import StreetScene

BACKENDS = ["onnxruntime", "openvino"]
SMALL = (160, 96)  # the network's input size in these tests (width, height)
AGREEMENT = 0.995  # the share of pixels whose class must be torch's (exports.AGREEMENT_MIN)
LOGITS_ATOL = 1e-3  # float32 through another runtime: the same logits up to rounding (seen: 2e-5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """XDG_CACHE_HOME in a fresh folder for this module; the exports' folder in it."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        yield folder / "streamer" / "exports"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as each of the pipeline's two frames runs on 2 cores (and the backends' default here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def demo_settings(size: tuple[int, int] = SMALL) -> SemanticModel:
    return Models.model_validate({"preset": "demo"}).semantic.model_copy(update={"input_size": size})


@pytest.fixture(scope="module")
def demo():
    """The bundled demo U-Net and its settings at a small input size."""
    settings = demo_settings()
    return build_semantic(settings).eval(), settings


@pytest.fixture(scope="module")
def segformer():
    """A Segformer-b0 of the published layout (smp Segformer, mit_b0 encoder, Cityscapes' 19 classes)
    with random weights: nothing downloaded."""
    published = Models.model_validate({"preset": "cityscapes-fast"}).semantic
    settings = published.model_copy(update={"weights": "none", "input_size": (128, 64)})
    assert (settings.arch, settings.encoder, len(settings.classes)) == ("Segformer", "mit_b0", 19)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_semantic(settings).eval(), settings


def street(size: tuple[int, int], seed: int = 1234) -> torch.Tensor:
    """A synthetic street frame the verification never saw, preprocessed: 1 x 3 x H x W."""
    image = StreetScene(seed, size).render(5).image
    rgb = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float()[None] / 255.0
    return (rgb - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("network", ["demo", "segformer"])
def test_an_export_runs_through_its_backend_with_torchs_classes(cache, request, network, backend):
    module, settings = request.getfixturevalue(network)
    exported = exports.ensure(module, settings, backend, threads=1)
    assert type(exported) is {"onnxruntime": backends.OnnxRuntimeNetwork, "openvino": backends.OpenVinoNetwork}[backend]
    folder = cache / exports.export_key(module, settings, backend).name
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "model.onnx"]
    frame = street(settings.input_size)
    with torch.inference_mode():
        expected = module(frame)
    got = exported(frame)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert float((got.argmax(1) == expected.argmax(1)).float().mean()) >= AGREEMENT
    torch.testing.assert_close(got, expected, atol=LOGITS_ATOL, rtol=0)
    two = exported(torch.cat([frame, frame.flip(-1)]))  # a batch (runtime.max_batch): the batch dimension is free
    torch.testing.assert_close(two[:1], got, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def torch_models():
    config = load_config(None, ["models.preset=demo", "models.semantic.input_size=[192,96]", "models.instance.min_size=96",
                                "models.instance.max_size=192", "runtime.device=cpu"])
    return config, build_models(config.models, config.categories(), torch.device("cpu"), "off")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_models_give_the_same_predictions_through_each_backend(cache, torch_models, backend, caplog):
    config, reference = torch_models
    settings = config.models.model_copy(update={"semantic": config.models.semantic.model_copy(update={"backend": backend})})
    with caplog.at_level(logging.INFO, logger="streamer.models"):
        models = build_models(settings, config.categories(), torch.device("cpu"), "off")  # no export yet: made first
    assert f"models.semantic.backend {backend}: no export of these weights at 192x96 in {cache} yet; exporting it" in caplog.text
    assert re.search(r"exported .*: argmax agreement with torch \d+\.\d{3} %", caplog.text)
    assert not isinstance(models.semantic, torch.nn.Module)
    image = StreetScene(1001, (320, 180)).render(3).image
    (got,), (expected,) = models.predict([image]), reference.predict([image])
    assert got.semantic.shape == expected.semantic.shape == (180, 320)
    assert float((got.semantic == expected.semantic).float().mean()) >= AGREEMENT
    assert torch.equal(got.scores, expected.scores) and torch.equal(got.categories, expected.categories)


def test_changed_weights_size_or_library_make_a_new_export_and_the_same_one_is_reused(cache, demo, monkeypatch):
    module, settings = demo
    first = exports.export(module, settings, "onnxruntime", threads=1)[0]
    made = (first / "model.onnx").stat()
    assert exports.export(module, settings, "onnxruntime", threads=1)[0] == first
    assert (first / "model.onnx").stat().st_ino == made.st_ino, "the same weights and size: the export kept, not made again"

    resized = demo_settings((192, 96))
    second = exports.export(module, resized, "onnxruntime", threads=1)[0]
    assert second != first and second.is_dir() and first.is_dir()

    changed = copy.deepcopy(module)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    key = exports.export_key(module, settings, "onnxruntime")
    assert exports.export_key(changed, settings, "onnxruntime").digest != key.digest
    assert exports.export_key(module, settings, "openvino").digest != key.digest
    monkeypatch.setattr(backends, "library_version", lambda backend: "0.0.1")
    assert exports.export_key(module, settings, "onnxruntime").digest != key.digest


def test_an_export_that_disagrees_with_torch_is_refused_and_not_kept(cache, demo):
    module, settings = demo
    settings = demo_settings((128, 64))  # a size no other test exports
    perturbed = copy.deepcopy(module)
    with torch.no_grad():
        for parameter in perturbed.segmentation_head.parameters():
            parameter.normal_()
    with pytest.raises(DataError) as refused:
        exports.export(module, settings, "openvino", threads=1, reference=perturbed)
    message = str(refused.value)
    assert re.search(r"gives torch's class on \d+\.\d{3} % of the pixels, below 99\.5 % \(argmax agreement with torch "
                     r"\d+\.\d{3} % of 32768 pixels, max logit difference [\d.e+-]+ \(4 frames", message), message
    assert "it was not kept" in message
    key = exports.export_key(module, settings, "openvino")
    assert not (cache / key.name).exists()
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".staging")]


def test_a_corrupt_export_or_another_models_is_refused_and_removed(cache, demo):
    module, settings = demo
    exports.ensure(module, settings, "onnxruntime", threads=1)
    folder = cache / exports.export_key(module, settings, "onnxruntime").name
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"export refused: its model.onnx is not the file that was verified .* removed from the cache"):
        exports.ensure(module, settings, "onnxruntime", threads=1)
    assert not folder.exists()

    other = exports.export(module, demo_settings((192, 96)), "onnxruntime", threads=1)[0]
    folder.mkdir()
    (folder / "export.json").write_bytes((other / "export.json").read_bytes())
    (folder / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    with pytest.raises(DataError, match="made from another model"):
        exports.ensure(module, settings, "onnxruntime", threads=1)
    assert not folder.exists()


def test_models_export_prints_the_agreement_and_refuses_a_corrupt_export_with_65(cache):
    made = run_in_process("models", "export", "demo", "--backend", "onnxruntime")
    assert made.returncode == 0, made.stderr
    assert re.search(r"argmax agreement with torch 100\.000 % of 901120 pixels, max logit difference [\d.e+-]+ \(4 frames",
                     made.stdout), made.stdout
    folder = cache / re.search(r"kept in .*/(\S+)\n", made.stdout).group(1)
    assert folder.name.startswith("unet-640x352-onnxruntime-")
    (folder / "model.onnx").write_bytes(b"not a model")
    refused = run_in_process("models", "export", "demo", "--backend", "onnxruntime")
    assert "export refused: its model.onnx is not the file that was verified" in the_error(refused, 65)
    assert not folder.exists()


HIDDEN = "import sys; sys.modules[{module!r}] = None; from streamer.cli import main; raise SystemExit(main(sys.argv[1:]))"


@pytest.mark.system
@pytest.mark.parametrize("backend,extra", [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_a_backend_whose_library_is_missing_is_one_line_naming_the_extra(tmp_path, backend, extra):
    command = [sys.executable, "-c", HIDDEN.format(module=backend)]
    if backend == "onnxruntime":
        command += ["models", "export", "demo", "--backend", backend]
    else:
        command += ["run", "--source", "synthetic:street?seed=3&size=320x192", "--max-frames", "1", "--set", "runtime.device=cpu",
                    "--set", f"models.semantic.backend={backend}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    message = the_error(result, 78)
    assert f"{backend} is not installed; install it with pip install 'streamer[{extra}]'" in message
    assert not (tmp_path / "streamer").exists()


@pytest.mark.system
def test_a_full_cache_keeps_nothing_half_written_and_a_read_only_one_names_the_command(tmp_path, demo, monkeypatch):
    module, settings = demo
    with tmpfs(tmp_path / "disk", "size=1m") as disk:  # the demo U-Net's export: 9.6 MB
        monkeypatch.setenv("XDG_CACHE_HOME", str(disk))
        with pytest.raises(CannotCreate, match=r"No space left on device.*; nothing was kept: free some space"):
            exports.export(module, settings, "onnxruntime", threads=1)
        assert list((disk / "streamer" / "exports").iterdir()) == []
        full = run_in_process("models", "export", "demo", "--backend", "onnxruntime")
        assert "No space left on device" in the_error(full, 73)
        assert list((disk / "streamer" / "exports").iterdir()) == []

        assert [p.name for p in disk.iterdir()] == ["streamer"], "nothing else in the cache (ONNX Runtime's telemetry: off)"
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(CannotCreate, match=r"Read-only file system.*run `streamer models export demo --backend openvino` "
                                               "as a user who can write that cache"):
            exports.ensure(module, settings, "openvino", threads=1, preset="demo")


def test_mask_rcnn_stays_in_torch():
    with pytest.raises(ConfigError, match=r"models.instance.backend: openvino: Mask R-CNN runs in torch only for now"):
        load_config(None, ["models.instance.backend=openvino"])
