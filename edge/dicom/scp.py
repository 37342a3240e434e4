"""The DICOM Storage SCP (pynetdicom): receive, spool, answer. Nothing else happens in its threads.

Association threads only hand the received bytes on (an `Arrival`), write them to the spool and
return the status; decoding and inference run elsewhere (pynetdicom's advice for concurrency, and it
keeps large objects out of these threads). Unknown senders are refused by default: the calling AE
title must be on the allow-list, and where an address allow-list is configured the TCP connection of
any other address is closed before an association exists. A spool that cannot take the dataset
answers "out of resources" at once. DICOM TLS (optionally mutual) when a certificate is configured.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from edge.config import ConfigError, DicomConfig
from edge.dicom.guard import GuardedSocket, GuardedTlsSocket, Limits, drop, guard_plain, guard_tls
from edge.dicom.spool import Arrival, Spool

log = logging.getLogger("edge.dicom.scp")

VERIFICATION: Final = UID("1.2.840.10008.1.1")
STORAGE_CLASSES: Final = (
    UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    UID("1.2.840.10008.5.1.4.1.1.1.1.1"),  # Digital X-Ray Image Storage - For Processing
    UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
)
# What edge.dicom.decode reads (pydicom's pixel-data plugins)
TRANSFER_SYNTAXES: Final = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
REFUSAL_LOG_S: Final = 60.0
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700


def server_tls(settings: DicomConfig) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.9 style: TLS 1.2 or newer) when a certificate is configured; with a CA,
    senders must present a certificate it signed."""
    if not settings.tls_certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile, settings.tls_keyfile_password or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom.tls_certfile / dicom.tls_keyfile: cannot load ({exc})") from exc
    if settings.tls_ca_certs:
        try:
            context.load_verify_locations(settings.tls_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"dicom.tls_ca_certs: cannot load ({exc})") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _FilteringServer(ThreadedAssociationServer):
    request_queue_size = 64  # the listen backlog: a burst of connections is accepted, then judged here
    allowed_addresses: frozenset[str] = frozenset()
    refuse_all = False  # no calling AE title allowed: nobody may associate
    limits: Limits
    per_address = 2  # connections one address may hold at once

    def server_activate(self) -> None:
        self.connections: list[tuple[str, GuardedSocket | GuardedTlsSocket]] = []
        self.connections_lock = threading.Lock()
        self.warned: dict[str, float] = {}  # address -> when its last refusal was logged
        super().server_activate()

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and put the guard (edge.dicom.guard) on the connection before pynetdicom reads a
        byte of it. With TLS, the handshake runs later in the association's own thread (on its first
        read, under the guard's deadline), so a sender that connects and never completes it cannot
        stall the accept loop."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            return guard_tls(client, self.ssl_context, self.limits), address
        return guard_plain(client, self.limits), address

    def open_connections(self) -> list[tuple[str, GuardedSocket | GuardedTlsSocket]]:
        """The connections not yet closed (pynetdicom closes the socket when an association ends)."""
        with self.connections_lock:
            self.connections = [(host, s) for host, s in self.connections if s.fileno() != -1]
            return list(self.connections)

    def shutdown(self) -> None:
        """Stop serving and close the socket. (pynetdicom's own shutdown also removes the server from
        its AE's private server list, which this server, made with `AE.make_server`, is not on.)"""
        socketserver.TCPServer.shutdown(self)
        self.server_close()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if self.refuse_all:
            log.warning("connection from %s refused: no calling AE title is allowed (allowed_calling_aets)", host)
            return False
        if self.allowed_addresses and host not in self.allowed_addresses:
            log.warning("connection from %s refused: address not on the allow-list", host)
            return False
        held = sum(1 for other, _ in self.open_connections() if other == host)
        if held >= self.per_address:
            now = time.monotonic()
            if now - self.warned.get(host, -REFUSAL_LOG_S) >= REFUSAL_LOG_S:  # a flood logs a line, not a line each
                self.warned[host] = now
                log.warning(
                    "connection from %s refused: it already holds %d connections (max_associations_per_address;"
                    " further refusals of this address are not logged for %g s)",
                    host,
                    held,
                    REFUSAL_LOG_S,
                )
            return False
        with self.connections_lock:
            self.connections.append((host, request))
        return True


@dataclass
class _Message:
    """A message being received on one association: when its first P-DATA PDU came, and its size so far."""

    began: float  # perf_counter()
    began_ns: int  # ns since the epoch
    received_bytes: int = 0


class StorageScp:
    def __init__(
        self,
        settings: DicomConfig,
        spool: Spool,
        on_arrival: Callable[[Arrival], None],
        on_association: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_arrival = on_arrival  # may block while the queue is full: back-pressure on the sender
        self.on_association = on_association  # "accepted" / "rejected"
        self._messages: dict[int, _Message] = {}  # association -> the message it is receiving
        ae = AE(ae_title=settings.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        ae.maximum_associations = settings.max_associations
        ae.acse_timeout = settings.association_timeout_s
        ae.network_timeout = settings.idle_timeout_s
        ae.maximum_pdu_size = settings.max_pdu_bytes
        ae.add_supported_context(VERIFICATION)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._ae = ae
        self._tls = server_tls(settings)
        self._server: ThreadedAssociationServer | None = None

    def _on_pdu(self, event: Event) -> None:
        """Note when the first P-DATA PDU of a message arrives (the start of receiving it) and count
        the message's bytes: one over max_dataset_bytes drops the connection at its next read, before
        pynetdicom has assembled (and copied) a dataset the daemon cannot hold."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        message = self._messages.setdefault(id(event.assoc), _Message(time.perf_counter(), time.time_ns()))
        message.received_bytes += sum(len(item.data or b"") for item in event.pdu.presentation_data_value_items)
        if message.received_bytes > self.settings.max_dataset_bytes:
            reason = f"dataset larger than max_dataset_bytes ({self.settings.max_dataset_bytes})"
            if drop(event.assoc, reason):
                log.warning("association from %s aborted: %s", event.assoc.requestor.address, reason)

    def _message_began(self, event: Event) -> tuple[float, int]:
        """When the message now complete began (perf_counter, ns since the epoch); forgets it."""
        message = self._messages.pop(id(event.assoc), None)
        return (message.began, message.began_ns) if message else (time.perf_counter(), time.time_ns())

    def _on_echo(self, event: Event) -> int:
        self._message_began(event)
        return SUCCESS

    def _on_store(self, event: Event) -> int:
        """Hand the dataset on first, then make it durable: judging starts while the fsync runs, and
        "success" goes back only once the entry is on disk."""
        began, began_ns = self._message_began(event)
        data = event.encoded_dataset(include_meta=True)
        probe = str(event.assoc.requestor.ae_title).strip() in self.settings.probe_calling_aets
        arrival = Arrival(self.spool.reserve(began_ns, probe), data, {"receive": time.perf_counter() - began})
        self.on_arrival(arrival)
        started = time.perf_counter()
        try:
            self.spool.commit(arrival.entry, data)
        except OSError as exc:
            arrival.settle(spooled=False)
            log.error("spool write failed (%s): answering out of resources", exc.strerror or exc)
            return OUT_OF_RESOURCES
        arrival.seconds["spool"] = time.perf_counter() - started
        arrival.settle(spooled=True)
        return SUCCESS

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_CLOSE, self._message_began),  # forget a message an aborted association left
        ]
        if self.on_association is not None:
            report = self.on_association
            handlers += [(evt.EVT_ACCEPTED, lambda event: report("accepted"))]
            handlers += [(evt.EVT_REJECTED, lambda event: report("rejected"))]
        server = self._ae.make_server(
            (self.settings.bind, self.settings.port),
            ssl_context=self._tls,
            evt_handlers=handlers,
            server_class=_FilteringServer,
        )
        assert isinstance(server, _FilteringServer)
        server.allowed_addresses = frozenset(self.settings.allowed_addresses)
        server.refuse_all = not self.settings.allowed_calling_aets
        server.per_address = self.settings.max_associations_per_address
        server.limits = Limits(
            max_pdu_bytes=self.settings.max_pdu_bytes,
            pdu_timeout_s=self.settings.pdu_timeout_s,
            max_association_s=self.settings.max_association_s,
        )
        thread = threading.Thread(
            target=make_target(server.serve_forever),
            name=f"scp@{datetime.now():%H%M%S}",
            daemon=True,
        )
        thread.start()
        self._server = server

    @property
    def active_associations(self) -> int:
        """Connections holding a slot of max_associations (including ones not yet associated)."""
        return len(self._ae.active_associations)

    def slots_held_by_idle_peers(self, idle_s: float = 5.0) -> bool:
        """Every slot of max_associations is held by a connection that sent nothing for `idle_s`: the
        modality would be turned away (readiness says so)."""
        if self._server is None:
            return False
        assert isinstance(self._server, _FilteringServer)
        connections = self._server.open_connections()
        now = time.monotonic()
        return len(connections) >= self.settings.max_associations and all(
            now - s.framer.last_read > idle_s for _, s in connections
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Abort the associations under way (their senders get no "success", so they resend) and close."""
        for association in self._ae.active_associations:
            if association.is_established:
                association.abort()
            else:  # a connection with no association yet: there is no A-ABORT to send, it is closed
                drop(association, "the appliance is stopping")
        if self._server is not None:
            self._server.shutdown()
