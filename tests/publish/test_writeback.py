"""Write-back: one DICOM SR per judged image, in the image's study, C-STORE'd from a durable queue.

The report is checked as DCMTK (dsrdump) and dicom3tools (dciodvfy) read it, and delivered to DCMTK's
storescp: when it is up, after it comes back, and after a daemon restart; never for a probe."""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge.config import WritebackConfig, load_config
from edge.pipeline import Pipeline
from edge.publish.writeback import (
    MAX_REFUSALS,
    SCHEME,
    SERIES_DESCRIPTION,
    Queue,
    Writeback,
    encode,
    queue_path,
    referenced_uids,
    structured_report,
    wanted,
)
from edge.qc.verdict import Verdict, ViewInfo
from tests.conftest import DCIODVFY, require_tool
from tests.qc.conftest import fault_case, write_case
from tools.testbed import (
    Broker,
    Daemon,
    StoreScp,
    VerdictSubscriber,
    site_config,
    store,
    wait_for,
)

DSRDUMP = Path("/usr/bin/dsrdump")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SNAKE_CASE = re.compile(r"\b[a-z]+(?:_[a-z0-9]+)+\b")


@pytest.fixture(scope="module")
def judged(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An under-rotated oblique (two failed items) and its verdict."""
    image = write_case(fault_case("oblique", "under_rotated", 61), tmp_path_factory.mktemp("writeback"))
    verdict = pipeline.process(image).verdict.as_dict()
    assert verdict["verdict"] == "fail" and len(verdict["failed"]) == 2
    return image, verdict


def header(image: Path) -> Dataset:
    return pydicom.dcmread(image, stop_before_pixels=True)


def texts(report: Dataset) -> list[str]:
    """Every text a person reads in the content tree: text values and code meanings."""
    found: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if "TextValue" in item:
                found.append(str(item.TextValue))
            for sequence in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                found.extend(str(code.CodeMeaning) for code in item.get(sequence, []))
            walk(item.get("ContentSequence", []))

    walk([report])
    return found


def test_the_report_joins_the_image_study_and_refers_to_the_image(judged: tuple[Path, dict[str, Any]]) -> None:
    image_path, verdict = judged
    image = header(image_path)
    report = structured_report(image, verdict, "jetson7", "jetson7-0001-000001", 1_700_000_000.0)
    assert report.SOPClassUID == COMPREHENSIVE_SR and report.Modality == "SR"
    assert report.StudyInstanceUID == image.StudyInstanceUID
    assert (report.PatientID, str(report.PatientName)) == (image.PatientID, str(image.PatientName))
    assert report.SeriesInstanceUID != image.SeriesInstanceUID
    assert report.SeriesDescription == SERIES_DESCRIPTION
    assert "SpecificCharacterSet" not in report  # all ASCII: the default repertoire (UTF-8 only when needed)
    assert report.SOPInstanceUID != image.SOPInstanceUID
    assert list(referenced_uids(report)) == [image.SOPInstanceUID]
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    day = time.strftime("%Y%m%d", time.localtime(1_700_000_000.0))
    assert (str(report.ContentDate), report.CompletionFlag) == (day, "COMPLETE")
    # the same verdict built again (a retry, a replay) is the same instance; another verdict is another
    again = structured_report(image, verdict, "jetson7", "jetson7-0001-000001", 1_700_000_000.0)
    other = structured_report(image, verdict, "jetson7", "jetson7-0002-000002", 1_700_000_000.0)
    assert again.SOPInstanceUID == report.SOPInstanceUID != other.SOPInstanceUID
    assert other.SeriesInstanceUID == report.SeriesInstanceUID  # one QC series per device and study


def test_the_report_says_what_the_verdict_says_in_titles_never_ids(judged: tuple[Path, dict[str, Any]]) -> None:
    image_path, verdict = judged
    report = structured_report(header(image_path), verdict, "jetson7", "k", 1_700_000_000.0)
    said = texts(report)
    assert verdict["headline"] in said
    for failed in verdict["failed"]:
        assert failed["title"] in said and failed["correction"] in said and failed["message"] in said
    for result in verdict["items"].values():
        assert result["title"] in said
    assert "Usable - Does not meet the quality control standard" in said
    ids = set(verdict["items"])
    assert not [t for t in said if ids & set(SNAKE_CASE.findall(t))], said
    items = [
        item
        for item in report.ContentSequence
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == SCHEME
    ]
    assert len(items) == len(verdict["items"])
    assert all(len(item.ConceptNameCodeSequence[0].CodeValue) <= 16 for item in items)  # SH
    outcomes = [item.ConceptCodeSequence[0].CodeMeaning for item in items]
    assert outcomes[: len(verdict["failed"])] == ["Failed"] * len(verdict["failed"])  # failed first


def test_dsrdump_shows_the_corrections_and_dciodvfy_finds_no_error(
    judged: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    dsrdump, dciodvfy = require_tool(DSRDUMP), require_tool(DCIODVFY, package="dicom3tools")
    image_path, verdict = judged
    path = tmp_path / "report.dcm"
    structured_report(header(image_path), verdict, "jetson7", "k", 1_700_000_000.0).save_as(
        path, enforce_file_format=True
    )
    dump = subprocess.run([dsrdump, "+Pl", path], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    for failed in verdict["failed"]:
        assert f'CODE:(,,"{failed["title"]}")=(FAILED,{SCHEME},"Failed")' in dump.stdout
        assert f'TEXT:(,,"Recommendation")="{failed["correction"]}"' in dump.stdout
    assert f'TEXT:(,,"Summary")="{verdict["headline"]}"' in dump.stdout
    checked = subprocess.run([dciodvfy, path], capture_output=True, text=True, check=False)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert not errors, checked.stdout + checked.stderr


def test_an_indeterminate_verdict_gets_a_report_saying_check_the_image_yourself(
    judged: tuple[Path, dict[str, Any]],
) -> None:
    image_path, _ = judged
    view = ViewInfo(None, None, None, None, None, None)
    verdict = Verdict.indeterminate(
        reason="the spine could not be read reliably: check the image yourself",
        code="unreadable",
        view=view,
        image={"sop_instance_uid": "1.2.3"},
        versions={"standard": "lumbar 1.0", "model": "m 1"},
    ).as_dict()
    assert wanted(verdict, probe=False)
    report = structured_report(header(image_path), verdict, "jetson7", "k", 1_700_000_000.0)
    said = texts(report)
    assert "Check the image yourself" in said and verdict["reason"] in said and "Indeterminate" in said
    assert list(referenced_uids(report)) == [header(image_path).SOPInstanceUID]


def test_no_report_for_a_probe_or_a_rejected_image(judged: tuple[Path, dict[str, Any]]) -> None:
    image_path, verdict = judged
    rejected = Verdict.rejected(reason="not a radiograph", code="not_an_image", versions={}).as_dict()
    assert not wanted(verdict, probe=True)
    assert not wanted(rejected, probe=False)
    assert wanted(verdict, probe=False)
    with pytest.raises(ValueError, match="rejected"):
        structured_report(header(image_path), rejected, "jetson7", "k", 1_700_000_000.0)


def test_a_patient_name_in_another_character_set_reaches_the_report_intact(
    judged: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The header goes through the queue and the SR is UTF-8 (the corrections may be in any language)."""
    image_path, verdict = judged
    latin1 = pydicom.dcmread(image_path)
    latin1.SpecificCharacterSet, latin1.PatientName = "ISO_IR 100", "Müller^Jürgen"
    latin1.save_as(tmp_path / "latin1.dcm")
    writeback = Writeback(settings(1), "EDGEQC", "jetson7", Queue(tmp_path / "q.sqlite", 10, 2**20))
    assert writeback.submit(tmp_path / "latin1.dcm", verdict, "k")
    (row,) = writeback.queue.pending()
    report = pydicom.dcmread(io.BytesIO(encode(row.report("jetson7"))))
    assert (str(report.PatientName), report.SpecificCharacterSet) == ("Müller^Jürgen", "ISO_IR 192")
    writeback.queue.close()


def test_an_image_without_a_study_uid_is_refused_when_queued_not_when_sent(
    judged: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    image_path, verdict = judged
    broken = header(image_path)
    del broken.StudyInstanceUID
    failures: list[str] = []
    writeback = Writeback(settings(1), "EDGEQC", "jetson7", Queue(tmp_path / "q.sqlite", 10, 2**20),
                          on_failure=failures.append)  # fmt: skip
    assert not writeback.submit(broken, verdict, "k")
    assert failures == ["unbuildable"] and writeback.queue.depth() == 0
    writeback.queue.close()


def test_the_queue_is_durable_ordered_idempotent_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "writeback.sqlite"
    queue = Queue(path, max_rows=3, max_bytes=2**20)
    for key in ("a", "b", "a", "c"):
        assert queue.put(key, b"header " + key.encode(), {"verdict": "pass", "key": key})
    assert not queue.put("d", b"header d", {"verdict": "pass"})  # full: 3 rows
    queue.close()
    assert path.stat().st_mode & 0o077 == 0  # it holds patient data
    reopened = Queue(path, max_rows=3, max_bytes=2**20)
    rows = reopened.pending()
    assert [r.key for r in rows] == ["a", "b", "c"] and rows[1].header == b"header b"
    assert rows[2].verdict == {"verdict": "pass", "key": "c"}
    reopened.remove(rows[0].row)
    assert reopened.put("d", b"header d", {}) and [r.key for r in reopened.pending()] == ["b", "c", "d"]
    reopened.close()
    small = Queue(tmp_path / "small.sqlite", max_rows=100, max_bytes=100)
    assert small.put("x", b"h" * 60, {}) and not small.put("y", b"h" * 60, {})  # bytes bound
    small.close()


def test_the_queue_sits_beside_the_outbox_unless_the_site_says_where(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    section = '[service]\noutbox_path = "state/outbox.sqlite"\n[writeback]\nenabled = true\nhost = "pacs"\n'
    site.write_text(section + 'called_ae = " PACS "\n')
    config = load_config(site)
    assert queue_path(config) == tmp_path / "state" / "writeback.sqlite"
    assert (config.writeback.called_ae, config.writeback.port) == ("PACS", 104)  # padding is not the title
    site.write_text(section + 'called_ae = "PACS"\nqueue_path = "q/wb.sqlite"\ncalling_ae = "ROOM2"\n')
    config = load_config(site)
    assert queue_path(config) == tmp_path / "q" / "wb.sqlite"
    writeback = Writeback.from_config(config)
    assert writeback.calling_ae == "ROOM2" and writeback.queue.path == queue_path(config)
    writeback.queue.close()
    default = Writeback(settings(1), "EDGEQC", "d", Queue(tmp_path / "x.sqlite", 1, 2**20))
    assert default.calling_ae == "EDGEQC"  # no writeback.calling_ae: the appliance's dicom.ae_title
    default.queue.close()


def settings(port: int) -> WritebackConfig:
    return WritebackConfig(
        enabled=True, host="127.0.0.1", port=port, called_ae="PACS", timeout_s=5, retry_initial_s=1, retry_max_s=1
    )


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreScp]:
    scp = StoreScp(tmp_path / "pacs")
    yield scp
    scp.stop()


def read_all(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def test_reports_queued_while_the_destination_is_down_arrive_in_order_when_it_is_back(
    judged: tuple[Path, dict[str, Any]], pacs: StoreScp, tmp_path: Path
) -> None:
    require_tool(DSRDUMP)
    image_path, verdict = judged
    sent: list[int] = []
    failures: list[str] = []
    queue = Queue(tmp_path / "writeback.sqlite", 100, 2**24)
    writeback = Writeback(settings(pacs.port), "EDGEQC", "jetson7", queue,
                          on_sent=lambda: sent.append(1), on_failure=failures.append)  # fmt: skip
    writeback.start()  # storescp is not running yet: the C-ECHO and the first sends fail
    keys = [f"jetson7-{n:04d}" for n in range(3)]
    for key in keys:
        assert writeback.submit(image_path, verdict, key)
    assert wait_for(lambda: "unreachable" in failures, timeout=30)
    assert failures[0] == "echo" and queue.depth() == 3 and not pacs.received()
    pacs.start()
    assert wait_for(lambda: len(pacs.received()) == 3 and queue.depth() == 0, timeout=60)
    writeback.stop()
    reports = read_all(pacs.received())
    image = header(image_path)
    assert [r.SOPInstanceUID for r in reports] == [
        structured_report(image, verdict, "jetson7", key, 0.0).SOPInstanceUID for key in keys
    ]  # in the order they were queued
    assert all(r.StudyInstanceUID == image.StudyInstanceUID for r in reports)
    assert all(list(referenced_uids(r)) == [image.SOPInstanceUID] for r in reports)
    assert len(sent) == 3


def test_the_daemon_writes_back_one_report_per_judged_image_and_none_for_a_probe(
    broker: Broker, pacs: StoreScp, tmp_path: Path, judged: tuple[Path, dict[str, Any]]
) -> None:
    """End to end: destination down at start (a warning naming it; the daemon is ready all the same, MQTT
    unaffected), the report queued across a daemon restart, delivered once the destination is up."""
    image_path, _ = judged
    probe_path = tmp_path / "probe.dcm"
    probe_image = pydicom.dcmread(write_case(fault_case("ap", "cut_top", 62), tmp_path))
    probe_image.SOPInstanceUID = probe_image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    probe_image.save_as(probe_path)
    extra = f"""[writeback]
enabled = true
host = "127.0.0.1"
port = {pacs.port}
called_ae = "PACS"
timeout_s = 5
retry_initial_s = 1
retry_max_s = 2
"""
    config, port = site_config(tmp_path, broker.port, extra=extra)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/verdict")
    daemon = Daemon.start(config)
    try:
        store(port, probe_path, calling="EDGEQC-PROBE")
        store(port, image_path)
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 2, timeout=120)
        assert wait_for(lambda: not list((tmp_path / "spool").glob("*.dcm")), timeout=30)  # both committed
        assert daemon.endpoint("/readyz") == (200, "ready")  # the destination is down: not the MQTT path's problem
        scraped = daemon.scrape()
        assert "edgeqc_writeback_queue_depth 1.0" in scraped  # the patient's image only
        assert 'edgeqc_writeback_failures_total{reason="echo"} 1.0' in scraped
        assert any("does not answer C-ECHO" in line and f"127.0.0.1:{pacs.port}" in line and "PACS" in line
                   for line in daemon.lines)  # fmt: skip
    finally:
        assert daemon.stop() == 0
    pacs.start()
    daemon = Daemon.start(config)  # the queue survived the restart
    try:
        assert wait_for(lambda: len(pacs.received()) == 1 and "edgeqc_writeback_queue_depth 0.0" in daemon.scrape(),
                        timeout=60)  # fmt: skip
        assert "edgeqc_writeback_sent_total 1.0" in daemon.scrape()
    finally:
        assert daemon.stop() == 0
        subscriber.close()
    (report,) = read_all(pacs.received())
    image = header(image_path)
    assert report.StudyInstanceUID == image.StudyInstanceUID
    assert list(referenced_uids(report)) == [image.SOPInstanceUID]
    probe = header(probe_path)
    assert probe.SOPInstanceUID not in referenced_uids(report)


def test_a_report_the_destination_keeps_refusing_is_set_aside_and_the_rest_go(
    judged: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A PACS that answers one report with a failure status (0xA700, out of resources) every time: after
    MAX_REFUSALS tries it is set aside (kept in the queue file, counted as refused) and the reports
    queued behind it are stored; none of the others is set aside."""
    from pynetdicom import AE, evt

    image_path, verdict = judged
    keys = [f"jetson7-{n:04d}" for n in range(3)]
    refused_uid = structured_report(header(image_path), verdict, "jetson7", keys[0], 0.0).SOPInstanceUID
    stored: list[str] = []

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == refused_uid:
            return 0xA700
        stored.append(uid)
        return 0x0000

    scp = AE(ae_title="PACS")
    scp.add_supported_context(COMPREHENSIVE_SR)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        port = server.server_address[1]
        failures: list[str] = []
        queue = Queue(tmp_path / "writeback.sqlite", 100, 2**24)
        writeback = Writeback(settings(port), "EDGEQC", "jetson7", queue, on_failure=failures.append)
        for key in keys:
            assert writeback.submit(image_path, verdict, key)
        for attempt in range(1, MAX_REFUSALS):
            assert writeback.send_pending() == (0, "status", "C-STORE answered status 0xA700"), attempt
            assert queue.depth() == 3 and not stored
        assert writeback.send_pending() == (2, None, "")
        assert queue.depth() == 0 and len(stored) == 2 and refused_uid not in stored
        assert queue.set_aside_keys() == [keys[0]] and failures == ["refused"]
        queue.close()
    finally:
        server.shutdown()
