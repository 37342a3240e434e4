"""The Storage SCP with real associations: pynetdicom and DCMTK's storescu as senders."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from edge.config import DicomConfig
from edge.dicom.scp import OUT_OF_RESOURCES, STORAGE_CLASSES, SUCCESS, VERIFICATION, StorageScp
from edge.dicom.spool import Spool
from tests.conftest import require_tool
from tests.qc.conftest import fault_case, write_case
from tools.demo import free_port

STORESCU = Path("/usr/bin/storescu")  # DCMTK's, not the one pynetdicom installs into the venv


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path_factory.mktemp("scp"))


def run_scp(spool: Spool, **changes: object) -> tuple[StorageScp, list[Path]]:
    received: list[Path] = []
    settings = DicomConfig(bind="127.0.0.1", port=free_port(), allowed_calling_aets=("MODALITY",))
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    scp = StorageScp(settings, spool, received.append)
    scp.start()
    return scp, received


Running = tuple[StorageScp, list[Path], Spool]


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Running]:
    spool = Spool(tmp_path / "spool")
    server, received = run_scp(spool)
    yield server, received, spool
    server.stop()


def send(port: int, path: Path, calling: str = "MODALITY", called: str = "EDGEQC") -> int | None:
    """C-STORE one file with pynetdicom; the status, or None when no association was established."""
    ae = AE(ae_title=calling)
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(pydicom.dcmread(path))
    assoc.release()
    return int(status.Status) if status else None


def test_store_spools_the_dataset_byte_for_byte_before_success(scp: Running, image: Path) -> None:
    server, received, spool = scp
    assert send(server.port, image) == SUCCESS
    assert len(received) == 1 and spool.pending() == received
    stored, original = pydicom.dcmread(received[0]), pydicom.dcmread(image)
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    assert stored.PixelData == original.PixelData
    assert not list(spool.root.glob(".*.partial"))


def test_dcmtk_storescu_and_echo(scp: Running, image: Path) -> None:
    storescu = require_tool(STORESCU)
    server, received, _ = scp
    proc = subprocess.run(
        [str(storescu), "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(server.port), str(image)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(received) == 1
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="EDGEQC")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == SUCCESS
    assoc.release()


def test_unknown_senders_are_refused(scp: Running, image: Path, tmp_path: Path) -> None:
    server, received, _ = scp
    assert send(server.port, image, calling="INTRUDER") is None  # calling AE title not allowed
    assert send(server.port, image, called="SOMEONE") is None  # not our AE title
    assert received == []
    other, other_received = run_scp(Spool(tmp_path / "other"), allowed_addresses=("10.1.2.3",))
    try:
        assert send(other.port, image) is None  # 127.0.0.1 is not on the address allow-list
        assert other_received == []
    finally:
        other.stop()
    default, _ = run_scp(Spool(tmp_path / "default"), allowed_calling_aets=())
    try:
        assert send(default.port, image) is None  # no allow-list configured: nobody may store
    finally:
        default.stop()


def test_a_spool_that_cannot_write_answers_out_of_resources_at_once(tmp_path: Path, image: Path) -> None:
    spool = Spool(tmp_path / "spool")
    server, received = run_scp(spool)
    try:
        spool.root.rmdir()
        spool.root.write_text("not a directory any more")  # the disk is gone from under the spool
        assert send(server.port, image) == OUT_OF_RESOURCES and received == []
    finally:
        server.stop()


def test_concurrent_senders_lose_nothing(scp: Running, image: Path) -> None:
    server, received, spool = scp
    statuses: list[int | None] = []
    threads = [threading.Thread(target=lambda: statuses.append(send(server.port, image))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [SUCCESS] * 4 and len(spool.pending()) == 4 == len(received)
