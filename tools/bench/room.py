"""python -m tools.bench room: exposure to display, from the start of a C-STORE to the verdict painted on
the room display (/room in a headless Chromium), beside exposure to MQTT in the same run.

Full-size 16-bit DX phantom files (2,500 x 2,500, uncompressed, the demo's six studies) are sent one
at a time by DCMTK's storescu over loopback to `edge-qc serve` (tools.testbed). For each: the wall
clock as storescu starts; as the verdict reaches an MQTT subscriber; as the page paints it (the
page's `data-rendered-at`, Date.now() in the frame that shows it, read over DevTools: same machine,
same clock); and as its overlay has loaded. The next image goes once the overlay is on screen, as in
a room, where exposures are seconds apart. Also: the overlay's draw + JPEG encode alone, in this
process, on the same studies. Prints figures; asserts nothing.
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

from tools.bench.e2e import STORESCU

# Resolves with the page's data-rendered-at once it paints a verdict it had not painted when asked.
NEXT_PAINT = """window.__nextPaint = new Promise(resolve => {
  const body = document.body, seen = body.dataset.renderedN;
  const done = (value) => { observer.disconnect(); resolve(value); };
  const observer = new MutationObserver(() => {
    if (body.dataset.renderedN !== seen) done(Number(body.dataset.renderedAt));
  });
  observer.observe(body, {attributes: true});
  setTimeout(() => done(null), 30000);
}); true"""
OVERLAY_SHOWN = "(o => o.complete && o.naturalWidth > 0 && !!o.getAttribute('src'))(document.getElementById('overlay'))"


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {_p(values, 95) * 1000:.0f} ms"


def overlay_cost(studies: list[Path], runs: int) -> list[float]:
    """Seconds to draw and JPEG-encode the room display's overlay, per image, on this process's pipeline."""
    from edge.config import Config
    from edge.pipeline import Pipeline
    from edge.qc.overlay import draw_overlay
    from edge.room import jpeg

    pipeline = Pipeline(Config())
    results = [pipeline.process(path) for path in studies]
    pipeline.close()
    seconds = []
    for _ in range(runs):
        for result in results:
            assert result.radiograph is not None
            start = time.perf_counter()
            jpeg(draw_overlay(result.radiograph, result.segmentation, result.verdict))
            seconds.append(time.perf_counter() - start)
    return seconds


def run(count: int) -> int:
    from edge.publish.message import hashed_uid
    from tools.demo import write_studies
    from tools.testbed import Broker, Browser, Daemon, ToolMissingError, VerdictSubscriber, site_config, wait_for

    if not STORESCU.exists():
        print("error: needs DCMTK (apt-get install dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        studies = write_studies(out / "studies")
        files = [studies[i % len(studies)] for i in range(count)]
        uid_of = {p: hashed_uid(pydicom.dcmread(p).SOPInstanceUID) for p in studies}
        drawing = overlay_cost(studies, 3)
        try:
            broker = Broker(out / "broker")
            browser = Browser(out / "chromium")
        except ToolMissingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

        config, dicom_port = site_config(out, broker.port, calling_aets=("MODALITY",), threads=2)
        arrivals: dict[str, list[float]] = {}  # hashed UID -> wall clock of each verdict's arrival

        def note(topic: str, payload: dict[str, Any]) -> None:
            if topic.endswith("/verdict"):
                arrivals.setdefault(payload["verdict"]["image"]["sop_instance_uid"], []).append(time.time())

        sub = VerdictSubscriber(broker.port, "edgeqc/#", on_message=note, client_id="bench-room")
        to_mqtt: list[float] = []
        to_page: list[float] = []
        to_overlay: list[float] = []
        extra: list[float] = []
        daemon: Daemon | None = None
        try:
            broker.start()
            daemon = Daemon.start(config, log=out / "daemon.log")
            if not wait_for(lambda: sub.payloads("/status"), 10):  # the retained "online": subscribed
                print("error: the MQTT subscriber did not subscribe", file=sys.stderr)
                return 1
            browser.open(f"http://127.0.0.1:{daemon.port}/room")
            if not wait_for(lambda: browser.evaluate("document.body.dataset.status") == "", 10):
                print("error: the page did not connect to /room/events", file=sys.stderr)
                return 1
            for path in files:
                uid = uid_of[path]
                before = len(arrivals.get(uid, []))
                browser.evaluate(NEXT_PAINT)
                start = time.time()
                sender = subprocess.Popen(
                    [str(STORESCU), "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(dicom_port), str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                painted = browser.evaluate("window.__nextPaint", await_promise=True)  # returns once painted
                sender.wait(timeout=120)
                wait_for(lambda: len(arrivals.get(uid, [])) > before, 30)  # noqa: B023 (called here, at once)
                shown = wait_for(lambda: browser.evaluate(OVERLAY_SHOWN), 30)
                overlay_at = time.time()
                seen = arrivals.get(uid, [])
                if painted is None or len(seen) <= before:
                    missed = "not painted on the page" if painted is None else "no verdict over MQTT"
                    print(f"  {path.name}: {missed} within 30 s", file=sys.stderr)
                    continue
                mqtt_at, page_at = seen[before], float(painted) / 1000
                to_mqtt.append(mqtt_at - start)
                to_page.append(page_at - start)
                extra.append(page_at - mqtt_at)
                if shown:
                    to_overlay.append(overlay_at - start)
            in_daemon = daemon.scrape()
        finally:
            browser.close()
            if daemon is not None:
                daemon.stop()
            sub.close()
            broker.stop()
    overlay_sum = overlay_count = 0.0
    for line in in_daemon.splitlines():
        if line.startswith('edgeqc_stage_duration_seconds_sum{stage="room_overlay"}'):
            overlay_sum = float(line.split()[-1])
        elif line.startswith('edgeqc_stage_duration_seconds_count{stage="room_overlay"}'):
            overlay_count = float(line.split()[-1])
    if not to_page:
        print("error: no verdict reached the page", file=sys.stderr)
        return 1
    print(f"room display over loopback, {len(to_page)} of {len(files)} full-size 16-bit DX files (2,500 x 2,500):")
    print(f"  C-STORE start -> verdict at the MQTT subscriber:   {_ms(to_mqtt)}")
    print(f"  C-STORE start -> verdict painted on /room:          {_ms(to_page)}   (target p95 <= 1000 ms)")
    print(
        f"  display minus MQTT, per image:                      p50 {statistics.median(extra) * 1000:+.0f} ms,"
        f" p95 {_p(extra, 95) * 1000:+.0f} ms   (target <= +50 ms)"
    )
    if to_overlay:
        print(f"  C-STORE start -> overlay loaded on /room:          {_ms(to_overlay)}")
    print(f"  overlay draw + JPEG encode, this process, {len(drawing)} runs: {_ms(drawing)}")
    if overlay_count:
        mean = overlay_sum / overlay_count * 1000
        print(f"  overlay draw + JPEG encode in the daemon (niced thread): mean {mean:.0f} ms")
    return 0 if len(to_page) == len(files) else 1
