"""The DICOM Storage SCP (pynetdicom): receive, spool, answer. Nothing else happens in its threads.

Association threads only hand the received bytes on (an `Arrival`), write them to the spool and
return the status; decoding and inference run elsewhere (pynetdicom's advice for concurrency, and it
keeps large objects out of these threads). Unknown senders are refused by default: the calling AE
title must be on the allow-list, and where an address allow-list is configured the TCP connection of
any other address is closed before an association exists. A spool that cannot take the dataset
answers "out of resources" at once. DICOM TLS (optionally mutual) when a certificate is configured.
Every sender turned away is a `Refusal`: counted through `on_refused` (its reason code) and logged as one
warning naming the address, the AE titles and the fix. The allow-lists change on a running SCP (`apply`,
a reload).
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, get_args

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
from pynetdicom.pdu import A_ASSOCIATE_RJ, P_DATA_TF
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
# DICOM settings a reload applies to the running SCP; the others need a new socket or AE (a restart)
LIVE_SETTINGS: Final = ("allowed_calling_aets", "allowed_addresses", "probe_calling_aets")
# Why a sender was turned away: the label of edgeqc_associations_refused_total, defined once here where
# refusals are classified (the daemon's counter starts at zero for each); "other" only for an
# A-ASSOCIATE-RJ this SCP does not send today (a failed user identity, say).
RefusalReason = Literal["unknown_calling_aet", "wrong_called_aet", "address_not_allowed", "tls", "too_many", "other"]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = get_args(RefusalReason)


@dataclass(frozen=True)
class Refusal:
    """One sender turned away: why, from where, and what it asked for ("" where the refusal came
    before its association request was read)."""

    reason: RefusalReason
    address: str
    calling: str = ""
    called: str = ""
    detail: str = ""  # e.g. the TLS error, the number of connections held


def rejection_reason(result: int, source: int, diagnostic: int) -> RefusalReason:
    """The reason code of an A-ASSOCIATE-RJ (PS3.8 9.3.4: result, source, reason/diag.) as sent."""
    if source == 0x01 and diagnostic == 0x03:
        return "unknown_calling_aet"
    if source == 0x01 and diagnostic == 0x07:
        return "wrong_called_aet"
    if source == 0x03 and diagnostic == 0x02:  # presentation related, local limit exceeded
        return "too_many"
    return "other"


def refusal_message(refusal: Refusal, settings: DicomConfig) -> str:
    """The log line of a refusal: who, why (with the reason code to grep and count) and the fix in
    words, naming the setting to change: the line a biomedical engineer acts on."""
    r, address = refusal, refusal.address
    if r.reason == "unknown_calling_aet" and not r.calling:
        return (
            f"connection from {address} refused: no calling AE title is allowed (reason unknown_calling_aet);"
            " add the modality's AE title to dicom.allowed_calling_aets"
        )
    if r.reason == "unknown_calling_aet":
        return (
            f'association from {address} refused: calling AE "{r.calling}" is not allowed'
            f" (reason unknown_calling_aet); add '{r.calling}' to dicom.allowed_calling_aets"
        )
    if r.reason == "wrong_called_aet":
        return (
            f'association from {address} refused: called AE "{r.called}" is not this appliance\'s'
            f' "{settings.ae_title}" (calling AE "{r.calling}"; reason wrong_called_aet);'
            f" set the modality's destination AE title to '{settings.ae_title}' (dicom.ae_title)"
        )
    if r.reason == "address_not_allowed":
        return (
            f"connection from {address} refused: address not allowed (reason address_not_allowed);"
            f" add '{address}' to dicom.allowed_addresses"
        )
    if r.reason == "tls":
        return (
            f"connection from {address} refused: TLS handshake failed ({r.detail or 'no detail'}; reason tls);"
            " the sender must speak DICOM TLS 1.2 or newer"
            + (" with a certificate signed by dicom.tls_ca_certs" if settings.tls_ca_certs else "")
        )
    if r.reason == "too_many" and not r.calling:
        return (
            f"connection from {address} refused: it already holds {r.detail} connections (reason too_many);"
            " find what holds them, or raise dicom.max_associations_per_address"
        )
    if r.reason == "too_many":
        return (
            f'association from {address} refused: calling AE "{r.calling}", all {settings.max_associations}'
            " associations in use (reason too_many); find the peers holding them, or raise dicom.max_associations"
        )
    return (
        f'association from {address} refused: calling AE "{r.calling}", called AE "{r.called}"'
        f" ({r.detail or 'reason other'})"
    )


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
    refused: Callable[[Refusal], None]  # StorageScp's: logs and counts

    def server_activate(self) -> None:
        self.connections: list[tuple[str, GuardedSocket | GuardedTlsSocket]] = []
        self.connections_lock = threading.Lock()
        super().server_activate()

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and put the guard (edge.dicom.guard) on the connection before pynetdicom reads a
        byte of it. With TLS, the handshake runs later in the association's own thread (on its first
        read, under the guard's deadline), so a sender that connects and never completes it cannot
        stall the accept loop."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            guarded = guard_tls(client, self.ssl_context, self.limits)
            refused, host = self.refused, str(address[0])
            guarded.on_handshake_failure = lambda detail: refused(Refusal("tls", host, detail=detail))
            return guarded, address
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
            self.refused(Refusal("unknown_calling_aet", host))
            return False
        if self.allowed_addresses and host not in self.allowed_addresses:
            self.refused(Refusal("address_not_allowed", host))
            return False
        held = sum(1 for other, _ in self.open_connections() if other == host)
        if held >= self.per_address:
            self.refused(Refusal("too_many", host, detail=str(held)))
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
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_arrival = on_arrival  # may block while the queue is full: back-pressure on the sender
        self.on_association = on_association  # "accepted" / "rejected"
        self.on_refused = on_refused  # the Refusal's reason, for every sender turned away (metrics)
        self._messages: dict[int, _Message] = {}  # association -> the message it is receiving
        self._warned: dict[str, float] = {}  # address -> when its last too_many refusal was logged
        self._settings_lock = threading.Lock()  # a reload's allow-lists go in together
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

    def _refused(self, refusal: Refusal) -> None:
        """Every refusal is counted; each is logged as a warning with its fix, except that an address
        flooding connections past max_associations_per_address logs one line per REFUSAL_LOG_S."""
        if self.on_refused is not None:
            self.on_refused(refusal.reason)
        if refusal.reason == "too_many" and not refusal.calling:
            now = time.monotonic()
            if now - self._warned.get(refusal.address, -REFUSAL_LOG_S) < REFUSAL_LOG_S:
                return
            self._warned[refusal.address] = now
        message = refusal_message(refusal, self.settings)
        if refusal.reason == "too_many" and not refusal.calling:
            message += f" (further refusals of {refusal.address} are not logged for {REFUSAL_LOG_S:g} s)"
        log.warning(
            message,
            extra={
                "fields": {
                    "event": "association_refused",
                    "reason": refusal.reason,
                    "address": refusal.address,
                    "calling_aet": refusal.calling,
                    "called_aet": refusal.called,
                }
            },
        )

    def _on_pdu_sent(self, event: Event) -> None:
        """An A-ASSOCIATE-RJ as it goes to the peer: pynetdicom's own log says only "Rejecting
        Association"; the PDU says why (the reason the peer hears)."""
        pdu = event.pdu
        if not isinstance(pdu, A_ASSOCIATE_RJ):
            return
        requestor = event.assoc.requestor
        called = getattr(requestor.primitive, "called_ae_title", "") if requestor.primitive is not None else ""
        reason = rejection_reason(pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0)
        detail = f"A-ASSOCIATE-RJ result {pdu.result}, source {pdu.source}, reason {pdu.reason_diagnostic}"
        self._refused(
            Refusal(reason, str(requestor.address), str(requestor.ae_title).strip(), str(called).strip(), detail)
        )

    def _on_accepted(self, event: Event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "")).strip()
        log.info(
            'association from %s accepted: calling AE "%s", called AE "%s"',
            requestor.address,
            calling,
            called,
            extra={
                "fields": {
                    "event": "association_accepted",
                    "address": str(requestor.address),
                    "calling_aet": calling,
                    "called_aet": called,
                }
            },
        )
        if self.on_association is not None:
            self.on_association("accepted")

    def apply(self, settings: DicomConfig) -> list[str]:
        """A reload: the allow-lists (LIVE_SETTINGS) of `settings` take effect for the next connection
        and association request; the names of the live settings that changed. An empty calling-AE list
        refuses connections before pynetdicom sees them (to pynetdicom an empty list means anyone)."""
        changed = [name for name in LIVE_SETTINGS if getattr(settings, name) != getattr(self.settings, name)]
        live = {name: getattr(settings, name) for name in LIVE_SETTINGS}
        with self._settings_lock:
            server = self._server
            if not settings.allowed_calling_aets and isinstance(server, _FilteringServer):
                server.refuse_all = True  # first, so nobody slips through the empty pynetdicom list
            if settings.allowed_calling_aets:
                self._ae.require_calling_aet = list(settings.allowed_calling_aets)
            self.settings = replace(self.settings, **live)
            if isinstance(server, _FilteringServer):
                server.allowed_addresses = frozenset(settings.allowed_addresses)
                server.refuse_all = not settings.allowed_calling_aets
        return changed

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
            (evt.EVT_PDU_SENT, self._on_pdu_sent),  # an A-ASSOCIATE-RJ: logged with its reason and fix
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        if self.on_association is not None:
            report = self.on_association
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
        server.refused = self._refused
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
