"""`streamer models fetch` and `import` against a mirror that cannot be trusted and a machine that
misbehaves: a hostile mirror on a real local HTTP server (paths in its headers, lies about sizes,
stalls, redirects), real symbolic links planted in the caches, two real fetches at once, a real
tmpfs that is too small, and a real process without a network (a new network namespace). Nothing
outside torch's checkpoint folder and the model's models--ORG--NAME folder is ever created or
removed; no secret leaves for a host it was not made for; every failure is one line."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import free_port, popen_cli, run_cli, run_in_process, the_error, tmpfs
from mirror import COMMIT, Mirror
from published import SEGFORMER_B2, UPERNET, V2_CHECKPOINT, mirror_files
from test_model_files import cached_files, checkpoint_in_cache, hub_repo, model_env

from streamer import presets
from streamer.errors import EXIT_CANTCREAT, EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_USAGE

pytestmark = pytest.mark.system  # every test here starts a process or a server

STAGED = ".streamer"  # models--ORG--NAME/.streamer/: where hub files download


def tree(root: Path) -> set[Path]:
    """Every path under `root` (links not followed)."""
    return {Path(folder) / name for folder, dirs, files in os.walk(root) for name in dirs + files}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# names from the mirror, links in the cache


@pytest.mark.parametrize("forged", ["X-Repo-Commit", "ETag", "X-Linked-Etag"])
def test_a_mirror_that_puts_a_path_in_its_headers_is_refused_and_nothing_is_made_outside_the_caches(published, tmp_path, forged):
    home, escape = tmp_path / "home", f"escape-{uuid.uuid4().hex[:8]}"
    climb = "../" * 16 + escape  # from models--ORG--NAME/snapshots (or blobs) up past / itself
    value = climb if forged == "X-Repo-Commit" else f'"{climb}"'
    before = tree(tmp_path)
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        mirror.faults.headers = {"config.json": {forged: value}, "model.safetensors": {forged: value}}
        result = run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=model_env(home, STREAMER_MIRROR=mirror.url))
    message = the_error(result, EXIT_DATAERR)
    header = "ETag" if forged != "X-Repo-Commit" else forged
    assert message.startswith(f"the mirror {mirror.url}: its {header} header for {SEGFORMER_B2}/config.json is '"), message
    assert message.endswith("refused, nothing written")
    assert [r.path for r in mirror.requests] == [f"/{SEGFORMER_B2}/resolve/main/config.json"], "stopped at the first answer"
    created = tree(tmp_path) - before
    assert created <= {home, home / "hf", home / "hf" / "hub"}, sorted(created)  # the cache's root only: no models--X left
    assert not Path("/", escape).exists() and not list(tmp_path.rglob(f"*{escape}*"))


def test_clean_up_never_follows_a_link_out_of_the_cache(published, tmp_path):
    """Links planted where the hub's cache keeps files (as a hostile mirror made the hub's client
    write them, or another user did): a refused download removes only what it wrote, never a
    link's target; a link where a download would write is refused, never written through."""
    home = tmp_path / "home"
    repo = hub_repo(home, SEGFORMER_B2)
    victim = tmp_path / "victim.txt"  # stands for /etc/passwd under sudo
    victim.write_text("precious\n")
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT / "model.safetensors").symlink_to(victim)
    (repo / "blobs").mkdir()
    (repo / "blobs" / sha256(published[SEGFORMER_B2] / "model.safetensors")).symlink_to(victim)
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        env = model_env(home, STREAMER_MIRROR=mirror.url)
        mirror.faults.corrupt = {"model.safetensors"}
        the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_DATAERR)
        assert victim.read_text() == "precious\n"
        assert (repo / "snapshots" / COMMIT / "model.safetensors").is_symlink(), "what it did not write, it leaves"
        assert not (repo / STAGED).exists()

        # a link where the download would append (its resumable file), in either cache
        partial = repo / STAGED / "config.json.partial"
        partial.parent.mkdir()
        partial.symlink_to(victim)
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_CANTCREAT)
        assert message == (f"{partial} is a symbolic link: streamer never writes through a link inside its caches; remove it, "
                           "then run the command again")
        partial.unlink()
        checkpoint_partial = checkpoint_in_cache(home).with_name(V2_CHECKPOINT + ".partial")
        checkpoint_partial.parent.mkdir(parents=True)
        checkpoint_partial.symlink_to(victim)
        mirror.faults.corrupt = set()
        message = the_error(run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env), EXIT_CANTCREAT)
        assert message.startswith(f"{checkpoint_partial} is a symbolic link"), message
        assert victim.read_text() == "precious\n"

        # a link where a folder of the model belongs: refused, the folder it points to stays empty
        checkpoint_partial.unlink()
        outside = tmp_path / "outside"
        outside.mkdir()
        for name in ("blobs", "snapshots", "refs"):
            os.rename(repo / name, tmp_path / f"planted-{name}")
        (repo / "blobs").symlink_to(outside)
        message = the_error(run_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env), EXIT_CANTCREAT)
    assert message == (f"{repo / 'blobs'} is a symbolic link: streamer never writes through a link inside its caches; "
                       "remove it, then run the command again")
    assert list(outside.iterdir()) == []
    assert victim.read_text() == "precious\n"


def test_a_ref_that_names_a_path_is_never_followed(published, tmp_path):
    """refs/main written by a hostile mirror (through the hub's client) pointing out of the cache at
    a folder with the model's files: not the model."""
    home = tmp_path / "home"
    repo = hub_repo(home, SEGFORMER_B2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("config.json", "model.safetensors"):
        (elsewhere / name).symlink_to(published[SEGFORMER_B2] / name)
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / "refs" / "main").write_text(os.path.relpath(elsewhere, repo / "snapshots"))
    listing = run_cli("models", "list", env=model_env(home)).stdout
    assert f"missing: {repo}" in listing.split("cityscapes:", 1)[1].split("\n\n", 1)[0]


# ---------------------------------------------------------------------------------------------
# credentials


def test_the_hub_token_never_goes_to_a_mirror_and_credentials_never_follow_a_redirect(published, tmp_path):
    home = tmp_path / "home"
    (home / "hf").mkdir(parents=True)
    (home / "hf" / "token").write_text("hf_SavedTokenThatMustStayHome")
    files = mirror_files(published, SEGFORMER_B2)
    with Mirror(files) as mirror:
        port = mirror.url.rsplit(":", 1)[1]
        # the mirror sends model.safetensors elsewhere (same server, another host name): no credentials go with it
        mirror.faults.redirect = {"model.safetensors": f"http://localhost:{port}/{SEGFORMER_B2}/resolve/main/model.safetensors"}
        mirror.faults.announce = {"model.safetensors": 10**12}  # ... and lies about its size there: stop before the body
        withheld = f"http://mirror-user:mirror%20pass@127.0.0.1:{port}"
        first = run_cli("models", "fetch", "cityscapes", "--mirror", withheld, env=model_env(home))
        # the endpoint the hub's client is configured for, but in clear: no token either
        mirror.faults.redirect, mirror.faults.announce = {}, {}
        second = run_cli("models", "fetch", "cityscapes", env=model_env(home, HF_ENDPOINT=mirror.url))
    the_error(first, EXIT_DATAERR)
    the_error(second, EXIT_DATAERR)  # an http endpoint is not the publisher: unverified, refused
    sent = {(r.host, r.authorization) for r in mirror.requests}
    basic = "Basic " + __import__("base64").b64encode(b"mirror-user:mirror pass").decode()
    assert sent == {(f"127.0.0.1:{port}", basic), (f"localhost:{port}", None), (f"127.0.0.1:{port}", None)}, sent
    assert "hf_SavedToken" not in first.stderr + second.stderr and "mirror pass" not in first.stderr + second.stderr


def test_a_redirect_out_of_http_or_a_body_without_end_is_refused(published, tmp_path):
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        env = model_env(home, STREAMER_MIRROR=mirror.url)
        mirror.faults.redirect = {"config.json": "file:///etc/passwd"}
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_UNAVAILABLE)
        assert message == (f"{SEGFORMER_B2}: download of config.json failed (HTTP 302 to 'file:///etc/passwd', not an http(s) "
                           "URL: refused)")
        mirror.faults.redirect, mirror.faults.endless = {}, {"config.json"}  # no Content-Length, and no end
        message = the_error(run_cli("models", "fetch", "cityscapes", env=env), EXIT_DATAERR)
    assert message == (f"{SEGFORMER_B2}/config.json: the mirror {mirror.url} sent more than the 1.0 MB expected; cut off and "
                       "refused (a wrong or hostile server)")
    assert cached_files(home) == []


def test_the_token_rule(monkeypatch):
    from streamer.tools.downloads import Site, credentials

    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    hub = Site.choose(None)
    assert credentials("https://huggingface.co/org/name/resolve/main/config.json", hub) == {"Authorization": "Bearer hf_abc"}
    for elsewhere in ("http://huggingface.co/x", "https://huggingface.co.evil.example/x", "https://cdn-lfs.hf.co/x",
                      "https://huggingface.co:8443/x"):
        assert credentials(elsewhere, hub) == {}, elsewhere
    mirror = Site.choose("https://user:pw@mirror.example/hf/")
    assert mirror.hub == "https://mirror.example/hf"
    assert credentials("https://mirror.example/hf/a", mirror)["Authorization"].startswith("Basic ")
    assert credentials("https://huggingface.co/a", mirror) == {"Authorization": "Bearer hf_abc"}  # the hub's host: its own token
    assert credentials("https://other.example/a", mirror) == {}
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.internal")
    assert credentials("https://hub.internal/a", Site.choose(None)) == {"Authorization": "Bearer hf_abc"}
    assert credentials("https://huggingface.co/a", Site.choose(None)) == {}
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    assert credentials("https://hub.internal/a", Site.choose(None)) == {}


# ---------------------------------------------------------------------------------------------
# verification against pins


def pinned(monkeypatch, published, **change) -> None:
    """The cityscapes preset with its hub model pinned to the test files (or to `change`)."""
    preset = presets.get("cityscapes")
    folder = published[SEGFORMER_B2]
    pins = {"revision": "ab" * 20, "sha256": {name: sha256(folder / name) for name in ("config.json", "model.safetensors")}}
    info = dataclasses.replace(preset.weights[SEGFORMER_B2], **{**pins, **change})
    changed = dataclasses.replace(preset, weights={**preset.weights, SEGFORMER_B2: info})
    real = presets.get.__wrapped__ if hasattr(presets.get, "__wrapped__") else presets.get
    monkeypatch.setattr(presets, "get", lambda name: changed if name == "cityscapes" else real(name))


def in_process_caches(monkeypatch, home: Path) -> None:
    from streamer.inference import checkpoints

    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setattr(checkpoints, "hub_cache", lambda: home / "hf" / "hub")
    for key in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def test_pinned_hub_files_are_verified_and_a_mismatch_is_refused(published, tmp_path, monkeypatch):
    home = tmp_path / "home"
    in_process_caches(monkeypatch, home)
    pinned(monkeypatch, published)
    hub_only = {path: file for path, file in mirror_files(published, SEGFORMER_B2).items() if not path.startswith("/models/")}
    with Mirror(hub_only) as mirror:
        fetched = run_in_process("models", "fetch", "cityscapes", "--mirror", mirror.url)
        assert fetched.returncode == EXIT_UNAVAILABLE, fetched.stderr  # this mirror has no checkpoint
        assert f"{SEGFORMER_B2}: verified (the sha256 the preset pins), saved at " in fetched.stderr
        assert f"mirror {mirror.url} serves commit {COMMIT} where the preset pins {'ab' * 20}; kept as" in fetched.stderr
    assert mirror.gets("config.json")[0].path == f"/{SEGFORMER_B2}/resolve/{'ab' * 20}/config.json", "the pinned commit is asked for"

    home2 = tmp_path / "home2"
    in_process_caches(monkeypatch, home2)
    imported = run_in_process("models", "import", "cityscapes", str(published[SEGFORMER_B2]))
    assert imported.returncode == 0, imported.stderr
    assert f"{SEGFORMER_B2}: verified (the sha256 the preset pins), imported from " in imported.stderr
    assert (hub_repo(home2, SEGFORMER_B2) / "refs" / "main").read_text() == "ab" * 20

    other = dict.fromkeys(("config.json", "model.safetensors"), "0" * 64)
    pinned(monkeypatch, published, sha256=other)
    home3 = tmp_path / "home3"
    in_process_caches(monkeypatch, home3)
    refused = run_in_process("models", "import", "cityscapes", str(published[SEGFORMER_B2]))
    message = the_error(refused, EXIT_DATAERR)
    assert re.fullmatch(rf"{SEGFORMER_B2}/config\.json: sha256 \w{{16}}\.\.\. does not match the published 0{{16}}\.\.\. the preset "
                        r"pins: a corrupt or different file, refused \(--allow-unverified accepts it\)", message), message
    assert not (home3 / "hf" / "hub" / hub_repo(home3, SEGFORMER_B2).name).exists()


def test_without_a_pin_only_the_publisher_over_https_vouches_for_a_file(published, tmp_path, monkeypatch):
    """The hub itself over https: its announced hashes (sha256 of LFS files, git's hash of small ones)
    are checked and named as such, never as the preset's pin; the same answer from a mirror is refused."""
    from streamer.config import Models
    from streamer.tools.downloads import Site
    from streamer.tools.models import git_blob_sha1, verify_hub_folder

    folder = published[SEGFORMER_B2]
    models = Models.model_validate({"preset": "cityscapes"})
    info = presets.get("cityscapes").weights[SEGFORMER_B2]
    announced = {"config.json": git_blob_sha1(folder / "config.json"), "model.safetensors": sha256(folder / "model.safetensors")}
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    digests, verdict = verify_hub_folder(folder, SEGFORMER_B2, info, models, False, announced, Site.choose(None))
    assert verdict == "checked against the hashes huggingface.co announced over https (the preset pins no sha256 yet)"
    assert digests["model.safetensors"] == announced["model.safetensors"]
    from streamer.errors import DataError

    with pytest.raises(DataError, match="so a copy from the mirror https://mirror.example cannot be verified: refused"):
        verify_hub_folder(folder, SEGFORMER_B2, info, models, False, announced, Site.choose("https://mirror.example"))
    with pytest.raises(DataError, match=r"config\.json: git hash \w+\.\.\. does not match the 0+\.\.\. huggingface\.co announced"):
        verify_hub_folder(folder, SEGFORMER_B2, info, models, False, {**announced, "config.json": "0" * 40}, Site.choose(None))


# ---------------------------------------------------------------------------------------------
# two at once, stalls, sizes, full disks


def test_two_fetches_of_the_same_preset_at_once_one_waits_for_the_other(published, tmp_path):
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        mirror.faults.bytes_per_s = 100e6  # about 3 s of download, and the first one's checks after it
        env = model_env(home, STREAMER_MIRROR=mirror.url)
        runs = [popen_cli("models", "fetch", "cityscapes", "--allow-unverified", env=env) for _ in range(2)]
        outcomes = [run.communicate(timeout=300) for run in runs]
    for run, (_, stderr) in zip(runs, outcomes):
        assert run.returncode == 0, stderr
    stderrs = [stderr for _, stderr in outcomes]
    assert any("another streamer is putting it in the cache; waiting for it to finish" in e for e in stderrs), stderrs
    for suffix in ("config.json", "model.safetensors", V2_CHECKPOINT):
        assert len(mirror.gets(suffix)) == 1, f"{suffix}: downloaded once, by one of them"
    snapshot = hub_repo(home, SEGFORMER_B2) / "snapshots" / COMMIT
    assert sha256(snapshot / "model.safetensors") == sha256(published[SEGFORMER_B2] / "model.safetensors")
    assert sha256(checkpoint_in_cache(home)) == sha256(published[V2_CHECKPOINT])
    assert not [f for f in cached_files(home) if f.endswith(".partial") or STAGED in f]


def test_a_stalled_download_or_a_silent_host_ends_with_one_line_after_the_time_limit(published, tmp_path):
    home = tmp_path / "home"
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        mirror.faults.stall = {"model.safetensors"}
        started = time.monotonic()
        result = run_cli("models", "fetch", "cityscapes", "--timeout", "2", env=model_env(home, STREAMER_MIRROR=mirror.url))
        took = time.monotonic() - started
    message = the_error(result, EXIT_UNAVAILABLE)
    partial = hub_repo(home, SEGFORMER_B2) / STAGED / "model.safetensors.partial"
    half = (published[SEGFORMER_B2] / "model.safetensors").stat().st_size // 2
    assert message == (f"{SEGFORMER_B2}: download of model.safetensors failed (no data for 2 s); {half / 1e6:.1f} MB kept in "
                       f"{partial}: run the same command again to resume")
    assert partial.stat().st_size == half
    assert took < 30, took
    listing = run_cli("models", "list", env=model_env(home)).stdout
    assert f"partial ({half / 1e6:.1f} MB so far, fetch resumes it): {partial}" in listing

    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = run_cli("models", "fetch", "ade20k", "--timeout", "1.5", "--mirror", f"http://127.0.0.1:{port}",
                         env=model_env(tmp_path / "home2"))
    message = the_error(result, EXIT_UNAVAILABLE)
    assert message.startswith(f"the mirror 127.0.0.1:{port} could not be reached (no answer within 1.5 s): check --mirror"), message


def test_a_size_the_disk_cannot_hold_or_the_file_cannot_be_is_refused_before_writing(published, tmp_path):
    from streamer.tools.models import size_limit

    most = size_limit(presets.get("cityscapes").weights[SEGFORMER_B2]) / 1e6
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror:
        mirror.faults.announce = {"model.safetensors": 10**12}
        message = the_error(run_cli("models", "fetch", "cityscapes", env=model_env(tmp_path / "a", STREAMER_MIRROR=mirror.url)),
                            EXIT_DATAERR)
        assert message == (f"{SEGFORMER_B2}/model.safetensors: the mirror {mirror.url} announces 1000000.0 MB, more than the "
                           f"{most:.1f} MB this file can be; refused before writing (a wrong or hostile server)")
        assert cached_files(tmp_path / "a") == []
        mirror.faults.announce = {}
        with tmpfs(tmp_path / "small", "size=8m") as disk:
            result = run_cli("models", "fetch", "cityscapes", env=model_env(tmp_path / "b", STREAMER_MIRROR=mirror.url,
                                                                           HF_HOME=str(disk)))
            message = the_error(result, EXIT_CANTCREAT)
            leftovers = sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
    size = (published[SEGFORMER_B2] / "model.safetensors").stat().st_size / 1e6
    staging = disk / "hub" / hub_repo(tmp_path, SEGFORMER_B2).name / STAGED
    assert re.fullmatch(rf"{re.escape(str(staging))}: {re.escape(SEGFORMER_B2)}/model\.safetensors needs {size:.1f} MB more \(the mirror "
                        rf"{re.escape(mirror.url)} announces {size:.1f} MB\) and only [\d.]+ MB are free there; refused before "
                        r"writing: free some space, or move the cache to a larger disk \(\$TORCH_HOME, \$HF_HOME\)", message), message
    assert leftovers == ["hub"], "nothing written: no partial, no empty models--ORG--NAME"


def test_a_read_only_cache_is_one_line(published, tmp_path):
    with Mirror(mirror_files(published, SEGFORMER_B2)) as mirror, tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        result = run_cli("models", "fetch", "cityscapes", env=model_env(tmp_path / "home", STREAMER_MIRROR=mirror.url,
                                                                       HF_HOME=str(disk)))
    assert the_error(result, EXIT_CANTCREAT) == f"{disk / 'hub'}: cannot create the folder (Read-only file system)"
    assert mirror.requests == []


@pytest.mark.parametrize("what", ["checkpoint", "hub model"])
def test_import_onto_a_full_disk_is_exit_73_with_nothing_half_written(published, tmp_path, what):
    with tmpfs(tmp_path / "small", "size=40m") as disk:
        if what == "checkpoint":
            env, given = model_env(tmp_path / "home", TORCH_HOME=str(disk)), published[V2_CHECKPOINT]
            staged, kept = disk / "hub" / "checkpoints" / f".{V2_CHECKPOINT}.import", ["hub", "hub/checkpoints"]
        else:
            env, given = model_env(tmp_path / "home", HF_HOME=str(disk)), published[UPERNET]
            staged, kept = disk / "hub" / hub_repo(disk, UPERNET).name / STAGED / "model.safetensors", ["hub"]
        message = the_error(run_cli("models", "import", "ade20k", str(given), "--allow-unverified", env=env), EXIT_CANTCREAT)
        assert message == (f"{staged}: cannot write the file (No space left on device); the copy was removed, nothing "
                           "half-written is left: free some space, then import again")
        assert sorted(str(p.relative_to(disk)) for p in disk.rglob("*")) == kept


# ---------------------------------------------------------------------------------------------
# no network


def test_fetch_without_a_network_is_one_line_at_once_with_the_three_ways_out(tmp_path):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root and unshare)")
    env = model_env(tmp_path / "home")
    started = time.monotonic()
    result = subprocess.run(["unshare", "-n", sys.executable, "-m", "streamer", "models", "fetch", "cityscapes"],
                            capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - started
    message = the_error(result, EXIT_UNAVAILABLE)
    assert re.fullmatch(r"huggingface\.co could not be reached \([^)]+\): use a mirror that can be reached \(--mirror URL or "
                        r"\$STREAMER_MIRROR\), set a proxy if this network needs one \(HTTPS_PROXY=http://HOST:PORT\), or fetch "
                        r"on a machine that has a connection and copy the files here with `streamer models import cityscapes "
                        r"PATH\.\.\.`", message), message
    assert len(result.stderr.splitlines()) <= 3, result.stderr  # the licence, "downloading from", the error
    assert "huggingface_hub" not in result.stderr
    assert took < 15, took
    assert cached_files(tmp_path / "home") == []

    proxy = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    result = run_cli("models", "fetch", "cityscapes", env=model_env(tmp_path / "home", HTTPS_PROXY=proxy))
    message = the_error(result, EXIT_UNAVAILABLE)
    assert message.startswith(f"huggingface.co could not be reached through the proxy {proxy} (Connection refused): use a "
                              "mirror that can be reached (--mirror URL or $STREAMER_MIRROR), check the proxy"), message

    usage = run_cli("models", "fetch", "cityscapes", "--mirror", "file:///srv/models", env=env)
    assert the_error(usage, EXIT_USAGE).startswith("--mirror / $STREAMER_MIRROR: expected an http:// or https:// URL")
