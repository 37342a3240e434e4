"""The verdict history on the device: one PHI-free row per committed verdict, in SQLite (WAL).

Spool entries and outbox rows go once the broker has a verdict, so without this nothing on the device
says what happened in a room last Tuesday. `edge-qc report` (edge.report) reads it. A row holds what
reject and exposure analysis need (AAPM TG-305's data elements, as far as edge-qc knows them) and
nothing that names a patient or an image: no patient name, ID or birth date, no accession number, no
UID (the message id is the device's name and the arrival time in nanoseconds).

Bounded by age (`history.retention_days`, by the time the verdict was committed on this device's
clock, not the modality's) and by rows (`history.max_rows`, the oldest first): pruned at start and then
at most hourly, on a write. A history that cannot be opened or written is logged and never holds up a
verdict: the outbox, not the history, is what delivery depends on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from edge.config import Config

log = logging.getLogger("edge.history")
PRUNE_EVERY_S: Final = 3600.0
SCHEMA_VERSION: Final = 1
# Deliveries whose row is not written yet (the broker can acknowledge before the row is in): kept this many.
PENDING_DELIVERIES: Final = 256


@dataclass(frozen=True)
class HistoryRow:
    """One verdict as the history keeps it (the table's columns, in order)."""

    message_id: str  # the MQTT message id: <device>-<arrival ns>-<counter>; the same when a verdict is replayed
    committed_unix: float  # when the verdict was committed to the outbox (this device's clock)
    received_unix: float | None  # when the image's first byte arrived
    acquired: str | None  # acquisition date/time as the modality recorded it (ISO 8601, its local time)
    station: str | None  # Station Name
    view: str  # ap / lateral / oblique as judged; "unknown" (always for a rejected image, as in the metrics)
    verdict: str  # pass / fail / indeterminate / rejected
    reason_code: str  # why indeterminate or rejected ("" otherwise)
    failed: tuple[str, ...]  # item ids
    warned: tuple[str, ...]
    ei: float | None
    ei_target: float | None
    di: float | None
    kvp: float | None
    mas: float | None
    degraded: bool
    probe: bool  # a health probe's image: kept, and left out of every report
    model: str
    standard: str
    site: str
    room: str
    device: str
    end_to_end_s: float | None = None  # first byte in to the broker's acknowledgement; None until acknowledged


COLUMNS: Final = tuple(f.name for f in fields(HistoryRow))
_TYPES: Final = {
    "message_id": "TEXT NOT NULL UNIQUE",
    "committed_unix": "REAL NOT NULL",
    "received_unix": "REAL",
    "acquired": "TEXT",
    "station": "TEXT",
    "view": "TEXT NOT NULL",
    "verdict": "TEXT NOT NULL",
    "reason_code": "TEXT NOT NULL",
    "failed": "TEXT NOT NULL",  # a JSON list
    "warned": "TEXT NOT NULL",
    "ei": "REAL",
    "ei_target": "REAL",
    "di": "REAL",
    "kvp": "REAL",
    "mas": "REAL",
    "degraded": "INTEGER NOT NULL",
    "probe": "INTEGER NOT NULL",
    "model": "TEXT NOT NULL",
    "standard": "TEXT NOT NULL",
    "site": "TEXT NOT NULL",
    "room": "TEXT NOT NULL",
    "device": "TEXT NOT NULL",
    "end_to_end_s": "REAL",
}
_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS verdicts (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{name} {_TYPES[name]}" for name in COLUMNS)
    + ")"
)


def history_path(config: Config) -> Path:
    """Where the history is: `history.path`, else history.sqlite beside the outbox."""
    return config.history.path or config.service.outbox_path.with_name("history.sqlite")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def row_of(
    verdict: Mapping[str, Any],
    *,
    message_id: str,
    committed_unix: float,
    received_unix: float | None,
    probe: bool,
    site: str,
    room: str,
    device: str,
) -> HistoryRow:
    """The history row of one verdict document (`Verdict.as_dict()`): its PHI-free facts only, picked
    by name (never a copy of the document, so a field added to the verdict never reaches the history
    unseen)."""
    view = (verdict.get("view") or {}).get("judged") or "unknown"
    exposure = verdict.get("exposure") or {}
    acquisition = verdict.get("acquisition") or {}
    versions = verdict.get("versions") or {}
    return HistoryRow(
        message_id=message_id,
        committed_unix=committed_unix,
        received_unix=received_unix,
        acquired=acquisition.get("datetime"),
        station=acquisition.get("station_name"),
        view=str(view),
        verdict=str(verdict.get("verdict", "")),
        reason_code=str(verdict.get("reason_code", "")),
        failed=tuple(str(f.get("item")) for f in verdict.get("failed", [])),
        warned=tuple(str(w.get("item")) for w in verdict.get("warnings", [])),
        ei=_number(exposure.get("exposure_index")),
        ei_target=_number(exposure.get("target_exposure_index")),
        di=_number(exposure.get("deviation_index")),
        kvp=_number(acquisition.get("kvp")),
        mas=_number(acquisition.get("exposure_mas")),
        degraded=bool(verdict.get("degraded", False)),
        probe=probe,
        model=str(versions.get("model", "")),
        standard=str(versions.get("standard", "")),
        site=site,
        room=room,
        device=device,
    )


def _stored(row: HistoryRow) -> tuple[object, ...]:
    values = list(astuple(row))
    for name in ("failed", "warned"):
        values[COLUMNS.index(name)] = json.dumps(list(getattr(row, name)))
    for name in ("degraded", "probe"):
        values[COLUMNS.index(name)] = int(getattr(row, name))
    return tuple(values)


def _loaded(values: Iterable[Any]) -> HistoryRow:
    found = dict(zip(COLUMNS, values, strict=True))
    for name in ("failed", "warned"):
        found[name] = tuple(json.loads(found[name]))
    for name in ("degraded", "probe"):
        found[name] = bool(found[name])
    return HistoryRow(**found)


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a crash of the process, not of power
    db.execute(_CREATE)
    db.execute("CREATE INDEX IF NOT EXISTS verdicts_committed ON verdicts (committed_unix)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db


class History:
    """The device's verdict history: `record` after each outbox commit (the inference thread),
    `delivered` when the broker acknowledges (the publisher's thread), `rows` for reports."""

    def __init__(
        self,
        path: Path,
        retention_days: int,
        max_rows: int,
        names: tuple[str, str, str] = ("", "", ""),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.site, self.room, self.device = names
        self.retention_s = retention_days * 86400.0
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._db = _open(path)
        self._pending: dict[str, float] = {}
        self._pruned_at = 0.0
        self.prune()

    @classmethod
    def open(cls, config: Config) -> History | None:
        """The site's history, pruned; None (logged) where it cannot be opened: the daemon judges and
        delivers without it."""
        path, mqtt, kept = history_path(config), config.mqtt, config.history
        try:
            return cls(path, kept.retention_days, kept.max_rows, (mqtt.site, mqtt.room, mqtt.device))
        except (sqlite3.Error, OSError) as exc:
            log.error("history: cannot open %s (%s); verdicts are delivered but not kept for reports", path, exc)
            return None

    def prune(self) -> int:
        """Remove the rows older than the retention and the oldest beyond max_rows; how many went."""
        now = self._clock()
        with self._lock:
            self._pruned_at = now
            old = self._db.execute("DELETE FROM verdicts WHERE committed_unix < ?", (now - self.retention_s,))
            over = self._db.execute(
                "DELETE FROM verdicts WHERE id IN (SELECT id FROM verdicts ORDER BY committed_unix DESC, id DESC"
                " LIMIT -1 OFFSET ?)",
                (self.max_rows,),
            )
            removed = old.rowcount + over.rowcount
        if removed:
            log.info("history: %d rows past retention removed", removed)
        return removed

    def keep(self, verdict: Mapping[str, Any], message_id: str, received_unix: float | None, probe: bool) -> bool:
        """Keep one committed verdict document; False when it could not be (logged, never raised: nothing
        waits on it; the daemon counts it)."""
        try:
            row = row_of(
                verdict,
                message_id=message_id,
                committed_unix=self._clock(),
                received_unix=received_unix,
                probe=probe,
                site=self.site,
                room=self.room,
                device=self.device,
            )
            self.record(row)
            return True
        except (sqlite3.Error, OSError) as exc:
            log.warning("history: verdict %s not kept (%s)", message_id, exc)
        except Exception:  # a fault of this code: the verdict goes out all the same
            log.exception("history: verdict %s not kept", message_id)
        return False

    def record(self, row: HistoryRow) -> None:
        """Keep one row (a replayed verdict, same message id, is kept once); prune when an hour has passed."""
        if self._clock() - self._pruned_at >= PRUNE_EVERY_S:
            self.prune()
        with self._lock:
            seconds = self._pending.pop(row.message_id, None)
            if seconds is not None and row.end_to_end_s is None:
                row = replace(row, end_to_end_s=seconds)
            placeholders = ", ".join("?" for _ in COLUMNS)
            self._db.execute(
                f"INSERT OR IGNORE INTO verdicts ({', '.join(COLUMNS)}) VALUES ({placeholders})", _stored(row)
            )

    def delivered(self, message_id: str, end_to_end_s: float) -> None:
        """The broker acknowledged a verdict: its end-to-end time (first byte in to acknowledgement).
        A failure is logged, never raised."""
        try:
            self._delivered(message_id, end_to_end_s)
        except (sqlite3.Error, OSError) as exc:
            log.warning("history: delivery of %s not noted (%s)", message_id, exc)

    def _delivered(self, message_id: str, end_to_end_s: float) -> None:
        with self._lock:
            done = self._db.execute(
                "UPDATE verdicts SET end_to_end_s = ? WHERE message_id = ? AND end_to_end_s IS NULL",
                (end_to_end_s, message_id),
            )
            if done.rowcount == 0:  # acknowledged before its row was written: it is written next
                self._pending[message_id] = end_to_end_s
                while len(self._pending) > PENDING_DELIVERIES:
                    self._pending.pop(next(iter(self._pending)))

    def rows(self, since_unix: float | None = None, until_unix: float | None = None) -> list[HistoryRow]:
        return read_rows(self._db, since_unix, until_unix)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def read_rows(
    db: sqlite3.Connection, since_unix: float | None = None, until_unix: float | None = None
) -> list[HistoryRow]:
    """Rows committed in [since, until), oldest first."""
    query = f"SELECT {', '.join(COLUMNS)} FROM verdicts WHERE committed_unix >= ? AND committed_unix < ?"
    bounds = (float("-inf") if since_unix is None else since_unix, float("inf") if until_unix is None else until_unix)
    return [_loaded(values) for values in db.execute(query + " ORDER BY committed_unix, id", bounds)]


def open_for_reading(path: Path) -> sqlite3.Connection:
    """The history read-only (a report never changes it, and may run while the daemon writes it)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
