"""The daemon's wiring: SCP -> spool -> bounded queue -> one inference worker -> outbox -> MQTT.

Association threads only spool and answer. One worker owns the pipeline (and so the backend, whose
GPU context belongs to one thread). A spool entry is deleted only after its verdict is committed to
the outbox, and an outbox row only after the broker acknowledged it; at start-up the spool's
unfinished entries are judged first, so a crash at any point loses nothing (a replayed entry keeps
its message id, and the outbox ignores an id it already holds). Where the site writes verdicts back
to the study (`[writeback]`), a judged image's SR is queued, durably, after the outbox commit and
before its spool entry goes; it is sent on its own thread and never holds up MQTT or readiness.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Final

from edge.config import Config
from edge.dicom.decode import accession_number, part10_meta
from edge.dicom.scp import LIVE_SETTINGS, REFUSAL_REASONS, StorageScp
from edge.dicom.spool import Arrival, Spool
from edge.history import History
from edge.observability import Metrics, MetricsServer
from edge.pipeline import ReloadingPipeline, Result, header_facts
from edge.publish.message import message_id, verdict_log, verdict_message
from edge.publish.mqtt import Publisher
from edge.publish.outbox import Message, Outbox
from edge.publish.writeback import Writeback, wanted
from edge.qc.overlay import draw_overlay
from edge.qc.verdict import INDETERMINATE_CODES, Verdict
from edge.qc.words import Words
from edge.room import LABELS, OverlayRenderer, RoomFeed, display_event, handle
from edge.systemd import Watchdog, notify

log = logging.getLogger("edge.service")
verdict_lines = logging.getLogger("edge.verdict")  # one PHI-free line per verdict (edge.publish.message.verdict_log)
COMMIT_RETRY_S: Final = 5.0  # a verdict the outbox refused is judged again after this long
IDLE_PEER_S: Final = 5.0  # an association that sent nothing for this long is idle (readiness)


def certificate_files(config: Config) -> dict[str, str]:
    """The certificate files a configuration names, by the `certificate` label of their expiry gauge
    (empty where not configured)."""
    return {
        "dicom": config.dicom.tls_certfile,
        "dicom_ca": config.dicom.tls_ca_certs,
        "mqtt_client": config.mqtt.certfile,
        "mqtt_ca": config.mqtt.ca_certs,
    }


def free_bytes(folder: Path) -> float:
    """Free bytes on the filesystem holding `folder`; NaN where it cannot be read (the scrape goes on)."""
    try:
        return float(shutil.disk_usage(folder).free)
    except OSError:
        return float("nan")


@dataclasses.dataclass(frozen=True)
class Reloaded:
    """What a reload did: the settings it applied and those that wait for a restart (dotted names,
    or a whole section)."""

    applied: tuple[str, ...]
    restart: tuple[str, ...]


def room_labels(words: Words) -> dict[str, str]:
    """The room page's own words (edge.room.LABELS) in the site's language."""
    return {key: words.text(msgid) for key, msgid in LABELS.items()}


# Where the Jetson's sysfs is read (temperatures, GPU load, power rails): "/" unless set, for a
# container that mounts the host's /sys elsewhere, or a test that gives a thermal zone of its own.
SYSFS_ROOT_ENV: Final = "EDGEQC_SYSFS_ROOT"


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        mqtt = config.mqtt
        self.topic = mqtt.verdict_topic
        self.spool = Spool(config.service.spool_dir)
        self.outbox = Outbox(config.service.outbox_path)
        # one PHI-free row per verdict for `edge-qc report` (edge.history); None: off, or it cannot be opened
        self.history = History.open(config) if config.history.enabled else None
        self.pipeline = ReloadingPipeline(config)
        self.queue: queue.Queue[Arrival] = queue.Queue(maxsize=config.service.queue_size)
        self.metrics = Metrics(sysfs_root=Path(os.environ.get(SYSFS_ROOT_ENV) or "/"))
        self.metrics.expect(self.pipeline.items_by_view, INDETERMINATE_CODES, REFUSAL_REASONS)
        self.publisher = Publisher(
            self.outbox,
            mqtt,
            birth={"versions": self.pipeline.versions},
            on_published=self._published,
            on_failure=self.metrics.publish_failures.inc,
        )
        self.scp = StorageScp(
            config.dicom,
            self.spool,
            self._arrived,
            lambda result: self.metrics.associations.labels(result).inc(),
            on_refused=self.metrics.association_refused,
        )
        self._announced: dict[str, str] = {}
        self._commit_problem = ""  # why the last verdict could not be committed ("" when it could)
        self._follow_activation()
        self.metrics.queue_depth.set_function(self.queue.qsize)
        self.metrics.active_associations.set_function(lambda: self.scp.active_associations)
        self.metrics.outbox_depth.set_function(self.outbox.depth)
        self.metrics.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)
        self.metrics.broker_connected.set_function(lambda: 1.0 if self.publisher.connected.is_set() else 0.0)
        self.metrics.spool_free_bytes.set_function(functools.partial(free_bytes, self.spool.root))
        self.metrics.certificates(certificate_files(config))  # the TLS contexts load them once, at start
        self.metrics.reload_result(True)  # the configuration this process started with
        self.writeback: Writeback | None = None  # the verdict into the study as a DICOM SR (optional per site)
        if config.writeback.enabled:
            failures = self.metrics.writeback_failures
            self.writeback = Writeback.from_config(
                config, on_sent=self.metrics.writeback_sent.inc, on_failure=lambda reason: failures.labels(reason).inc()
            )
            self.metrics.writeback_queue_depth.set_function(self.writeback.queue.depth)
        self.http: MetricsServer | None = None
        self.room: RoomFeed | None = None  # the room display (edge.room), served by the metrics HTTP server
        self._overlays: OverlayRenderer | None = None
        if config.metrics.enabled:
            routes = None
            if config.room.enabled:
                room = self.room = RoomFeed(labels=room_labels(self.pipeline.words))
                routes = functools.partial(handle, room)
            self.http = MetricsServer(self.metrics, config.metrics.bind, config.metrics.port, self.ready, routes)
        self._pipeline_lock = threading.Lock()  # the worker holds it per image; a reload swaps under it
        self.watchdog = Watchdog()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="inference", daemon=True)

    def _arrived(self, arrival: Arrival) -> None:
        """Called in an association thread as a dataset arrives: queue it, holding the association
        while the queue is full (back-pressure on the sender, nothing dropped)."""
        self.metrics.received.inc()
        self._enqueue(arrival)

    def _enqueue(self, arrival: Arrival) -> None:
        arrival.queued_at = time.perf_counter()
        self.queue.put(arrival)

    def _published(self, message: Message, seconds: float) -> None:
        self.metrics.publish_seconds.observe(seconds)
        if message.received_unix is not None:
            end_to_end = max(time.time() - message.received_unix, 0.0)
            self.metrics.end_to_end_seconds.observe(end_to_end)
            if self.history is not None:
                self.history.delivered(message.message_id, end_to_end)

    def ready(self) -> tuple[bool, str]:
        """Ready to judge and deliver: spool writable with room, broker connected and acknowledging,
        outbox writable, an association slot free for the modality (each problem named)."""
        problems = []
        if not os.access(self.spool.root, os.W_OK):
            problems.append("spool not writable")
        else:
            free = shutil.disk_usage(self.spool.root).free
            if free < self.config.service.min_free_bytes:
                problems.append(f"spool disk nearly full ({free // 2**20} MiB free)")
        if not self.publisher.connected.is_set():
            problems.append("broker not connected")
        problem = self.publisher.problem(self.config.mqtt.ack_timeout_s)
        if problem:
            problems.append(problem)
        if self._commit_problem:
            problems.append(self._commit_problem)
        if self.scp.slots_held_by_idle_peers(IDLE_PEER_S):
            problems.append(f"all {self.config.dicom.max_associations} DICOM association slots held by idle peers")
        return (not problems, "ready" if not problems else "; ".join(problems))

    def start(self) -> None:
        # Entries whose judging never ended (the daemon died on them) go last: they may be poison pills,
        # and the images behind them must not wait on them.
        recovered = sorted(self.spool.pending(), key=lambda entry: (self.spool.attempts(entry) > 0, entry.name))
        if recovered:
            log.info("recovering %d spooled images from before the last stop", len(recovered))
        self.pipeline.prestart()
        if self.http is not None:
            self.http.start()
        if self.room is not None:
            self.room.watch(lambda: (self.publisher.connected.is_set(), self.pipeline.degraded))
            overlay_seconds = self.metrics.stage_seconds.labels("room_overlay").observe
            self._overlays = OverlayRenderer(self.room, overlay_seconds)
        self.publisher.start()
        if self.writeback is not None:
            self.writeback.start()  # C-ECHOes the destination on its own thread: a dead PACS delays nothing
        self.pipeline.start_watching()
        self._worker.start()
        threading.Thread(target=self._requeue, args=(recovered,), name="recovery", daemon=True).start()
        self.scp.start()
        notify(f"READY=1\nSTATUS=serving {self.pipeline.serving} on DICOM port {self.scp.port}")

    def _requeue(self, entries: list[Path]) -> None:
        for entry in entries:
            self._enqueue(Arrival(entry, None))

    def message(self, arrival: Arrival, verdict: dict[str, Any]) -> tuple[str, bytes]:
        """The MQTT message of one judged arrival: its id and payload (edge.publish.message)."""
        identifier = message_id(self.config.mqtt.device, arrival.entry.stem)
        payload = verdict_message(
            verdict=verdict,
            mqtt=self.config.mqtt,
            message_id=identifier,
            received_unix=arrival.received_unix,
            stage_seconds=arrival.seconds,
            probe=arrival.probe,
        )
        return identifier, payload

    def _follow_activation(self) -> None:
        """In the worker, between images: swap in a version the activation watcher has loaded and warmed
        beside the running one (no image waits for a load), and say which version serves."""
        self.pipeline.check_activation()
        self.metrics.activation_failed.set(1 if self.pipeline.problem else 0)
        versions = self.pipeline.versions
        if versions == self._announced:
            return
        if self._announced:
            log.info("now serving %s", self.pipeline.serving)
            self.publisher.announce({"versions": versions})
        self._announced = dict(versions)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            versions["model"], versions["engine"], versions["backend"], versions["precision"], versions["standard"]
        ).set(1)

    def _work(self) -> None:
        while not self._stopping.is_set() or not self.queue.empty():
            self.watchdog.ping()  # from this loop: a hung inference stops the pings
            try:
                arrival = self.queue.get(timeout=0.2)
            except queue.Empty:
                with self._pipeline_lock:
                    self._follow_activation()
                continue
            arrival.seconds["queue"] = time.perf_counter() - arrival.queued_at
            with self._pipeline_lock:
                self._follow_activation()  # a version loaded meanwhile serves from this image on
            self._judge(arrival)

    def _judge(self, arrival: Arrival) -> None:
        """One arrival to one verdict. The attempt is counted on disk first: if judging it ends the
        process, the count survives and after max_attempts the entry is quarantined, with a verdict."""
        entry, data = arrival.entry, arrival.data  # bytes while the spool write is under way, else read the entry
        attempt = self.spool.begin_attempt(entry)
        quarantine = attempt > self.config.service.max_attempts
        result: Result | None = None
        try:
            if quarantine:
                verdict = self._unjudged(
                    arrival,
                    "quarantined",
                    f"judging this image stopped the appliance {attempt - 1} times; it was set aside unjudged:"
                    " check the image yourself",
                )
                log.error("%s: judging it ended the daemon %d times; quarantined", entry.name, attempt - 1)
            else:
                with self._pipeline_lock:
                    result = self.pipeline.process(entry if data is None else data)
                verdict = result.verdict
        except OSError as exc:  # the spool entry could not be read: the disk's fault, not the image's
            self.spool.end_attempt(entry)
            log.error("%s: cannot be read (%s); judged again in %g s", entry.name, exc, COMMIT_RETRY_S)
            self._retry(arrival)
            return
        except Exception:  # a fault of this code: the image still gets its verdict, once
            log.exception("%s: judging failed unexpectedly", entry.name)
            verdict = self._unjudged(
                arrival, "internal_error", "the appliance failed to judge this image: check it yourself"
            )
        del data
        if not arrival.wait_spooled():  # the modality heard "out of resources" and sends it again
            self.spool.end_attempt(entry)
            log.warning("%s: not spooled, verdict discarded (the sender was told to retry)", entry.name)
            return
        self._commit(arrival, verdict, quarantine, result)

    def _unjudged(self, arrival: Arrival, code: str, reason: str) -> Verdict:
        """A rejected verdict for an image that was not judged, naming it by the UID its file meta gives,
        with what its header says (acquisition, EI/DI) where it can be read without the pixels."""
        source = arrival.entry if arrival.data is None else arrival.data
        try:
            uid = part10_meta(source)[1]
        except OSError:
            uid = ""
        acquisition, exposure = header_facts(source, self.config.qc.target_exposure_index)
        return Verdict.rejected(
            reason=reason,
            code=code,
            versions=self.pipeline.versions,
            sop_instance_uid=uid,
            words=self.pipeline.words,
            exposure=exposure,
            acquisition=acquisition,
        )

    def _retry(self, arrival: Arrival) -> None:
        retry = threading.Timer(COMMIT_RETRY_S, self._enqueue, (Arrival(arrival.entry, None),))
        retry.daemon = True
        retry.start()

    def _commit(
        self, arrival: Arrival, verdict: Verdict, quarantine: bool = False, result: Result | None = None
    ) -> None:
        """Outbox first, then the spool entry goes (or, for a poison pill, into quarantine). When the
        outbox cannot be written (a full or read-only disk) the image is not at fault: its entry stays
        in the spool, /readyz turns 503, and the image is judged again after COMMIT_RETRY_S until the
        outbox takes it."""
        document = verdict.as_dict()
        identifier, payload = self.message(arrival, document)
        try:
            self.outbox.put(self.topic, payload, identifier, arrival.received_unix)
        except (sqlite3.Error, OSError) as exc:
            self._commit_problem = f"outbox cannot be written ({exc})"
            self.spool.end_attempt(arrival.entry)
            log.error("%s: verdict not committed, %s; kept in the spool, retried in %g s",
                      arrival.entry.name, self._commit_problem, COMMIT_RETRY_S)
            self._retry(arrival)
            return
        self._commit_problem = ""
        if self.config.history.enabled:  # before the publisher hears of it, so its acknowledgement finds the row
            kept = self.history is not None and self.history.keep(
                document, identifier, arrival.received_unix, arrival.probe
            )
            if not kept:  # a history that could not be opened at start misses every verdict
                self.metrics.history_failures.inc()
        self.publisher.notify()
        self._show(arrival, document, result)
        if self.writeback is not None and wanted(document, arrival.probe):
            # after MQTT and the room (they are what the radiographer waits for), before the spool entry,
            # whose header the SR copies, goes: ~2 ms of CPU and a synchronous SQLite commit; the SR is built later
            self.writeback.submit(arrival.entry, document, identifier)
        if quarantine:
            self.spool.quarantine(arrival.entry)
        else:
            self.spool.remove(arrival.entry)
        for stage, seconds in arrival.seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        self.metrics.degraded.set(1 if verdict.degraded else 0)
        self.metrics.observe_verdict(document, probe=arrival.probe)
        line, facts = verdict_log(
            verdict=document, message_id=identifier, stage_seconds=arrival.seconds, probe=arrival.probe
        )
        verdict_lines.info(line, extra={"fields": facts})

    def _show(self, arrival: Arrival, document: dict[str, Any], result: Result | None) -> None:
        """Put a committed verdict on the room display (never a probe's), then have its overlay drawn
        off this thread: the page shows the verdict as MQTT gets it, and the picture follows."""
        if self.room is None or arrival.probe:
            return
        accession = accession_number(arrival.entry) if self.config.room.show_accession else ""
        n = self.room.verdict(display_event(document, arrival.received_unix, accession))
        if self._overlays is not None and result is not None and result.radiograph is not None:
            radiograph, segmentation, verdict = result.radiograph, result.segmentation, result.verdict
            # the page has its own banner: the picture goes without one
            self._overlays.submit(n, lambda: draw_overlay(radiograph, segmentation, verdict, banner=False))

    def reload(self, config: Config) -> Reloaded:
        """SIGHUP: apply a new configuration's model and QC settings between two images, and the DICOM
        allow-lists (edge.dicom.scp.LIVE_SETTINGS: a modality's AE title added without a restart) to the
        running SCP at once; settings that need new sockets or files (the other DICOM settings, MQTT,
        spool, metrics...) are reported, not applied, and the running values kept."""
        live = {"model", "qc", "dicom", "source"}
        restart = [
            f.name
            for f in dataclasses.fields(config)
            if f.name not in live and getattr(config, f.name) != getattr(self.config, f.name)
        ]
        old_dicom = self.config.dicom
        dicom_restart = [
            f.name
            for f in dataclasses.fields(old_dicom)
            if f.name not in LIVE_SETTINGS and getattr(config.dicom, f.name) != getattr(old_dicom, f.name)
        ]
        applied = [name for name in ("model", "qc") if getattr(config, name) != getattr(self.config, name)]
        if applied:
            candidate = ReloadingPipeline(config)  # loads and warms up beside the running pipeline
            candidate.start_watching()
            with self._pipeline_lock:
                old, self.pipeline = self.pipeline, candidate
                self._follow_activation()
            old.close()
            self.metrics.expect(self.pipeline.items_by_view, INDETERMINATE_CODES, REFUSAL_REASONS)
            if self.room is not None:
                self.room.relabel(room_labels(self.pipeline.words))
        applied += [f"dicom.{name}" for name in self.scp.apply(config.dicom)]
        dicom = dataclasses.replace(config.dicom, **{name: getattr(old_dicom, name) for name in dicom_restart})
        self.config = dataclasses.replace(
            config, dicom=dicom, **{name: getattr(self.config, name) for name in restart}
        )
        return Reloaded(tuple(applied), tuple(f"dicom.{name}" for name in dicom_restart) + tuple(restart))

    def stop(self, drain_s: float = 10.0) -> None:
        """Graceful stop: no new associations, judge what was received, hand the outbox to the broker."""
        notify("STOPPING=1\nSTATUS=draining")
        self.scp.stop()
        log.info(
            "draining: no new associations; judging %d received images, then up to %g s for the broker to take"
            " the outbox (%d verdicts now)",
            self.queue.qsize(),
            drain_s,
            self.outbox.depth(),
            extra={"fields": {"event": "draining", "queued": self.queue.qsize(), "outbox": self.outbox.depth()}},
        )
        self._stopping.set()
        self._worker.join(timeout=drain_s + 60)
        if self._worker.is_alive():
            log.warning("draining: judging did not finish in time; the spool keeps what is left for the next start")
        self.publisher.drain(drain_s)
        self.publisher.stop()
        self.pipeline.close()
        left = self.outbox.depth()
        self.outbox.close()
        if left:
            log.warning(
                "%d verdicts not acknowledged by the broker in %g s: kept in the outbox, sent after the next start",
                left,
                drain_s,
                extra={"fields": {"event": "drain_incomplete", "outbox": left}},
            )
        if self.history is not None:
            self.history.close()
        if self.writeback is not None:
            self.writeback.stop(drain_s)  # what it has not sent stays queued for the next start
        if self._overlays is not None:
            self._overlays.stop()
        if self.room is not None:
            self.room.close()
        if self.http is not None:
            self.http.stop()
        outcome = "drained" if not left else f"{left} verdicts wait in the outbox"
        log.info("stopped: %s", outcome, extra={"fields": {"event": "stopped", "outbox": left}})
