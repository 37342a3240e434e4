"""python -m tools.demo [OUT]: the appliance end to end on this machine.

Generates a few phantom studies (AP, lateral, oblique; good and faulty), starts a local Mosquitto
and `edge-qc serve`, sends the studies by DICOM C-STORE (DCMTK's storescu when installed, else
pynetdicom), prints each verdict as it arrives over MQTT, then a summary of the metrics, and stops
everything. Phantom images only: the figures are not clinical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

CASES = (
    ("ap", ()),
    ("ap", ("rotation",)),
    ("lateral", ()),
    ("lateral", ("tilt",)),
    ("oblique", ()),
    ("oblique", ("under_rotated",)),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    return found or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def start_mosquitto(binary: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A throw-away broker on a free loopback port (the demo's and the e2e benchmark's)."""
    port = free_port()
    (folder / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen([binary, "-c", str(folder / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


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
    mosquitto = mosquitto_binary()
    if mosquitto is None:
        print("error: mosquitto is not installed (as root: apt-get install mosquitto)", file=sys.stderr)
        return 2
    print("generating 6 phantom studies (2,500 x 2,500, 16 bit)...", flush=True)
    studies = write_studies(out / "studies")

    dicom_port, metrics_port = free_port(), free_port()
    broker, broker_port = start_mosquitto(mosquitto, out)
    config = out / "site.toml"
    config.write_text(
        f"""[dicom]
ae_title = "EDGEQC"
bind = "127.0.0.1"
port = {dicom_port}
allowed_calling_aets = ["MODALITY"]

[mqtt]
port = {broker_port}
site = "demo-hospital"
room = "xray-1"
device = "jetson-01"

[service]
spool_dir = "spool"
outbox_path = "outbox.sqlite"

[metrics]
port = {metrics_port}
"""
    )
    received: list[dict[str, object]] = []
    arrived = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        if message.topic.endswith("/verdict"):
            received.append(payload)
            verdict = payload["verdict"]
            view = (verdict.get("view") or {}).get("judged")
            total = verdict.get("timings_ms", {}).get("total", 0)
            print(f"  MQTT {message.topic}: {verdict['verdict'].upper()} ({view}, judged in {total:.0f} ms)")
            for failed in verdict.get("failed", []):
                print(f"      {failed['item']}: {failed['correction']}")
            arrived.set()
        else:
            print(f"  MQTT {message.topic}: {payload}")

    subscriber = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="demo-viewer")
    subscriber.on_connect = lambda c, u, f, r, p: c.subscribe("edgeqc/#", qos=1)
    subscriber.on_message = on_message
    subscriber.connect("127.0.0.1", broker_port)
    subscriber.loop_start()

    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--config", str(config)],
        stdout=open(out / "daemon.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        cwd=os.getcwd(),
    )
    try:
        deadline = time.monotonic() + 120
        while "edge-qc serving" not in (out / "daemon.log").read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                print((out / "daemon.log").read_text(), file=sys.stderr)
                return 2
            time.sleep(0.1)
        storescu = Path("/usr/bin/storescu")
        print(f"sending {len(studies)} studies by C-STORE ({'DCMTK storescu' if storescu.exists() else 'pynetdicom'})")
        for study in studies:
            print(f"  C-STORE {study.name}")
            if storescu.exists():
                cmd = [str(storescu), "-aet", "MODALITY", "-aec", "EDGEQC", "127.0.0.1", str(dicom_port), str(study)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            else:
                import pydicom
                from pynetdicom import AE

                ae = AE(ae_title="MODALITY")
                ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1")
                assoc = ae.associate("127.0.0.1", dicom_port, ae_title="EDGEQC")
                assoc.send_c_store(pydicom.dcmread(study))
                assoc.release()
            arrived.clear()
            arrived.wait(timeout=30)
        deadline = time.monotonic() + 30
        while len(received) < len(studies) and time.monotonic() < deadline:
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        print("\nmetrics (excerpt):")
        for line in metrics.splitlines():
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
        print(f"\n{len(received)} of {len(studies)} verdicts received; files in {out}")
        return 0 if len(received) == len(studies) else 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        subscriber.loop_stop()
        broker.terminate()
        broker.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
