"""How much mvcap prints: one process-wide verbosity, set by the CLI's ``--quiet`` / ``--verbose``.

=========  =====================================================================================
QUIET      errors, warnings and each command's final summary; no progress bars
NORMAL     + progress bars and stage messages (the default)
VERBOSE    + per-frame lines, and third-party native logs (MediaPipe / TF Lite / absl) unfiltered
=========  =====================================================================================

The library's messages go through the ``mvcap`` logger (``logging.getLogger(__name__)`` in each
module); :func:`set_verbosity` sets its level (WARNING / INFO / DEBUG) and, once, a handler that
writes to the current ``sys.stderr``. Library functions keep their explicit ``progress=``
arguments; the CLI passes :func:`show_progress` to them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

__all__ = [
    "QUIET",
    "NORMAL",
    "VERBOSE",
    "set_verbosity",
    "verbosity",
    "show_progress",
    "filtered_native_stderr",
]

QUIET, NORMAL, VERBOSE = 0, 1, 2
_LOG_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
_level = NORMAL


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it per call)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property decides
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


def set_verbosity(level: int) -> None:
    """Set the process-wide verbosity (QUIET, NORMAL or VERBOSE) and the ``mvcap`` logger's level."""
    global _level
    if level not in _LOG_LEVELS:
        raise ValueError(f"verbosity must be QUIET (0), NORMAL (1) or VERBOSE (2), got {level!r}")
    _level = level
    logger = logging.getLogger("mvcap")
    logger.setLevel(_LOG_LEVELS[level])
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)  # with a handler here, logging's last-resort one stays silent
    if level == VERBOSE:
        # MediaPipe reads these when it starts; mvcap.detect only sets them when they are unset
        os.environ["GLOG_minloglevel"] = "0"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def verbosity() -> int:
    """The current verbosity: QUIET, NORMAL (default) or VERBOSE."""
    return _level


def show_progress(progress: bool = True) -> bool:
    """Whether progress bars are drawn: ``progress`` unless the verbosity is QUIET."""
    return progress and _level >= NORMAL


# Native log lines that say nothing to a user: absl/glog INFO and WARNING lines ("W0000 00:00:...
# inference_feedback_manager.cc:114] ..."), TF Lite's "INFO: Created TensorFlow Lite XNNPACK
# delegate" and absl's note about its own initialisation. E/F lines and anything else are kept.
_NOISE = re.compile(r"^(?:[IW]\d{4} |INFO: |WARNING: All log messages before absl::InitializeLog)")


@contextlib.contextmanager
def filtered_native_stderr():
    """Run a block with the process's stderr (file descriptor 2, which native libraries write to
    directly) captured, then write back every line except native INFO/WARNING chatter. A no-op
    at VERBOSE (show everything) or when stderr has no file descriptor."""
    if _level >= VERBOSE:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines() if not _NOISE.match(line)]
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode())
