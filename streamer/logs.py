"""Logging to stderr, one line per event: plain text, JSON lines, or journald's priority prefixes.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) lines carry a `<N>` syslog
priority and no timestamp, since journald records both itself.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["traceback"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
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


def configure_logging(level: str = "info", style: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    elif stderr_is_journal():
        handler.setFormatter(JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for chatty in ("httpx", "httpx2"):  # a line per HTTP request of a download: only at debug
        logging.getLogger(chatty).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
