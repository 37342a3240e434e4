"""python -m tools.bench e2e: latency from the start of a C-STORE to the verdict at an MQTT subscriber.

Full-size 16-bit DX phantom files (2,500 x 2,500, uncompressed) are sent one at a time by DCMTK's
storescu over loopback to `edge-qc serve`; a subscriber notes when each verdict arrives. Floors in
the same run: DCMTK's storescp receiving the same files, and the model alone on ONNX Runtime.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _send(port: int, path: Path, called: str) -> None:
    cmd = [str(STORESCU), "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(port), str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(count: int, sustained_minutes: float = 0.0) -> int:
    from edge.publish.message import hashed_uid
    from tools.demo import write_studies
    from tools.testbed import Broker, Daemon, ToolMissingError, VerdictSubscriber, free_port, site_config

    if not STORESCU.exists() or not STORESCP.exists():
        print("error: needs DCMTK (apt-get install dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        try:
            broker = Broker(out / "broker")
        except ToolMissingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        studies = write_studies(out / "studies")
        files = [studies[i % len(studies)] for i in range(count)]
        uid_of = {p: hashed_uid(pydicom.dcmread(p).SOPInstanceUID) for p in studies}

        # floor 2: the model alone
        from edge.config import DEFAULT_MODEL
        from edge.engines.manifest import load_manifest
        from edge.inference.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(load_manifest(DEFAULT_MODEL).model_path)
        backend.warm_up(5)
        x = np.zeros((1, 1, 256, 256), np.float32)
        model = []
        for _ in range(count):
            start = time.perf_counter()
            backend.infer(x)
            model.append(time.perf_counter() - start)
        backend.close()

        # the appliance
        broker.start()
        config, dicom_port = site_config(out, broker.port, calling_aets=("MODALITY",), threads=2)
        arrivals: dict[str, list[float]] = {}  # hashed UID -> perf_counter() of each verdict's arrival

        def note(topic: str, payload: dict[str, Any]) -> None:
            arrivals.setdefault(payload["verdict"]["image"]["sop_instance_uid"], []).append(time.perf_counter())

        sub = VerdictSubscriber(broker.port, "edgeqc/+/+/+/verdict", on_message=note, client_id="bench")

        # floor 1: DCMTK storescp receiving the same files, each sent just before it goes to the
        # appliance, so that both see the same machine (a floor measured minutes apart moves by 30 %)
        floor_port = free_port()
        (out / "received").mkdir()
        scp = subprocess.Popen(
            [str(STORESCP), "-od", str(out / "received"), str(floor_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        transfer: list[float] = []
        daemon = Daemon.start(config, log=out / "daemon.log")
        try:
            latency = []
            if sustained_minutes:  # one image per second, as a busy X-ray room never sends
                files = [studies[i % len(studies)] for i in range(int(sustained_minutes * 60))]
            rss_start, rss_peak, started = rss_bytes(daemon.pid), 0, time.perf_counter()
            for n, path in enumerate(files):
                if sustained_minutes:
                    time.sleep(max(0.0, started + n - time.perf_counter()))
                    if n == 30:
                        rss_start = rss_bytes(daemon.pid)  # after the first half minute: caches warm
                    rss_peak = max(rss_peak, rss_bytes(daemon.pid))
                start = time.perf_counter()
                _send(floor_port, path, "ANY-SCP")
                transfer.append(time.perf_counter() - start)
                uid = uid_of[path]
                before = len(arrivals.get(uid, []))
                start = time.perf_counter()
                _send(dicom_port, path, "EDGEQC")
                deadline = time.perf_counter() + 30
                while time.perf_counter() < deadline:
                    seen = arrivals.get(uid, [])
                    if len(seen) > before:
                        latency.append(seen[before] - start)
                        break
                    time.sleep(0.002)
            rss_end = rss_bytes(daemon.pid)
        finally:
            scp.terminate()
            scp.wait()
            daemon.stop()
            sub.close()
            broker.stop()
        stages: dict[str, list[float]] = {}
        for payload in sub.payloads("/verdict"):  # receive, spool, queue; then decode .. judge
            for stage, ms in {**payload["timings_ms"], **payload["verdict"]["timings_ms"]}.items():
                stages.setdefault(stage, []).append(ms)
    floors = statistics.median(transfer) + statistics.median(model)
    e2e = statistics.median(latency)
    print(f"end to end over loopback, {len(latency)} of {len(files)} full-size 16-bit DX files (2,500 x 2,500):")
    p95 = _p(latency, 95)
    print(f"  C-STORE start -> verdict at the MQTT subscriber: p50 {e2e * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms,")
    print(f"  max {max(latency) * 1000:.0f} ms")
    print(f"  floor, DCMTK storescu -> storescp: p50 {statistics.median(transfer) * 1000:.0f} ms")
    print(f"  floor, the model alone (ONNX Runtime CPU): p50 {statistics.median(model) * 1000:.0f} ms")
    print(
        f"  overhead over the two floors: {100 * (e2e - floors) / floors:.0f} % (decode, preprocess, measure,"
        f" judge, spool fsync, outbox, MQTT)"
    )
    medians = ", ".join(f"{stage} {statistics.median(ms):.0f} ms" for stage, ms in stages.items())
    print(f"  inside the daemon, p50 per stage: {medians}")
    if sustained_minutes:
        growth = 100 * (rss_end - rss_start) / max(rss_start, 1)
        print(
            f"  sustained {sustained_minutes:g} min at 60 images/min: {len(latency)} of {len(files)} verdicts;"
            f" resident memory {rss_start / 2**20:.0f} MiB after 30 s -> {rss_end / 2**20:.0f} MiB at the end"
            f" ({growth:+.1f} %), peak {rss_peak / 2**20:.0f} MiB"
        )
    return 0 if len(latency) == len(files) else 1
