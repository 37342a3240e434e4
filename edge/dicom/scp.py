"""The DICOM Storage SCP (pynetdicom): receive, spool, answer. Nothing else happens in its threads.

Association threads only write the received bytes to the spool and return the status; decoding and
inference run elsewhere (pynetdicom's advice for concurrency, and it keeps large objects out of these
threads). Unknown senders are refused by default: the calling AE title must be on the allow-list, and
where an address allow-list is configured the TCP connection of any other address is closed before an
association exists. A spool that cannot take the dataset answers "out of resources" at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
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
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from edge.config import DicomConfig
from edge.dicom.spool import Spool

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
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700


class _FilteringServer(ThreadedAssociationServer):
    allowed_addresses: frozenset[str] = frozenset()
    refuse_all = False  # no calling AE title allowed: nobody may associate

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if self.refuse_all:
            log.warning("connection from %s refused: no calling AE title is allowed (allowed_calling_aets)", host)
            return False
        if self.allowed_addresses and host not in self.allowed_addresses:
            log.warning("connection from %s refused: address not on the allow-list", host)
            return False
        return True


class StorageScp:
    def __init__(
        self,
        settings: DicomConfig,
        spool: Spool,
        on_spooled: Callable[[Path], None],
        on_association: Callable[[str], None] | None = None,
        on_timing: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_spooled = on_spooled
        self.on_association = on_association  # "accepted" / "rejected"
        self.on_timing = on_timing  # ("spool", seconds) per dataset
        ae = AE(ae_title=settings.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_bytes
        ae.add_supported_context(VERIFICATION)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None

    def _on_store(self, event: Any) -> int:
        started = time.perf_counter()
        try:
            path = self.spool.write(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("spool write failed (%s): answering out of resources", exc.strerror or exc)
            return OUT_OF_RESOURCES
        if self.on_timing is not None:
            self.on_timing("spool", time.perf_counter() - started)
        self.on_spooled(path)
        return SUCCESS

    def start(self) -> None:
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        if self.on_association is not None:
            report = self.on_association
            handlers += [(evt.EVT_ACCEPTED, lambda event: report("accepted"))]
            handlers += [(evt.EVT_REJECTED, lambda event: report("rejected"))]
        server = self._ae.make_server(
            (self.settings.bind, self.settings.port), evt_handlers=handlers, server_class=_FilteringServer
        )
        server.allowed_addresses = frozenset(self.settings.allowed_addresses)  # type: ignore[attr-defined]
        server.refuse_all = not self.settings.allowed_calling_aets  # type: ignore[attr-defined]
        thread = threading.Thread(
            target=make_target(server.serve_forever),
            name=f"scp@{datetime.now():%H%M%S}",
            daemon=True,
        )
        thread.start()
        self._ae._servers.append(server)
        self._server = server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._ae.shutdown()
