"""URLs as they may be shown: every secret hidden. A leaf module (no imports from streamer), so
logging, config and control code can use it without pulling in OpenCV."""
from __future__ import annotations

import re

# a URL runs to whitespace or a quote; punctuation that ends a sentence around it is not part of it
URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s'\"<>`]*[^\s'\"<>`.,;:)\]}])?")
# path parameters that carry credentials on DVRs and HTTP cameras: /user=admin&password=...&channel=1
SECRET_KEY = re.compile(r"user|usr|login|account|pass|pwd|token|key|secret|auth|sig|session|sid|cred|code", re.IGNORECASE)
PAIR = re.compile(r"([^=&;/?#]+)=([^&;/?#]*)")
HIDDEN = "***"


def redact_uri(text: str) -> str:
    """Every URL in `text` with its secrets hidden; the rest of the text as it is.

    Hidden: the user-info (`rtsp://user:pass@host` -> `rtsp://***@host`, up to the URL's last '@', so
    a password holding '@', ':', '/', '?' or '#' unescaped is hidden whole); every query value
    (`?token=abc&channel=1` -> `?token=***&channel=***`) and a query without pairs; a fragment; and
    the values of credential-looking `key=value` path parameters. Works on URIs and on messages
    that quote one.
    """
    return URL.sub(lambda match: _redact_one(match.group(0)), text)


def _redact_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = HIDDEN + rest[rest.rindex("@"):]
    rest, hash_, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    rest = PAIR.sub(lambda pair: f"{pair.group(1)}={HIDDEN}" if SECRET_KEY.search(pair.group(1)) else pair.group(0), rest)
    if query:
        query = PAIR.sub(lambda pair: f"{pair.group(1)}={HIDDEN}", query) if "=" in query else HIDDEN
    return f"{scheme}://{rest}{question}{query}{hash_}{HIDDEN if fragment else ''}"
