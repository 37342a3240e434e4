"""The Storage SCP with real associations: pynetdicom and DCMTK's storescu as senders."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from edge.config import ConfigError, DicomConfig
from edge.dicom.scp import OUT_OF_RESOURCES, SUCCESS, VERIFICATION, StorageScp
from edge.dicom.spool import Spool
from tests.conftest import require_tool
from tests.dicom.conftest import STORESCU, Running, client_tls, run_scp, send
from tools.testbed import wait_for


def test_store_spools_the_dataset_byte_for_byte_before_success(scp: Running, image: Path) -> None:
    server, received, spool = scp
    assert send(server.port, image) == SUCCESS
    assert len(received) == 1 and received[0].wait_spooled() and spool.pending() == [received[0].entry]
    assert received[0].data is None  # the bytes were handed on only while the spool write ran
    stored, original = pydicom.dcmread(received[0].entry), pydicom.dcmread(image)
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
        assert send(server.port, image) == OUT_OF_RESOURCES
        assert [arrival.wait_spooled() for arrival in received] == [False]  # the worker drops its verdict
    finally:
        server.stop()


def test_silent_connections_hold_the_modality_out_only_for_the_association_timeout(
    tmp_path: Path, image: Path
) -> None:
    """Connections that never ask for an association (a port scan, a stuck device) fill
    max_associations; each is dropped after association_timeout_s and the modality is served again."""
    server, received = run_scp(Spool(tmp_path / "spool"), max_associations=2, association_timeout_s=1)
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        assert wait_for(lambda: server.active_associations == 2, timeout=5)
        assert send(server.port, image) is None  # both slots taken
        assert wait_for(lambda: send(server.port, image) == SUCCESS, timeout=10)
        assert len(received) == 1
        for connection in silent:
            connection.close()
    finally:
        server.stop()


def test_concurrent_senders_lose_nothing(tmp_path: Path, image: Path) -> None:
    spool = Spool(tmp_path / "spool")
    server, received = run_scp(spool, max_associations_per_address=4)
    request_stop = server.stop
    statuses: list[int | None] = []
    threads = [threading.Thread(target=lambda: statuses.append(send(server.port, image))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    request_stop()
    assert statuses == [SUCCESS] * 4 and len(spool.pending()) == 4 == len(received)
    assert all(arrival.wait_spooled() for arrival in received)
    assert sorted(arrival.entry for arrival in received) == spool.pending()


def test_dicom_tls_admits_only_senders_with_a_certificate_from_the_ca(pki: Path, image: Path, tmp_path: Path) -> None:
    tls = {"tls_certfile": str(pki / "server.crt"), "tls_keyfile": str(pki / "server.key")}
    server, received = run_scp(
        Spool(tmp_path / "spool"), **tls, tls_ca_certs=str(pki / "ca.crt"), association_timeout_s=1
    )
    silent = socket.create_connection(("127.0.0.1", server.port))  # connects, never starts the handshake
    try:
        assert send(server.port, image, tls=client_tls(pki)) == SUCCESS  # the silent one does not stall accepting
        assert send(server.port, image, tls=client_tls(pki, with_certificate=False)) is None  # mutual TLS
        assert send(server.port, image) is None  # plain DICOM to the TLS port
        storescu = require_tool(STORESCU)
        proc = subprocess.run(
            [str(storescu), "+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"),
             "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(server.port), str(image)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert len(received) == 2 and all(arrival.wait_spooled() for arrival in received)
        assert send(server.port, image, tls=client_tls(pki)) == SUCCESS  # still serving after the refusals
        silent.close()
        assert wait_for(lambda: server.active_associations == 0, timeout=10)  # every connection ended
    finally:
        silent.close()
        server.stop()


def test_dicom_tls_settings_are_checked_with_the_key_named(pki: Path) -> None:
    from edge.config import parse_config

    with pytest.raises(ConfigError, match=r"'dicom.tls_keyfile' is required"):
        parse_config({"dicom": {"tls_certfile": str(pki / "server.crt")}})
    with pytest.raises(ConfigError, match=r"'dicom.tls_ca_certs': no such file"):
        parse_config({"dicom": {"tls_certfile": "server.crt", "tls_keyfile": "server.key", "tls_ca_certs": "x.crt"}},
                     base_dir=pki)  # fmt: skip
    with pytest.raises(ConfigError, match=r"dicom.tls_certfile / dicom.tls_keyfile: cannot load"):
        StorageScp(DicomConfig(tls_certfile=str(pki / "ca.crt"), tls_keyfile=str(pki / "server.key")),
                   Spool(pki / "spool"), lambda arrival: None)  # fmt: skip
