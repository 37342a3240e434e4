"""The spool: every received dataset, byte for byte, on disk before the modality hears "success".

An entry is written to a temporary name, fsync'd, renamed into place and the directory fsync'd, so
after a crash an entry is either whole or absent. Entries are named so that sorting them is arrival
order; one is removed only after its verdict is in the outbox.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path


class Spool:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._counter = itertools.count()
        self._lock = threading.Lock()
        for leftover in root.glob(".*.partial"):  # a write that a crash interrupted: never acknowledged
            leftover.unlink()

    def write(self, data: bytes) -> Path:
        with self._lock:
            name = f"{time.time_ns():020d}-{next(self._counter):06d}.dcm"
        temporary = self.root / f".{name}.partial"
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = self.root / name
        os.replace(temporary, final)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final

    def pending(self) -> list[Path]:
        """Entries not yet judged and published, oldest first (what a restart processes first)."""
        return sorted(p for p in self.root.glob("*.dcm") if not p.name.startswith("."))

    def remove(self, entry: Path) -> None:
        entry.unlink(missing_ok=True)
