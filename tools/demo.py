"""python -m tools.demo [OUT]: the appliance end to end on this machine.

Generates a few phantom studies (AP, lateral, oblique; good and faulty), starts a local Mosquitto
and `edge-qc serve` (tools.testbed), sends the studies by DICOM C-STORE (DCMTK's storescu), prints
each verdict as it arrives over MQTT, then a summary of the metrics, and stops everything. Phantom
images only: the figures are not clinical.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from tools.testbed import (
    Broker,
    Daemon,
    ToolMissingError,
    VerdictSubscriber,
    site_config,
    store,
    storescu_binary,
    wait_for,
)

CASES = (
    ("ap", ()),
    ("ap", ("rotation",)),
    ("lateral", ()),
    ("lateral", ("tilt",)),
    ("oblique", ()),
    ("oblique", ("under_rotated",)),
)


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """What the demo shows of one verdict: the banner's headline, each correction once with the titles
    of the items it fixes, and EI/DI (the radiographer's words: never an item id)."""
    view = (verdict.get("view") or {}).get("judged")
    total = verdict.get("timings_ms", {}).get("total", 0)
    head = f"{verdict['verdict'].upper()} ({view}, judged in {total:.0f} ms): {verdict.get('headline', '')}"
    lines = [head + (f" - {verdict['reason']}" if verdict.get("reason") else "")]
    lines += [f"{c['text']} ({', '.join(c['items'])})" for c in verdict.get("corrections", [])]
    exposure = verdict.get("exposure") or {}
    if exposure.get("exposure_index") is not None:
        di = exposure.get("deviation_index")
        lines.append(f"EI {exposure['exposure_index']:.0f}" + ("" if di is None else f", DI {di:+.1f}"))
    return lines


def write_studies(folder: Path) -> list[Path]:
    from dataclasses import replace

    from tools.phantom.acquisition import sample_acquisition
    from tools.phantom.dataset import SetOptions, generate_image, image_dataset, image_rng
    from tools.phantom.dicom_io import write_dicom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (view, faults) in enumerate(CASES):
        acq = sample_acquisition(image_rng(2026, index), view, 0.0, force_faults=faults)  # type: ignore[arg-type]
        acq = replace(acq, deviation_index=0.0) if not faults else acq
        image = generate_image(SetOptions(seed=2026, size_px=2500), index, acquisition=acq)
        path = folder / f"{index}_{acq.projection}{'_' + '-'.join(faults) if faults else ''}.dcm"
        write_dicom(image_dataset(image, 2026), path, "none")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "out/demo")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        broker = Broker(out / "broker")
        storescu_binary()
    except ToolMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("generating 6 phantom studies (2,500 x 2,500, 16 bit)...", flush=True)
    studies = write_studies(out / "studies")
    broker.start()
    config, dicom_port = site_config(
        out, broker.port, names=("demo-hospital", "xray-1", "jetson-01"), calling_aets=("MODALITY",), threads=2
    )
    arrived = threading.Event()

    def show(topic: str, payload: dict[str, Any]) -> None:
        if not topic.endswith("/verdict"):
            print(f"  MQTT {topic}: {payload}")
            return
        print(f"  MQTT {topic}: " + "\n      ".join(verdict_lines(payload["verdict"])))
        arrived.set()

    subscriber = VerdictSubscriber(broker.port, "edgeqc/#", on_message=show, client_id="demo-viewer")
    daemon: Daemon | None = None
    try:
        daemon = Daemon.start(config, log=out / "daemon.log")
        print(f"sending {len(studies)} studies by C-STORE (DCMTK storescu)")
        for study in studies:
            print(f"  C-STORE {study.name}")
            arrived.clear()
            store(dicom_port, study)
            arrived.wait(timeout=30)
        wait_for(lambda: len(subscriber.payloads("/verdict")) >= len(studies), timeout=30)
        received = len(subscriber.payloads("/verdict"))
        # the counters move as each verdict is committed and acknowledged, a moment after MQTT has it
        running = daemon
        wait_for(lambda: f"edgeqc_end_to_end_seconds_count {float(received)}" in running.scrape(), timeout=10)
        print("\nmetrics (excerpt; series still at zero left out):")
        for line in daemon.scrape().splitlines():
            if line.endswith(" 0.0") and line.startswith("edgeqc_images_judged_total"):
                continue
            if line.startswith(
                (
                    "edgeqc_images_judged_total",
                    "edgeqc_end_to_end_seconds_sum",
                    "edgeqc_end_to_end_seconds_count",
                    "edgeqc_images_received_total",
                    "edgeqc_outbox_depth",
                    "edgeqc_model_info",
                )
            ):
                print(f"  {line}")
        print(f"\n{received} of {len(studies)} verdicts received; files in {out}")
        return 0 if received == len(studies) else 1
    except RuntimeError as exc:  # the daemon did not start, or a C-STORE failed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if daemon is not None:
            daemon.stop()
        subscriber.close()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
