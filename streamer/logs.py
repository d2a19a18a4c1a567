"""Logging to stderr, one line per event: plain text, JSON lines, or journald's priority prefixes.

A file name goes into a line as `shown_name` writes it: as it is, or, where it holds what would break
the line or forge another (a newline, control characters, bytes that are not UTF-8 from an old Samba
share or a camera's FTP upload), as a shell would quote it (`$'a\\nb.mp4'`, `$'caf\\xe9.png'`). Paths
(PurePath) given as arguments of a log call are shown so by every format.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) lines carry a `<N>` syslog
priority and no timestamp, since journald records both itself. Every line, whoever logged it (a
library too), has the secrets of the URLs it quotes hidden (uris.redact_uri).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import PurePath

from streamer.uris import redact_uri

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# What would break a line or forge one: C0/C1 controls (newline, carriage return, escape
# sequences), Unicode's line and paragraph separators and direction overrides, and the surrogate
# escapes Python gives the bytes of a name that are not UTF-8 (os.fsdecode).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(character: str) -> str:
    code = ord(character)
    if character in _NAMED:
        return _NAMED[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8, as os.fsdecode holds it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"  # U+0085 is not the byte 0x85


def one_line(text: str) -> str:
    """`text` with whatever would break or forge a log line escaped (`\\n`, `\\x1b`, a byte that
    is not UTF-8 as `\\xe9`): a message that must stay one line."""
    return _UNSAFE.sub(lambda match: _escape(match.group()), text)


def shown_name(path: str | os.PathLike) -> str:
    """A file name for a log line or a message: as it is when it is printable UTF-8, else quoted
    as bash's $'...' writes it (`$'caf\\xe9.png'`, `$'a\\nb.mp4'`): one line, and what a shell
    takes back as the same name."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not _UNSAFE.search(text):
        return text
    quoted = text.replace("\\", "\\\\").replace("'", "\\'")
    return "$'" + one_line(quoted) + "'"


class NamesShown(logging.Filter):
    """Paths among a record's arguments shown as shown_name writes them, in every format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, PurePath) for arg in record.args):
            record.args = tuple(shown_name(arg) if isinstance(arg, PurePath) else arg for arg in record.args)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_uri(record.getMessage()),
        }
        if record.exc_info:
            event["traceback"] = redact_uri(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False)


class RedactedFormatter(logging.Formatter):
    """A text format whose output has the secrets of every URL it quotes hidden."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_uri(super().format(record))


class JournalFormatter(RedactedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        record.priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        return super().format(record)


def stderr_is_journal() -> bool:
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def configure_logging(level: str, style: str) -> None:
    """Logging at `level` in `style` (runtime.log_level, runtime.log_format)."""
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    elif stderr_is_journal():
        handler.setFormatter(JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(RedactedFormatter(TEXT_FORMAT))
    handler.addFilter(NamesShown())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for chatty in ("httpx", "httpx2"):  # a line per HTTP request of a download: only at debug
        logging.getLogger(chatty).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    quiet_native_logs(level == "debug")


def quiet_native_logs(debug: bool) -> None:
    """OpenCV and the FFmpeg inside it print to stderr themselves, outside this format and its
    redaction (FFmpeg may quote a stream's URL): only in debug runs. Read by OpenCV when it loads
    and when its FFmpeg backend starts, so this is set before either where it can be."""
    os.environ["OPENCV_LOG_LEVEL"] = "INFO" if debug else "ERROR"
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "32" if debug else "-8"  # AV_LOG_INFO, AV_LOG_QUIET
    if "cv2" in sys.modules:  # already loaded: set its level directly (OpenCV 4 and 5 have it here)
        from cv2.utils import logging as cv2_logging

        cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_INFO if debug else cv2_logging.LOG_LEVEL_ERROR)
