"""`streamer models list | fetch | import`: the presets' weights, in the standard caches.

`fetch` downloads from the publishers (torchvision's site, the Hugging Face hub) or a mirror of them;
`import` takes files copied from a machine that has them. Both verify what they got the way the
publishers do (torchvision: the sha256 prefix in the checkpoint's name; the hub: its LFS files are
stored under their sha256) and by building the preset's network from it, and both move a file into
the cache only once it passed, so the cache never holds a half or foreign file. `run` never downloads.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from streamer import presets
from streamer.config import Models
from streamer.errors import EXIT_OK, DataError, InputNotFound, Unavailable
from streamer.inference import checkpoints
from streamer.inference.checkpoints import Kind, Weights
from streamer.tools.downloads import MIRROR_ENV, download_resuming, failure, progress_class

log = logging.getLogger("streamer.models")

CHUNK = 1 << 20
SHA256_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's rule: the hex digits after the last '-' start the sha256


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
    fetch.add_argument("--allow-unverified", action="store_true", help="keep a file whose sha256 differs from the published one (warns)")
    fetch.set_defaults(handler=cmd_fetch)
    bring = actions.add_parser("import", help="put a preset's weights, copied from another machine, into the caches")
    bring.add_argument("preset", choices=presets.names(), metavar="PRESET")
    bring.add_argument("paths", nargs="+", metavar="PATH",
                       help="checkpoint files, smp save_pretrained folders, or cache folders holding them")
    bring.add_argument("--allow-unverified", action="store_true", help="accept a file whose sha256 differs from the published one (warns)")
    bring.set_defaults(handler=cmd_import)


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
        lines.append(f"  {weights.role:<9} {weights.name}  {info.size_mb:.1f} MB  {state(weights)}")
    if needs:
        lines.append(f"  get it    streamer models fetch {name}" + ("" if all(w.present for w in needs) else "   (missing files above)"))
    return lines


def state(weights: Weights) -> str:
    if weights.present:
        return f"present: {weights.path}"
    if weights.kind is Kind.TORCH:
        partial = partial_path(weights)
        if partial.is_file():
            return f"partial ({partial.stat().st_size / 1e6:.1f} MB so far, fetch resumes it): {partial}"
        return f"missing: {weights.path}"
    return f"missing: {checkpoints.hub_repo_folder(weights.name)}"


def partial_path(weights: Weights) -> Path:
    return weights.file.with_name(weights.file.name + ".partial")


# ---------------------------------------------------------------------------------------------
# fetch


def cmd_fetch(args: argparse.Namespace) -> int:
    preset = presets.get(args.preset)
    announce_licence(preset)
    models, needs = preset_weights(args.preset)
    mirror = (args.mirror or "").rstrip("/") or None
    for weights in needs:
        if weights.present:
            log.info("%s: already present at %s", weights.name, weights.path)
            continue
        if weights.kind is Kind.TORCH:
            fetch_checkpoint(weights, models, mirror, args.allow_unverified)
        else:
            fetch_hub_model(weights, models, mirror, args.allow_unverified)
    log.info("preset %s is ready: streamer run --preset %s --source ...", args.preset, args.preset)
    return EXIT_OK


def announce_licence(preset: presets.Preset) -> None:
    if preset.non_commercial:
        log.warning("preset %s: %s", preset.name, preset.licence)
    else:
        log.info("preset %s: licence: %s", preset.name, preset.licence)


def fetch_checkpoint(weights: Weights, models: Models, mirror: str | None, allow_unverified: bool) -> None:
    """Download a torchvision checkpoint into NAME.partial beside its place (resuming what an earlier
    try left there), verify it, then rename it into place."""
    url = f"{mirror}{urlsplit(weights.url).path}" if mirror else weights.url
    partial = partial_path(weights)
    log.info("%s: downloading from %s", weights.name, url)
    download_resuming(url, partial, weights.name, mirror)
    try:
        verify_checkpoint(partial, weights, models, allow_unverified)
    except DataError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, weights.file)
    log.info("%s: verified, saved at %s", weights.name, weights.path)


def fetch_hub_model(weights: Weights, models: Models, mirror: str | None, allow_unverified: bool) -> None:
    """Download the hub model's files with huggingface_hub (its cache, its atomic writes, its
    retries), then verify them; a model that fails leaves the cache."""
    from huggingface_hub import hf_hub_download

    log.info("%s: downloading from %s", weights.name, mirror or "the Hugging Face hub")
    fetched = []
    try:
        for name in checkpoints.HUB_FILES:
            fetched.append(Path(hf_hub_download(weights.name, name, endpoint=mirror, tqdm_class=progress_class())))
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"{weights.name}: download of {name} failed ({failure(exc, mirror)})") from None
    folder = fetched[0].parent
    try:
        verify_hub_folder(folder, weights, models, allow_unverified)
    except DataError:
        for path in fetched:
            blob = path.resolve()
            path.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
        raise
    log.info("%s: verified, saved at %s", weights.name, folder)


# ---------------------------------------------------------------------------------------------
# verification


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str, allow_unverified: bool) -> None:
    """The file's sha256 must start with `expected`. Raises DataError, or warns when allowed."""
    actual = sha256(path)
    if actual.startswith(expected):
        return
    problem = f"{what}: sha256 {actual[:16]}... does not match the published {expected[:16]}..."
    if not allow_unverified:
        raise DataError(f"{problem}: a corrupt or different file, refused (--allow-unverified accepts it)")
    log.warning("%s: accepted because of --allow-unverified", problem)


def verify_checkpoint(path: Path, weights: Weights, models: Models, allow_unverified: bool) -> None:
    """The published hash (in the checkpoint's name), then a strict load into the preset's Mask R-CNN."""
    from streamer.inference import models as networks

    match = SHA256_IN_NAME.search(weights.name)
    if match:
        check_sha256(path, match.group(1), str(path), allow_unverified)
    model = networks.build_instance(models.instance.model_copy(update={"weights": "none"}))[0]
    networks.load_weights(model, networks.read_state_dict(path), str(path))


def verify_hub_folder(folder: Path, weights: Weights, models: Models, allow_unverified: bool) -> None:
    """The hub's LFS hashes (a cached file is stored under its sha256), then a strict build of the
    preset's semantic network from the folder."""
    checkpoints.pretrained_config(folder, models.semantic, str(folder))  # a folder of another preset: refused before torch loads
    for name in checkpoints.HUB_FILES:
        blob = (folder / name).resolve()
        if re.fullmatch(r"[0-9a-f]{64}", blob.name):
            check_sha256(blob, blob.name, f"{weights.name}/{name}", allow_unverified)
    from streamer.inference import models as networks  # torch: only for the files that passed so far

    networks.build_pretrained(folder, models.semantic, origin=str(folder))


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
            import_hub_model(source, weights, models, args.allow_unverified)
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
    verify_checkpoint(source, weights, models, allow_unverified)
    weights.file.parent.mkdir(parents=True, exist_ok=True)
    atomic_copy(source, weights.file)
    log.info("%s: verified, imported from %s to %s", weights.name, source, weights.path)


def import_hub_model(source: Path, weights: Weights, models: Models, allow_unverified: bool) -> None:
    """Verify the folder, then lay it out as huggingface_hub's cache does: blobs named by sha256,
    snapshots/REV/FILE linking to them, refs/main naming REV (the source's own commit when it is a
    cache snapshot, else one derived from the files' hashes)."""
    verify_hub_folder(source, weights, models, allow_unverified)
    repo = checkpoints.hub_repo_folder(weights.name)
    hashes = {name: sha256(source / name) for name in checkpoints.HUB_FILES}
    revision = source.name if source.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", source.name) else \
        hashlib.sha1("".join(hashes.values()).encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    for folder in (repo / "blobs", snapshot, repo / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, digest in hashes.items():
        blob = repo / "blobs" / digest
        if not blob.is_file():
            atomic_copy(source / name, blob)
        link = snapshot / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    atomic_write(repo / "refs" / "main", revision)
    log.info("%s: verified, imported from %s to %s", weights.name, source, snapshot)


def atomic_copy(source: Path, target: Path) -> None:
    staged = target.with_name(f".{target.name}.import")
    try:
        shutil.copyfile(source, staged)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def atomic_write(target: Path, text: str) -> None:
    staged = target.with_name(f".{target.name}.import")
    staged.write_text(text)
    os.replace(staged, target)
