"""Limits on what one DICOM connection may cost, enforced on the bytes as they are read.

pynetdicom's reader reads a PDU's 6-byte header, then as many bytes as the header announces, with
blocking reads and no deadline: a peer that sends one byte and stops holds an association slot for
ever, a drip of one byte every few seconds does the same, and a header announcing 4 GiB makes it
buffer whatever follows. pynetdicom reads through the socket the server's `get_request` hands it, so
the limits live in that socket (`GuardedSocket`, or `GuardedTlsSocket` under TLS): it follows the PDU
framing of the byte stream itself (PS3.8 9.3: type, reserved, 32-bit big-endian length) and

- refuses a PDU whose announced length exceeds the cap before reading its body,
- gives every PDU a deadline from its first byte (and every single read the time left of it),
- gives the whole connection a lifetime,
- can be told to drop the connection (a dataset over its size limit) at its next read.

A limit hit raises `OSError`, which pynetdicom's reader treats as the transport closing (Evt17): the
association ends and its slot is free. pynetdicom itself is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("edge.dicom.guard")

PDU_HEADER_BYTES: Final = 6
# An A-ASSOCIATE-RQ/AC carries presentation contexts and user information (a user identity may be a
# 64 KiB token), never close to this; the cap for other PDUs is the maximum we advertise.
ASSOCIATION_PDU_CAP: Final = 1 << 20
ASSOCIATION_PDU_TYPES: Final = frozenset({0x01, 0x02})
# Above the advertised maximum (the PDU's variable field, PS3.8 9.3.5) a peer may add PDV headers.
PDU_SLACK_BYTES: Final = 4096
READ_AHEAD_BYTES: Final = 1 << 18


class ConnectionLimitError(ConnectionAbortedError):
    """A guard limit was hit; the message says which, for the log."""


@dataclass(frozen=True)
class Limits:
    max_pdu_bytes: int  # the largest P-DATA PDU we advertise
    pdu_timeout_s: float  # from a PDU's first byte to its last
    max_association_s: float  # the whole connection

    def cap(self, pdu_type: int) -> int:
        if pdu_type in ASSOCIATION_PDU_TYPES:
            return max(ASSOCIATION_PDU_CAP, self.max_pdu_bytes + PDU_SLACK_BYTES)
        return self.max_pdu_bytes + PDU_SLACK_BYTES


class PduFramer:
    """Follows the PDU framing of a byte stream as it is read: when a PDU began, whether its header
    announced too much. Pure bookkeeping (the clock is passed in), so it is tested without sockets."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.opened = now
        self.last_read = now
        self._header = bytearray()
        self._body_left = 0
        self._pdu_began: float | None = None
        self.drop_reason = ""  # set from another thread: the next read fails with it

    def read_timeout(self, now: float) -> float:
        """How long the next read may wait; a limit already passed raises."""
        if self.drop_reason:
            raise ConnectionLimitError(self.drop_reason)
        left = self.opened + self.limits.max_association_s - now
        if left <= 0:
            raise ConnectionLimitError(f"connection open longer than {self.limits.max_association_s:g} s")
        if self._pdu_began is None:
            # pynetdicom reads between PDUs only once select() says data is there; under TLS that may be
            # a record with no data in it (a close_notify), so this read too must not wait for ever
            return max(min(left, self.limits.pdu_timeout_s), 0.001)
        pdu_left = self._pdu_began + self.limits.pdu_timeout_s - now
        if pdu_left <= 0:
            raise ConnectionLimitError(f"a PDU took longer than {self.limits.pdu_timeout_s:g} s to arrive")
        return max(min(left, pdu_left), 0.001)

    def wanted(self, requested: int) -> int:
        """Read no further than the end of the current header or body, so a PDU's header is checked
        before a byte of its body is taken."""
        if self._body_left:
            return min(requested, self._body_left)
        return min(requested, PDU_HEADER_BYTES - len(self._header))

    def feed(self, data: bytes, now: float) -> None:
        """Account for bytes just read (at most `wanted`); a header announcing too much raises."""
        if not data:
            return
        self.last_read = now
        if self._body_left:
            self._body_left -= len(data)
        else:
            if not self._header:
                self._pdu_began = now
            self._header += data
            if len(self._header) == PDU_HEADER_BYTES:
                pdu_type, _, length = struct.unpack(">BBL", bytes(self._header))
                self._header.clear()
                cap = self.limits.cap(pdu_type)
                if length > cap:
                    raise ConnectionLimitError(f"PDU type 0x{pdu_type:02X} announces {length} bytes (cap {cap})")
                self._body_left = length
        if not self._body_left and not self._header:
            self._pdu_began = None


class _Guarded:
    """The guard's part of a socket: `recv` with deadlines and the framer's checks.

    pynetdicom reads a PDU's body 4 KiB at a time; a guarded read takes up to READ_AHEAD_BYTES of the
    current PDU from the kernel at once and serves the next small reads from it, so the guard costs
    one check per 256 KiB, not per 4 KiB. It never reads past the current PDU, so once pynetdicom has
    a whole PDU nothing is held here and its select() on the socket stays the truth."""

    framer: PduFramer
    clock: Callable[[], float] = time.monotonic
    # told once, with OpenSSL's reason, when a TLS handshake fails (the SCP logs and counts the refusal)
    on_handshake_failure: Callable[[str], None] | None = None
    _ahead: bytes = b""
    _ahead_at = 0

    def _guarded_recv(self, read: Callable[[int], bytes], bufsize: int) -> bytes:
        if self._ahead_at < len(self._ahead):
            end = self._ahead_at + bufsize
            data, self._ahead_at = self._ahead[self._ahead_at : end], min(end, len(self._ahead))
            if self._ahead_at == len(self._ahead):
                self._ahead, self._ahead_at = b"", 0
            return data
        framer = self.framer
        timeout = framer.read_timeout(self.clock())
        self.settimeout(timeout)  # type: ignore[attr-defined]
        try:
            data = read(framer.wanted(max(bufsize, READ_AHEAD_BYTES)))
        except TimeoutError as exc:
            framer.read_timeout(self.clock())  # names the limit that passed
            raise ConnectionLimitError("no data within the time left") from exc
        framer.feed(data, self.clock())
        if len(data) > bufsize:
            self._ahead, self._ahead_at = data, bufsize
            return data[:bufsize]
        return data


class GuardedSocket(_Guarded, socket.socket):
    """An accepted plain TCP connection with the guard's limits on every read."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._guarded_recv(lambda n: socket.socket.recv(self, n, flags), bufsize)


class GuardedTlsSocket(_Guarded, ssl.SSLSocket):
    """The same for DICOM TLS (the handshake runs inside the first read, so it has the PDU deadline)."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return self._guarded_recv(lambda n: ssl.SSLSocket.recv(self, n, flags), buflen)
        except ssl.SSLError as exc:
            # before the handshake completed (no TLS version yet); a peer that only hung up (EOF: a port
            # check, a scanner) was not refused anything
            report = self.on_handshake_failure
            if report is not None and self.version() is None and not isinstance(exc, ssl.SSLEOFError):
                self.on_handshake_failure = None
                report(str(exc.reason or exc))
            raise


def guard_plain(client: socket.socket, limits: Limits) -> GuardedSocket:
    """The accepted socket, as a `GuardedSocket` on the same file descriptor."""
    guarded = GuardedSocket(client.family, client.type, client.proto, fileno=client.detach())
    guarded.framer = PduFramer(limits, time.monotonic())
    return guarded


def guard_tls(client: socket.socket, context: ssl.SSLContext, limits: Limits) -> GuardedTlsSocket:
    """The accepted socket wrapped for TLS (handshake deferred to its first read) with the guard."""
    context.sslsocket_class = GuardedTlsSocket
    wrapped = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
    assert isinstance(wrapped, GuardedTlsSocket)
    wrapped.framer = PduFramer(limits, time.monotonic())
    return wrapped


def drop(association: Any, reason: str) -> bool:
    """Close an association's connection from outside its thread: its reader's next read fails with
    `reason` (pynetdicom then ends the association as if the peer had gone). For a connection that
    never became an association, where pynetdicom has no A-ABORT to send, and for one that must end
    now. False when the connection has no guard (already closed)."""
    raw = getattr(getattr(getattr(association, "dul", None), "socket", None), "socket", None)
    framer = getattr(raw, "framer", None)
    if not isinstance(framer, PduFramer) or not isinstance(raw, socket.socket):
        return False
    if not framer.drop_reason:
        framer.drop_reason = reason
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RD)  # wakes the reader's select at once
    return True
