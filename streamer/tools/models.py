"""`streamer models list | fetch | import | export`: the presets' weights, in the standard caches.

`fetch` downloads from the publishers (torchvision's site, the Hugging Face hub) or a mirror of them;
`import` takes files copied from a machine that has them. Both check what they got against the
published hashes (torchvision: the sha256 prefix in the checkpoint's name; the hub: the sha256 and
commit the preset pins, or where it pins none, the hashes huggingface.co itself announces over https;
a mirror's or an imported copy of an unpinned file is refused unless --allow-unverified, and is then
logged as not verified) and build the preset's network from them, and both move a file into the cache
only once it passed, so the cache never holds a half or foreign file. They write only in torch's
checkpoint folder and in the hub cache's models--ORG--NAME folder, through cache_files (no writing
through a planted link; a lock per download folder). `run` never downloads.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

from streamer import presets
from streamer.config import Models
from streamer.errors import EXIT_OK, DataError, InputNotFound, Unavailable
from streamer.inference import checkpoints
from streamer.inference.cache_files import Folder, copy_into
from streamer.inference.checkpoints import Kind, Weights
from streamer.tools.downloads import MIRROR_ENV, STALL_S, DownloadFailed, Site, Unreachable, download, quoted
from streamer.uris import redact_url

log = logging.getLogger("streamer.models")

CHUNK = 1 << 20
SHA256_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's rule: the hex digits after the last '-' start the sha256
ETAG = re.compile(r'(?:W/)?"?([0-9a-f]{40}|[0-9a-f]{64})"?')  # the hub's ETags: a git hash (small files) or a sha256 (LFS)
PARTIAL = ".partial"
STAGING = ".streamer"  # models--ORG--NAME/.streamer/: the hub files while they download and are checked


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list, fetch or import the weights of the model presets")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every preset: models, classes, licence, size, and which files are here")
    listing.set_defaults(handler=cmd_list)
    fetch = actions.add_parser("fetch", help="download a preset's weights into torch's and the Hugging Face caches")
    fetch.add_argument("preset", choices=presets.names(), metavar="PRESET")
    fetch.add_argument("--mirror", metavar="URL", default=os.environ.get(MIRROR_ENV),
                       help=f"a copy of the publishers' sites (default ${MIRROR_ENV}): the hub's layout, "
                            "torchvision's files under /models/")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="keep a file whose sha256 differs from the published one, or that no published sha256 can verify (warns)")
    fetch.add_argument("--timeout", type=positive_seconds, default=STALL_S, metavar="SECONDS",
                       help="give up on a host that does not answer, or a download that receives nothing, "
                            f"for this long (default {STALL_S:g})")
    fetch.set_defaults(handler=cmd_fetch)
    bring = actions.add_parser("import", help="put a preset's weights, copied from another machine, into the caches")
    bring.add_argument("preset", choices=presets.names(), metavar="PRESET")
    bring.add_argument("paths", nargs="+", metavar="PATH",
                       help="checkpoint files, smp save_pretrained folders, or cache folders holding them")
    bring.add_argument("--allow-unverified", action="store_true",
                       help="accept a file whose sha256 differs from the published one, or that no published sha256 can verify (warns)")
    bring.set_defaults(handler=cmd_import)
    export = actions.add_parser("export", help="export a preset's semantic network for ONNX Runtime or OpenVINO, checked "
                                "against torch, into the cache (models.semantic.backend; see README, Faster on a CPU)")
    export.add_argument("preset", choices=presets.names(), metavar="PRESET")
    export.add_argument("--backend", required=True, choices=["onnxruntime", "openvino"],
                        help="the backend that will run it (its library must be installed: streamer[onnx], streamer[openvino])")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Export the preset's semantic network at its input size for --backend, verified against torch
    (streamer.inference.exports), and print where it is and how it agreed. Exit 78 when the backend's
    library is missing, 65 when the export disagrees with torch, 73 when the cache cannot be written."""
    import torch  # here: `models list` and the rest stay quick

    from streamer.inference import backends, exports
    from streamer.inference.models import RANDOM_INIT_SEED, build_semantic

    backends.require_library(args.backend)
    models = Models.model_validate({"preset": args.preset})
    settings = models.semantic.model_copy(update={"backend": args.backend})
    with torch.random.fork_rng(devices=[]):  # `weights: none` exports the network the runs build
        torch.manual_seed(RANDOM_INIT_SEED)
        network = build_semantic(settings).eval()
    width, height = settings.input_size
    key = exports.export_key(network, settings, args.backend)
    if (exports.cache_root() / key.name).exists():
        exports.load(exports.cache_root() / key.name, key, args.backend, torch.get_num_threads())  # refuses a corrupt one
        sys.stdout.write(f"{args.preset}: the {args.backend} export at {width}x{height} is already in the cache: "
                         f"{exports.cache_root() / key.name}\n")
        return EXIT_OK
    sys.stdout.write(f"{args.preset}: exporting the semantic network ({settings.arch if models.semantic.weights != 'demo' else 'demo'}) "
                     f"at {width}x{height} for {args.backend} and checking it against torch ...\n")
    sys.stdout.flush()
    folder, agreement = exports.export(network, settings, args.backend, torch.get_num_threads())
    sys.stdout.write(f"{agreement.describe()}\nkept in {folder}\n")
    return EXIT_OK


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


def preset_weights(name: str) -> tuple[Models, list[Weights]]:
    """The preset's models section and the cached weights it needs (bundled ones need nothing)."""
    models = Models.model_validate({"preset": name})
    return models, [w for w in checkpoints.needed(models) if w.kind in (Kind.TORCH, Kind.HUB)]


# ---------------------------------------------------------------------------------------------
# list


def cmd_list(args: argparse.Namespace) -> int:
    sys.stdout.write("\n\n".join("\n".join(describe(name)) for name in presets.names()) + "\n")
    return EXIT_OK


def describe(name: str) -> list[str]:
    """The lines `models list` prints for one preset."""
    preset = presets.get(name)
    models, needs = preset_weights(name)
    classes = models.semantic.classes
    things = [c.name for c in classes if c.isthing]
    lines = [
        f"{name}: {preset.title}",
        f"  classes   {len(classes)} ({len(things)} things): "
        f"{', '.join(c.name for c in classes[:24])}{' ...' if len(classes) > 24 else ''}",
        f"  licence   {preset.licence}",
        f"  speed     {preset.speed}",
    ]
    if not needs:
        lines.append(f"  weights   bundled with streamer ({models.semantic.weights} / {models.instance.weights}): nothing to fetch")
    for weights in needs:
        info = preset.weights[weights.name]
        lines.append(f"  {weights.role:<9} {weights.name}  {info.size_mb:.1f} MB  {pinning(weights, info)}  {state(weights)}")
    if needs:
        lines.append(f"  get it    streamer models fetch {name}" + ("" if all(w.present for w in needs) else "   (missing files above)"))
    return lines


def pinning(weights: Weights, info: presets.WeightsInfo) -> str:
    """How the file is verified, in a few words."""
    if weights.kind is Kind.TORCH:
        return "sha256 in its name"
    if all(info.sha256.get(name) for name in checkpoints.HUB_FILES):
        return "sha256 pinned"
    return "no sha256 pinned (a mirror or import needs --allow-unverified)"


def state(weights: Weights) -> str:
    if weights.present:
        return f"present: {weights.path}"
    repo = checkpoints.hub_repo_folder(weights.name) if weights.kind is Kind.HUB else None
    partials = [partial_path(weights)] if repo is None else [repo / STAGING / (name + PARTIAL) for name in checkpoints.HUB_FILES]
    held = [p for p in partials if p.is_file() and not p.is_symlink()]
    if held:
        so_far = sum(p.stat().st_size for p in held) / 1e6
        return f"partial ({so_far:.1f} MB so far, fetch resumes it): {held[-1]}"
    return f"missing: {weights.path if repo is None else repo}"


def partial_path(weights: Weights) -> Path:
    return weights.file.with_name(weights.file.name + ".partial")


# ---------------------------------------------------------------------------------------------
# fetch


def cmd_fetch(args: argparse.Namespace) -> int:
    preset = presets.get(args.preset)
    announce_licence(preset)
    models, needs = preset_weights(args.preset)
    site = Site.choose(args.mirror)
    for weights in needs:
        if weights.present:
            log.info("%s: already present at %s", weights.name, weights.path)
            continue
        info = preset.weights.get(weights.name)
        try:
            if weights.kind is Kind.TORCH:
                fetch_checkpoint(weights, info, models, site, args.allow_unverified, args.timeout)
            else:
                fetch_hub_model(weights, info, models, site, args.allow_unverified, args.timeout)
        except Unreachable as exc:
            raise Unavailable(unreachable(exc, site, args.preset)) from None
    log.info("preset %s is ready: streamer run --preset %s --source ...", args.preset, args.preset)
    return EXIT_OK


def unreachable(exc: Unreachable, site: Site, preset: str) -> str:
    """One line: which host could not be reached, and the three ways out."""
    if site.mirror:
        where = f"the mirror {exc.host} could not be reached"
        first = f"check --mirror / ${MIRROR_ENV}"
    else:
        where = f"{exc.host} could not be reached"
        first = f"use a mirror that can be reached (--mirror URL or ${MIRROR_ENV})"
    if exc.proxy:
        where += f" through the proxy {exc.proxy}"
        proxy = "check the proxy ($HTTPS_PROXY / $HTTP_PROXY)"
    else:
        proxy = "set a proxy if this network needs one (HTTPS_PROXY=http://HOST:PORT)"
    return (f"{where} ({exc.reason}): {first}, {proxy}, or fetch on a machine that has a connection and copy the files "
            f"here with `streamer models import {preset} PATH...`")


def announce_licence(preset: presets.Preset) -> None:
    if preset.non_commercial:
        log.warning("preset %s: %s", preset.name, preset.licence)
    else:
        log.info("preset %s: licence: %s", preset.name, preset.licence)


def size_limit(info: presets.WeightsInfo | None, name: str = "") -> int | None:
    """The most bytes a file of these weights can be: a config 1 MB, the weights the preset's download
    size and some room."""
    if name == "config.json":
        return 1_000_000
    return int(info.size_mb * 1e6 * 1.1) + 1_000_000 if info else None


def fetch_checkpoint(weights: Weights, info: presets.WeightsInfo | None, models: Models, site: Site, allow_unverified: bool,
                     stall_s: float) -> None:
    """Download a torchvision checkpoint into NAME.partial beside its place (resuming what an earlier
    try left there), verify it, then rename it into place; under a lock, so a second fetch waits."""
    name = weights.file.name
    url = site.torch_url(weights.url)
    with Folder.root(weights.file.parent) as folder, folder.hold(name):
        if weights.present:  # another fetch put it there while this one waited
            log.info("%s: already present at %s", name, weights.path)
            return
        log.info("%s: downloading from %s", name, redact_url(url))
        partial = name + PARTIAL
        download(url, folder, partial, what=name, site=site, limit=size_limit(info), stall_s=stall_s)
        try:
            verdict = verify_checkpoint(folder.path / partial, weights, models, allow_unverified)[1]
        except DataError:
            folder.remove(partial)
            raise
        folder.sync(partial)
        folder.move(partial, folder, name)
        folder.sync()
    log.info("%s: %s, saved at %s", name, verdict, weights.path)


def fetch_hub_model(weights: Weights, info: presets.WeightsInfo | None, models: Models, site: Site, allow_unverified: bool,
                    stall_s: float) -> None:
    """Download the hub model's files into models--ORG--NAME/.streamer/ (resuming what an earlier try
    left there), verify them, then lay them out as the hub's cache does. The names the server gives
    (its commit, its hashes) are checked before a byte is written and never used as paths unchecked;
    a model that fails leaves nothing behind; a second fetch waits for the first."""
    repo_id = weights.name
    revision = info.revision if info and info.revision else "main"
    with hub_workspace(repo_id) as (repo, staging):
        found = checkpoints.hub_snapshot(repo_id)
        if found:  # another fetch put it there while this one waited
            log.info("%s: already present at %s", repo_id, found)
            return
        log.info("%s: downloading from %s", repo_id, site.name)
        announced: dict[str, str | None] = {}
        commits: set[str] = set()
        try:
            for name in checkpoints.HUB_FILES:
                names: dict[str, str | None] = {}

                def inspect(headers: Message, name: str = name, names: dict[str, str | None] = names) -> None:
                    names.update(hub_names(headers, site, repo_id, name))

                try:
                    download(site.hub_url(repo_id, revision, name), staging, name + PARTIAL, what=f"{repo_id}/{name}",
                             site=site, limit=size_limit(info, name), stall_s=stall_s, inspect=inspect)
                except DownloadFailed as exc:
                    raise Unavailable(f"{repo_id}: download of {name} failed ({exc.problem}){exc.resume}") from None
                staging.move(name + PARTIAL, staging, name)
                announced[name] = names.get("etag")
                commit = names.get("commit")
                if commit:
                    commits.add(commit)
            digests, verdict = verify_hub_folder(staging.path, repo_id, info, models, allow_unverified, announced, site)
            snapshot_name = snapshot_revision(repo_id, info, commits, digests, site.name)
            snapshot = install_hub_model(repo, staging, snapshot_name, digests)
        except BaseException:
            for name in checkpoints.HUB_FILES:  # whole files that were not installed; a partial stays to be resumed
                staging.remove(name)
            raise
    log.info("%s: %s, saved at %s", repo_id, verdict, snapshot)


@contextlib.contextmanager
def hub_workspace(repo_id: str) -> Iterator[tuple[Folder, Folder]]:
    """models--ORG--NAME and its .streamer/ folder (where hub files download and are checked), held
    locked for this process: another fetch or import of the model waits. When done, the folders left
    empty are removed (a fetch that failed leaves nothing), and a process that waited meanwhile
    finds them gone and opens them afresh."""
    name = checkpoints.hub_repo_folder(repo_id).name
    while True:
        with contextlib.ExitStack() as stack:
            cache = stack.enter_context(Folder.root(checkpoints.hub_cache()))
            repo = stack.enter_context(cache.sub(name))
            staging = stack.enter_context(repo.sub(STAGING))
            stack.enter_context(staging.hold(repo_id))
            if repo.deleted or staging.deleted:
                continue  # removed by the process this one waited for: open them again
            try:
                yield repo, staging
            finally:
                repo.rmdir(STAGING)
                cache.rmdir(name)
            return


def hub_names(headers: Message, site: Site, repo_id: str, name: str) -> dict[str, str | None]:
    """The commit (X-Repo-Commit) and hash (X-Linked-Etag, else ETag) the server names for a hub file,
    checked before a byte is written: a commit is 40 hex digits, an ETag a hash in hex (quoted or not).
    Anything else is refused (DataError, exit 65) naming the server."""
    commit = headers.get("X-Repo-Commit")
    if commit is not None and not checkpoints.COMMIT.fullmatch(commit.strip()):
        raise DataError(f"{site.name}: its X-Repo-Commit header for {repo_id}/{name} is {quoted(commit)}, not a commit id "
                        "(40 hex digits): refused, nothing written")
    etag = headers.get("X-Linked-Etag") or headers.get("ETag")
    match = ETAG.fullmatch(etag.strip()) if etag is not None else None
    if etag is not None and not match:
        raise DataError(f"{site.name}: its ETag header for {repo_id}/{name} is {quoted(etag)}, not a hash (hex digits, "
                        "quoted or not): refused, nothing written")
    return {"commit": commit.strip() if commit else None, "etag": match.group(1) if match else None}


def snapshot_revision(repo_id: str, info: presets.WeightsInfo | None, commits: set[str], digests: dict[str, str],
                      source: str) -> str:
    """The snapshot's name: the pinned commit (the files matched its pins by now: a server that names
    another commit for them is only noted), else the one commit the server named, else one derived
    from the files' hashes (as `import` does for a folder that names none)."""
    pinned = info.revision if info else None
    if pinned:
        if commits and commits != {pinned}:
            log.warning("%s: %s serves commit %s where the preset pins %s; kept as %s", repo_id, source,
                        ", ".join(sorted(commits)), pinned, pinned)
        return pinned
    return next(iter(commits)) if len(commits) == 1 else derived_revision(digests)


def derived_revision(digests: dict[str, str]) -> str:
    return hashlib.sha1("".join(digests[name] for name in checkpoints.HUB_FILES).encode()).hexdigest()


def install_hub_model(repo: Folder, staging: Folder, revision: str, digests: dict[str, str]) -> Path:
    """Lay verified files (in `staging`, by their names) out as the hub's cache does: blobs named by
    sha256, snapshots/REVISION/FILE linking to them, refs/main naming REVISION. A failure takes back
    the blobs it added. Returns the snapshot folder."""
    with repo.sub("blobs") as blobs, repo.sub("snapshots") as snapshots, snapshots.sub(revision) as snapshot, \
            repo.sub("refs") as refs:
        added = []
        try:
            for name, digest in digests.items():
                if not blobs.is_file(digest):
                    added.append(digest)
                staging.sync(name)
                staging.move(name, blobs, digest)
            blobs.sync()
            for name, digest in digests.items():
                snapshot.link(name, f"../../blobs/{digest}")
            refs.write_text("main", revision, staging)
        except BaseException:
            for digest in added:
                blobs.remove(digest)
            raise
        return snapshot.path


# ---------------------------------------------------------------------------------------------
# verification


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The hash git (and the hub, as the ETag of a small file) gives a file's content."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def refuse_or_warn(problem: str, allow_unverified: bool) -> None:
    """A file that is not the published one: refused (DataError, exit 65), or kept with a warning
    under --allow-unverified."""
    if not allow_unverified:
        raise DataError(f"{problem}: a corrupt or different file, refused (--allow-unverified accepts it)")
    log.warning("%s: accepted because of --allow-unverified", problem)


def check_sha256(path: Path, expected: str, what: str, allow_unverified: bool) -> tuple[str, bool]:
    """The file's sha256, and whether it starts with `expected` (else refused, or warned about when allowed)."""
    actual = sha256(path)
    if actual.startswith(expected):
        return actual, True
    refuse_or_warn(f"{what}: sha256 {actual[:16]}... does not match the published {expected[:16]}...", allow_unverified)
    return actual, False


def verify_checkpoint(path: Path, weights: Weights, models: Models, allow_unverified: bool) -> tuple[str, str]:
    """The published hash (in the checkpoint's name), then a strict load into the preset's Mask R-CNN.
    Returns the file's sha256 and what was verified, in words for the log."""
    from streamer.inference import models as networks

    match = SHA256_IN_NAME.search(weights.name)
    if match:
        digest, matched = check_sha256(path, match.group(1), str(path), allow_unverified)
    else:
        digest, matched = sha256(path), False
    model = networks.build_instance(models.instance.model_copy(update={"weights": "none"}))[0]
    networks.load_weights(model, networks.read_state_dict(path), str(path))
    return digest, ("verified (the sha256 its published name starts with)" if matched else
                    "NOT verified (its sha256 is not the published one; kept because of --allow-unverified)")


def verify_hub_folder(folder: Path, repo_id: str, info: presets.WeightsInfo | None, models: Models, allow_unverified: bool,
                      announced: dict[str, str | None] | None, site: Site | None) -> tuple[dict[str, str], str]:
    """A hub model's files in `folder` (by their names): the preset's config first (a folder of another
    preset is refused before torch loads), then each file's sha256 against the hash the server
    announced for it (a corrupt transfer) and against the preset's pin, then a strict build of the
    preset's network. Without a pin a file is verified only when it came from the publisher itself
    (huggingface.co over https, its announced hash matched); a copy from a mirror or an import is then
    refused unless --allow-unverified, and never called verified. Returns each file's sha256 and the
    verdict, in words for the log."""
    checkpoints.pretrained_config(folder, models.semantic, str(folder))
    source = site.name if site else "an imported folder"
    digests, pinned_ok, unverified = {}, [], []
    for name in checkpoints.HUB_FILES:
        path, what = folder / name, f"{repo_id}/{name}"
        digests[name] = actual = sha256(path)
        etag = (announced or {}).get(name)
        if etag is not None:
            served = actual if len(etag) == 64 else git_blob_sha1(path)
            if served != etag:
                refuse_or_warn(f"{what}: {'sha256' if len(etag) == 64 else 'git hash'} {served[:16]}... does not match the "
                               f"{etag[:16]}... {source} announced", allow_unverified)
                unverified.append(name)
                continue
        pin = info.sha256.get(name) if info else None
        if pin is not None:
            if actual == pin:
                pinned_ok.append(name)
            else:
                refuse_or_warn(f"{what}: sha256 {actual[:16]}... does not match the published {pin[:16]}... the preset pins",
                               allow_unverified)
                unverified.append(name)
        elif not (site and site.publisher and etag is not None):
            unverified.append(name)
    unpinned = [n for n in unverified if not (info and info.sha256.get(n))]
    if unpinned:
        problem = (f"{repo_id}: the preset pins no sha256 for {', '.join(unpinned)}, so a copy from {source} cannot be verified"
                   if site else f"{repo_id}: the preset pins no sha256 for {', '.join(unpinned)}, so an imported copy cannot be verified")
        if not allow_unverified:
            raise DataError(f"{problem}: refused (--allow-unverified accepts it, unverified)")
        log.warning("%s: accepted, NOT verified, because of --allow-unverified", problem)
    from streamer.inference import models as networks  # torch: only for the files that passed so far

    networks.build_pretrained(folder, models.semantic, origin=str(folder))
    if unverified:
        verdict = f"NOT verified ({', '.join(unverified)}: no matching published sha256; kept because of --allow-unverified)"
    elif len(pinned_ok) == len(checkpoints.HUB_FILES):
        verdict = "verified (the sha256 the preset pins)"
    else:
        verdict = "checked against the hashes huggingface.co announced over https (the preset pins no sha256 yet)"
    return digests, verdict


# ---------------------------------------------------------------------------------------------
# import


def cmd_import(args: argparse.Namespace) -> int:
    preset = presets.get(args.preset)
    announce_licence(preset)
    models, needs = preset_weights(args.preset)
    given = [Path(p) for p in args.paths]
    for path in given:
        if not path.exists():
            raise InputNotFound(f"{path}: no such file or folder")
    used = set()
    for weights in needs:
        source = find_source(weights, given)
        if source is None:
            continue
        if weights.kind is Kind.TORCH:
            import_checkpoint(source, weights, models, args.allow_unverified)
        else:
            import_hub_model(source, weights, preset.weights.get(weights.name), models, args.allow_unverified)
        used.add(source)
    if not used:
        expected = ", ".join(f"{w.name} ({'a checkpoint file' if w.kind is Kind.TORCH else 'an smp save_pretrained folder'})"
                             for w in needs)
        raise InputNotFound(f"{' '.join(args.paths)}: none of the files preset {args.preset} needs is there: {expected}")
    still = [w.name for w in preset_weights(args.preset)[1] if not w.present]
    if still:
        log.warning("preset %s still lacks %s: import or fetch it too", args.preset, ", ".join(still))
    else:
        log.info("preset %s is ready: streamer run --preset %s --source ...", args.preset, args.preset)
    return EXIT_OK


def find_source(weights: Weights, given: list[Path]) -> Path | None:
    """The given file or folder that holds these weights: a checkpoint by its published name (or the
    one weights file given, when there is only one); a hub model as a folder with its files."""
    if weights.kind is Kind.TORCH:
        files = [p for p in walk(given) if p.is_file() and p.suffix in checkpoints.WEIGHTS_SUFFIXES]
        named = [p for p in files if p.name == weights.name]
        return named[0] if named else (files[0] if len(files) == 1 and not hub_folders(given) else None)
    folders = hub_folders(given)
    marker = "models--" + weights.name.replace("/", "--")
    ours = [f for f in folders if marker in f.parts] or folders
    return ours[0] if ours else None


def hub_folders(given: list[Path]) -> list[Path]:
    return [p for p in walk(given) if p.is_dir() and all((p / name).is_file() for name in checkpoints.HUB_FILES)]


def walk(given: list[Path], depth: int = 6) -> Iterator[Path]:
    """The given paths and what lies under them, a few levels deep (an HF cache: hub/models--X/snapshots/REV)."""
    for path in given:
        yield path
        if path.is_dir() and depth > 0:
            yield from walk(sorted(path.iterdir()), depth - 1)


def import_checkpoint(source: Path, weights: Weights, models: Models, allow_unverified: bool) -> None:
    """Verify the file, then copy it beside its place (.NAME.import) and rename it into place once the
    copy holds the bytes that were verified; a full disk leaves nothing behind (exit 73)."""
    digest, verdict = verify_checkpoint(source, weights, models, allow_unverified)
    name = weights.file.name
    staged = f".{name}.import"
    with Folder.root(weights.file.parent) as folder, folder.hold(name):
        try:
            copied = copy_into(source, folder, staged)
            if copied != digest:
                raise DataError(f"{source}: changed while it was being imported (sha256 {copied[:16]}... where "
                                f"{digest[:16]}... was verified); import it again")
            folder.move(staged, folder, name)
            folder.sync()
        except BaseException:
            folder.remove(staged)
            raise
    log.info("%s: %s, imported from %s to %s", name, verdict, source, weights.path)


def import_hub_model(source: Path, weights: Weights, info: presets.WeightsInfo | None, models: Models,
                     allow_unverified: bool) -> None:
    """Verify the folder, copy its files into models--ORG--NAME/.streamer/, then lay them out as the
    hub's cache does (blobs named by sha256, snapshots/REV/FILE linking to them, refs/main naming REV:
    the pinned commit, else the source's own when it is a cache snapshot, else one derived from the
    files' hashes). A full disk leaves nothing behind (exit 73)."""
    repo_id = weights.name
    digests, verdict = verify_hub_folder(source, repo_id, info, models, allow_unverified, None, None)
    own = source.name if source.parent.name == "snapshots" and checkpoints.COMMIT.fullmatch(source.name) else None
    revision = (info.revision if info and info.revision else None) or own or derived_revision(digests)
    with hub_workspace(repo_id) as (repo, staging):
        try:
            for name in checkpoints.HUB_FILES:
                copied = copy_into(source / name, staging, name)
                if copied != digests[name]:
                    raise DataError(f"{source / name}: changed while it was being imported (sha256 {copied[:16]}... where "
                                    f"{digests[name][:16]}... was verified); import it again")
            snapshot = install_hub_model(repo, staging, revision, digests)
        except BaseException:
            for name in checkpoints.HUB_FILES:
                staging.remove(name)
            raise
    log.info("%s: %s, imported from %s to %s", repo_id, verdict, source, snapshot)
