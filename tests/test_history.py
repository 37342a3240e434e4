"""The verdict history on the device (edge.history): one PHI-free row per verdict, bounded by age and
by rows, kept across a reopen, never in the way of a verdict."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pydicom
import pytest

from edge.config import Config, ConfigError, HistoryConfig, ServiceConfig, parse_config
from edge.history import COLUMNS, History, HistoryRow, history_path, open_for_reading, read_rows, row_of
from edge.pipeline import Pipeline
from tests.conftest import history_row
from tests.qc.conftest import fault_case, write_case

DAY = 86400.0
NOW = 1_780_000_000.0  # a fixed clock: no test here reads the wall clock

# Every column the history keeps. A new one fails this test until someone has asked whether it can
# identify a patient (no name, ID, birth date, accession number or UID may ever be one).
PHI_FREE_COLUMNS = (
    "message_id", "committed_unix", "received_unix", "acquired", "station", "view", "verdict", "reason_code",
    "failed", "warned", "ei", "ei_target", "di", "kvp", "mas", "degraded", "probe", "model", "standard", "site",
    "room", "device", "end_to_end_s",
)  # fmt: skip


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(n: int, committed_unix: float, **changes: object) -> HistoryRow:
    """A failed AP with every acquisition fact recorded."""
    recorded: dict[str, object] = {
        "received_unix": committed_unix - 0.5,
        "acquired": "2026-05-28T10:00:00",
        "verdict": "fail",
        "failed": ("upper_coverage",),
        "warned": ("centring",),
        "ei": 310.0,
        "ei_target": 300.0,
        "di": 0.14,
        "kvp": 81.0,
        "mas": 12.5,
    }
    return history_row(f"jetson7-{n:020d}-000001", committed_unix, **{**recorded, **changes})


def open_history(path: Path, clock: Clock, retention_days: int = 400, max_rows: int = 1000) -> History:
    return History(path, retention_days, max_rows, ("h1", "xr2", "jetson7"), clock=clock)


def test_rows_survive_a_reopen_and_a_replayed_verdict_is_kept_once(tmp_path: Path) -> None:
    clock = Clock()
    history = open_history(tmp_path / "history.sqlite", clock)
    rows = [row(n, NOW - 3600 + n, view=view) for n, view in enumerate(("ap", "lateral", "oblique"))]
    for r in rows:
        history.record(r)
    history.record(dataclasses.replace(rows[0], verdict="pass"))  # the same message id again (a replay)
    history.close()
    reopened = open_history(tmp_path / "history.sqlite", clock)
    assert reopened.rows() == rows
    assert reopened.rows(since_unix=rows[1].committed_unix) == rows[1:]
    assert reopened.rows(until_unix=rows[1].committed_unix) == rows[:1]
    reopened.close()
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_older_than_the_retention_go_at_start_and_then_hourly(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "history.sqlite"
    history = open_history(path, clock, retention_days=30)
    history.record(row(1, NOW - 29 * DAY))
    history.record(row(2, NOW - 10 * DAY))
    with sqlite3.connect(path) as db:  # an old row, as a previous year's daemon would have left it
        db.execute("INSERT INTO verdicts (message_id, committed_unix, view, verdict, reason_code, failed, warned,"
                   " degraded, probe, model, standard, site, room, device) VALUES"
                   " ('old', ?, 'ap', 'pass', '', '[]', '[]', 0, 0, 'm', 's', 'h1', 'xr2', 'jetson7')",
                   (NOW - 31 * DAY,))  # fmt: skip
    history.close()
    reopened = open_history(path, clock, retention_days=30)  # start: pruned
    assert [r.message_id for r in reopened.rows()] == [row(1, 0).message_id, row(2, 0).message_id]
    clock.now += 2 * DAY  # row 1 is now 31 days old; the next write after an hour prunes it
    reopened.record(row(3, clock.now))
    assert [r.message_id for r in reopened.rows()] == [row(2, 0).message_id, row(3, 0).message_id]
    clock.now += 60  # within the hour: no second prune
    reopened.record(row(4, NOW - 40 * DAY))  # a late row already past retention stays until the next prune
    assert len(reopened.rows()) == 3
    clock.now += 3600
    reopened.record(row(5, clock.now))
    assert [r.message_id for r in reopened.rows()] == [row(n, 0).message_id for n in (2, 3, 5)]
    reopened.close()


def test_rows_beyond_max_rows_go_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "history.sqlite"
    history = open_history(path, clock, max_rows=3)
    for n in range(5):
        history.record(row(n, NOW - 100 + n))
    assert len(history.rows()) == 5  # bounded at start and hourly, not on every write
    assert history.prune() == 2
    assert [r.message_id for r in history.rows()] == [row(n, 0).message_id for n in (2, 3, 4)]
    history.close()
    assert len(open_history(path, clock, max_rows=2).rows()) == 2


def test_end_to_end_time_is_noted_whichever_comes_first(tmp_path: Path) -> None:
    history = open_history(tmp_path / "history.sqlite", Clock())
    first, second = row(1, NOW), row(2, NOW)
    history.record(first)
    history.delivered(first.message_id, 0.42)
    history.delivered(second.message_id, 0.37)  # the broker acknowledged before the row was written
    history.record(second)
    assert [r.end_to_end_s for r in history.rows()] == [0.42, 0.37]
    history.close()


def test_a_failing_history_is_logged_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    history = open_history(tmp_path / "history.sqlite", Clock())
    with caplog.at_level(logging.ERROR, logger="edge.history"):
        assert history.keep({"failed": ["not an item"]}, "jetson7-0", NOW, probe=False) is False  # malformed
    assert "not kept" in caplog.records[-1].getMessage() and history.rows() == []
    caplog.clear()
    history.close()  # every write now fails
    with caplog.at_level(logging.WARNING, logger="edge.history"):
        assert history.keep({"verdict": "pass"}, "jetson7-1", NOW, probe=False) is False
        history.delivered("jetson7-1", 0.5)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "not kept" in caplog.records[0].getMessage()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    config = dataclasses.replace(Config(), history=HistoryConfig(path=blocked / "history.sqlite"))
    with caplog.at_level(logging.ERROR, logger="edge.history"):
        assert History.open(config) is None
    assert "cannot open" in caplog.records[-1].getMessage()


def test_the_columns_are_the_reviewed_phi_free_ones_and_no_patient_data_reaches_the_file(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    assert COLUMNS == PHI_FREE_COLUMNS
    path = write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-778899", "19610203"
    ds.AccessionNumber, ds.Exposure = "ACC-55443", 16
    ds.save_as(path)
    verdict = pipeline.process(path).verdict.as_dict()
    history = open_history(tmp_path / "history.sqlite", Clock())
    history.keep(verdict, "jetson7-00000000000000000001-000001", NOW - 1, probe=False)
    kept = history.rows()
    history.close()
    assert len(kept) == 1 and kept[0].verdict == "fail" and kept[0].failed == ("upper_coverage",)
    assert (kept[0].station, kept[0].kvp, kept[0].mas) == ("PHANTOM", 80.0, 16.0)
    assert kept[0].acquired == verdict["acquisition"]["datetime"]
    assert kept[0].di == verdict["exposure"]["deviation_index"]
    assert (kept[0].site, kept[0].room, kept[0].device, kept[0].committed_unix) == ("h1", "xr2", "jetson7", NOW)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("history.sqlite*"))
    for private in ("Doe", "PID-778899", "19610203", "ACC-55443", ds.SOPInstanceUID, ds.StudyInstanceUID):
        assert private.encode() not in stored, private


def test_the_report_reads_without_writing(tmp_path: Path) -> None:
    history = open_history(tmp_path / "history.sqlite", Clock())
    history.record(row(1, NOW))
    db = open_for_reading(tmp_path / "history.sqlite")
    assert [r.message_id for r in read_rows(db)] == [row(1, 0).message_id]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM verdicts")
    db.close()
    history.close()
    with pytest.raises(FileNotFoundError):
        open_for_reading(tmp_path / "absent.sqlite")


def test_configuration_keys(tmp_path: Path) -> None:
    """[history]: its path beside the outbox by default, else relative to the configuration's folder;
    errors name the key."""
    assert history_path(Config()) == Path("/var/lib/edge-qc/history.sqlite")
    moved = dataclasses.replace(Config(), service=ServiceConfig(outbox_path=tmp_path / "state" / "outbox.sqlite"))
    assert history_path(moved) == tmp_path / "state" / "history.sqlite"
    config = parse_config({"history": {"path": "h/history.sqlite", "retention_days": 31, "max_rows": 5000}},
                          "site.toml", tmp_path)  # fmt: skip
    assert history_path(config) == tmp_path / "h" / "history.sqlite"
    assert (config.history.retention_days, config.history.max_rows, config.history.enabled) == (31, 5000, True)
    for bad, key in (
        ({"retention_days": 0}, "history.retention_days"),
        ({"retention_days": 3651}, "history.retention_days"),
        ({"max_rows": 10}, "history.max_rows"),
        ({"path": ""}, "history.path"),
        ({"enabled": "yes"}, "history.enabled"),
        ({"keep": 3}, "history.keep"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"history": bad}, "site.toml", tmp_path)


def test_row_of_takes_named_facts_only() -> None:
    """A rejected verdict's row: view unknown (as in the metrics), its reason, no items; a document's other
    fields (a patient's name, had one slipped in) never reach the row."""
    document: dict[str, object] = {
        "verdict": "rejected",
        "reason_code": "undecodable",
        "view": None,
        "failed": [],
        "warnings": [],
        "exposure": {"exposure_index": 250.0, "target_exposure_index": 300.0, "deviation_index": -0.79},
        "acquisition": {"datetime": "2026-05-28T10:00:00", "station_name": "XR2", "kvp": 77.0, "exposure_mas": None},
        "versions": {"model": "m", "standard": "s"},
        "degraded": True,
        "PatientName": "Doe^Jane",
    }
    kept = row_of(document, message_id="d-1", committed_unix=NOW, received_unix=None, probe=True,
                  site="h1", room="xr2", device="jetson7")  # fmt: skip
    assert (kept.view, kept.verdict, kept.reason_code) == ("unknown", "rejected", "undecodable")
    assert kept.failed == kept.warned == ()
    assert (kept.ei, kept.ei_target, kept.di, kept.kvp, kept.mas) == (250.0, 300.0, -0.79, 77.0, None)
    assert kept.degraded and kept.probe and "Doe" not in repr(kept)
