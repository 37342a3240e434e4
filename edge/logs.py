"""Structured logs: one JSON object per line on stdout (journald keeps them; no patient data in them).

Under systemd, stdout is a stream into the journal, and journald reads a `<N>` at the start of a line
as that line's syslog priority (sd-daemon(3): SD_ERR is "<3>"; the unit's SyslogLevelPrefix=, on by
default), strips it and keeps the rest as the message. So when stdout is the journal every line is
`<N>{json}`: `journalctl -p warning` then shows warnings and worse, and `journalctl -o cat` shows the
JSON. Anywhere else (a terminal, a pipe, a test bed) the lines are plain JSON, for `jq`. "Stdout is the
journal" is decided as systemd.exec(5) says: $JOURNAL_STREAM names the device and inode of the stream
systemd connected, and it must be the one stdout is (a child of the service with its own stdout
inherits the variable, not the stream).

A line's own facts go in `extra={"fields": {...}}` and appear as top-level keys beside time, level,
logger and message (which they never replace).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, TextIO

# syslog priorities (sd-daemon(3) SD_CRIT .. SD_DEBUG) of Python's levels; journald takes one digit only
PRIORITIES: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
QUIET_LIBRARIES: Final = ("pynetdicom",)  # their INFO lines ("Rejecting Association") say less than ours


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level; a level between two named ones takes the lower's
    (a custom level 35 is a warning, not an error)."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def stream_is_journal(journal_stream: str | None, stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd set up ($JOURNAL_STREAM = "DEVICE:INODE")."""
    if not journal_stream:
        return False
    try:
        device, inode = (int(part) for part in journal_stream.split(":"))
        status = os.fstat(stream.fileno())
    except (ValueError, OSError):  # malformed, or a stream with no file descriptor
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is escaped into it); with `prefix`, the
    record's syslog priority in front as `<N>`."""

    def __init__(self, prefix: bool = False) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(entry, default=str)
        return f"<{syslog_priority(record.levelno)}>{text}" if self.prefix else text


def fields(**values: object) -> dict[str, object]:
    """`extra=` for a log call whose facts should be keys of its JSON line: log.info(..., extra=fields(view="ap"))."""
    return {"fields": values}


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    logging.getLogger("edge").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("edge").critical(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def configure(level: int = logging.INFO, stream: TextIO | None = None, prefix: bool | None = None) -> None:
    """Every line the process writes through logging as JSON on `stream` (stdout): Python warnings and
    uncaught exceptions too, so nothing reaches the journal as a bare line. `prefix` None: `<N>`
    priorities exactly when the stream is the journal."""
    out = stream if stream is not None else sys.stdout
    if prefix is None:
        prefix = stream_is_journal(os.environ.get("JOURNAL_STREAM"), out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(prefix=prefix))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
