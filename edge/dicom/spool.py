"""The spool: every received dataset, byte for byte, on disk before the modality hears "success".

An entry is written to a temporary name, fsync'd, renamed into place and the directory fsync'd, so
after a crash an entry is either whole or absent. Entries are named so that sorting them is arrival
order; one is removed only after its verdict is in the outbox.

An `Arrival` carries a dataset from the receiver to the worker. While its spool write is being made
durable it also carries the bytes, so the worker can start judging at once instead of waiting for
the fsync; the worker commits the verdict only once the entry is durable (`wait_spooled`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Final

PROBE_SUFFIX: Final = ".probe.dcm"


class Arrival:
    """A received dataset: its spool entry, its bytes while the spool write is under way (None once
    the entry is on disk: the worker then reads the entry, so the queue never holds images in memory),
    whether the entry became durable, and how long receiving and spooling took (seconds; unknown for
    an entry recovered after a restart)."""

    def __init__(self, entry: Path, data: bytes | None, seconds: dict[str, float] | None = None) -> None:
        self.entry = entry
        self.data = data
        self.seconds: dict[str, float] = dict(seconds or {})  # "receive", "spool", then "queue"
        self.queued_at = 0.0  # perf_counter() when it joined the worker's queue
        self.spooled = data is None  # an arrival without bytes is an entry already on disk
        self._settled = threading.Event()
        if data is None:
            self._settled.set()

    @property
    def probe(self) -> bool:
        """A health probe's image (the entry's name records it, so it survives a restart)."""
        return self.entry.name.endswith(PROBE_SUFFIX)

    @property
    def received_unix(self) -> float:
        """When the first byte of the dataset arrived: the entry's name records it."""
        return int(self.entry.stem.split("-")[0]) / 1e9

    def settle(self, spooled: bool) -> None:
        self.spooled = spooled
        self.data = None
        self._settled.set()

    def wait_spooled(self) -> bool:
        """Block until the spool write ended; True when the entry is durable (the modality was told
        "success"), False when it failed (the modality was told "out of resources" and will resend)."""
        self._settled.wait()
        return self.spooled


class Spool:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._counter = itertools.count()
        self._lock = threading.Lock()
        for leftover in root.glob(".*.partial"):  # a write that a crash interrupted: never acknowledged
            leftover.unlink()

    def reserve(self, received_ns: int | None = None, probe: bool = False) -> Path:
        """The name of the next entry: when its first byte arrived (ns since the epoch; default now),
        then a counter, so sorting is arrival order and the time survives a restart; a probe's entry
        says so."""
        suffix = PROBE_SUFFIX if probe else ".dcm"
        with self._lock:
            return self.root / f"{received_ns or time.time_ns():020d}-{next(self._counter):06d}{suffix}"

    def commit(self, entry: Path, data: bytes) -> None:
        """Write `data` as `entry`, durably: after a crash the entry is whole or absent."""
        temporary = entry.with_name(f".{entry.name}.partial")
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, entry)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def pending(self) -> list[Path]:
        """Entries not yet judged and published, oldest first (what a restart processes first)."""
        return sorted(p for p in self.root.glob("*.dcm") if not p.name.startswith("."))

    def remove(self, entry: Path) -> None:
        entry.unlink(missing_ok=True)
