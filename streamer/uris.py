"""URLs as they may be shown: every secret hidden. A leaf module (no imports from streamer), so
logging, config and control code can use it without pulling in OpenCV."""
from __future__ import annotations

import re

# a URL runs to whitespace (a password may hold quotes and brackets: `rtsp://admin:pa'ss@host` is one
# URL); quotes, brackets and punctuation that end it are taken for the sentence's, not the URL's
URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S*")
TRAILING = ".,;:!?'\"`)]}>"
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
    return URL.sub(_redact_match, text)


def redact_url(uri: str) -> str:
    """One URI, known to be one (a source's `uri`), with its secrets hidden as redact_uri hides
    them, but read whole: a password holding spaces or quotes is hidden too, where free text
    would end the URL there. Text without `://` is left as it is."""
    return _redact_one(uri) if "://" in uri else uri


def _redact_match(match: re.Match) -> str:
    url = match.group(0)
    kept = url.rstrip(TRAILING)  # never into the scheme's "://"
    return _redact_one(kept) + url[len(kept):]


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
