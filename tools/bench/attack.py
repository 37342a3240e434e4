"""python -m tools.bench attack: issue 15's hostile network and hostile files against `edge-qc serve`.

The appliance sits on a hospital network beside the X-ray unit: a port scan, a broken or hostile peer
or a crafted file must not lock the modality out, blow the memory limit or crash-loop the service.
Each attack gets a fresh daemon (tools.testbed) supervised the way the shipped unit is (MemoryMax=4G,
WatchdogSec=30, Restart=on-failure, RestartSec=5, emulated here: this bench runs without systemd),
attacks from 127.0.0.1 and meanwhile, from 127.0.0.2, a legitimate sender with an allowed AE title
tries one C-ECHO and one C-STORE of a good phantom AP image and waits for its verdict on MQTT.
Loopback only; every attack is bounded in time and count; every child process and socket is cleaned
up on the way out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from tools.testbed import Broker, Daemon, ToolMissingError, VerdictSubscriber, site_config, wait_for

ATTACKS: Final = (
    "one-byte",
    "drip",
    "idle-associations",
    "silent-connections",
    "pdu-bomb",
    "jpeg2000-bomb",
    "jpegls-bomb",
    "deflate-bomb",
    "poison-pill-at-start",
)
ATTACKER: Final = "127.0.0.1"  # also where the daemon listens
LEGIT: Final = "127.0.0.2"  # another loopback source address: per-address limits must not hit it
CALLED_AET: Final = "EDGEQC"
LEGIT_AET: Final = "MODALITY"
ATTACKER_AET: Final = "ATTACKER"  # allowed too: the bombs come from a sender the daemon trusts
LEGIT_CAP_S: Final = 20.0
SAMPLE_S: Final = 0.05
STOP_GRACE_S: Final = 15.0  # SIGTERM, then SIGKILL (the unit allows 90 s; a bench need not wait that long)
VERIFICATION: Final = "1.2.840.10008.1.1"
DX_PRESENTATION: Final = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT_LE: Final = "1.2.840.10008.1.2.1"
DEFLATED: Final = "1.2.840.10008.1.2.1.99"
JPEG2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEGLS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
BOMB_HEADER_SIZE: Final = 2048  # what the bombs' DICOM headers say (Rows, Columns; 16 bits)
J2K_BOMB_SIZE: Final = 60000  # what the JPEG 2000 codestream's SIZ says
JLS_BOMB_SIZE: Final = 65535  # what the JPEG-LS SOF55 says (16-bit fields)
DEFLATE_BOMB_BYTES: Final = 3_000_000_000  # zeros of Pixel Data, deflated to about 3 MB
PDU_NAMES: Final = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF", 7: "A-ABORT"}
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Options:
    only: tuple[str, ...] = ATTACKS
    duration_s: float = 30.0  # each attack's window (longer when the legitimate attempts take longer)
    json_path: Path | None = None
    out: Path | None = None  # keep daemon logs here (default: a temporary folder, removed)
    connections: int = 4  # one-byte and drip
    associations: int = 200
    silent: int = 200
    pdu_seconds: float = 20.0
    pill_wait_s: float = 120.0
    settle_s: float = 2.0  # from the attack taking hold to the legitimate attempts
    memory_max: int = 4 * 2**30  # MemoryMax=4G
    watchdog_s: float = 30.0  # WatchdogSec=30
    restart_s: float = 5.0  # RestartSec=5
    max_restarts: int = 8  # per attack: systemd would go on; a bench must stop


# ---------------------------------------------------------------- processes and memory


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the daemon's decode workers, if any), from /proc/*/task/*/children."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found += map(int, children)
            stack += map(int, children)
    return found


def resident(pids: list[int]) -> int:
    """Summed resident memory (VmRSS, read from statm) of `pids`, bytes; a process gone counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class MemoryBackstop:
    """A memory cgroup around the daemon with a hard limit above the emulated MemoryMax, so that a
    bomb growing faster than the 50 ms sampler can follow still cannot take this machine's memory.
    Best effort: without a writable memory cgroup (v1 or v2) the sampler alone bounds memory."""

    def __init__(self, limit: int) -> None:
        self.path: Path | None = None
        for path, limit_file in self._candidates():
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / limit_file).write_text(str(limit))
                self.path = path
                return
            except OSError:
                path.rmdir()

    @staticmethod
    def _candidates() -> list[tuple[Path, str]]:
        name = f"edgeqc-attack-{os.getpid()}"
        found = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, controllers, own = line.split(":", 2)
            if "memory" in controllers.split(","):
                found.append((Path("/sys/fs/cgroup/memory") / own.lstrip("/") / name, "memory.limit_in_bytes"))
            elif number == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
                found.append((Path("/sys/fs/cgroup") / own.lstrip("/") / name, "memory.max"))
        return found

    def add(self, pid: int) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Kill what is left in it (only this bench's daemons are there) and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            kill(left)
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.path.rmdir()
        self.path = None


class Unit:
    """`edge-qc serve` under an emulation of the shipped unit: MemoryMax (the summed resident memory of
    the daemon and its children above the limit: SIGKILL), WatchdogSec (armed at READY=1; no
    WATCHDOG=1 from the main process for that long: SIGKILL), Restart=on-failure after RestartSec,
    and the same configuration, spool and outbox each time, so spooled entries replay. Notifications
    come over a datagram socket of our own ($NOTIFY_SOCKET); WATCHDOG_PID is left unset (edge.systemd
    then takes WATCHDOG_USEC as meant for it), and only the main process is heard (NotifyAccess=main)."""

    def __init__(self, config: Path, folder: Path, options: Options) -> None:
        self.config = config
        self.folder = folder
        self.options = options
        self.backstop = MemoryBackstop(options.memory_max + 2 * 2**30)
        self.notify_path = folder / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.lock = threading.Lock()
        self.daemon: Daemon | None = None
        self.began = time.monotonic()
        self.launched = 0.0
        self.ready_at: float | None = None  # READY=1 of the running daemon
        self.last_ping = 0.0
        self.kill_reason = ""  # why we killed the running daemon ("" when we did not)
        self.restart_at: float | None = None
        self.gave_up = False  # dead and not coming back (a clean exit, or this bench's restart limit)
        self.restarts = 0
        self.memory_kills = 0
        self.watchdog_kills = 0
        self.peak = 0
        self.pings = 0  # WATCHDOG=1 heard from the main process, over all launches
        self.events: list[str] = []
        self.closing = threading.Event()
        self.stopping = False
        self._threads = [
            threading.Thread(target=self._listen, name="unit-notify", daemon=True),
            threading.Thread(target=self._watch, name="unit-watch", daemon=True),
        ]

    def start(self) -> None:
        self.began = time.monotonic()
        self._launch()
        for thread in self._threads:
            thread.start()

    def _event(self, text: str) -> None:
        self.events.append(f"t+{time.monotonic() - self.began:.1f} s {text}")

    def _launch(self) -> None:
        env = {"NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": str(int(self.options.watchdog_s * 1e6))}
        daemon = Daemon(self.config, env=env, log=self.folder / "daemon.log")
        self.backstop.add(daemon.pid)
        with self.lock:
            self.daemon, self.launched, self.ready_at, self.kill_reason = daemon, time.monotonic(), None, ""

    def alive(self) -> bool:
        daemon = self.daemon
        return daemon is not None and daemon.process.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """/readyz answers 200 (model warm, spool writable, broker connected), as Daemon.start waits."""
        return wait_for(lambda: self.daemon is not None and self.daemon.endpoint("/readyz")[0] == 200, timeout)

    def _tree(self, daemon: Daemon) -> list[int]:
        return self.backstop.pids() or [daemon.pid, *descendants(daemon.pid)]

    def _listen(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("iII"))
        while not self.closing.is_set():
            try:
                data, ancillary, _, _ = self.notify.recvmsg(4096, size)
            except (TimeoutError, OSError):
                continue
            sender = next(
                (struct.unpack("iII", d[:12])[0] for _, kind, d in ancillary if kind == socket.SCM_CREDENTIALS),
                None,
            )
            with self.lock:
                if self.daemon is None or sender != self.daemon.pid:
                    continue
                now = time.monotonic()
                for line in data.decode(errors="replace").splitlines():
                    if line == "READY=1" and self.ready_at is None:
                        self.ready_at = self.last_ping = now
                        self._event(f"READY=1 after {now - self.launched:.1f} s")
                    elif line == "WATCHDOG=1":
                        self.last_ping = now
                        self.pings += 1

    def _watch(self) -> None:
        while not self.closing.wait(SAMPLE_S):
            daemon = self.daemon
            if daemon is None:
                if self.restart_at is not None and time.monotonic() >= self.restart_at and not self.stopping:
                    self.restarts += 1
                    self._launch()
                    self.restart_at = None
                    self._event(f"restarted (pid {self.daemon.pid if self.daemon else '?'})")
                continue
            code = daemon.process.poll()
            if code is not None:
                self._died(daemon, code)
                continue
            tree = self._tree(daemon)
            rss = resident(tree)
            self.peak = max(self.peak, rss)
            if self.kill_reason:
                continue
            if rss > self.options.memory_max:  # MemoryMax holds while stopping too (a drain can blow it)
                during = " while stopping" if self.stopping else ""
                self.kill_reason = f"killed for memory{during} ({rss / 2**30:.2f} GiB resident)"
                self.memory_kills += 1
                self._event(self.kill_reason)
                kill(tree)
            elif (
                not self.stopping
                and self.ready_at is not None
                and time.monotonic() - self.last_ping > self.options.watchdog_s
            ):
                self.kill_reason = f"watchdog kill (no WATCHDOG=1 for {self.options.watchdog_s:g} s)"
                self.watchdog_kills += 1
                self._event(self.kill_reason)
                kill(tree)

    def _died(self, daemon: Daemon, code: int) -> None:
        """Restart=on-failure: a non-zero exit or a signal other than a clean one restarts, after RestartSec."""
        kill(self._tree(daemon))  # what the main process left behind goes with it (KillMode=control-group)
        with self.lock:
            self.daemon = None
        if not self.kill_reason:  # a kill of ours was noted when made
            if code == -signal.SIGKILL and not self.stopping:
                self.memory_kills += 1
                self._event("SIGKILL, not ours: the memory backstop (cgroup OOM)")
            else:
                self._event(f"exited {code}" if code >= 0 else f"died of {signal.Signals(-code).name}")
        clean = code == 0 or -code in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
        if clean or self.stopping:
            self.gave_up = True
            return
        if self.restarts >= self.options.max_restarts:
            self._event(f"not restarted: this bench's limit of {self.options.max_restarts} restarts")
            self.gave_up = True
            return
        self.restart_at = time.monotonic() + self.options.restart_s

    def stop(self) -> None:
        """SIGTERM (the daemon drains), SIGKILL after STOP_GRACE_S; then everything it left, also when
        interrupted (Ctrl-C) or when a restart raced with the stop."""
        self.stopping = True
        try:
            daemon = self.daemon
            if daemon is not None and daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
                try:
                    daemon.process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self._event(f"did not stop within {STOP_GRACE_S:g} s of SIGTERM: killed")
        finally:
            self.closing.set()
            for thread in self._threads:
                if thread.is_alive():
                    thread.join(timeout=5)
            daemon = self.daemon
            if daemon is not None:
                kill(self._tree(daemon))
                daemon.process.wait(timeout=10)
            self.notify.close()
            self.notify_path.unlink(missing_ok=True)
            self.backstop.close()
            self._event(f"stopped; {self.pings} WATCHDOG=1 heard in all")


# ---------------------------------------------------------------- the files


def make_good(folder: Path) -> Path:
    """A full-size phantom AP that passes: tools.demo's first study (the e2e bench sends the same)."""
    from tools.demo import write_studies

    return write_studies(folder / "studies")[0]


def copy_with_new_uid(source: Path, target: Path) -> str:
    """A copy of `source` as another image (new SOP Instance UID); its UID as verdicts carry it."""
    import pydicom
    from pydicom.uid import generate_uid

    from edge.publish.message import hashed_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return hashed_uid(str(ds.SOPInstanceUID))


def _bomb_header(good: Path, transfer_syntax: str) -> Any:
    """The good image's header (a DX) saying 2048 x 2048 at 16 bits, without its pixel data."""
    import pydicom
    from pydicom.uid import UID, generate_uid

    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.Rows = ds.Columns = BOMB_HEADER_SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


def _encapsulated(good: Path, transfer_syntax: str, codestream: bytes, target: Path) -> Path:
    from pydicom.encaps import encapsulate

    ds = _bomb_header(good, transfer_syntax)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return target


def _bomb_pixels() -> Any:
    """2048 x 2048 16-bit pixels: a ramp with a little noise, so the codestream has real code-blocks."""
    import numpy as np

    ramp = np.add.outer(np.arange(BOMB_HEADER_SIZE), np.arange(BOMB_HEADER_SIZE)) * 16
    return (ramp + np.random.default_rng(15).integers(0, 2, ramp.shape)).astype(np.uint16)


def jpeg2000_bomb(good: Path, target: Path) -> Path:
    """A real JPEG 2000 codestream of 2048 x 2048 whose SIZ then says 60000 x 60000 in one tile of that
    size: the decoder allocates for the codestream's size (about 14 GB), not the DICOM header's."""
    from openjpeg import utils

    stream = bytearray(utils.encode_array(_bomb_pixels(), bits_stored=16, photometric_interpretation=2, use_mct=False))
    siz = stream.index(b"\xff\x51")  # SIZ: marker, Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz (4 each)
    struct.pack_into(">II", stream, siz + 6, J2K_BOMB_SIZE, J2K_BOMB_SIZE)
    struct.pack_into(">II", stream, siz + 22, J2K_BOMB_SIZE, J2K_BOMB_SIZE)
    return _encapsulated(good, JPEG2000_LOSSLESS, bytes(stream), target)


def jpegls_bomb(good: Path, target: Path) -> Path:
    """A real JPEG-LS stream of 2048 x 2048 whose SOF55 then says 65535 x 65535 (about 8.6 GB)."""
    import jpeg_ls

    stream = bytearray(jpeg_ls.encode_array(_bomb_pixels(), lossy_error=0))
    sof = stream.index(b"\xff\xf7")  # SOF55: marker, Lf(2) P(1) Y(2) X(2) Nf(1)
    struct.pack_into(">HH", stream, sof + 5, JLS_BOMB_SIZE, JLS_BOMB_SIZE)
    return _encapsulated(good, JPEGLS_LOSSLESS, bytes(stream), target)


def deflate_bomb(good: Path, target: Path) -> Path:
    """Deflated Explicit VR Little Endian whose Pixel Data is 3 GB of zeros: about 3 MB on the wire.
    Deflated in chunks, so this bench never holds the 3 GB."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = _bomb_header(good, DEFLATED)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(16 * 2**20)
    with target.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        f.write(deflate.compress(body.getvalue()))
        f.write(deflate.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, DEFLATE_BOMB_BYTES)))
        left = DEFLATE_BOMB_BYTES
        while left:
            chunk = min(left, len(zeros))
            f.write(deflate.compress(zeros[:chunk]))
            left -= chunk
        f.write(deflate.flush())
    return target


# ---------------------------------------------------------------- DICOM requests


@dataclass
class Attempt:
    ok: bool
    seconds: float
    detail: str = ""

    def cell(self) -> str:
        text = f"{'yes' if self.ok else 'no'} {self.seconds:.2f} s"
        return f"{text} ({self.detail})" if self.detail else text


def requestor(ae_title: str, timeout: float | None) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = timeout or 30
    ae.network_timeout = timeout  # None: an idle association never times itself out
    ae.connection_timeout = 5
    return ae


def association_failure(assoc: Any) -> str:
    if assoc.is_rejected:
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted"
    return "no association"


def status_of(response: Any) -> int | None:
    """A DIMSE response's Status, None when none came (pynetdicom returns an empty Dataset)."""
    value = response.get("Status") if response is not None else None
    return None if value is None else int(value)


def capped(action: Callable[[list[Any]], Attempt], cap: float = LEGIT_CAP_S) -> Attempt:
    """Run one legitimate request in a thread for at most `cap` seconds; an association it left open
    is aborted then."""
    held: list[Any] = []
    result: list[Attempt] = []
    began = time.monotonic()

    def run() -> None:
        try:
            result.append(action(held))
        except Exception as exc:
            result.append(Attempt(False, time.monotonic() - began, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name="legit", daemon=True)
    thread.start()
    thread.join(cap)
    if result:
        return result[0]
    for assoc in held:
        assoc.abort()
    return Attempt(False, time.monotonic() - began, f"no answer in {cap:g} s")


def legit_request(port: int, context: tuple[str, ...], request: Callable[[Any], Any]) -> Attempt:
    """One association from LEGIT with the allowed AE title, one request on it (within LEGIT_CAP_S)."""

    def attempt(held: list[Any]) -> Attempt:
        began = time.monotonic()
        ae = requestor(LEGIT_AET, LEGIT_CAP_S)
        ae.add_requested_context(*context)
        assoc = ae.associate(ATTACKER, port, ae_title=CALLED_AET, bind_address=(LEGIT, 0))
        held.append(assoc)
        if not assoc.is_established:
            return Attempt(False, time.monotonic() - began, association_failure(assoc))
        status = status_of(request(assoc))
        if assoc.is_established:
            assoc.release()
        seconds = time.monotonic() - began
        if status == 0:
            return Attempt(True, seconds)
        return Attempt(False, seconds, "no response" if status is None else f"status 0x{status:04X}")

    return capped(attempt)


def legit_echo(port: int) -> Attempt:
    return legit_request(port, (VERIFICATION,), lambda assoc: assoc.send_c_echo())


def legit_store(port: int, path: Path) -> Attempt:
    return legit_request(port, (DX_PRESENTATION, EXPLICIT_LE), lambda assoc: assoc.send_c_store(str(path)))


# ---------------------------------------------------------------- the attacks


class Attack:
    """Runs from ATTACKER in a background thread until `stop`; `engaged` is set once it took hold;
    `report` says what the attacker got."""

    engage_s = 25.0  # the most the legitimate sender waits for `engaged`

    def __init__(self) -> None:
        self.halt = threading.Event()
        self.engaged = threading.Event()
        self.started = 0.0
        self.stopped: float | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._guarded, args=(port,), name="attack", daemon=True)
        self._thread.start()

    def _guarded(self, port: int) -> None:
        try:
            self.run(port)
        finally:
            self.engaged.set()

    def run(self, port: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.stopped is not None:
            return
        self.halt.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.stopped = time.monotonic()
        self.close()

    def close(self) -> None:
        """Release what the attack holds (sockets, associations)."""

    def elapsed(self) -> float:
        return (self.stopped or time.monotonic()) - self.started

    def report(self) -> str:
        raise NotImplementedError


@dataclass
class Held:
    sock: socket.socket
    opened: float
    closed: float | None = None  # seconds after opening when the daemon closed or reset it
    answer: str = ""  # the first PDU the daemon sent, if any

    def read(self) -> bytes | None:
        """What the daemon sent (b"" once it closed or reset the connection); None when nothing waits."""
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""


class RawConnections(Attack):
    """TCP connections that send `first` (nothing when empty) and then, with `drip_s`, one byte 0x01
    that often, or nothing: slowloris, a drip, a port scan's silent connections."""

    def __init__(self, count: int, first: bytes = b"", drip_s: float | None = None) -> None:
        super().__init__()
        self.count, self.first, self.drip_s = count, first, drip_s
        self.held: list[Held] = []
        self.refused: list[str] = []
        self.tried = 0
        self.connecting_s = 0.0  # how long opening them took (the daemon accepts at its own pace)
        self.selector = selectors.DefaultSelector()

    def run(self, port: int) -> None:
        for _ in range(self.count):
            if self.halt.is_set():
                break
            self.tried += 1
            sock = socket.socket()
            try:
                sock.settimeout(5)
                sock.bind((ATTACKER, 0))
                sock.connect((ATTACKER, port))
                if self.first:
                    sock.sendall(self.first)
            except OSError as exc:
                self.refused.append(type(exc).__name__)
                sock.close()
                continue
            sock.setblocking(False)
            held = Held(sock, time.monotonic())
            self.held.append(held)
            self.selector.register(sock, selectors.EVENT_READ, held)
        self.connecting_s = time.monotonic() - self.started
        self.engaged.set()
        next_drip = time.monotonic() + (self.drip_s or 0)
        while not self.halt.is_set():
            for key, _ in self.selector.select(0.2) if self.selector.get_map() else ():
                held = key.data
                data = held.read()
                if data is None:
                    continue
                if data:
                    held.answer = held.answer or PDU_NAMES.get(data[0], f"PDU 0x{data[0]:02X}")
                else:
                    self._closed(held)
            if not self.selector.get_map():
                self.halt.wait(0.2)
            if self.drip_s and time.monotonic() >= next_drip:
                next_drip += self.drip_s
                for held in self.held:
                    if held.closed is None:
                        try:
                            held.sock.send(b"\x01")
                        except OSError:
                            self._closed(held)

    def _closed(self, held: Held) -> None:
        if held.closed is None:
            held.closed = time.monotonic() - held.opened
            self.selector.unregister(held.sock)

    def close(self) -> None:
        for held in self.held:
            held.sock.close()
        self.selector.close()

    def _look_once_more(self) -> None:
        """Connections the watch loop never got to (the attack ended while they were being opened):
        closed by the daemon meanwhile, or still open?"""
        for held in self.held:
            if held.closed is None and held.read() == b"":
                held.closed = self.elapsed()

    def report(self) -> str:
        self._look_once_more()
        text = f"{len(self.held)} of {self.count} connected"
        if self.tried == self.count:
            text += f" in {self.connecting_s:.1f} s"
        else:
            text += f" ({self.count - self.tried} not tried: the attack ended first)"
        if self.refused:
            text += f" ({len(self.refused)} failed: {', '.join(sorted(set(self.refused)))})"
        closed = [h.closed for h in self.held if h.closed is not None]
        if closed:
            text += f"; {len(closed)} closed by the daemon after {min(closed):.1f}-{max(closed):.1f} s"
            answers = sorted({h.answer for h in self.held if h.answer})
            if answers:
                text += f" (it sent {', '.join(answers)})"
        if len(closed) < len(self.held):
            text += f"; {len(self.held) - len(closed)} still open after {self.elapsed():.0f} s"
        return text


class IdleAssociations(Attack):
    """`count` valid associations (the allowed ATTACKER_AET), opened one after the other as fast as
    the daemon answers, then held without a word."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.held: list[tuple[Any, float]] = []
        self.ended: dict[int, float] = {}  # index in held -> seconds it lasted
        self.rejected = 0
        self.failed = 0

    def run(self, port: int) -> None:
        ae = requestor(ATTACKER_AET, None)
        ae.add_requested_context(VERIFICATION)
        for _ in range(self.count):
            if self.halt.is_set():
                break
            assoc = ae.associate(ATTACKER, port, ae_title=CALLED_AET, bind_address=(ATTACKER, 0))
            if assoc.is_established:
                self.held.append((assoc, time.monotonic()))
            elif assoc.is_rejected:
                self.rejected += 1
            else:
                self.failed += 1
        self.engaged.set()
        while not self.halt.wait(0.2):
            for index, (assoc, since) in enumerate(self.held):
                if index not in self.ended and not assoc.is_established:
                    self.ended[index] = time.monotonic() - since

    def close(self) -> None:
        for assoc, _ in self.held:
            if assoc.is_established:
                assoc.abort()

    def report(self) -> str:
        text = f"{len(self.held)} of {self.count} accepted ({self.rejected} rejected, {self.failed} failed)"
        if self.ended:
            lasted = self.ended.values()
            text += f"; {len(self.ended)} aborted by the daemon after {min(lasted):.1f}-{max(lasted):.1f} s"
        if len(self.ended) < len(self.held):
            text += f"; {len(self.held) - len(self.ended)} held idle for {self.elapsed():.0f} s"
        return text


class PduBomb(Attack):
    """A-ASSOCIATE-RQ announcing 0xFFFFFFFF bytes, then zeros as fast as loopback takes them."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.sent = 0
        self.outcome = "not started"
        self.sock: socket.socket | None = None

    def run(self, port: int) -> None:
        try:
            self.sock = socket.create_connection((ATTACKER, port), timeout=5, source_address=(ATTACKER, 0))
            self.sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        except OSError as exc:
            self.outcome = f"could not connect ({type(exc).__name__})"
            return
        self.engaged.set()
        self.sock.settimeout(0.5)
        zeros = bytes(2**20)
        deadline = self.started + self.seconds
        while True:
            if self.halt.is_set() or time.monotonic() >= deadline:
                self.outcome = f"still being read after {time.monotonic() - self.started:.1f} s"
                return
            try:
                self.sent += self.sock.send(zeros)
            except TimeoutError:
                continue
            except OSError as exc:
                seconds = time.monotonic() - self.started
                self.outcome = f"closed by the daemon after {seconds:.1f} s ({type(exc).__name__})"
                return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def report(self) -> str:
        return f"{self.sent / 1e9:.2f} GB sent; {self.outcome}"


class StoreBomb(Attack):
    """One C-STORE of a crafted file, from the allowed ATTACKER_AET; the file goes as its encoded bytes
    (pynetdicom's chunked sending), never decoded here. It takes hold once sent, answered or not (a
    frozen daemon never answers)."""

    engage_s = 3.0

    def __init__(self, path: Path, transfer_syntax: str) -> None:
        super().__init__()
        self.path, self.transfer_syntax = path, transfer_syntax
        self.outcome = "not sent"

    def run(self, port: int) -> None:
        ae = requestor(ATTACKER_AET, LEGIT_CAP_S)
        ae.add_requested_context(DX_PRESENTATION, self.transfer_syntax)
        assoc = ae.associate(ATTACKER, port, ae_title=CALLED_AET, bind_address=(ATTACKER, 0))
        if not assoc.is_established:
            self.outcome = association_failure(assoc)
            return
        try:
            status = status_of(assoc.send_c_store(str(self.path)))
        except Exception as exc:
            self.outcome = f"C-STORE failed: {type(exc).__name__}: {exc}"
            return
        seconds = time.monotonic() - self.started
        self.outcome = f"C-STORE {'no response' if status is None else f'0x{status:04X}'} after {seconds:.1f} s"
        if assoc.is_established:
            assoc.release()

    def report(self) -> str:
        return f"{self.path.stat().st_size / 1e6:.1f} MB file; {self.outcome}"


# ---------------------------------------------------------------- running them


@dataclass
class Row:
    attack: str
    echo: Attempt | None
    store: Attempt | None
    verdict: Attempt | None
    attacker: str
    peak_rss_mib: float
    restarts: int
    memory_kills: int
    watchdog_kills: int
    events: list[str] = field(default_factory=list)


class Verdicts:
    """Verdict messages as they arrive, with their arrival time (monotonic)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, dict[str, Any]]] = []

    def note(self, topic: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), payload))

    def find(self, match: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        with self.lock:
            return next(((t, p) for t, p in self.seen if match(p)), None)

    def others(self, known: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [p for _, p in self.seen if not known(p)]


def image_uid(payload: dict[str, Any]) -> str:
    return str((payload.get("verdict") or {}).get("image", {}).get("sop_instance_uid", ""))


def outcome(payload: dict[str, Any]) -> str:
    verdict = payload.get("verdict") or {}
    code = verdict.get("reason_code") or ""
    return f"{verdict.get('verdict', '?')}{'/' + code if code else ''}"


class Bench:
    """What every attack shares: the options, the broker, the files, the output folder."""

    def __init__(self, options: Options, out: Path, broker: Broker) -> None:
        self.options, self.out, self.broker = options, out, broker
        self.good = make_good(out / "files")
        self._bombs: dict[str, Path] = {}

    def bomb(self, kind: str) -> Path:
        if kind not in self._bombs:
            make = {"jpeg2000": jpeg2000_bomb, "jpegls": jpegls_bomb, "deflate": deflate_bomb}[kind]
            self._bombs[kind] = make(self.good, self.out / "files" / f"{kind}-bomb.dcm")
        return self._bombs[kind]

    def attack(self, name: str) -> Attack | None:
        o = self.options
        if name == "one-byte":
            return RawConnections(o.connections, first=b"\x01")
        if name == "drip":
            return RawConnections(o.connections, first=b"\x01", drip_s=3.0)
        if name == "idle-associations":
            return IdleAssociations(o.associations)
        if name == "silent-connections":
            return RawConnections(o.silent)
        if name == "pdu-bomb":
            return PduBomb(o.pdu_seconds)
        if name == "jpeg2000-bomb":
            return StoreBomb(self.bomb("jpeg2000"), JPEG2000_LOSSLESS)
        if name == "jpegls-bomb":
            return StoreBomb(self.bomb("jpegls"), JPEGLS_LOSSLESS)
        if name == "deflate-bomb":
            return StoreBomb(self.bomb("deflate"), DEFLATED)
        return None

    def run(self, name: str) -> list[Row]:
        if name == "poison-pill-at-start":
            return [self.poison(f"poison-{kind}", kind) for kind in ("deflate", "jpeg2000")]
        attack = self.attack(name)
        assert attack is not None
        return [self.under_attack(name, attack)]

    def _setup(self, name: str) -> tuple[Path, Path, int, Verdicts, VerdictSubscriber]:
        folder = self.out / name
        folder.mkdir(parents=True)
        config, port = site_config(
            folder, self.broker.port, names=("bench", "attack", name), calling_aets=(LEGIT_AET, ATTACKER_AET), threads=2
        )
        verdicts = Verdicts()
        sub = VerdictSubscriber(
            self.broker.port, f"edgeqc/bench/attack/{name}/verdict", on_message=verdicts.note, client_id=f"bench-{name}"
        )
        wait_for(sub.client.is_connected, 10)
        time.sleep(0.3)  # the subscription's acknowledgement
        return folder, config, port, verdicts, sub

    def prepare(self, folder: Path) -> Legit:
        """The legitimate sender's image, written before the attack starts: a new image each time."""
        image = folder / "legit.dcm"
        return Legit(copy_with_new_uid(self.good, image), image)

    def legit(self, result: Legit, unit: Unit, port: int, verdicts: Verdicts) -> None:
        """One C-ECHO, then one C-STORE of the good image and its verdict, from LEGIT, each capped."""
        up = unit.alive()
        result.echo = legit_echo(port)
        if not result.echo.ok and not up:
            result.echo.detail += ", daemon down"
        up = unit.alive()
        began = time.monotonic()
        result.store = legit_store(port, result.image)
        if not result.store.ok:
            result.store.detail += "" if up else ", daemon down"
            return
        wait_for(lambda: verdicts.find(result.mine) is not None, LEGIT_CAP_S)
        found = verdicts.find(result.mine)
        if found is None:
            result.verdict = Attempt(False, time.monotonic() - began, f"none in {LEGIT_CAP_S:g} s")
        else:
            result.verdict = Attempt(True, found[0] - began, outcome(found[1]))

    def under_attack(self, name: str, attack: Attack) -> Row:
        with contextlib.ExitStack() as cleanup:  # in reverse: the attack, the daemon, the subscriber
            folder, config, port, verdicts, sub = self._setup(name)
            cleanup.callback(sub.close)
            legit = self.prepare(folder)
            unit = Unit(config, folder, self.options)
            cleanup.callback(unit.stop)
            cleanup.callback(attack.stop)
            unit.start()
            if not unit.wait_ready(120):
                raise RuntimeError(f"{name}: the daemon did not become ready; see {folder / 'daemon.log'}")
            print(f"  {name}: daemon ready, attacking", flush=True)
            began = time.monotonic()
            attack.start(port)
            attack.engaged.wait(attack.engage_s)
            time.sleep(self.options.settle_s)
            self.legit(legit, unit, port, verdicts)
            while time.monotonic() < began + self.options.duration_s:
                time.sleep(0.1)
        text = attack.report()
        if isinstance(attack, StoreBomb):  # every verdict not for the legitimate image is the bomb's
            theirs = sorted({outcome(p) for p in verdicts.others(legit.mine)})
            text += "; verdict " + (", ".join(theirs) if theirs else "none")
        return self._row(name, legit, text, unit)

    def poison(self, name: str, kind: str) -> Row:
        """A bomb already in the spool at start-up, older than two good images: does the daemon start,
        stay up, and judge the good ones within pill_wait_s?"""
        bomb_file = self.bomb(kind)
        with contextlib.ExitStack() as cleanup:
            folder, config, port, verdicts, sub = self._setup(name)
            cleanup.callback(sub.close)
            legit = self.prepare(folder)
            spool = folder / "spool"
            spool.mkdir()
            now = time.time_ns()  # named as Spool.reserve names entries: the bomb is the oldest
            entries = [spool / f"{now - (60 - 10 * n) * 10**9:020d}-{n:06d}.dcm" for n in range(3)]
            shutil.copyfile(bomb_file, entries[0])
            for entry in entries[1:]:
                copy_with_new_uid(self.good, entry)
            ids = [f"{name}-{entry.stem}" for entry in entries]  # edge.publish.message.message_id

            def judged(identifier: str) -> tuple[float, dict[str, Any]] | None:
                return verdicts.find(lambda p: p.get("message_id") == identifier)

            unit = Unit(config, folder, self.options)
            cleanup.callback(unit.stop)
            unit.start()
            began = time.monotonic()
            print(f"  {name}: daemon started on a spool holding the {kind} bomb and 2 good images", flush=True)
            unit.wait_ready(10)
            time.sleep(self.options.settle_s)
            self.legit(legit, unit, port, verdicts)
            wait_for(
                lambda: all(judged(i) for i in ids[1:]) or unit.gave_up,
                max(0.0, began + self.options.pill_wait_s - time.monotonic()),
            )
            waited, stayed_down = time.monotonic() - began, unit.gave_up
        goods = [judged(i) for i in ids[1:]]
        done = [f"{found[0] - began:.0f} s" for found in goods if found is not None]
        text = f"spooled good images judged: {len(done)} of 2" + (f" (at {', '.join(done)})" if done else "")
        text += f" in {waited:.0f} s" + (" (the daemon stayed down)" if stayed_down else "")
        bomb = judged(ids[0])
        text += f"; bomb: verdict {outcome(bomb[1])}" if bomb else "; bomb: no verdict"
        pending = list(spool.glob("*.dcm"))  # what a restart would replay
        aside = sorted({p.parent.name for p in spool.rglob("*.dcm") if p.parent != spool})  # failed/, quarantine
        text += f"; spool holds {len(pending)} pending .dcm at the end"
        if aside:
            text += f" ({len(list(spool.rglob('*.dcm'))) - len(pending)} more in {', '.join(aside)})"
        return self._row(name, legit, text, unit)

    def _row(self, name: str, legit: Legit, text: str, unit: Unit) -> Row:
        return Row(
            name,
            legit.echo,
            legit.store,
            legit.verdict,
            text,
            round(unit.peak / 2**20, 1),
            unit.restarts,
            unit.memory_kills,
            unit.watchdog_kills,
            unit.events,
        )


@dataclass
class Legit:
    """The legitimate sender's image (`uid` as verdicts carry it) and its three measurements."""

    uid: str
    image: Path
    echo: Attempt | None = None
    store: Attempt | None = None
    verdict: Attempt | None = None

    def mine(self, payload: dict[str, Any]) -> bool:
        return bool(self.uid) and image_uid(payload) == self.uid


# ---------------------------------------------------------------- the table

HEADER: Final = (
    "attack",
    "legit C-ECHO (ok, s)",
    "legit C-STORE (ok, s)",
    "legit verdict (ok, s)",
    "what the attacker got",
    "peak RSS MiB",
    "restarts",
    "memory kills",
    "watchdog kills",
)


def cells(row: Row) -> tuple[str, ...]:
    def cell(attempt: Attempt | None) -> str:
        return "-" if attempt is None else attempt.cell()

    return (
        row.attack,
        cell(row.echo),
        cell(row.store),
        cell(row.verdict),
        row.attacker,
        f"{row.peak_rss_mib:.0f}",
        str(row.restarts),
        str(row.memory_kills),
        str(row.watchdog_kills),
    )


def table(rows: list[Row]) -> str:
    lines = [HEADER, *map(cells, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = [" | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "-|-".join("-" * width for width in widths))
    return "\n".join(text)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(options: Options) -> int:
    """Every attack in `options.only`, in order; the table (and the JSON rows); 0 when all ran.
    SIGTERM is taken as Ctrl-C: the same cleanup (a `timeout` around the bench leaves nothing behind)."""
    import logging

    from pynetdicom import _config

    import edge

    unknown = [name for name in options.only if name not in ATTACKS]
    if unknown:
        print(f"error: unknown attack {', '.join(unknown)} (choose from {', '.join(ATTACKS)})", file=sys.stderr)
        return 2
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL + 1)  # rejections are the point, not news
    _config.STORE_SEND_CHUNKED_DATASET = True  # send files as they are encoded: a bomb is never decoded here
    started = time.monotonic()
    out = options.out or Path(tempfile.mkdtemp(prefix="edgeqc-attack-"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    broker: Broker | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker = Broker(out / "broker")
        broker.start()
        print(f"edge package: {Path(edge.__file__).parent}; output: {out}", flush=True)
        print(
            f"unit emulated: MemoryMax={options.memory_max / 2**30:g}G (summed RSS, sampled every"
            f" {SAMPLE_S * 1000:.0f} ms), WatchdogSec={options.watchdog_s:g}, Restart=on-failure,"
            f" RestartSec={options.restart_s:g} (at most {options.max_restarts} restarts per attack)",
            flush=True,
        )
        print("writing the phantom studies and the bombs...", flush=True)
        bench = Bench(options, out, broker)
        for name in options.only:
            print(f"{name} (t+{time.monotonic() - started:.0f} s)", flush=True)
            rows += bench.run(name)
    except ToolMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopping", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if broker is not None:
            broker.stop()
        if options.out is None:
            shutil.rmtree(out, ignore_errors=True)
        if rows:
            print()
            print(table(rows))
            for row in rows:
                if row.events:
                    print(f"  {row.attack}: {'; '.join(row.events)}")
            print(f"whole run: {time.monotonic() - started:.0f} s")
        if rows and options.json_path is not None:
            options.json_path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0
