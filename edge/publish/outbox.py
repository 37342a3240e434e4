"""The outbox: verdicts waiting for the broker's acknowledgement, in SQLite (WAL, synchronous=FULL).

A verdict is committed here before its spool entry is deleted, and leaves only when the broker has
acknowledged it (QoS 1 PUBACK), so a broker outage, a restart or a power cut loses nothing. Rows go out
in insertion order; each carries a unique message id, so a consumer can drop the duplicate that
at-least-once delivery may produce after a reconnect.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Message:
    row: int
    message_id: str
    topic: str
    payload: bytes
    created_unix: float
    received_unix: float | None  # when the image's first byte arrived (end-to-end latency); None if unknown


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " row INTEGER PRIMARY KEY AUTOINCREMENT,"
            " message_id TEXT NOT NULL UNIQUE,"
            " topic TEXT NOT NULL,"
            " payload BLOB NOT NULL,"
            " created_unix REAL NOT NULL,"
            " received_unix REAL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "received_unix" not in columns:  # an outbox written by an older edge-qc: its rows keep NULL
            self._db.execute("ALTER TABLE outbox ADD COLUMN received_unix REAL")

    def put(self, topic: str, payload: bytes, message_id: str, received_unix: float | None = None) -> None:
        """Commit one message durably; a message id already queued is ignored (idempotent replay)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, topic, payload, created_unix, received_unix)"
                " VALUES (?, ?, ?, ?, ?)",
                (message_id, topic, payload, time.time(), received_unix),
            )

    def pending(self, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT row, message_id, topic, payload, created_unix, received_unix FROM outbox ORDER BY row LIMIT ?",
                (limit,),
            ).fetchall()
        return [Message(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def remove(self, row: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE row = ?", (row,))

    def depth(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
