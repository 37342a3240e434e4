"""The connection guard: its bookkeeping alone, then hostile peers against a real SCP (pynetdicom and
DCMTK's storescu as the modality, raw sockets from another loopback address as the attacker)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from edge.dicom.guard import ConnectionLimitError, Limits, PduFramer
from edge.dicom.scp import SUCCESS, VERIFICATION, StorageScp
from edge.dicom.spool import Arrival, Spool
from tests.conftest import require_tool
from tests.dicom.conftest import STORESCU, client_tls, run_scp, send
from tools.testbed import wait_for

LIMITS = Limits(max_pdu_bytes=16384, pdu_timeout_s=2.0, max_association_s=60.0)
ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to loopback: another address without a second machine


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def test_a_header_announcing_more_than_the_cap_is_refused_before_its_body() -> None:
    framer = PduFramer(LIMITS, now=0.0)
    assert framer.wanted(4096) == 6  # the header first, alone
    with pytest.raises(ConnectionLimitError, match="announces 4294967295 bytes"):
        framer.feed(header(0x01, 0xFFFFFFFF), now=0.1)
    framer = PduFramer(LIMITS, now=0.0)
    with pytest.raises(ConnectionLimitError, match="cap 20480"):
        framer.feed(header(0x04, LIMITS.max_pdu_bytes + 4097), now=0.1)  # P-DATA: the advertised maximum + slack
    framer = PduFramer(LIMITS, now=0.0)
    framer.feed(header(0x01, 200_000), now=0.1)  # an association request may be large (user identity)
    assert framer.wanted(1 << 20) == 200_000  # and is read to its end, no further


def test_every_pdu_has_a_deadline_from_its_first_byte() -> None:
    framer = PduFramer(LIMITS, now=0.0)
    assert framer.read_timeout(now=20.0) == pytest.approx(2.0)  # between PDUs: a read never waits longer than a PDU
    framer.feed(b"\x04", now=1.0)  # one byte of a header: the PDU's clock runs
    assert framer.read_timeout(now=1.5) == pytest.approx(1.5)
    framer.feed(b"\x00\x00\x00", now=2.5)  # a drip keeps each read short but not the PDU
    with pytest.raises(ConnectionLimitError, match="longer than 2 s"):
        framer.read_timeout(now=3.1)
    framer = PduFramer(LIMITS, now=0.0)
    framer.feed(header(0x04, 4), now=1.0)
    framer.feed(b"abcd", now=2.0)  # the PDU is complete: no deadline until the next one begins
    assert framer.read_timeout(now=59.0) == pytest.approx(1.0)  # the connection's lifetime is nearly over
    with pytest.raises(ConnectionLimitError, match="open longer than 60 s"):
        framer.read_timeout(now=60.5)
    framer.drop_reason = "dataset larger than max_dataset_bytes"
    with pytest.raises(ConnectionLimitError, match="max_dataset_bytes"):
        framer.read_timeout(now=11.0)


def attacker_connection(port: int) -> socket.socket:
    connection = socket.socket()
    connection.bind((ATTACKER, 0))
    connection.settimeout(10)
    connection.connect(("127.0.0.1", port))
    return connection


def closed_by_server(connection: socket.socket, within_s: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `within_s` (an A-ABORT or
    A-ASSOCIATE-RJ it sends first is read past)."""
    deadline = time.monotonic() + within_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if connection.recv(1 << 16) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


def echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEQC")
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == SUCCESS
    assoc.release()
    return ok


def storescu(port: int, image: Path) -> bool:
    proc = subprocess.run(
        [str(require_tool(STORESCU)), "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(port), str(image)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[StorageScp, list[Arrival]]]:
    server, received = run_scp(
        Spool(tmp_path / "spool"), max_pdu_bytes=16384, pdu_timeout_s=2, max_associations=4, max_dataset_bytes=1 << 20
    )
    yield server, received
    server.stop()


def test_one_byte_connections_from_one_address_neither_lock_out_the_modality_nor_last(
    guarded: tuple[StorageScp, list[Arrival]], image: Path
) -> None:
    server, received = guarded
    attackers = [attacker_connection(server.port) for _ in range(4)]
    for connection in attackers:
        with contextlib.suppress(OSError):  # refused at once: the address holds its share already
            connection.sendall(b"\x01")
    # While the attack runs, the modality (another address) is served by pynetdicom and by DCMTK
    assert echo(server.port)
    assert storescu(server.port, image) and len(received) == 1
    started = time.monotonic()
    assert all(closed_by_server(c, within_s=6) for c in attackers)
    assert time.monotonic() - started < 6  # each was dropped by its PDU deadline (2 s), not left open
    for connection in attackers:
        connection.close()


def test_a_drip_is_cut_at_the_pdu_deadline(guarded: tuple[StorageScp, list[Arrival]]) -> None:
    server, _ = guarded
    connection = attacker_connection(server.port)
    started, sent = time.monotonic(), 0
    try:
        for byte in header(0x01, 68):
            connection.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.8)
    except OSError:
        pass
    closed = closed_by_server(connection, within_s=5)
    assert closed and time.monotonic() - started < 5.5
    connection.close()
    assert echo(server.port)


def test_a_pdu_length_bomb_is_dropped_before_its_body_is_read(
    guarded: tuple[StorageScp, list[Arrival]], image: Path
) -> None:
    server, received = guarded
    connection = attacker_connection(server.port)
    zeros, streamed = bytes(1 << 16), 0
    try:
        connection.sendall(header(0x01, 0xFFFFFFFF))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            connection.sendall(zeros)
            streamed += len(zeros)
    except OSError:
        pass  # reset by the server: what we want
    connection.close()
    assert streamed < 64 << 20  # the server stopped reading long before 4 GiB (socket buffers hold a few MB)
    assert echo(server.port) and send(server.port, image) == SUCCESS and len(received) == 1


def test_a_dataset_over_max_dataset_bytes_is_aborted_and_nothing_spooled(
    guarded: tuple[StorageScp, list[Arrival]], image: Path, tmp_path: Path
) -> None:
    import pydicom

    server, received = guarded
    big = pydicom.dcmread(image)
    big.add_new(0x00091010, "OB", bytes(3 << 20))  # a private element: 3 MiB over the 1 MiB limit
    big.private_block(0x0009, "EDGEQC TEST", create=True)
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    assert send(server.port, path) != SUCCESS
    assert received == []
    assert send(server.port, image) == SUCCESS


def test_a_tls_handshake_that_stalls_is_cut_at_the_pdu_deadline(pki: Path, image: Path, tmp_path: Path) -> None:
    tls = {"tls_certfile": str(pki / "server.crt"), "tls_keyfile": str(pki / "server.key")}
    server, _ = run_scp(Spool(tmp_path / "spool"), **tls, pdu_timeout_s=2)
    try:
        connection = attacker_connection(server.port)
        connection.sendall(b"\x16")  # the first byte of a ClientHello, then nothing
        started = time.monotonic()
        assert closed_by_server(connection, within_s=6) and time.monotonic() - started < 6
        connection.close()
        assert send(server.port, image, tls=client_tls(pki)) == SUCCESS
    finally:
        server.stop()


def test_readiness_sees_every_slot_held_by_idle_peers(tmp_path: Path) -> None:
    server, _ = run_scp(Spool(tmp_path / "spool"), max_associations=2, association_timeout_s=30)
    try:
        silent = [attacker_connection(server.port) for _ in range(2)]
        assert wait_for(lambda: server.slots_held_by_idle_peers(idle_s=0.3), timeout=5)
        silent[0].close()
        assert wait_for(lambda: not server.slots_held_by_idle_peers(idle_s=0.3), timeout=5)
        silent[1].close()
    finally:
        server.stop()


def test_ssl_module_is_what_the_guard_subclasses() -> None:
    """pynetdicom looks for buffered TLS data with isinstance(socket, ssl.SSLSocket) (#528)."""
    from edge.dicom.guard import GuardedTlsSocket

    assert issubclass(GuardedTlsSocket, ssl.SSLSocket)


def test_reading_ahead_stays_inside_the_pdu_and_returns_every_byte() -> None:
    """pynetdicom's 4 KiB reads are served from one larger read of the current PDU, never from the next."""
    from edge.dicom.guard import guard_plain

    ours, theirs = socket.socketpair()
    guarded = guard_plain(ours, Limits(max_pdu_bytes=1 << 20, pdu_timeout_s=5, max_association_s=60))
    body = bytes(range(256)) * 400  # 102400 bytes
    theirs.sendall(header(0x04, len(body)) + body + header(0x05, 4) + b"\0\0\0\0")
    assert guarded.recv(6) == header(0x04, len(body))
    received = bytearray()
    while len(received) < len(body):
        chunk = guarded.recv(min(4096, len(body) - len(received)))
        assert 0 < len(chunk) <= 4096
        received += chunk
    assert bytes(received) == body
    assert guarded.recv(6) == header(0x05, 4)  # the next PDU's header, checked by the framer in turn
    assert guarded.recv(4) == b"\0\0\0\0"
    guarded.close()
    theirs.close()
