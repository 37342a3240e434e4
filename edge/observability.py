"""Every Prometheus metric of the appliance, defined in one place, and the HTTP endpoint serving them.

Conventions: the `edgeqc_` prefix, base units (`_seconds`), `_total` for counters, low-cardinality
labels only (view, verdict, item, reason, stage: never a UID). Events are counted where they happen
(the verdict, the publish acknowledgement), not reconstructed from scraped gauges. Jetson health is
read from sysfs at scrape time where the files exist and is simply absent elsewhere. No `_created`
series (they double the series count and no rule or panel reads them). /metrics is prometheus-client's
own handler (gzip, OpenMetrics by Accept, `name[]` filters).
"""

from __future__ import annotations

import calendar
import logging
import platform
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    MetricsHandler,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("edge.observability")

STAGE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 5.0)
# Bounds of the exposure ratio EI / EI_T at DI -4 .. +4 (DI = 10 log10 ratio, IEC 62494-1): the
# ratio is positive, so the histogram's sum and rates mean something, and a quantile of the ratio maps
# to a DI quantile through the log. The monitoring pack's promtool tests use these bounds as printed.
DI_RATIO_BUCKETS: Final = tuple(10 ** (d / 10) for d in (-4, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 4))


def exposure_ratio(exposure: Mapping[str, Any] | None) -> float | None:
    """EI / EI_T of a verdict's `exposure` object; from the DI (10^(DI/10)) where only that is known;
    None where neither is."""
    if not exposure:
        return None
    ei, target, di = (exposure.get(k) for k in ("exposure_index", "target_exposure_index", "deviation_index"))
    if isinstance(ei, int | float) and isinstance(target, int | float) and ei > 0 and target > 0:
        return float(ei) / float(target)
    if isinstance(di, int | float):
        return float(10 ** (di / 10))
    return None


_PEM_CERTIFICATE: Final = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """One DER element at `at`: its tag, where its content starts and where it ends."""
    tag, first = data[at], data[at + 1]
    start = at + 2
    if first < 0x80:
        return tag, start, start + first
    count = first & 0x7F
    length = int.from_bytes(data[start : start + count], "big")
    return tag, start + count, start + count + length


def _asn1_time(tag: int, text: str) -> float:
    """UTCTime (YYMMDDHHMMSSZ, 1950-2049 per RFC 5280) or GeneralizedTime (YYYYMMDDHHMMSSZ), unix seconds."""
    if tag == 0x17:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    if not text.endswith("Z") or len(text) != 15:
        raise ValueError(f"time {text!r} is not in UTC as RFC 5280 requires")
    return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))


def certificate_not_after(der: bytes) -> float:
    """notAfter of an X.509 certificate (DER), unix seconds: read with a minimal DER walk (Certificate ->
    tbsCertificate -> [version], serial, signature, issuer, validity), so that no X.509 package has to
    ship to the device for one date."""
    _, tbs, _ = _der(der, 0)  # Certificate SEQUENCE
    _, at, _ = _der(der, tbs)  # tbsCertificate SEQUENCE: its first element
    if der[at] == 0xA0:  # [0] version (absent in a v1 certificate)
        at = _der(der, at)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        at = _der(der, at)[2]
    _, validity, _ = _der(der, at)
    not_before_end = _der(der, validity)[2]
    tag, start, end = _der(der, not_before_end)
    return _asn1_time(tag, der[start:end].decode("ascii"))


def certificate_file_expiry(path: Path) -> float:
    """The earliest notAfter of the PEM certificates in a file (a CA bundle holds several; the first to
    expire is the one to renew), unix seconds. Raises ValueError for a file with none."""
    blocks = _PEM_CERTIFICATE.findall(path.read_text(errors="replace"))
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate")
    try:
        return min(certificate_not_after(ssl.PEM_cert_to_DER_cert(block)) for block in blocks)
    except (IndexError, UnicodeDecodeError) as exc:  # a truncated or garbled certificate
        raise ValueError(f"{path}: not a readable X.509 certificate") from exc


class JetsonHealth(Collector):
    """Temperatures, GPU load and frequency, power rails: read at scrape time from sysfs."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        temperatures = GaugeMetricFamily(
            "edgeqc_device_temperature_celsius", "Thermal zone temperature", labels=["zone"]
        )
        for zone in sorted((self.root / "sys/class/thermal").glob("thermal_zone*")):
            kind, millis = self._read(zone / "type"), self._read(zone / "temp")
            if kind and millis and millis.lstrip("-").isdigit():
                temperatures.add_metric([kind], int(millis) / 1000.0)
        yield temperatures
        load = GaugeMetricFamily("edgeqc_gpu_load_ratio", "GPU load (devfreq, 0..1)", labels=["gpu"])
        freq = GaugeMetricFamily("edgeqc_gpu_frequency_hertz", "GPU clock (devfreq)", labels=["gpu"])
        for node in sorted((self.root / "sys/class/devfreq").glob("*")):
            name = node.name
            if "gpu" not in name and "ga10b" not in name and "gv11b" not in name:
                continue
            per_mille, hz = self._read(node / "device/load"), self._read(node / "cur_freq")
            if per_mille and per_mille.isdigit():
                load.add_metric([name], int(per_mille) / 1000.0)
            if hz and hz.isdigit():
                freq.add_metric([name], float(hz))
        yield load
        yield freq
        power = GaugeMetricFamily("edgeqc_power_rail_watts", "INA3221 power rail", labels=["rail"])
        for hwmon in sorted((self.root / "sys/bus/i2c/devices").glob("*/hwmon/hwmon*")):
            for label_file in sorted(hwmon.glob("in*_label")):
                n = label_file.name[2:].split("_")[0]
                label = self._read(label_file)
                millivolts, milliamps = self._read(hwmon / f"in{n}_input"), self._read(hwmon / f"curr{n}_input")
                if label and millivolts and milliamps and millivolts.isdigit() and milliamps.isdigit():
                    power.add_metric([label], int(millivolts) * int(milliamps) / 1e6)
        yield power


def package_version() -> str:
    """The installed edge-qc package's version ("unknown" from a checkout that was never installed)."""
    try:
        return version("edge-qc")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, sysfs_root: Path = Path("/")) -> None:
        # process-wide in prometheus-client (read at scrape time): every registry here goes without them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = registry or CollectorRegistry()
        self.stage_seconds = Histogram(
            "edgeqc_stage_duration_seconds", "Time per pipeline stage", ["stage"], registry=r, buckets=STAGE_BUCKETS
        )
        self.end_to_end_seconds = Histogram(
            "edgeqc_end_to_end_seconds",
            "From the first PDU of the C-STORE to the broker's acknowledgement of its verdict",
            registry=r,
            buckets=STAGE_BUCKETS,
        )
        self.publish_seconds = Histogram(
            "edgeqc_publish_duration_seconds", "MQTT publish until PUBACK", registry=r, buckets=STAGE_BUCKETS
        )
        self.received = Counter(
            "edgeqc_images_received_total", "Datasets received (C-STORE requests taken in)", registry=r
        )
        self.rejected = Counter("edgeqc_images_rejected_total", "Inputs refused", ["reason"], registry=r)
        self.judged = Counter("edgeqc_images_judged_total", "Verdicts", ["view", "verdict"], registry=r)
        self.indeterminate = Counter(
            "edgeqc_images_indeterminate_total",
            "Indeterminate verdicts by reason code (unreadable, not_lumbar_spine, view_unknown, items_unmeasurable)",
            ["view", "reason"],
            registry=r,
        )
        self.probes = Counter(
            "edgeqc_probes_total", "Health-probe images judged (not in the clinical counts)", ["verdict"], registry=r
        )
        self.item_failures = Counter("edgeqc_item_failures_total", "Failed QC items", ["view", "item"], registry=r)
        self.publish_failures = Counter("edgeqc_publish_failures_total", "Publishes not acknowledged", registry=r)
        self.history_failures = Counter(
            "edgeqc_history_write_failures_total",
            "Verdicts delivered but not kept in the device's history (edge-qc report will miss them)",
            registry=r,
        )
        self.associations = Counter("edgeqc_associations_total", "DICOM associations", ["result"], registry=r)
        self.associations_refused = Counter(
            "edgeqc_associations_refused_total",
            "DICOM associations and connections refused, by reason (edge.dicom.scp.REFUSAL_REASONS)",
            ["reason"],
            registry=r,
        )
        self.exposure_ratio = Histogram(
            "edgeqc_exposure_index_ratio",
            "Exposure index over the target exposure index (EI/EI_T) per view of images judged pass or fail,"
            " as the verdict states them (10^(DI/10) where only the DI is known); DI = 10 log10(ratio)",
            ["view"],
            registry=r,
            buckets=DI_RATIO_BUCKETS,
        )
        self.ready = Gauge("edgeqc_ready", "1 when /readyz answers 200 (computed at scrape time)", registry=r)
        self.broker_connected = Gauge("edgeqc_broker_connected", "1 while connected to the MQTT broker", registry=r)
        self.last_verdict = Gauge(
            "edgeqc_last_verdict_timestamp_seconds",
            "When the last clinical verdict was committed (unix time; health probes do not count)",
            registry=r,
        )
        self.spool_free_bytes = Gauge(
            "edgeqc_spool_free_bytes", "Free space on the spool's filesystem (at scrape time)", registry=r
        )
        self.certificate_expiry = Gauge(
            "edgeqc_tls_certificate_expiry_timestamp_seconds",
            "notAfter of each configured certificate file (the earliest in a bundle), read at start, when the TLS"
            " contexts load them",
            ["certificate"],
            registry=r,
        )
        self.build_info = Gauge(
            "edgeqc_build_info", "The running edge-qc build (always 1)", ["version", "python", "machine"], registry=r
        )
        self.build_info.labels(package_version(), platform.python_version(), platform.machine()).set(1)
        self.reload_success = Gauge(
            "edgeqc_config_last_reload_success",
            "1 when the last configuration load (start or SIGHUP reload) was applied, 0 when refused",
            registry=r,
        )
        self.reload_timestamp = Gauge(
            "edgeqc_config_last_reload_timestamp_seconds",
            "When the configuration was last loaded or a reload was tried (unix time)",
            registry=r,
        )
        self.degraded = Gauge("edgeqc_degraded", "1 when judging with the fallback backend", registry=r)
        self.activation_failed = Gauge(
            "edgeqc_activation_failed", "1 while the last engine activation failed (the previous serves)", registry=r
        )
        self.model_info = Gauge(
            "edgeqc_model_info",
            "The running model and engine",
            ["model", "engine", "backend", "precision", "standard"],
            registry=r,
        )
        self.queue_depth = Gauge("edgeqc_queue_depth", "Images waiting for inference", registry=r)
        self.active_associations = Gauge(
            "edgeqc_active_associations", "DICOM connections holding a slot of max_associations", registry=r
        )
        self.outbox_depth = Gauge("edgeqc_outbox_depth", "Verdicts waiting for the broker", registry=r)
        self.writeback_queue_depth = Gauge(
            "edgeqc_writeback_queue_depth", "QC reports (DICOM SR) waiting for the write-back destination", registry=r
        )
        self.writeback_sent = Counter(
            "edgeqc_writeback_sent_total", "QC reports the write-back destination stored (C-STORE success)", registry=r
        )
        self.writeback_failures = Counter(
            "edgeqc_writeback_failures_total",
            "Write-back failures: unreachable, rejected (association), status (C-STORE refused), queue_full,"
            " queue_error, unbuildable, echo (no C-ECHO answer at start)",
            ["reason"],
            registry=r,
        )
        r.register(JetsonHealth(sysfs_root))

    def reload_result(self, ok: bool) -> None:
        """A configuration load (at start) or reload (SIGHUP) was applied (True) or refused (False)."""
        self.reload_success.set(1 if ok else 0)
        self.reload_timestamp.set_to_current_time()

    def association_refused(self, reason: str) -> None:
        """One refused association or connection, with its reason (edge.dicom.scp.REFUSAL_REASONS)."""
        self.associations_refused.labels(reason).inc()

    def certificates(self, files: Mapping[str, str | Path]) -> None:
        """Read the notAfter of each configured certificate file (name -> path; empty paths are not
        configured): a file that cannot be read is logged and has no series (its TLS fails anyway)."""
        self.certificate_expiry.clear()
        for name, path in files.items():
            if not str(path):
                continue
            try:
                expiry = certificate_file_expiry(Path(path))
            except (OSError, ValueError) as exc:
                log.warning("certificate %s (%s): expiry not read: %s", name, path, exc)
                continue
            self.certificate_expiry.labels(name).set(expiry)

    def expect(
        self,
        items_by_view: Mapping[str, Iterable[str]],
        indeterminate_codes: Iterable[str] = (),
        refusal_reasons: Iterable[str] = (),
    ) -> None:
        """Start the verdict, item, indeterminate-reason and refusal counters at zero for every view, item
        and reason: a series born at its first event hides that event from increase() and rate(), so a
        room's first failure of an item (or first refused modality) would never show on the dashboard."""
        for reason in refusal_reasons:
            self.associations_refused.labels(reason)
        codes = tuple(indeterminate_codes)
        for view in (*items_by_view, "unknown"):
            for outcome in ("pass", "fail", "indeterminate") if view != "unknown" else ("indeterminate",):
                self.judged.labels(view, outcome)
            for code in codes:
                self.indeterminate.labels(view, code)
            for item in items_by_view.get(view, ()):
                self.item_failures.labels(view, item)

    def observe_verdict(self, verdict: dict[str, Any], probe: bool = False) -> None:
        """Count one verdict (the JSON of edge.qc.verdict) where it is made; a health probe's verdict
        only as a probe, so that rollouts do not move a room's reject rates or exposure figures."""
        for stage, ms in verdict.get("timings_ms", {}).items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)
        outcome = str(verdict.get("verdict", ""))
        if probe:
            self.probes.labels(outcome).inc()
            return
        self.last_verdict.set_to_current_time()
        if outcome == "rejected":
            self.rejected.labels(str(verdict.get("reason_code") or "unknown")).inc()
            return
        view = (verdict.get("view") or {}).get("judged") or "unknown"
        self.judged.labels(view, outcome).inc()
        if outcome == "indeterminate":
            self.indeterminate.labels(view, str(verdict.get("reason_code") or "unknown")).inc()
        for failed in verdict.get("failed", []):
            self.item_failures.labels(view, str(failed.get("item"))).inc()
        ratio = exposure_ratio(verdict.get("exposure"))
        if outcome in ("pass", "fail") and ratio is not None and ratio > 0:  # a lumbar view, judged
            self.exposure_ratio.labels(view).observe(ratio)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


# A scraper or a probe needs a connection for a moment; one held idle must not cost a thread for ever.
# (No cap on connections: a cap would let a few idle ones lock the health gate out.)
HTTP_IDLE_S: Final = 10.0


class _Handler(MetricsHandler):
    """/metrics by prometheus-client's own MetricsHandler (its `registry`: content negotiation, gzip,
    `name[]`), the probes (GET and HEAD) here, any other path by `routes`."""

    metrics: Metrics
    ready: Callable[[], tuple[bool, str]]
    routes: Callable[[BaseHTTPRequestHandler], bool] | None  # more pages (the room display): True when answered
    timeout = HTTP_IDLE_S  # a connection silent this long is closed (StreamRequestHandler sets it on the socket)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name; ruff knows it on BaseHTTPRequestHandler only)
        if urlsplit(self.path).path == "/metrics":
            super().do_GET()
        elif not self._probe(head=False) and (self.routes is None or not self.routes(self)):
            self._send(404, b"not found\n", "text/plain")

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        """The probes answer HEAD (a load balancer's or a monitor's check); other paths are GET only."""
        if not self._probe(head=True):
            self.send_response(405)
            self.send_header("Allow", "GET")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _probe(self, head: bool) -> bool:
        """/healthz (the process answers) and /readyz (ready to judge and deliver); False for other paths."""
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain", head)
        elif path == "/readyz":
            ok, why = self.ready()
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain", head)
        else:
            return False
        return True

    def _send(self, code: int, body: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # metrics.bind may be IPv6
        super().__init__(address, handler)


class MetricsServer:
    """/metrics, /healthz (the process answers) and /readyz (model loaded, spool writable, broker);
    `routes` answers any other path it knows (edge.room's display), so no page needs a port of its own."""

    def __init__(
        self,
        metrics: Metrics,
        bind: str,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        routes: Callable[[BaseHTTPRequestHandler], bool] | None = None,
    ) -> None:
        more = None if routes is None else staticmethod(routes)
        handler = type(
            "Handler",
            (_Handler,),
            {"metrics": metrics, "registry": metrics.registry, "ready": staticmethod(ready), "routes": more},
        )
        self._server = _Server((bind, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
