"""The spool: every received dataset, byte for byte, on disk before the modality hears "success".

An entry is written to a temporary name, fsync'd, renamed into place and the directory fsync'd, so
after a crash an entry is either whole or absent. Entries are named so that sorting them is arrival
order; one is removed only after its verdict is in the outbox.

Every judging of an entry is counted in a small file beside it (`.<entry>.attempts`) that is removed
when the judging ends, in whatever way: a count left at start-up says how many times judging that
entry ended the daemon instead (a poison pill), and the service quarantines it after a few. Entries
are the patient's images: the spool is 0700 and its files 0600; quarantined ones are few and expire.

An `Arrival` carries a dataset from the receiver to the worker. While its spool write is being made
durable it also carries the bytes, so the worker can start judging at once instead of waiting for
the fsync; the worker commits the verdict only once the entry is durable (`wait_spooled`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Final

PROBE_SUFFIX: Final = ".probe.dcm"
ATTEMPTS_SUFFIX: Final = ".attempts"
# Poison pills kept for a person to look at (they hold patient data): the newest few, for a week.
QUARANTINE_MAX_FILES: Final = 10
QUARANTINE_MAX_AGE_S: Final = 7 * 24 * 3600


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
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.root = root
        self.quarantine_dir = root / "quarantine"
        self._counter = itertools.count()
        self._lock = threading.Lock()
        for leftover in root.glob(".*.partial"):  # a write that a crash interrupted: never acknowledged
            leftover.unlink()
        legacy = root / "failed"  # where earlier versions left images they could not judge: judge them now
        if legacy.is_dir():
            for entry in legacy.glob("*.dcm"):
                os.replace(entry, root / entry.name)
            with contextlib.suppress(OSError):
                legacy.rmdir()
        for counter in root.glob(f".*{ATTEMPTS_SUFFIX}"):  # for an entry that was never acknowledged
            if not (root / counter.name[1 : -len(ATTEMPTS_SUFFIX)]).exists():
                counter.unlink()

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
        try:
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, entry)
        except OSError:
            temporary.unlink(missing_ok=True)  # a full disk keeps no half-written image
            raise
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def pending(self) -> list[Path]:
        """Entries not yet judged and published, oldest first (what a restart processes first)."""
        return sorted(p for p in self.root.glob("*.dcm") if not p.name.startswith("."))

    def _counter_of(self, entry: Path) -> Path:
        return entry.with_name(f".{entry.name}{ATTEMPTS_SUFFIX}")

    def attempts(self, entry: Path) -> int:
        """How many judgings of `entry` began and never ended (each one ended the daemon)."""
        try:
            return int(self._counter_of(entry).read_text() or 0)
        except (OSError, ValueError):
            return 0

    def begin_attempt(self, entry: Path) -> int:
        """Count a judging of `entry` that is starting; the count, this one included. Not fsync'd: what
        it guards against is the process dying, and the page cache outlives the process."""
        count = self.attempts(entry) + 1
        self._counter_of(entry).write_text(str(count))
        return count

    def end_attempt(self, entry: Path) -> None:
        """The judging ended (whatever its verdict): the entry is not a poison pill."""
        self._counter_of(entry).unlink(missing_ok=True)

    def remove(self, entry: Path) -> None:
        entry.unlink(missing_ok=True)
        self.end_attempt(entry)

    def quarantine(self, entry: Path) -> Path:
        """Set a poison pill aside (0600 in a 0700 folder) and drop the oldest beyond
        QUARANTINE_MAX_FILES or QUARANTINE_MAX_AGE_S; where it went."""
        self.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        target = self.quarantine_dir / entry.name
        os.replace(entry, target)
        os.chmod(target, 0o600)  # an entry an earlier version wrote may be 0644
        self.end_attempt(entry)
        kept = sorted(self.quarantine_dir.glob("*.dcm"), key=lambda p: p.stat().st_mtime, reverse=True)
        now = time.time()
        for i, old in enumerate(kept):
            if i >= QUARANTINE_MAX_FILES or now - old.stat().st_mtime > QUARANTINE_MAX_AGE_S:
                old.unlink(missing_ok=True)
        return target
