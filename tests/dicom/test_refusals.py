"""Senders turned away: every refusal classified once (edge.dicom.scp), counted through the SCP's
callback and logged as one warning naming the peer, the AE titles, the reason code and the fix; the
allow-lists changed on a running SCP (a reload) without a restart."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import DicomConfig
from edge.dicom.scp import LIVE_SETTINGS, SUCCESS, Refusal, StorageScp, refusal_message, rejection_reason
from edge.dicom.spool import Arrival, Spool
from tests.dicom.conftest import client_tls, send
from tools.testbed import free_port, wait_for


class Recorder:
    """An SCP with its arrivals, the refusal reasons its callback got and its log records."""

    def __init__(self, settings: DicomConfig, spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
        self.arrivals: list[Arrival] = []
        self.reasons: list[str] = []
        self.scp = StorageScp(settings, spool, self.arrivals.append, on_refused=self.reasons.append)
        self.caplog = caplog

    def warnings(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.name == "edge.dicom.scp" and r.levelno == logging.WARNING]

    def accepted(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if getattr(r, "fields", {}).get("event") == "association_accepted"]


def settings(**changes: object) -> DicomConfig:
    base = DicomConfig(bind="127.0.0.1", port=free_port(), allowed_calling_aets=("MODALITY",))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def recorder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Recorder]:
    caplog.set_level(logging.INFO, logger="edge.dicom.scp")
    r = Recorder(settings(), Spool(tmp_path / "spool"), caplog)
    r.scp.start()
    yield r
    r.scp.stop()


@pytest.mark.parametrize(
    ("rsd", "reason"),
    [
        ((0x01, 0x01, 0x03), "unknown_calling_aet"),
        ((0x01, 0x01, 0x07), "wrong_called_aet"),
        ((0x02, 0x03, 0x02), "too_many"),
        ((0x02, 0x02, 0x01), "other"),  # a user identity pynetdicom refused: not one of ours
        ((0x01, 0x01, 0x02), "other"),
    ],
)
def test_an_association_reject_is_classified_by_what_the_peer_hears(rsd: tuple[int, int, int], reason: str) -> None:
    assert rejection_reason(*rsd) == reason


def test_each_refusal_says_who_why_and_the_fix() -> None:
    dicom = DicomConfig(ae_title="EDGEQC", max_associations=4, tls_ca_certs="/etc/ca.crt")
    cases = {
        Refusal("unknown_calling_aet", "10.0.0.5", "WRONGAE", "EDGEQC"): (
            'association from 10.0.0.5 refused: calling AE "WRONGAE" is not allowed (reason unknown_calling_aet);'
            " add 'WRONGAE' to dicom.allowed_calling_aets"
        ),
        Refusal("unknown_calling_aet", "10.0.0.5"): "add the modality's AE title to dicom.allowed_calling_aets",
        Refusal("wrong_called_aet", "10.0.0.5", "MODALITY", "PACS"): (
            "set the modality's destination AE title to 'EDGEQC' (dicom.ae_title)"
        ),
        Refusal("address_not_allowed", "10.0.0.6"): "add '10.0.0.6' to dicom.allowed_addresses",
        Refusal("tls", "10.0.0.7", detail="wrong version number"): "with a certificate signed by dicom.tls_ca_certs",
        Refusal("too_many", "10.0.0.8", detail="2"): "raise dicom.max_associations_per_address",
        Refusal("too_many", "10.0.0.8", "MODALITY", "EDGEQC"): "all 4 associations in use",
    }
    for refusal, words in cases.items():
        message = refusal_message(refusal, dicom)
        assert words in message, message
        assert refusal.address in message and f"reason {refusal.reason}" in message


def test_a_wrong_calling_and_a_wrong_called_ae_are_refused_each_with_its_reason(
    recorder: Recorder, image: Path
) -> None:
    port = recorder.scp.port
    assert send(port, image, calling="WRONGAE") is None
    assert send(port, image, called="NOTEDGEQC") is None
    assert send(port, image) == SUCCESS
    assert wait_for(lambda: len(recorder.reasons) == 2 and len(recorder.accepted()) == 1)
    assert recorder.reasons == ["unknown_calling_aet", "wrong_called_aet"]
    calling, called = recorder.warnings()
    assert 'calling AE "WRONGAE"' in calling.getMessage() and "127.0.0.1" in calling.getMessage()
    assert "add 'WRONGAE' to dicom.allowed_calling_aets" in calling.getMessage()
    assert calling.fields == {  # type: ignore[attr-defined]
        "event": "association_refused",
        "reason": "unknown_calling_aet",
        "address": "127.0.0.1",
        "calling_aet": "WRONGAE",
        "called_aet": "EDGEQC",
    }
    assert 'called AE "NOTEDGEQC"' in called.getMessage() and "'EDGEQC' (dicom.ae_title)" in called.getMessage()
    assert called.fields["reason"] == "wrong_called_aet"  # type: ignore[attr-defined]
    accepted = recorder.accepted()[0]
    assert accepted.levelno == logging.INFO and 'calling AE "MODALITY"' in accepted.getMessage()


def test_the_allow_lists_change_on_a_running_scp(recorder: Recorder, image: Path) -> None:
    scp, port = recorder.scp, recorder.scp.port
    assert send(port, image, calling="NEWAE") is None
    before = scp.settings
    added = dataclasses.replace(before, allowed_calling_aets=("MODALITY", "NEWAE"), probe_calling_aets=("NEWAE",))
    assert scp.apply(added) == ["allowed_calling_aets", "probe_calling_aets"]
    assert send(port, image, calling="NEWAE") == SUCCESS
    assert recorder.arrivals[-1].probe  # the probe list too
    assert scp.apply(dataclasses.replace(added, allowed_addresses=("10.9.9.9",))) == ["allowed_addresses"]
    assert send(port, image, calling="NEWAE") is None
    emptied = dataclasses.replace(added, allowed_calling_aets=())
    assert scp.apply(emptied) == ["allowed_calling_aets", "allowed_addresses"]
    assert send(port, image) is None  # nobody, not anybody (pynetdicom's reading of an empty list)
    assert scp.apply(dataclasses.replace(emptied, allowed_calling_aets=("MODALITY",))) == ["allowed_calling_aets"]
    assert send(port, image) == SUCCESS
    assert wait_for(lambda: len(recorder.reasons) == 3)
    assert recorder.reasons == ["unknown_calling_aet", "address_not_allowed", "unknown_calling_aet"]
    assert scp.settings.ae_title == before.ae_title and scp.settings.port == before.port
    assert set(LIVE_SETTINGS) == {"allowed_calling_aets", "allowed_addresses", "probe_calling_aets"}


def test_connections_beyond_the_limits_are_refused_as_too_many(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.dicom.scp")
    r = Recorder(
        settings(max_associations_per_address=1, association_timeout_s=30), Spool(tmp_path / "spool"), caplog
    )
    r.scp.start()
    holder = socket.create_connection(("127.0.0.1", r.scp.port))
    try:
        assert wait_for(lambda: r.scp.active_associations == 1)
        for _ in range(3):
            assert send(r.scp.port, image) is None
        assert r.reasons == ["too_many"] * 3  # each counted,
        assert len(r.warnings()) == 1  # one line per REFUSAL_LOG_S for a flooding address
        assert "already holds 1 connections" in r.warnings()[0].getMessage()
    finally:
        holder.close()
        r.scp.stop()
    r = Recorder(settings(max_associations=1, max_associations_per_address=4), Spool(tmp_path / "s2"), caplog)
    r.scp.start()
    from pynetdicom import AE

    from edge.dicom.scp import STORAGE_CLASSES

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(STORAGE_CLASSES[0])
    first = ae.associate("127.0.0.1", r.scp.port, ae_title="EDGEQC")
    try:
        assert first.is_established
        assert send(r.scp.port, image) is None
        assert wait_for(lambda: r.reasons == ["too_many"])
        assert 'calling AE "MODALITY", all 1 associations in use' in r.warnings()[-1].getMessage()
    finally:
        first.release()
        r.scp.stop()


def test_a_failed_tls_handshake_is_refused_as_tls(
    pki: Path, image: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.dicom.scp")
    tls = settings(
        tls_certfile=str(pki / "server.crt"), tls_keyfile=str(pki / "server.key"), tls_ca_certs=str(pki / "ca.crt")
    )
    r = Recorder(tls, Spool(tmp_path / "spool"), caplog)
    r.scp.start()
    try:
        assert send(r.scp.port, image) is None  # plain DICOM to the TLS port
        assert send(r.scp.port, image, tls=client_tls(pki, with_certificate=False)) is None  # mutual TLS
        socket.create_connection(("127.0.0.1", r.scp.port)).close()  # a port check: not a refusal
        assert send(r.scp.port, image, tls=client_tls(pki)) == SUCCESS
        assert wait_for(lambda: len(r.reasons) == 2 and len(r.accepted()) == 1)
        assert r.reasons == ["tls", "tls"]
        messages = [w.getMessage() for w in r.warnings()]
        assert all("TLS handshake failed" in m and "dicom.tls_ca_certs" in m for m in messages), messages
    finally:
        r.scp.stop()
