"""What the SCP tests share: a phantom image, a running SCP, a pynetdicom sender."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from edge.config import DicomConfig
from edge.dicom.scp import STORAGE_CLASSES, StorageScp
from edge.dicom.spool import Arrival, Spool
from tests.qc.conftest import fault_case, write_case
from tools.testbed import free_port

STORESCU = Path("/usr/bin/storescu")  # DCMTK's, not the one pynetdicom installs into the venv


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path_factory.mktemp("scp"))


def run_scp(spool: Spool, **changes: object) -> tuple[StorageScp, list[Arrival]]:
    received: list[Arrival] = []
    settings = DicomConfig(bind="127.0.0.1", port=free_port(), allowed_calling_aets=("MODALITY",))
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    scp = StorageScp(settings, spool, received.append)
    scp.start()
    return scp, received


Running = tuple[StorageScp, list[Arrival], Spool]


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Running]:
    spool = Spool(tmp_path / "spool")
    server, received = run_scp(spool)
    yield server, received, spool
    server.stop()


def send(
    port: int, path: Path, calling: str = "MODALITY", called: str = "EDGEQC", tls: ssl.SSLContext | None = None
) -> int | None:
    """C-STORE one file with pynetdicom; the status, or None when no association was established."""
    ae = AE(ae_title=calling)
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(pydicom.dcmread(path))
    assoc.release()
    return int(status.Status) if status else None


def client_tls(pki: Path, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return context


