"""Errors that end a run with one clear line and a documented exit code."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65  # EX_DATAERR
EXIT_NOINPUT = 66  # EX_NOINPUT
EXIT_CANTCREAT = 73  # EX_CANTCREAT
EXIT_IOERR = 74  # EX_IOERR
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_NOPERM = 77  # EX_NOPERM
EXIT_CONFIG = 78  # EX_CONFIG


class StreamerError(Exception):
    """An expected failure: its message is the whole story, no traceback needed. `kind`: a word for
    what failed, shown where the message may not be (a token-free /healthz: messages name hosts and
    paths); a class's default, or set on the instance (inputs.diagnosis: `refused`, `timed_out`, ...)."""

    exit_code = EXIT_FAILURE
    kind = "failed"


class UsageError(StreamerError):
    exit_code = EXIT_USAGE
    kind = "usage"


class DataError(StreamerError):
    """An input whose content is wrong: a corrupt file, weights that do not fit the model."""

    exit_code = EXIT_DATAERR
    kind = "bad_data"


class InputNotFound(StreamerError):
    exit_code = EXIT_NOINPUT
    kind = "not_found"


class CannotCreate(StreamerError):
    """An output (video, segments folder, export) that cannot be written where the user named it."""

    exit_code = EXIT_CANTCREAT
    kind = "cannot_create"


class WriteFailed(StreamerError):
    """An output that stopped taking data mid-run (a full disk, an I/O error); what was written is kept."""

    exit_code = EXIT_IOERR
    kind = "write_failed"


class ConfigError(StreamerError):
    exit_code = EXIT_CONFIG
    kind = "config"


class Unavailable(StreamerError):
    """A remote service (a download site, a mirror, a camera's stream) could not be reached or refused the request."""

    exit_code = EXIT_UNAVAILABLE
    kind = "unavailable"


class NotPermitted(StreamerError):
    """A remote service turned the credentials down (HTTP or RTSP 401/403)."""

    exit_code = EXIT_NOPERM
    kind = "not_permitted"
