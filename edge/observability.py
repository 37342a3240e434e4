"""Every Prometheus metric of the appliance, defined in one place, and the HTTP endpoint serving them.

Conventions: the `edgeqc_` prefix, base units (`_seconds`), `_total` for counters, low-cardinality
labels only (view, verdict, item, reason, stage: never a UID). Events are counted where they happen
(the verdict, the publish acknowledgement), not reconstructed from scraped gauges. Jetson health is
read from sysfs at scrape time where the files exist and is simply absent elsewhere.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 5.0)
DI_BUCKETS: Final = (-4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0)


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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, sysfs_root: Path = Path("/")) -> None:
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
        self.associations = Counter("edgeqc_associations_total", "DICOM associations", ["result"], registry=r)
        self.deviation_index = Histogram(
            "edgeqc_deviation_index", "Exposure deviation index per view", ["view"], registry=r, buckets=DI_BUCKETS
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

    def observe_verdict(self, verdict: dict[str, Any], probe: bool = False) -> None:
        """Count one verdict (the JSON of edge.qc.verdict) where it is made; a health probe's verdict
        only as a probe, so that rollouts do not move a room's reject rates or exposure figures."""
        for stage, ms in verdict.get("timings_ms", {}).items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)
        outcome = str(verdict.get("verdict", ""))
        if probe:
            self.probes.labels(outcome).inc()
            return
        if outcome == "rejected":
            self.rejected.labels(str(verdict.get("reason_code") or "unknown")).inc()
            return
        view = (verdict.get("view") or {}).get("judged") or "unknown"
        self.judged.labels(view, outcome).inc()
        if outcome == "indeterminate":
            self.indeterminate.labels(view, str(verdict.get("reason_code") or "unknown")).inc()
        for failed in verdict.get("failed", []):
            self.item_failures.labels(view, str(failed.get("item"))).inc()
        exposure = verdict.get("items", {}).get("exposure_index", {})
        if isinstance(exposure, dict) and isinstance(exposure.get("value"), int | float):
            self.deviation_index.labels(view).observe(float(exposure["value"]))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


# A scraper or a probe needs a connection for a moment; one held idle must not cost a thread for ever.
# (No cap on connections: a cap would let a few idle ones lock the health gate out.)
HTTP_IDLE_S: Final = 10.0


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    ready: Callable[[], tuple[bool, str]]
    routes: Callable[[BaseHTTPRequestHandler], bool] | None  # more pages (the room display): True when answered
    timeout = HTTP_IDLE_S  # a connection silent this long is closed (StreamRequestHandler sets it on the socket)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, self.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif self.path == "/readyz":
            ok, why = self.ready()
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
        elif self.routes is None or not self.routes(self):
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
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
        handler = type("Handler", (_Handler,), {"metrics": metrics, "ready": staticmethod(ready), "routes": more})
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
