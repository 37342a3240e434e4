"""The log format: JSON lines, `<N>` syslog priorities exactly when stdout is the journal, and the one
PHI-free verdict line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.logs import JsonFormatter, configure, fields, stream_is_journal, syslog_priority
from edge.publish.message import hashed_uid, verdict_log

# journald's rule for a stream's line (syslog_parse_priority without facility): "<" one digit 0-7 ">"
JOURNAL_PREFIX = re.compile(r"^<([0-7])>")
WARNING = 4  # journalctl -p warning: priorities 0..4


def journal_priority(line: str, default: int = 6) -> tuple[int, str]:
    """What journald makes of one stdout line: its priority (the unit's SyslogLevel=info without a
    prefix) and the message it keeps."""
    found = JOURNAL_PREFIX.match(line)
    if found is None:
        return default, line
    return int(found.group(1)), line[found.end() :]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() changes process-wide state; put it back for the other tests."""
    import sys
    import threading

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    quiet = logging.getLogger("pynetdicom").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.getLogger("pynetdicom").setLevel(quiet)
    logging.captureWarnings(False)


def record(level: int, message: str = "m", **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("edge.test", level, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(r, key, value)
    return r


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (35, 4),  # between warning and error: a warning
        (5, 7),  # below debug
        (60, 2),
    ],
)
def test_levels_map_to_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_a_line_is_json_with_its_fields_and_optionally_the_priority_in_front() -> None:
    plain = JsonFormatter().format(record(logging.WARNING, "hello", fields={"reason": "tls", "level": "x"}))
    entry = json.loads(plain)
    assert entry["level"] == "warning" and entry["message"] == "hello" and entry["reason"] == "tls"
    assert entry["logger"] == "edge.test" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    prefixed = JsonFormatter(prefix=True).format(record(logging.ERROR, "bad"))
    assert prefixed.startswith("<3>{") and json.loads(prefixed[3:])["level"] == "error"
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        failed = record(logging.CRITICAL, "crash", exc_info=sys.exc_info())
    line = JsonFormatter(prefix=True).format(failed)
    assert "\n" not in line and line.startswith("<2>")  # one line: journald keeps it as one entry
    assert "boom" in json.loads(line[3:])["exception"]


def test_stdout_is_the_journal_only_when_journal_stream_names_its_device_and_inode(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream, os.fdopen(read_end) as other:
        pipe = os.fstat(write_end)
        assert stream_is_journal(f"{pipe.st_dev}:{pipe.st_ino}", stream)
        with (tmp_path / "file").open("w") as unrelated:  # a child's own stdout: the variable, not the stream
            assert not stream_is_journal(f"{pipe.st_dev}:{pipe.st_ino}", unrelated)
        assert not stream_is_journal(None, stream) and not stream_is_journal("", stream)
        assert not stream_is_journal("garbage", stream) and not stream_is_journal("1:2:3", stream)
        assert not stream_is_journal(f"{pipe.st_dev}:{pipe.st_ino}", io.StringIO())  # no descriptor
        del other


@pytest.mark.usefixtures("restore_logging")
def test_configure_prefixes_on_the_journal_stream_and_not_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.log"
    with path.open("w") as stream:
        status = os.fstat(stream.fileno())
        for journal in (True, False):
            if journal:
                monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
            else:
                monkeypatch.delenv("JOURNAL_STREAM", raising=False)
            configure(stream=stream)
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
                logging.getLogger("edge.test").log(level, "journal %s level %s", journal, level)
            logging.getLogger("pynetdicom.acse").info("Rejecting Association")  # quietened: adds nothing
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("a library's warning", UserWarning, stacklevel=1)  # as JSON, not on stderr
            stream.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * 5  # INFO and worse (4) and the warning, twice; no DEBUG, no pynetdicom line
    journal_lines, plain_lines = lines[:5], lines[5:]
    assert all(JOURNAL_PREFIX.match(line) for line in journal_lines)
    assert not any(line.startswith("<") for line in plain_lines)
    for line in plain_lines:
        json.loads(line)
    # what `journalctl -p warning` would show of the journal's lines: warnings and worse, every one of them
    parsed = [(journal_priority(line), line) for line in journal_lines]
    entries = [(priority, json.loads(message)) for (priority, message), _ in parsed]
    shown = [entry for priority, entry in entries if priority <= WARNING]
    assert [e["level"] for e in shown] == ["warning", "error", "critical", "warning"]
    assert [e["level"] for p, e in entries if p > WARNING] == ["info"]
    assert shown[-1]["logger"] == "py.warnings" and "a library's warning" in shown[-1]["message"]
    assert all(p == {"critical": 2, "error": 3, "warning": 4, "info": 6}[e["level"]] for p, e in entries)


def test_fields_helper() -> None:
    assert fields(view="ap") == {"fields": {"view": "ap"}}


def test_the_verdict_line_has_the_facts_and_no_uid_or_patient_data() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345"
    document = {
        "verdict": "fail",
        "reason_code": "",
        "view": {"judged": "ap"},
        "failed": [{"item": "upper_coverage", "title": "Upper coverage", "message": "T12 cut off"}],
        "image": {"sop_instance_uid": uid},
        "versions": {"model": "lumbar-resunet 0.2.0", "engine": "x", "backend": "onnxruntime"},
        "timings_ms": {"decode": 12.04, "infer": 80.0, "total": 101.3},
        "exposure": {"exposure_index": 250.0, "target_exposure_index": 300.0, "deviation_index": -0.79},
        "degraded": False,
    }
    message, facts = verdict_log(
        verdict=document, message_id="jetson7-0001", stage_seconds={"receive": 0.0291, "queue": 0.001}, probe=True
    )
    assert message == (
        "verdict fail; view ap; failed upper_coverage; EI 250 DI -0.79; judged in 101 ms;"
        " model lumbar-resunet 0.2.0; probe"
    )
    assert facts["sop_instance_uid"] == hashed_uid(uid) and uid not in json.dumps(facts) + message
    assert facts["failed"] == ["upper_coverage"] and facts["view"] == "ap" and facts["probe"] is True
    assert (facts["exposure_index"], facts["target_exposure_index"], facts["deviation_index"]) == (250.0, 300.0, -0.79)
    assert facts["timings_ms"] == {"receive": 29.1, "queue": 1.0, "decode": 12.0, "infer": 80.0, "total": 101.3}
    assert facts["model"] == "lumbar-resunet 0.2.0" and facts["message_id"] == "jetson7-0001"
    assert "T12 cut off" not in json.dumps(facts)  # item ids, not the image's texts
    rejected: dict[str, object] = {
        "verdict": "rejected",
        "reason_code": "undecodable",
        "view": None,
        "failed": [],
        "image": {},
        "versions": {},
        "timings_ms": {},
        "exposure": None,
    }
    message, facts = verdict_log(verdict=rejected, message_id="d-2", stage_seconds={}, probe=False)
    assert message == "verdict rejected; view unknown; reason undecodable; model unknown"
    assert facts["sop_instance_uid"] == "" and facts["exposure_index"] is None
