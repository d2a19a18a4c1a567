"""`streamer models fetch | import | list` and `run --preset` with weights of the published layouts
(tests/published.py), fetched through a real HTTP mirror on localhost (tests/mirror.py): no network.
Each command runs in its own process with its own TORCH_HOME and HF_HOME, as a user's would."""
from __future__ import annotations

import filecmp
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import cli_env, make_video, probe, run_cli, the_error
from mirror import COMMIT, Mirror
from published import SEGFORMER_B2, UPERNET, V2_CHECKPOINT, mirror_files

from streamer import presets
from streamer.errors import EXIT_DATAERR, EXIT_NOINPUT, EXIT_UNAVAILABLE

pytestmark = pytest.mark.system  # every test here starts a process or a server

# Small network inputs: the files and layouts are the published ones, the frames need not be.
SMALL = ["--set", "models.semantic.input_size=[256, 128]", "--set", "models.instance.min_size=128",
         "--set", "models.instance.max_size=256", "--set", "runtime.device=cpu"]


def model_env(home: Path, **extra: str) -> dict[str, str]:
    """A user whose caches live under `home` (empty at first), with no mirror or proxy set."""
    env = cli_env(TORCH_HOME=str(home / "torch"), HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE", "HTTP_PROXY", "http_proxy",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        env.pop(key, None)
    env.update(extra)
    return env


def checkpoint_in_cache(home: Path) -> Path:
    return home / "torch" / "hub" / "checkpoints" / V2_CHECKPOINT


def hub_repo(home: Path, repo: str) -> Path:
    return home / "hf" / "hub" / ("models--" + repo.replace("/", "--"))


def cached_files(home: Path) -> list[str]:
    """Every file (or link) in both caches, relative to `home`, except the hub's bookkeeping (refs
    naming commits, locks, its CACHEDIR.TAG)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if (p.is_file() or p.is_symlink())
                  and not {"refs", ".locks"} & set(p.parts) and p.name != "CACHEDIR.TAG")


def resumed_from(requests) -> int:
    """The offset the second GET of a file asked for (its Range header)."""
    assert len(requests) == 2, requests
    assert requests[0].range is None
    return int(re.fullmatch(r"bytes=(\d+)-", requests[1].range).group(1))


def run_preset(home: Path, preset: str, tmp_path: Path) -> dict:
    """`streamer run --preset PRESET` on a real clip for 3 frames: the video and the export's categories."""
    clip = make_video(tmp_path / "street.mp4", frames=3, size=(320, 176))
    out, export = tmp_path / f"{preset}.mp4", tmp_path / f"{preset}-export"
    result = run_cli("run", "--preset", preset, "--source", str(clip), "--output", str(out), "--export-dir", str(export),
                     *SMALL, env=model_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert probe(out)["frames"] == 3
    return json.loads((export / "panoptic.json").read_text())


def test_fetch_through_a_mirror_and_a_proxy_resumes_dropped_downloads_then_runs(published, tmp_path):
    """The README's two commands, with the mirror reached through an HTTP proxy (the mirror plays
    both) and each file's connection dropped half way once."""
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        mirror.faults.drop_once = {V2_CHECKPOINT, "model.safetensors"}
        env = model_env(home, STREAMER_MIRROR="http://mirror.invalid", HTTP_PROXY=mirror.url)
        result = run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env)
    assert result.returncode == 0, result.stderr
    assert all(r.proxied for r in mirror.requests), "every request goes through the proxy"
    for suffix in (V2_CHECKPOINT, "model.safetensors"):
        assert resumed_from(mirror.gets(suffix)) > 0, f"{suffix}: the second request resumes where the first stopped"
    assert "non-commercial use only" in result.stderr
    assert re.search(r"coco-73cbd019\.pth: 100% of 186MB \(", result.stderr), "progress, as log lines off a terminal"
    assert "accepted because of --allow-unverified" in result.stderr  # random weights cannot match the published hash

    assert filecmp.cmp(checkpoint_in_cache(home), published[V2_CHECKPOINT], shallow=False)
    snapshot = hub_repo(home, SEGFORMER_B2) / "snapshots" / COMMIT
    for name in ("config.json", "model.safetensors"):
        assert filecmp.cmp(snapshot / name, published[SEGFORMER_B2] / name, shallow=False)
    assert not [f for f in cached_files(home) if f.endswith((".partial", ".incomplete"))]

    listing = run_cli("models", "list", env=model_env(home)).stdout
    cityscapes = listing.split("cityscapes:", 1)[1].split("\n\n", 1)[0]
    assert f"present: {checkpoint_in_cache(home)}" in cityscapes
    assert f"present: {snapshot}" in cityscapes
    assert "missing" in listing.split("ade20k:", 1)[1].split("\n\n", 1)[0]

    export = run_preset(home, "cityscapes", tmp_path)
    names = [c["name"] for c in export["categories"]]
    assert names == [c["name"] for c in presets.get("cityscapes").models["semantic"]["classes"]]
    assert len(names) == 19


def test_an_interrupted_fetch_resumes_on_the_next_run(published, tmp_path):
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        env = model_env(home, STREAMER_MIRROR=mirror.url)
        mirror.faults.outage_after_half = {V2_CHECKPOINT}
        message = the_error(run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env), EXIT_UNAVAILABLE)
        partial = checkpoint_in_cache(home).with_name(V2_CHECKPOINT + ".partial")
        assert f"kept in {partial}: run the same command again to resume" in message
        assert not checkpoint_in_cache(home).exists()
        half = partial.stat().st_size
        assert 0 < half < published[V2_CHECKPOINT].stat().st_size
        assert "partial" in run_cli("models", "list", env=env).stdout

        mirror.faults.outage_after_half = set()
        result = run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env)
    assert result.returncode == 0, result.stderr
    assert mirror.gets(V2_CHECKPOINT)[-1].range == f"bytes={half}-", "the next fetch asks only for the rest"
    assert "smp-hub/segformer-b2-1024x1024-city-160k: already present" in result.stderr
    assert filecmp.cmp(checkpoint_in_cache(home), published[V2_CHECKPOINT], shallow=False)
    assert not partial.exists()


def test_corrupt_or_unverified_downloads_are_refused_and_leave_the_cache_clean(published, tmp_path):
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        env = model_env(home, STREAMER_MIRROR=mirror.url)
        mirror.faults.corrupt = {"model.safetensors"}  # bytes that differ from the hash the mirror advertises
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_DATAERR)
        assert re.search(r"model\.safetensors: sha256 \w+\.\.\. does not match the \w+\.\.\. the mirror http://127\.0\.0\.1:\d+ "
                         r"announced: a corrupt or different file, refused", message), message
        assert cached_files(home) == []

        # a faithful mirror, but nothing can verify its copy: the preset pins no sha256 for the hub files yet
        mirror.faults.corrupt = set()
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_DATAERR)
        assert message == (f"{SEGFORMER_B2}: the preset pins no sha256 for config.json, model.safetensors, so a copy from the "
                           f"mirror {mirror.url} cannot be verified: refused (--allow-unverified accepts it, unverified)")
        assert cached_files(home) == [], "nothing kept, not even an empty models--ORG--NAME folder"

        # the hub model accepted as unverified; then the checkpoint, whose hash is not torchvision's
        imported = run_cli("models", "import", "cityscapes", str(published[SEGFORMER_B2]), "--allow-unverified", env=env)
        assert imported.returncode == 0, imported.stderr
        assert "NOT verified (config.json, model.safetensors: no matching published sha256" in imported.stderr
        assert not re.search(r": verified|(?<!NOT) verified \(", imported.stderr), "never called verified"
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_DATAERR)
    assert message.startswith(f"{checkpoint_in_cache(home).with_name(V2_CHECKPOINT + '.partial')}: sha256 "), message
    assert not [f for f in cached_files(home) if "torch" in f], "no half or unverified checkpoint kept"
    assert [f for f in cached_files(home) if "snapshots" in f], "the hub model stays"


def test_a_missing_mirror_file_is_one_line(published, tmp_path):
    home = tmp_path / "home"
    with Mirror({}) as mirror:
        message = the_error(run_cli("models", "fetch", "cityscapes", env=model_env(home, STREAMER_MIRROR=mirror.url)),
                            EXIT_UNAVAILABLE)
    assert message.startswith(f"{SEGFORMER_B2}: download of config.json failed (HTTP 404: not there; check --mirror"), message
    assert cached_files(home) == []


def test_import_verifies_places_and_runs_ade20k(published, tmp_path):
    home = tmp_path / "home"
    env = model_env(home)
    upernet, checkpoint = str(published[UPERNET]), str(published[V2_CHECKPOINT])
    message = the_error(run_cli("models", "import", "ade20k", checkpoint, env=env), EXIT_DATAERR)
    assert "(--allow-unverified accepts it)" in message  # random weights: not torchvision's sha256
    assert cached_files(home) == []

    result = run_cli("models", "import", "ade20k", upernet, checkpoint, "--allow-unverified", env=env)
    assert result.returncode == 0, result.stderr
    assert "preset ade20k is ready" in result.stderr
    assert filecmp.cmp(checkpoint_in_cache(home), published[V2_CHECKPOINT], shallow=False)
    export = run_preset(home, "ade20k", tmp_path)
    assert len(export["categories"]) == 150
    assert sum(c["isthing"] for c in export["categories"]) == 100


@pytest.mark.parametrize("case", ["wrong-preset", "wrong-classes", "truncated"])
def test_import_refuses_files_that_do_not_fit_the_preset(published, tmp_path, case):
    home = tmp_path / "home"
    if case == "wrong-preset":  # ADE20K's UPerNet offered as cityscapes' Segformer
        given, expected = published[UPERNET], "architecture UPerNet where models.semantic.arch expects Segformer"
    elif case == "wrong-classes":
        given = tmp_path / "segformer-20"
        shutil.copytree(published[SEGFORMER_B2], given)
        config = json.loads((given / "config.json").read_text())
        (given / "config.json").write_text(json.dumps({**config, "classes": 20}))
        expected = "classes 20 where models.semantic.classes expects 19"
    else:
        given = tmp_path / V2_CHECKPOINT
        given.write_bytes(published[V2_CHECKPOINT].read_bytes()[: 1 << 20])
        expected = "not a loadable weights file"
    message = the_error(run_cli("models", "import", "cityscapes", str(given), "--allow-unverified", env=model_env(home)),
                        EXIT_DATAERR)
    assert expected in message, message
    assert cached_files(home) == []


def test_run_without_the_files_names_the_command_and_the_place(tmp_path):
    home = tmp_path / "home"
    clip = make_video(tmp_path / "clip.mp4", frames=2)
    message = the_error(run_cli("run", "--preset", "cityscapes", "--source", str(clip), env=model_env(home), cwd=tmp_path),
                        EXIT_NOINPUT)
    assert message == (
        f"{SEGFORMER_B2}: semantic weights not in the Hugging Face cache ({hub_repo(home, SEGFORMER_B2)}); run `streamer "
        "models fetch cityscapes` (or `streamer models import cityscapes PATH...` with the files copied from a machine that has them)"
    )
    assert cached_files(home) == [], "run never downloads"


def test_check_config_shows_the_preset_classes_and_licence(tmp_path):
    result = run_cli("check-config", "--preset", "cityscapes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = result.stdout.split("\nsource:", 1)[0]
    assert "# 19 classes: road, sidewalk, building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, " \
           "sky, person, rider, car, truck, bus, train, motorcycle, bicycle" in header
    assert "# licence: non-commercial use only" in header
