"""Source URIs as they may be shown: credentials hidden. A leaf module (no imports from streamer),
so logging, config and control code can use it without pulling in OpenCV."""
from __future__ import annotations

import re


def redact_uri(text: str) -> str:
    """Hide credentials in every URL of a text: `rtsp://user:pass@host/path` -> `rtsp://***@host/path`.

    The user-info part runs to the last '@' before the path, so passwords holding '@', ':' or
    percent escapes are hidden whole. Works on URIs and on error messages that quote one.
    """
    return re.sub(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@", r"\1***@", text)
