"""Downloads over HTTP(S) for `streamer models fetch`, with Python's own HTTP client, so that streamer
decides everything a download does and trusts nothing the server says:

- proxies from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as other clients read them;
- one time limit (`--timeout`, default 30 s) on silence: a host that does not answer, or a download
  that receives nothing for that long, ends with one line; nothing retries for minutes;
- resumption: a partial file keeps what arrived, a dropped connection is resumed with a Range
  request (three drops in a row without a byte between them end it), and so is the next run;
- sizes checked before writing: a file announced larger than it can be (the preset's size) or than
  the free space is refused before a byte is written, and a server that sends more than it
  announced is cut off;
- credentials only where they belong: the user's Hugging Face token goes only to the hub it was made
  for (huggingface.co, or the endpoint HF_ENDPOINT names) over https, never to a mirror; a mirror's own
  user:password only to the mirror. Redirects are followed here, hop by hop: http(s) only, never
  from https down to http, and credentials never follow a hop to another host;
- progress as a bar on a terminal and as log lines elsewhere.

Files are created and opened through cache_files (no writing through a planted link); the names
the hub's headers give (a commit, an ETag) are validated by the caller before any use.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote, urljoin, urlsplit

from streamer import __version__
from streamer.errors import CannotCreate, DataError, Unavailable, UsageError
from streamer.inference.cache_files import Folder, write_all

log = logging.getLogger("streamer.models")

MIRROR_ENV = "STREAMER_MIRROR"
HUB = "https://huggingface.co"
STALL_S = 30.0  # seconds without a byte (or an answer) before a download gives up
RETRIES = 3  # dropped connections in a row, without a byte between them, before it gives up
REDIRECTS = 5
CHUNK = 1 << 20
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
DEFAULT_PORTS = {"http": 80, "https": 443}


class Unreachable(Unavailable):
    """A host (or the proxy to it) could not be reached at all: no network, no DNS, refused, no answer."""

    def __init__(self, host: str, reason: str, proxy: str | None):
        self.host, self.reason, self.proxy = host, reason, proxy
        through = f" through the proxy {proxy}" if proxy else ""
        super().__init__(f"{host} could not be reached{through} ({reason})")


class DownloadFailed(Unavailable):
    """A download that started and stopped: `problem` in a few words, `resume` what was kept for the next run."""

    def __init__(self, url: str, problem: str, resume: str = ""):
        self.problem, self.resume = problem, resume
        super().__init__(f"{url}: download failed ({problem}){resume}")


@dataclass(frozen=True)
class Site:
    """Where downloads come from: the publishers (torchvision's site; the Hugging Face hub, or the
    endpoint HF_ENDPOINT names) or a mirror of both (`--mirror`, the hub's layout plus torchvision's
    files under /models/)."""

    hub: str  # base URL of hub downloads (ORG/NAME/resolve/REVISION/FILE under it), without user-info
    mirror: str | None = None  # the mirror's base URL without its user-info; None: the publishers
    mirror_auth: str | None = None  # the mirror's own Basic credentials, sent to the mirror only

    @classmethod
    def choose(cls, mirror: str | None) -> Site:
        """The publishers, or the mirror `--mirror`/$STREAMER_MIRROR names (UsageError unless http(s)://HOST[/PATH])."""
        if not mirror:
            return cls(hub_endpoint())
        parts = urlsplit(mirror.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise UsageError(f"--mirror / ${MIRROR_ENV}: expected an http:// or https:// URL of a mirror "
                             f"(the hub's layout, torchvision's files under /models/), got {quoted(mirror)}")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        base = f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")
        return cls(base, base, auth)

    @property
    def name(self) -> str:
        return f"the mirror {self.mirror}" if self.mirror else urlsplit(self.hub).netloc

    @property
    def publisher(self) -> bool:
        """The hub itself over https (huggingface.co): the hashes it announces are the publisher's."""
        return self.mirror is None and origin(self.hub) == origin(HUB)

    def torch_url(self, published: str) -> str:
        return f"{self.mirror}{urlsplit(published).path}" if self.mirror else published

    def hub_url(self, repo_id: str, revision: str, name: str) -> str:
        return f"{self.hub}/{repo_id}/resolve/{revision}/{name}"


def hub_endpoint() -> str:
    """The Hugging Face hub this machine uses: HF_ENDPOINT, else huggingface.co (as the hub's client reads it)."""
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def quoted(text: str, limit: int = 80) -> str:
    """Text a server or a user gave, quoted for a log line: one line, bounded, never a forged one."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


def credentials(url: str, site: Site) -> dict[str, str]:
    """The Authorization header `url` may carry: the mirror's own credentials to the mirror; the
    user's Hugging Face token to the hub host it was made for, over https only; nothing else."""
    target = origin(url)
    if site.mirror and site.mirror_auth and target == origin(site.mirror):
        return {"Authorization": site.mirror_auth}
    if target[0] == "https" and target == origin(hub_endpoint()):
        token = hub_token()
        if token:
            return {"Authorization": f"Bearer {token}"}
    return {}


def hub_token() -> str | None:
    """The token the user saved with `hf auth login` (or $HF_TOKEN), if any, unless the user told the
    hub's client never to send it unasked (HF_HUB_DISABLE_IMPLICIT_TOKEN)."""
    if os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token is the answer for any trouble reading one
        return None


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for `url` (none where NO_PROXY exempts its host), credentials hidden."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    shown = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return f"{shown.scheme}://{shown.hostname}" + (f":{shown.port}" if shown.port else "")


def _opener() -> urllib.request.OpenerDirector:
    """Proxies from the environment, http and https; no redirect or error handling: done in `answer`."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(context=ssl.create_default_context())):
        opener.add_handler(handler)
    return opener


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(getattr(exc, "reason", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def answer(url: str, headers: dict[str, str], site: Site, stall_s: float) -> tuple[http.client.HTTPResponse, Message, str]:
    """GET `url`, following redirects: the last response (any status but a redirect), the first one's
    headers (where the hub puts a file's commit, hash and size) and the last URL."""
    opener, first = _opener(), None
    for _ in range(REDIRECTS + 1):
        request = urllib.request.Request(url, headers={**headers, **credentials(url, site)})
        try:
            response = opener.open(request, timeout=stall_s)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = _reason(exc)
            if reason == "no answer":
                reason = f"no answer within {stall_s:g} s"
            raise Unreachable(urlsplit(url).netloc, reason, proxy_for(url)) from None
        if first is None:
            first = response.headers
        if response.status not in REDIRECT_STATUSES:
            return response, first, url
        location = response.headers.get("Location")
        response.close()
        target = urljoin(url, location or "")
        if not location or urlsplit(target).scheme not in DEFAULT_PORTS:
            raise DownloadFailed(url, f"HTTP {response.status} to {quoted(location or '')}, not an http(s) URL: refused")
        if urlsplit(url).scheme == "https" and urlsplit(target).scheme == "http":
            raise DownloadFailed(url, f"redirected from https to plain http ({urlsplit(target).netloc}): refused")
        url = target
    raise DownloadFailed(url, f"more than {REDIRECTS} redirects")


def download(url: str, folder: Folder, partial: str, *, what: str, site: Site, limit: int | None,
             stall_s: float = STALL_S, inspect: Callable[[Message], object] | None = None) -> Message:
    """Append to `folder/partial` what it lacks of `url` and return the headers of the first response
    (`inspect` sees them first, before a byte is written, and may refuse them by raising). Raises
    Unreachable, DownloadFailed (what arrived is kept for the next run), DataError (a size that cannot
    be: the partial is removed), CannotCreate (no room, or a link where the file belongs)."""
    transfer = Transfer(url, folder, partial, what, site, limit, stall_s, inspect)
    try:
        return transfer.run()
    except DataError:
        folder.remove(partial)  # what it holds came from a server that cannot be right
        raise
    except CannotCreate as exc:
        size = folder.size(partial)
        if not size:
            folder.remove(partial)
        raise CannotCreate(f"{exc}{kept(size, transfer.path, 'free some space, then run the same command again to resume')}") from None
    except BaseException:
        if not folder.size(partial):
            folder.remove(partial)
        raise
    finally:
        transfer.close()


class Transfer:
    """One file's download into its partial file: tries until it is whole, resuming after drops."""

    def __init__(self, url: str, folder: Folder, partial: str, what: str, site: Site, limit: int | None, stall_s: float,
                 inspect: Callable[[Message], object] | None):
        self.url, self.folder, self.what, self.site, self.limit, self.stall_s, self.inspect = \
            url, folder, what, site, limit, stall_s, inspect
        self.path = folder.path / partial
        self.fd = folder.append(partial)
        self.progress = None

    def close(self) -> None:
        os.close(self.fd)
        if self.progress is not None:
            self.progress.close()

    @property
    def done(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def run(self) -> Message:
        drops = 0
        while True:
            before = self.done
            first, problem = self.attempt()
            if problem is None:
                return first
            drops = 0 if self.done > before else drops + 1
            if drops > RETRIES:
                raise DownloadFailed(self.url, f"{problem}, {drops} times in a row", kept(self.done, self.path))
            log.info("%s: %s; resuming from %.1f MB", self.what, problem, self.done / 1e6)
            time.sleep(1)

    def attempt(self) -> tuple[Message, str | None]:
        """One request for what is missing: the first response's headers, and why it stopped short (None: whole)."""
        done = self.done
        headers = {"User-Agent": f"streamer/{__version__}", "Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
        try:
            response, first, _ = answer(self.url, headers, self.site, self.stall_s)
        except Unreachable as exc:
            if done:  # it was reached before: keep what arrived
                raise DownloadFailed(self.url, str(exc), kept(done, self.path)) from None
            raise
        with contextlib.closing(response):
            if self.inspect is not None:
                self.inspect(first)
            status = response.status
            if status == 416 and done:  # a resumed download of a file that was already whole
                return first, None
            if status == 206 and content_range_start(response) != done:
                status = 200  # a range other than the one asked for: start again from the beginning
            if status == 200 and done:
                os.ftruncate(self.fd, 0)
                done = 0
            elif status not in (200, 206):
                raise DownloadFailed(self.url, http_problem(status, self.site), kept(done, self.path))
            total = announced_total(response, done)
            check_room(total, done, self.limit, self.folder, self.what, self.site)
            if self.progress is None:
                self.progress = progress_class()(desc=self.what, total=total, initial=done, unit="B", unit_scale=True)
            try:
                done = receive(response, self.fd, self.path, done, total if total is not None else self.limit, self.what,
                               self.site, self.progress)
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                if isinstance(exc, (TimeoutError, socket.timeout)):
                    raise DownloadFailed(self.url, f"no data for {self.stall_s:g} s", kept(self.done, self.path)) from None
                return first, f"the connection dropped ({_reason(exc)})"
            if total is None or done >= total:
                return first, None
            return first, f"the connection closed after {done} of {total} bytes"


def kept(size: int, path, then: str = "run the same command again to resume") -> str:
    return f"; {size / 1e6:.1f} MB kept in {path}: {then}" if size else ""


def content_range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (response.headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


def announced_total(response: http.client.HTTPResponse, done: int) -> int | None:
    """The whole file's size as the answer announces it (Content-Range's total, else what is held plus
    Content-Length), or None when it announces none."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (response.headers.get("Content-Range") or "").strip())
    if response.status == 206 and match:
        return int(match.group(1))
    length = (response.headers.get("Content-Length") or "").strip()
    if response.headers.get("Content-Encoding", "identity").lower() != "identity" or not length.isdigit():
        return None
    return done + int(length) if response.status == 206 else int(length)


def check_room(total: int | None, done: int, limit: int | None, folder: Folder, what: str, site: Site) -> None:
    """Before a byte is written: the announced size must be one the file can have, and fit the disk."""
    if total is None:
        return
    if limit is not None and total > limit:
        raise DataError(f"{what}: {site.name} announces {total / 1e6:.1f} MB, more than the {limit / 1e6:.1f} MB this file "
                        "can be; refused before writing (a wrong or hostile server)")
    free = folder.free_bytes()
    if total - done > free:
        raise CannotCreate(f"{folder.path}: {what} needs {(total - done) / 1e6:.1f} MB more ({site.name} announces "
                           f"{total / 1e6:.1f} MB) and only {free / 1e6:.1f} MB are free there; refused before writing: free some "
                           "space, or move the cache to a larger disk ($TORCH_HOME, $HF_HOME)")


def receive(response, fd: int, path, done: int, most: int | None, what: str, site: Site, progress) -> int:
    """Write the body to `fd`; returns the bytes the file holds. Cut off (DataError) past `most`."""
    while True:  # the socket's timeout (`stall_s`, set when it connected) bounds each read
        block = response.read1(CHUNK)
        if not block:
            return done
        if most is not None and done + len(block) > most:
            raise DataError(f"{what}: {site.name} sent more than the {most / 1e6:.1f} MB expected; cut off and refused "
                            "(a wrong or hostile server)")
        write_all(fd, block, path)
        done += len(block)
        progress.update(len(block))


def http_problem(status: int, site: Site) -> str:
    if status == 404:
        return "HTTP 404: not there" + (f"; check --mirror or ${MIRROR_ENV}" if site.mirror else "")
    if status in (401, 403):
        return f"HTTP {status}: the server refused access"
    return f"HTTP {status}"


def progress_class() -> type:
    """tqdm's progress bar on a terminal; elsewhere (a log, systemd, CI) its updates as log lines,
    one every few seconds and one at the end."""
    from tqdm import tqdm

    class LoggedProgress(tqdm):
        def __init__(self, *args, **kwargs):
            if not sys.stderr.isatty():
                kwargs.update(file=LogLines(), mininterval=5.0,
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
