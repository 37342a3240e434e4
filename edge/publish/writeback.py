"""Write-back: the verdict into the image's own study, as a DICOM Structured Report, by C-STORE.

The SR is built with highdicom (a Comprehensive SR; no hand-made content tree) from the received image's
header and the verdict document (`Verdict.as_dict()`, the published schema: like the MQTT message, this
room reads the document and imports no QC types). It copies the image's patient and study modules, so a
PACS files it in the same study, in a series of its own ("edge-qc QC report", one per device and study).
One SR per judged image: pass, fail, and indeterminate (its headline says to check the image yourself, and
why); none for a health probe (no patient) and none for a rejected image (nothing was read to report on,
and the file may not even be an image).

Durable like the MQTT outbox: what the SR is built from (the header, the verdict) is committed to a SQLite
queue (WAL, synchronous=FULL) before the image's spool entry goes, and a row leaves the queue only when
the destination answered the C-STORE of its SR with success (or a warning: stored, perhaps coerced). One
sender thread C-ECHOes the destination at start (a warning naming host, port and AE titles when it does
not answer; the daemon starts anyway), then sends oldest first, backing off while the destination is
down. The queue is bounded: a full queue takes no more SRs (an error in the log and a count), and never
touches readiness: the verdicts still go out over MQTT, which is what the room waits for.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from edge.config import Config, WritebackConfig

log = logging.getLogger("edge.publish.writeback")

SERIES_DESCRIPTION: Final = "edge-qc QC report"
SERIES_NUMBER: Final = 9901  # high, so a viewer lists the QC series after the modality's own
MANUFACTURER: Final = "edge-qc"
# Concepts no standard vocabulary has (the report itself, an item of the lumbar standard, its outcome)
# are in this private coding scheme, described in the SR's Coding Scheme Identification Sequence.
SCHEME: Final = "99EDGEQC"
REPORTED: Final = ("pass", "fail", "indeterminate")  # verdicts that get an SR: the image was read
# C-STORE statuses after which the destination holds the SR: success, and the warnings of PS3.4 B.2.3
# (coerced, elements discarded, not matching the SOP class: stored all the same).
STORED: Final = frozenset({0x0000, 0xB000, 0xB006, 0xB007, 0x0001, 0x0107, 0x0116})
VERIFICATION: Final = "1.2.840.10008.1.1"  # the C-ECHO SOP class
BATCH: Final = 20  # SRs sent in one association when a queue drains
IDLE_S: Final = 5.0  # how long the sender sleeps with an empty queue, unless told of a new SR
# An SR the destination answers with a failure status this many times in a row is set aside (kept in
# the queue file's set_aside table, logged and counted), so that one report it will never take does not
# hold up every report behind it; a destination that is down or refuses the association sets none aside.
MAX_REFUSALS: Final = 3
SET_ASIDE_KEPT: Final = 100  # the newest set-aside reports kept for inspection

Reason = Literal["unreachable", "rejected", "status", "refused", "queue_full", "unbuildable", "queue_error", "echo"]


def _code(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


REPORT: Final = _code("QCREPORT", "Radiograph quality control report")
VERDICT: Final = Code("111029", "DCM", "Image Quality Rating")
VERDICT_VALUES: Final = {
    "pass": Code("111237", "DCM", "Usable - Meets the quality control standard"),
    "fail": Code("111236", "DCM", "Usable - Does not meet the quality control standard"),
    "indeterminate": Code("82334004", "SCT", "Indeterminate"),
}
SUMMARY: Final = Code("121111", "DCM", "Summary")  # the headline
REASON: Final = _code("REASON", "Why not judged")
VIEW: Final = Code("111031", "DCM", "Image View")
COMMENT: Final = Code("121106", "DCM", "Comment")  # the verdict's notes
STANDARD: Final = Code("111051", "DCM", "Quality Control Standard")
MODEL: Final = _code("MODEL", "Model")
SOURCE: Final = Code("121112", "DCM", "Source of Measurement")  # the judged image
EXPOSURE: Final = {
    "exposure_index": Code("113845", "DCM", "Exposure Index"),
    "target_exposure_index": Code("113846", "DCM", "Target Exposure Index"),
    "deviation_index": Code("113847", "DCM", "Deviation Index"),
}
OUTCOMES: Final = {
    "pass": _code("MET", "Met"),
    "warn": _code("WARN", "Warning"),
    "fail": _code("FAILED", "Failed"),
    "indeterminate": _code("NOTMEASURED", "Could not be measured"),
}
MEASURED: Final = _code("VALUE", "Measured value")
THRESHOLD: Final = Code("122411", "DCM", "Threshold Value")
FINDING: Final = Code("121071", "DCM", "Finding")  # what is wrong (the standard's message)
RECOMMENDATION: Final = Code("121075", "DCM", "Recommendation")  # the correction
NO_UNITS: Final = Code("1", "UCUM", "no units")
UNITS: Final = {
    "mm": Code("mm", "UCUM", "millimeter"),
    "deg": Code("deg", "UCUM", "degree"),
    "levels": Code("{levels}", "UCUM", "levels"),
    "%": Code("%", "UCUM", "percent"),
}
LANGUAGES: Final = {"en": "English", "de": "German", "fr": "French", "nl": "Dutch", "es": "Spanish", "it": "Italian"}
TEXT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})  # those a character set applies to
ORDER: Final = {"fail": 0, "warn": 1, "indeterminate": 2, "pass": 3}  # failed items first, as the room shows them
# Type 2 attributes highdicom copies from the image: present (maybe empty) in the SR whatever the modality sent.
PATIENT_AND_STUDY: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def item_code(item: str, title: str) -> Code:
    """An item's concept: a short stable code (SH holds 16 characters; the item id is for machines, and
    is never shown) meaning the standard's title."""
    return _code("Q" + hashlib.sha256(item.encode()).hexdigest()[:12].upper(), title)


def _unit(unit: str) -> Code:
    return UNITS.get(unit, NO_UNITS)  # ratio, fraction, DI and "" are dimensionless


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def wanted(verdict: Mapping[str, Any], probe: bool) -> bool:
    """Does this verdict get an SR: a patient's image that was read (not a probe, not rejected)."""
    return not probe and verdict.get("verdict") in REPORTED


def _view(view: Mapping[str, Any] | None) -> str:
    if not view or not view.get("judged"):
        return ""
    judged = str(view["judged"])
    shown = "AP" if judged == "ap" else judged
    side = view.get("oblique_side")
    return f"{shown} ({side})" if judged == "oblique" and side else shown


def _item(item: str, result: Mapping[str, Any]) -> hd.sr.CodeContentItem:
    """One QC item, coded as its title (the concept's meaning) = its outcome, with its value and unit,
    thresholds, and for an item that did not pass, what is wrong and what to do, as properties."""
    title = str(result.get("title") or "")
    outcome = str(result.get("outcome", "indeterminate"))
    unit = _unit(str(result.get("unit") or ""))
    coded = hd.sr.CodeContentItem(
        item_code(item, title), OUTCOMES.get(outcome, OUTCOMES["indeterminate"]), relationship_type="CONTAINS"
    )
    properties: list[hd.sr.ContentItem] = []
    value = _number(result.get("value"))
    if value is not None:
        properties.append(hd.sr.NumContentItem(MEASURED, value, unit, relationship_type="HAS PROPERTIES"))
    for limit in result.get("threshold") or []:
        if (number := _number(limit)) is not None:
            properties.append(hd.sr.NumContentItem(THRESHOLD, number, unit, relationship_type="HAS PROPERTIES"))
    if outcome != "pass":
        for concept, key in ((FINDING, "message"), (RECOMMENDATION, "correction")):
            if text := str(result.get(key) or ""):
                properties.append(hd.sr.TextContentItem(concept, text, relationship_type="HAS PROPERTIES"))
    if properties:
        coded.ContentSequence = hd.sr.ContentSequence(properties)
    return coded


def _header(image: Dataset) -> Dataset:
    """The image's header with what highdicom copies present: Type 2 attributes a modality left out are
    empty, and a Patient's Sex outside PS3.3's M/F/O is empty rather than a refused SR."""
    header = Dataset()
    header.update(image)
    for keyword in PATIENT_AND_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    if str(header.PatientSex) not in ("M", "F", "O", ""):
        header.PatientSex = ""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(header.get(keyword, "")):
            raise ValueError(f"the image has no {keyword}: its study cannot be found")
    return header


def _character_set(header: Dataset, verdict: Mapping[str, Any]) -> str | None:
    """UTF-8 when the image's texts or the verdict's (a translated correction) go beyond ASCII; else the
    default repertoire, which every PACS reads (and which dciodvfy checks VR by VR)."""
    texts = [str(element.value) for element in header.iterall() if element.VR in TEXT_VRS]
    plain = all(text.isascii() for text in texts) and json.dumps(verdict, ensure_ascii=False).isascii()
    return None if plain else "ISO_IR 192"


def structured_report(
    image: Dataset, verdict: Mapping[str, Any], device: str, key: str, created_unix: float
) -> Dataset:
    """The SR of one verdict (`Verdict.as_dict()`) on `image` (its header: pixels not needed), written by
    `device` at `created_unix` (its content date and time). `key` names the verdict uniquely (the MQTT
    message id): the SR's SOP Instance UID derives from it, so the SR of a verdict built again (a retry, a
    replay after a restart) is the same instance, not a second report.

    Content: the verdict (coded), the headline, why it was not judged (indeterminate), the view, EI and DI,
    each item (failed first) with its outcome, value, thresholds, finding and correction, the verdict's
    notes, the standard and model, and the judged image (an IMAGE reference, which highdicom also lists
    as evidence); in the verdict's language (TID 1204) and from a device observer (TID 1004)."""
    header = _header(image)
    outcome = str(verdict.get("verdict"))
    if outcome not in REPORTED:
        raise ValueError(f"a {outcome} verdict gets no report")
    language = str(verdict.get("language") or "en")
    versions = {str(k): str(v) for k, v in (verdict.get("versions") or {}).items()}
    content: list[hd.sr.ContentItem] = [
        *hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept(language, "RFC5646", LANGUAGES.get(language, language))
        ),
        *hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(entropy_srcs=["edge-qc device", device]),
                name=device,
                manufacturer_name=MANUFACTURER,
                model_name=MANUFACTURER,
                serial_number=device,
            ),
        ),
        hd.sr.CodeContentItem(VERDICT, VERDICT_VALUES[outcome], relationship_type="CONTAINS"),
    ]

    def text(concept: Code, value: str) -> None:
        if value:
            content.append(hd.sr.TextContentItem(concept, value, relationship_type="CONTAINS"))

    text(SUMMARY, str(verdict.get("headline") or ""))
    text(REASON, str(verdict.get("reason") or ""))
    text(VIEW, _view(verdict.get("view")))
    for name, concept in EXPOSURE.items():
        if (number := _number((verdict.get("exposure") or {}).get(name))) is not None:
            content.append(hd.sr.NumContentItem(concept, number, NO_UNITS, relationship_type="CONTAINS"))
    items = sorted((verdict.get("items") or {}).items(), key=lambda kv: ORDER.get(str(kv[1].get("outcome")), 9))
    content.extend(_item(name, result) for name, result in items)
    for note in verdict.get("notes") or []:
        text(COMMENT, str(note))
    text(STANDARD, versions.get("standard", ""))
    text(MODEL, versions.get("model", ""))
    content.append(
        hd.sr.ImageContentItem(SOURCE, header.SOPClassUID, header.SOPInstanceUID, relationship_type="CONTAINS")
    )
    root = hd.sr.ContainerContentItem(name=REPORT)
    root.ContentSequence = hd.sr.ContentSequence(content)
    created = time.localtime(created_unix)
    software = [f"edge-qc {versions['edge_qc']}"] if "edge_qc" in versions else []
    return hd.sr.ComprehensiveSR(
        evidence=[header],
        content=root,
        series_instance_uid=generate_uid(entropy_srcs=["edge-qc SR series", device, header.StudyInstanceUID]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=["edge-qc SR", device, key]),
        instance_number=int(header.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software[0] if software else None,
        device_serial_number=device,
        content_date=time.strftime("%Y%m%d", created),
        content_time=time.strftime("%H%M%S", created),
        specific_character_set=_character_set(header, verdict),
        coding_schemes=[CodingSchemeIdentificationItem(SCHEME, name="edge-qc radiograph quality control")],
    )


def encode(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (the queue holds the image's header so)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Queued:
    """One SR to write: the image's header (Part 10, no pixels), the verdict document, its key, and when it
    was queued (the SR's content date and time, the same however often it is built)."""

    row: int
    key: str
    header: bytes
    verdict: dict[str, Any]
    created_unix: float

    def report(self, device: str) -> Dataset:
        return structured_report(
            pydicom.dcmread(io.BytesIO(self.header)), self.verdict, device, self.key, self.created_unix
        )


class Queue:
    """SRs waiting for the destination, in SQLite (WAL, synchronous=FULL), oldest first, bounded in rows
    and bytes. A row holds what the SR is built from, not the SR: building one costs ~40 ms of CPU, which
    the sender spends, not the inference worker. It holds the header's patient data: the file is 0600.
    A key already queued is ignored (a verdict judged again after a restart)."""

    def __init__(self, path: Path, max_rows: int, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite's -wal and -shm take its mode
        self.path = path
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writeback ("
            " row INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT NOT NULL UNIQUE,"
            " header BLOB NOT NULL,"
            " verdict TEXT NOT NULL,"
            " created_unix REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS set_aside ("
            " row INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, header BLOB NOT NULL,"
            " verdict TEXT NOT NULL, created_unix REAL NOT NULL, why TEXT NOT NULL)"
        )

    def put(self, key: str, header: bytes, verdict: Mapping[str, Any]) -> bool:
        """Commit one SR's makings durably; False when the queue is full (nothing written)."""
        document = json.dumps(verdict, allow_nan=False)
        with self._lock:
            rows, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(header) + LENGTH(verdict)), 0) FROM writeback"
            ).fetchone()
            if rows + 1 > self.max_rows or size + len(header) + len(document) > self.max_bytes:
                return False
            self._db.execute(
                "INSERT OR IGNORE INTO writeback (key, header, verdict, created_unix) VALUES (?, ?, ?, ?)",
                (key, header, document, time.time()),
            )
            return True

    def pending(self, limit: int = BATCH) -> list[Queued]:
        with self._lock:
            rows = self._db.execute(
                "SELECT row, key, header, verdict, created_unix FROM writeback ORDER BY row LIMIT ?", (limit,)
            ).fetchall()
        return [Queued(r[0], r[1], bytes(r[2]), json.loads(r[3]), r[4]) for r in rows]

    def remove(self, row: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM writeback WHERE row = ?", (row,))

    def set_aside(self, row: int, why: str) -> None:
        """Move a report the destination keeps refusing out of the queue, keeping the newest few."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO set_aside (key, header, verdict, created_unix, why)"
                " SELECT key, header, verdict, created_unix, ? FROM writeback WHERE row = ?",
                (why, row),
            )
            self._db.execute("DELETE FROM writeback WHERE row = ?", (row,))
            self._db.execute(
                "DELETE FROM set_aside WHERE row NOT IN (SELECT row FROM set_aside ORDER BY row DESC LIMIT ?)",
                (SET_ASIDE_KEPT,),
            )

    def set_aside_keys(self) -> list[str]:
        with self._lock:
            return [str(k) for (k,) in self._db.execute("SELECT key FROM set_aside ORDER BY row")]

    def depth(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM writeback").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def queue_path(config: Config) -> Path:
    """Where the SRs wait: `writeback.queue_path`, else beside the MQTT outbox."""
    return config.writeback.queue_path or config.service.outbox_path.with_name("writeback.sqlite")


class Writeback:
    """`submit` queues what an SR is built from (in the caller's thread, after the MQTT outbox commit:
    ~2 ms of CPU to read the header, and a synchronous SQLite commit); one sender thread builds each SR and
    delivers it to the destination by C-STORE."""

    def __init__(
        self,
        settings: WritebackConfig,
        calling_ae: str,
        device: str,
        queue: Queue,
        *,
        on_sent: Callable[[], None] | None = None,
        on_failure: Callable[[Reason], None] | None = None,
    ) -> None:
        self.settings = settings
        self.calling_ae = settings.calling_ae or calling_ae
        self.device = device
        self.queue = queue
        self.on_sent = on_sent
        self.on_failure = on_failure
        self.destination = f"{settings.called_ae} at {settings.host}:{settings.port} (calling AE {self.calling_ae})"
        self.failures_in_a_row = 0
        self._refusals: dict[int, int] = {}  # queue row -> failure statuses in a row (this run)
        self._full = False  # the queue refused an SR and has not taken one since (logged once per episode)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        on_sent: Callable[[], None] | None = None,
        on_failure: Callable[[Reason], None] | None = None,
    ) -> Writeback:
        wb = config.writeback
        queue = Queue(queue_path(config), wb.max_queue_rows, wb.max_queue_bytes)
        return cls(wb, config.dicom.ae_title, config.mqtt.device, queue, on_sent=on_sent, on_failure=on_failure)

    def _failed(self, reason: Reason) -> None:
        if self.on_failure is not None:
            self.on_failure(reason)

    def submit(self, image: Path | Dataset, verdict: Mapping[str, Any], key: str) -> bool:
        """Queue the SR of `verdict` on `image` (a spool entry, read without its pixels, or its header);
        False (logged and counted, never raised) when it cannot be. The caller decides whether the verdict
        gets one (`wanted`)."""
        try:
            header = image if isinstance(image, Dataset) else pydicom.dcmread(image, stop_before_pixels=True)
            _header(header)  # refuse here what could never be built
            data = encode(header)
        except Exception as exc:  # an unreadable or incomplete header: this image's SR only, never the MQTT path
            log.error("%s: no QC report written back: %s", key, exc)
            self._failed("unbuildable")
            return False
        try:
            queued = self.queue.put(key, data, verdict)
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.error("%s: QC report not queued for write-back: %s cannot be written (%s)", key, self.queue.path, exc)
            self._failed("queue_error")
            return False
        if not queued:
            if not self._full:
                log.error(
                    "write-back queue full (%d reports; limits %d reports, %d bytes): QC reports are dropped"
                    " until %s takes some",
                    self.queue.depth(),
                    self.settings.max_queue_rows,
                    self.settings.max_queue_bytes,
                    self.destination,
                )
            log.warning("%s: QC report dropped, the write-back queue is full", key)
            self._full = True
            self._failed("queue_full")
            return False
        self._full = False
        self._wake.set()
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop sending (what is queued stays queued for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s if timeout_s is not None else self.settings.timeout_s + 5)
        self.queue.close()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        timeout = self.settings.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        ae.add_requested_context(VERIFICATION)
        ae.add_requested_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae

    def echo(self) -> str:
        """C-ECHO the destination: "" when it answered success, else why not."""
        assoc = self._ae().associate(self.settings.host, self.settings.port, ae_title=self.settings.called_ae)
        if not assoc.is_established:
            return "association rejected" if assoc.is_rejected else "no association (not reachable, or aborted)"
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code < 0:
            return "no C-ECHO response"
        return "" if code == 0 else f"C-ECHO answered status 0x{code:04X}"

    def _build(self, row: Queued) -> Dataset | None:
        """The row's SR; None when it can never be built (logged, counted, and the row dropped: it would
        hold up every SR behind it for ever)."""
        try:
            return row.report(self.device)
        except Exception as exc:
            log.error("%s: QC report dropped, it could not be built (%s)", row.key, exc)
            self._failed("unbuildable")
            self.queue.remove(row.row)
            return None

    def send_pending(self) -> tuple[int, Reason | None, str]:
        """One association: build and C-STORE queued SRs oldest first until one fails; how many were
        stored, and the reason and words of the failure that stopped it (None, "" when none did)."""
        rows = self.queue.pending(BATCH)
        if not rows:
            return 0, None, ""
        assoc = self._ae().associate(self.settings.host, self.settings.port, ae_title=self.settings.called_ae)
        if not assoc.is_established:
            if assoc.is_rejected:
                return 0, "rejected", "association rejected"
            return 0, "unreachable", "no association (not reachable, or aborted)"
        sent = 0
        try:
            for row in rows:
                if self._stop.is_set():
                    break
                report = self._build(row)
                if report is None:
                    continue
                status = assoc.send_c_store(report)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in STORED:
                    if code < 0:
                        return sent, "unreachable", "no C-STORE response"
                    why = f"C-STORE answered status 0x{code:04X}"
                    refusals = self._refusals[row.row] = self._refusals.get(row.row, 0) + 1
                    if refusals < MAX_REFUSALS:
                        return sent, "status", why
                    log.error("%s: QC report set aside, the destination refused it %d times (%s)",
                              row.key, refusals, why)  # fmt: skip
                    self.queue.set_aside(row.row, why)
                    self._refusals.pop(row.row, None)
                    self._failed("refused")
                    continue
                self._refusals.pop(row.row, None)
                self.queue.remove(row.row)
                sent += 1
                if self.on_sent is not None:
                    self.on_sent()
        finally:
            if assoc.is_established:
                assoc.release()
        return sent, None, ""

    def _backoff_s(self) -> float:
        initial, cap = self.settings.retry_initial_s, self.settings.retry_max_s
        return float(min(initial * 2 ** min(self.failures_in_a_row - 1, 30), cap))

    def _run(self) -> None:
        why = self.echo()
        if why:
            self._failed("echo")
            log.warning(
                "write-back destination %s does not answer C-ECHO (%s): QC reports are queued until it does",
                self.destination,
                why,
            )
        else:
            log.info("write-back destination %s answers C-ECHO", self.destination)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sent, reason, words = self.send_pending()
            except Exception as exc:  # a network error pynetdicom did not turn into a status
                sent, reason, words = 0, "unreachable", f"{type(exc).__name__}: {exc}"
            if reason is None:
                if self.failures_in_a_row:
                    log.info("write-back to %s works again", self.destination)
                self.failures_in_a_row = 0
                if not sent:
                    self._wake.wait(IDLE_S)
                continue
            self.failures_in_a_row += 1
            self._failed(reason)
            delay = self._backoff_s()
            log.warning(
                "write-back to %s failed: %s; %d QC reports queued, next try in %g s",
                self.destination,
                words,
                self.queue.depth(),
                delay,
            )
            self._stop.wait(delay)


def referenced_uids(report: Dataset) -> Sequence[str]:
    """The SOP Instance UIDs an SR's content refers to (its IMAGE items): which images it reports on."""
    found: list[str] = []

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "IMAGE":
                found.extend(str(ref.ReferencedSOPInstanceUID) for ref in item.ReferencedSOPSequence)
            walk(item.get("ContentSequence", []))

    walk(report.get("ContentSequence", []))
    return found
