"""Downloads over HTTP for `streamer models fetch`, through huggingface_hub's client (proxies from
the environment, retries that resume from the offset reached), with progress as a bar on a terminal
and as log lines elsewhere."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from streamer.errors import Unavailable

log = logging.getLogger("streamer.models")

MIRROR_ENV = "STREAMER_MIRROR"


def progress_class() -> type:
    """huggingface_hub's progress bar on a terminal; elsewhere (a log, systemd, CI) its updates as
    log lines, one every few seconds and one at the end."""
    from huggingface_hub.utils import tqdm

    class LoggedProgress(tqdm):
        def __init__(self, *args, **kwargs):
            if kwargs.get("disable") is None and not sys.stderr.isatty():
                kwargs.update(disable=False, file=LogLines(), mininterval=5.0,
                              bar_format="{desc}: {percentage:3.0f}% of {total_fmt}B ({rate_fmt})")
            super().__init__(*args, **kwargs)

    return LoggedProgress


class LogLines:
    """A file for tqdm: each update it writes becomes one log line."""

    def write(self, text: str) -> int:
        if text.strip():
            log.info("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass


def download_resuming(url: str, partial: Path, name: str, mirror: str | None) -> None:
    """Append what `partial` lacks of `url` (huggingface_hub's http_get: a Range request, retried
    with the offset reached when the connection drops). Raises Unavailable, keeping what arrived."""
    from huggingface_hub.file_download import http_get

    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "ab") as handle:
        done = handle.tell()
        try:
            http_get(url, handle, resume_size=done, displayed_filename=name, tqdm_class=progress_class())
            return
        except Exception as exc:  # noqa: BLE001 - every network failure reads the same to the user
            if range_already_complete(exc, done):
                return
            problem = failure(exc, mirror)
        kept = handle.tell()
    if not kept:
        partial.unlink(missing_ok=True)
    resume = f"; {kept / 1e6:.1f} MB kept in {partial}: run the same command again to resume" if kept else ""
    raise Unavailable(f"{url}: download failed ({problem}){resume}")


def range_already_complete(exc: Exception, done: int) -> bool:
    """A resumed download of a file that was already whole: the server answers 416."""
    response = getattr(exc, "response", None)
    return done > 0 and getattr(response, "status_code", None) == 416


def failure(exc: Exception, mirror: str | None) -> str:
    """What went wrong, in a few words: the HTTP status, or the connection error."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 404:
        return "HTTP 404: not there" + ("; check --mirror or $" + MIRROR_ENV if mirror else "")
    if status:
        return f"HTTP {status}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
