"""`edge-qc probe`: one known image through the running daemon, its verdict checked.

The fleet's health gate after an engine activation: a file judged offline proves nothing about the
daemon that is serving the room, so the probe goes the whole way a modality's image goes. It
subscribes to the daemon's verdict topic (the site configuration's [mqtt] settings, TLS and login
included), sends the image by C-STORE to the configured [dicom] port under a fresh SOP Instance UID
(every probe is a new image, never a duplicate), and waits for the verdict carrying that UID (hashed
as the daemon hashes it unless `mqtt.send_uids`).

Exit status: 0 the verdict (and the failed items, and the model version, when asked) matched; 1 it
did not (what came is printed); 2 the probe could not run (configuration, image, refused
association, broker, timeout: named). A JSON summary goes to stdout; it carries no patient data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from edge.config import MqttConfig

EXIT_MATCHED: Final = 0
EXIT_MISMATCHED: Final = 1
EXIT_ERROR: Final = 2
VERDICTS: Final = ("pass", "fail", "indeterminate", "rejected")
DEFAULT_CALLING_AET: Final = "EDGEQC-PROBE"


class ProbeError(RuntimeError):
    """The probe could not run; the message names what failed."""


@dataclass(frozen=True)
class Expectation:
    verdict: str
    items: tuple[str, ...] | None = None  # failed items, compared as a set; None: not checked
    model_version: str | None = None  # the version the daemon must be serving; None: not checked
    allow_degraded: bool = False  # a TensorRT engine that fell back to ONNX Runtime is a mismatch unless allowed

    def mismatches(self, verdict: dict[str, Any]) -> list[str]:
        """What in `verdict` differs from this expectation (empty: it matches)."""
        problems = []
        if verdict.get("verdict") != self.verdict:
            problems.append(f"verdict {verdict.get('verdict')!r}, expected {self.verdict!r}")
        failed = sorted(str(f.get("item")) for f in verdict.get("failed", []))
        if self.items is not None and failed != sorted(self.items):
            problems.append(f"failed items {failed}, expected {sorted(self.items)}")
        model = str(verdict.get("versions", {}).get("model", ""))
        if self.model_version is not None and model.rsplit(" ", 1)[-1] != self.model_version:
            problems.append(f"served by {model!r}, expected version {self.model_version!r}")
        if verdict.get("degraded") and not self.allow_degraded:
            problems.append("degraded: the configured engine did not load and ONNX Runtime served instead")
        return problems


class VerdictListener:
    """A paho (v2 API) subscriber on the daemon's verdict topic that hands over the verdict for one UID,
    connected with the configuration's broker settings (login and TLS included)."""

    def __init__(self, mqtt: MqttConfig, topic: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.host, self.port, self.topic = mqtt.host, mqtt.port, topic
        self._subscribed, self._arrived = threading.Event(), threading.Event()
        self._wanted, self._refused = "", ""
        self._found: dict[str, Any] | None = None
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"edge-qc-probe-{os.getpid()}"
        )
        if mqtt.username:
            self.client.username_pw_set(mqtt.username, mqtt.password or None)
        if mqtt.ca_certs:
            self.client.tls_set(ca_certs=mqtt.ca_certs, certfile=mqtt.certfile or None, keyfile=mqtt.keyfile or None)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self, timeout_s: float) -> None:
        """Connect and subscribe; returns once the broker acknowledged the subscription."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ProbeError(f"MQTT broker {self.host}:{self.port} not reachable: {exc}") from exc
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            reason = self._refused or "no subscription acknowledged"
            raise ProbeError(f"MQTT broker {self.host}:{self.port}: {reason} within {timeout_s:.0f} s")

    def _on_connect(self, client: Any, userdata: object, flags: object, reason: Any, properties: object) -> None:
        if reason.is_failure:
            self._refused = f"connection refused ({reason})"
            return
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: object, message: Any) -> None:
        try:
            verdict = json.loads(message.payload)["verdict"]
            uid = verdict["image"]["sop_instance_uid"]
        except (ValueError, KeyError, TypeError):
            return
        if self._wanted and uid == self._wanted:
            self._found = verdict
            self._arrived.set()

    def expect(self, uid_in_payload: str) -> None:
        self._wanted = uid_in_payload

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        return self._found if self._arrived.wait(timeout_s) else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fresh_copy(image: Path) -> tuple[Any, str]:
    """The image's dataset under a new SOP Instance UID, and that UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import generate_uid

    try:
        dataset = pydicom.dcmread(image)
    except (OSError, InvalidDicomError) as exc:
        raise ProbeError(f"{image}: not a readable DICOM file ({exc})") from exc
    uid = generate_uid()
    dataset.SOPInstanceUID = uid
    if getattr(dataset, "file_meta", None) is not None:
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
    return dataset, str(uid)


def c_store(dataset: Any, host: str, port: int, called_aet: str, calling_aet: str, timeout_s: float) -> None:
    """Send `dataset` in its own transfer syntax; a refused association or a failure status is a ProbeError."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise ProbeError(f"DICOM association with {called_aet} at {host}:{port} {why} (calling AE {calling_aet})")
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != 0:
        raise ProbeError(f"C-STORE to {called_aet} at {host}:{port} answered status 0x{code & 0xFFFF:04X}")


def run_probe(
    config_path: Path, image: Path, expectation: Expectation, calling_aet: str | None, timeout_s: float
) -> int:
    """Probe once, print the JSON summary, return the exit status. Without `calling_aet` the probe calls
    as the configuration's first probe AE title (which must also be an allowed calling AE title)."""
    from edge.config import ConfigError, load_config
    from edge.publish.message import hashed_uid

    summary: dict[str, Any] = {"image": image.name, "expected": _expected(expectation)}
    listener: VerdictListener | None = None
    try:
        config = load_config(config_path)
        mqtt, dicom = config.mqtt, config.dicom
        topic = mqtt.verdict_topic
        dataset, uid = fresh_copy(image)
        listener = VerdictListener(mqtt, topic)
        deadline = time.monotonic() + timeout_s
        listener.start(timeout_s)
        listener.expect(uid if mqtt.send_uids else hashed_uid(uid))
        if calling_aet is None:
            calling_aet = dicom.probe_calling_aets[0] if dicom.probe_calling_aets else DEFAULT_CALLING_AET
        host = "127.0.0.1" if dicom.bind in ("0.0.0.0", "") else "::1" if dicom.bind == "::" else dicom.bind
        c_store(dataset, host, dicom.port, dicom.ae_title, calling_aet, max(deadline - time.monotonic(), 1.0))
        verdict = listener.wait(max(deadline - time.monotonic(), 0.0))
        if verdict is None:
            raise ProbeError(f"no verdict on {topic} within {timeout_s:.0f} s of the C-STORE")
    except (ConfigError, ProbeError) as exc:
        summary.update(result="error", error=str(exc))
        print(json.dumps(summary))
        print(f"edge-qc probe: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if listener is not None:
            listener.close()
    problems = expectation.mismatches(verdict)
    summary.update(
        result="matched" if not problems else "mismatched",
        got={
            "verdict": verdict.get("verdict"),
            "failed_items": sorted(str(f.get("item")) for f in verdict.get("failed", [])),
            "view": (verdict.get("view") or {}).get("judged"),
            "model": verdict.get("versions", {}).get("model"),
            "engine": verdict.get("versions", {}).get("engine"),
            "degraded": verdict.get("degraded", False),
            "notes": verdict.get("notes", []),
        },
        problems=problems,
    )
    print(json.dumps(summary))
    return EXIT_MATCHED if not problems else EXIT_MISMATCHED


def _expected(expectation: Expectation) -> dict[str, Any]:
    expected: dict[str, Any] = {"verdict": expectation.verdict}
    if expectation.items is not None:
        expected["failed_items"] = sorted(expectation.items)
    if expectation.model_version is not None:
        expected["model_version"] = expectation.model_version
    return expected


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the daemon's site configuration (TOML)")
    parser.add_argument("image", type=Path, metavar="IMAGE.dcm", help="a health image with a known verdict")
    parser.add_argument("--expect", choices=VERDICTS, required=True, help="the verdict the image must get")
    parser.add_argument(
        "--expect-item",
        action="append",
        dest="expect_items",
        metavar="ITEM",
        help="a QC item that must fail (repeat; the failed items must be exactly these)",
    )
    parser.add_argument("--expect-none-failed", action="store_true", help="no QC item may fail")
    parser.add_argument("--expect-model", metavar="VERSION", help="the model version the daemon must be serving")
    parser.add_argument("--allow-degraded", action="store_true", help="accept a verdict marked degraded (fallback)")
    parser.add_argument(
        "--calling-aet",
        help=f"calling AE title (default: the first of dicom.probe_calling_aets, else {DEFAULT_CALLING_AET})",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole probe (default 60)")


def main(args: argparse.Namespace) -> int:
    """The `edge-qc probe` subcommand."""
    items: tuple[str, ...] | None = tuple(args.expect_items) if args.expect_items else None
    if args.expect_none_failed:
        items = ()
    expectation = Expectation(args.expect, items, args.expect_model, args.allow_degraded)
    return run_probe(args.config, args.image, expectation, args.calling_aet, args.timeout)
