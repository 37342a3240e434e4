"""Every acknowledged image gets exactly one verdict: poison pills are quarantined with a verdict, a
fault of the appliance's own code gives an internal_error verdict, and nothing waits behind either."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.uid import JPEG2000Lossless

from edge.config import load_config
from edge.dicom.spool import QUARANTINE_MAX_FILES, Spool
from edge.publish.message import hashed_uid
from edge.service import Service
from tests.dicom.test_sandbox import bomb, deflate_bomb
from tests.qc.conftest import fault_case, write_case
from tools.testbed import (
    Broker,
    VerdictSubscriber,
    endpoint,
    metrics_port,
    site_config,
    store,
    storescu_binary,
    wait_for,
)

TOPIC = "edgeqc/h1/xr2/jetson7/verdict"


def dcmtk_echo(port: int) -> None:
    """A C-ECHO from DCMTK's echoscu with the modality's AE title; raises unless it succeeds."""
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def spool_entry(spool: Path, data: bytes, received_ns: int) -> Path:
    entry = spool / f"{received_ns:020d}-000000.dcm"
    entry.write_bytes(data)
    return entry


def verdicts(subscriber: VerdictSubscriber) -> list[dict[str, Any]]:
    return [p["verdict"] for p in subscriber.payloads("verdict")]


def test_a_poison_pill_is_quarantined_with_a_verdict_and_the_images_behind_it_go_first(
    broker: Broker, tmp_path: Path
) -> None:
    cases = [fault_case("ap", "cut_top", seed, size_px=512) for seed in (61, 62)]
    good = [write_case(case, folder(tmp_path / f"s{i}")) for i, case in enumerate(cases)]
    config_path, _ = site_config(tmp_path, broker.port)
    spool = tmp_path / "spool"
    spool.mkdir()
    now = time.time_ns()
    # What a daemon that died three times judging the oldest entry leaves: the entry, its count of
    # attempts that never ended, and two good images received after it
    pill = spool_entry(spool, good[0].read_bytes(), now - 3_000_000_000)
    (spool / f".{pill.name}.attempts").write_text("3")
    bombs = {
        "stream_size_mismatch": spool_entry(spool, bomb(good[0], JPEG2000Lossless), now - 2_000_000_000),
        "too_large": spool_entry(spool, deflate_bomb(good[0], 300 << 20), now - 1_500_000_000),
    }
    for i, path in enumerate(good):
        spool_entry(spool, path.read_bytes(), now - 1_000_000_000 + i)
    subscriber = VerdictSubscriber(broker.port, TOPIC)
    service = Service(load_config(config_path))
    service.start()
    try:
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 5, timeout=120)
        got = verdicts(subscriber)
        codes = [v["reason_code"] for v in got]
        assert codes[-1] == "quarantined" and got[-1]["verdict"] == "rejected"  # the suspect goes last
        assert sorted(codes[:2]) == sorted(bombs)  # bombs: a rejected verdict each, no death, no quarantine
        assert [v["verdict"] for v in got[2:4]] == ["fail", "fail"]  # the good images were judged
        # MQTT hears of a verdict before its spool entry goes (the radiographer first): wait for the move
        assert wait_for(lambda: not pill.exists(), timeout=10)  # moved out of the spool...
        quarantined = list((spool / "quarantine").glob("*.dcm"))
        assert [q.name for q in quarantined] == [pill.name]  # ...into quarantine, private to the service
        assert stat.S_IMODE(quarantined[0].stat().st_mode) & 0o077 == 0
        assert stat.S_IMODE((spool / "quarantine").stat().st_mode) == 0o700
        pill_uid = hashed_uid(pydicom.dcmread(good[0]).SOPInstanceUID)  # named by its UID (hashed by default)
        assert got[-1]["image"]["sop_instance_uid"] == pill_uid
        assert wait_for(lambda: not list(spool.glob("*.dcm")) and not list(spool.glob(".*.attempts")), timeout=10)
    finally:
        service.stop(drain_s=5)
        subscriber.close()


def test_a_fault_of_the_appliance_gives_one_internal_error_verdict_and_serving_goes_on(
    broker: Broker, tmp_path: Path
) -> None:
    study = write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path)
    config_path, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, TOPIC)
    service = Service(load_config(config_path))
    service.start()
    http = metrics_port(config_path)
    try:
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"))
        backend = service.pipeline._pipeline.backend
        backend.close()  # the inference session is gone: every inference now raises
        store(port, study)
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 1, timeout=60)
        (verdict,) = verdicts(subscriber)
        assert (verdict["verdict"], verdict["reason_code"]) == ("rejected", "internal_error")
        assert verdict["image"]["sop_instance_uid"]
        spool = tmp_path / "spool"  # emptied just after MQTT hears of the verdict (the radiographer first)
        assert wait_for(lambda: not list(spool.glob("*.dcm")) and not list(spool.glob(".*")), timeout=10)
        time.sleep(1)
        assert len(subscriber.payloads("verdict")) == 1  # once, not retried for ever
    finally:
        service.stop(drain_s=5)
        subscriber.close()


def test_the_spool_keeps_no_half_written_file_and_gives_earlier_failures_another_chance(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    (root / "failed").mkdir(parents=True)
    (root / "failed" / "00000000000000000001-000000.dcm").write_bytes(b"kept aside by an earlier version")
    (root / ".00000000000000000009-000000.dcm.attempts").write_text("1")  # its entry was never acknowledged
    spool = Spool(root)
    assert [p.name for p in spool.pending()] == ["00000000000000000001-000000.dcm"]
    assert not (root / "failed").exists() and not list(root.glob(".*.attempts"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    entry = spool.reserve()
    spool.commit(entry, b"an image")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    with pytest.raises(OSError):
        spool.commit(root / "missing-folder" / "x.dcm", b"x")  # a write that fails
    assert not list(root.rglob("*.partial"))
    assert (spool.begin_attempt(entry), spool.begin_attempt(entry)) == (1, 2)
    assert Spool(root).attempts(entry) == 2  # the count survives a restart
    spool.end_attempt(entry)
    assert spool.attempts(entry) == 0


def test_quarantine_holds_only_the_newest_few(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(QUARANTINE_MAX_FILES + 3):
        entry = spool.reserve()
        spool.commit(entry, b"poison")
        os.utime(entry, (1e9 + i, time.time() - 3600 + i))
        spool.quarantine(entry)
    assert len(list(spool.quarantine_dir.glob("*.dcm"))) == QUARANTINE_MAX_FILES
    old = spool.reserve()
    spool.commit(old, b"poison")
    os.utime(old, (1e9, time.time() - 8 * 24 * 3600))  # received over a week ago
    assert not spool.quarantine(old).exists()


def test_a_compressed_image_from_the_modality_is_judged(broker: Broker, tmp_path: Path) -> None:
    """Decoding in the sandbox, end to end: DCMTK sends JPEG 2000, the verdict is the one the plain
    image gets."""
    plain = write_case(fault_case("ap", "cut_top", 61, size_px=512), folder(tmp_path / "plain"))
    ds = pydicom.dcmread(plain)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    compressed = tmp_path / "j2k.dcm"
    compressed.write_bytes(out.getvalue())
    config_path, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, TOPIC)
    service = Service(load_config(config_path))
    service.start()
    try:
        store(port, plain)
        command = [str(storescu_binary()), "-xv", "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(port)]
        sent = subprocess.run(  # -xv: propose JPEG 2000 lossless (storescu would otherwise convert it)
            [*command, str(compressed)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 2, timeout=60)
        first, second = verdicts(subscriber)
        assert first["verdict"] == second["verdict"] == "fail"
        assert first["items"] == second["items"]
        assert "JPEG 2000" in str(second["image"]["transfer_syntax"])
    finally:
        service.stop(drain_s=5)
        subscriber.close()


def test_padding_value_left_as_raw_bytes_is_read_by_pixel_representation(tmp_path: Path) -> None:
    from edge.dicom.decode import _padding_value

    ds = pydicom.dcmread(write_case(fault_case("ap", "cut_top", 61, size_px=256), tmp_path))
    ds.add(DataElement(0x00280120, "OB", b"\xff\xff"))
    ds.PixelRepresentation = 0
    assert _padding_value(ds) == 65535
    ds.PixelRepresentation = 1
    assert _padding_value(ds) == -1


def test_bombs_sent_by_a_modality_get_rejected_verdicts_and_serving_goes_on(broker: Broker, tmp_path: Path) -> None:
    """JPEG 2000, JPEG-LS and deflate bombs by real C-STOREs (pynetdicom sends the files' bytes as
    they are); then DCMTK's C-ECHO and C-STORE of a good image are answered and judged."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless
    from pynetdicom import AE

    from edge.dicom.scp import STORAGE_CLASSES, SUCCESS, VERIFICATION

    good = write_case(fault_case("ap", "cut_top", 61, size_px=512), folder(tmp_path / "good"))
    bombs = {
        JPEG2000Lossless: ("stream_size_mismatch", bomb(good, JPEG2000Lossless)),
        JPEGLSLossless: ("stream_size_mismatch", bomb(good, JPEGLSLossless)),
        DeflatedExplicitVRLittleEndian: ("too_large", deflate_bomb(good, 300 << 20)),
    }
    config_path, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, TOPIC)
    service = Service(load_config(config_path))
    service.start()
    try:
        sop_class = pydicom.dcmread(good).SOPClassUID
        assert sop_class in STORAGE_CLASSES
        for syntax, (_, data) in bombs.items():
            path = tmp_path / f"bomb-{syntax}.dcm"
            path.write_bytes(data)
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(sop_class, syntax)
            assoc = ae.associate("127.0.0.1", port, ae_title="EDGEQC")
            assert assoc.is_established
            assert int(assoc.send_c_store(str(path)).Status) == SUCCESS  # spooled: the verdict says the rest
            assoc.release()
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 3, timeout=60)
        assert sorted(v["reason_code"] for v in verdicts(subscriber)) == sorted(code for code, _ in bombs.values())
        assert {v["verdict"] for v in verdicts(subscriber)} == {"rejected"}
        dcmtk_echo(port)
        store(port, good)
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 4, timeout=60)
        assert verdicts(subscriber)[-1]["verdict"] == "fail"
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", port, ae_title="EDGEQC")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == SUCCESS
        assoc.release()
    finally:
        service.stop(drain_s=5)
        subscriber.close()


def test_a_slowloris_and_a_pdu_length_bomb_leave_the_daemon_judging(broker: Broker, tmp_path: Path) -> None:
    """From another address: two connections that send one byte each and one that announces a 4 GiB
    PDU; meanwhile DCMTK's echoscu is answered and storescu's image judged, and the slow ones are cut."""
    import socket
    import struct

    good = write_case(fault_case("ap", "cut_top", 61, size_px=512), folder(tmp_path / "good"))
    config_path, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, TOPIC)
    service = Service(load_config(config_path))
    service.start()
    attackers: list[socket.socket] = []
    try:
        for first in (b"\x01", b"\x01", struct.pack(">BBL", 1, 0, 0xFFFFFFFF) + bytes(1 << 16)):
            attacker = socket.socket()
            attacker.bind(("127.0.0.2", 0))
            attacker.connect(("127.0.0.1", port))
            with contextlib.suppress(OSError):  # the bomb's connection is cut as soon as its header is read
                attacker.sendall(first)
            attackers.append(attacker)
        dcmtk_echo(port)
        store(port, good)
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 1, timeout=60)
        assert verdicts(subscriber)[0]["verdict"] == "fail"
        for attacker in attackers:  # each is closed by the daemon within the PDU deadline (10 s)
            attacker.settimeout(15)
            with contextlib.suppress(ConnectionResetError):
                while attacker.recv(1 << 16):
                    pass
    finally:
        for attacker in attackers:
            attacker.close()
        service.stop(drain_s=5)
        subscriber.close()
