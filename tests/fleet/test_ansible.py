"""The fleet playbooks for real: ansible-playbook on this machine (local connection) into a staging root,
the daemon run by the role's process-mode control script against a real Mosquitto, engines moved by
rollout.yml and rollback.yml behind the health gate. The tests run in order and share the staging
root: install, install again, a good rollout, again, a model that fails validation, a rollback and
again, a model that passes validation but fails the health gate."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.qc.structures import STRUCTURES
from tests.fleet.environment import PLAYBOOK, Run, ansible_environment, build_wheel, run_playbook
from tools.testbed import Broker, VerdictSubscriber, accepts, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
MODELS = REPO / "engines" / "lumbar-resunet"

pytestmark = pytest.mark.slow
# Started as root, mosquitto drops to its own user, which cannot write into pytest's private tmp folders.
MOSQUITTO_USER = "root" if os.geteuid() == 0 else ""




@dataclass
class Staging:
    folder: Path
    root: Path
    inventory: Path
    variables: Path
    env: dict[str, str]
    subscriber: VerdictSubscriber
    metrics_port: int

    @property
    def engines(self) -> Path:
        return self.root / "var/lib/edge-qc/engines/lumbar-resunet"

    def pointer(self, name: str) -> str:
        return os.readlink(self.engines / name)

    def playbook(self, name: str, *extra: str, inventory: Path | None = None) -> Run:
        # the device's recap line (rollout.yml also has one for localhost)
        argv = ["-i", str(inventory or self.inventory), "-e", f"@{self.variables}", *extra, name]
        return run_playbook(argv, self.env, self.folder / f"{name}.log")

    def verdicts_from(self, version: str) -> list[dict[str, Any]]:
        return [
            m["verdict"]
            for m in self.subscriber.payloads("verdict")
            if m["verdict"]["versions"]["model"] == f"lumbar-resunet {version}"
        ]


def derived_model(source: Path, folder: Path, version: str, change: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    """A copy of a model version with its weights changed by `change(name, array)` and a manifest whose
    version and checksums match the changed file, so that only behaviour can tell it apart."""
    import onnx
    from onnx import numpy_helper

    out = folder / version
    shutil.copytree(source, out)
    model = onnx.load(str(out / "model.onnx"))
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(change(tensor.name, array).astype(array.dtype), tensor.name))
    onnx.save(model, str(out / "model.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "model.onnx").read_bytes()
    manifest.update(version=version, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest.pop("engine_validation", None)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def site_tls(folder: Path) -> Path:
    """A CA and a certificate for 127.0.0.1: the site broker's TLS listener, which the bridge verifies."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (needed for the bridge's TLS)")
    folder.mkdir()
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    for args in (
        ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=edge-qc test site CA", "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "site.key", "-out", "site.csr"],
        ["x509", "-req", "-in", "site.csr", *sign, "-days", "2", "-out", "site.crt"],
    ):
        subprocess.run([openssl, *args], cwd=folder, capture_output=True, check=True, timeout=60)
    return folder / "ca.crt"


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staging]:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed in this environment (pip install -e '.[fleet]')")
    folder = tmp_path_factory.mktemp("fleet")
    broker = Broker(folder)
    broker.start()
    wheel = build_wheel(folder)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = folder / "hosts.yml"  # JSON is YAML
    inventory.write_text(json.dumps({"edge_qc": {"hosts": {"room1": local}}}))
    # room0 comes first but room1 is the canary: a canary that fails must leave room0 untouched
    (folder / "hosts-two-rooms.yml").write_text(
        json.dumps({"edge_qc": {"hosts": {"room0": local, "room1": local}}, "canary": {"hosts": {"room1": None}}})
    )
    metrics_port = free_port()
    variables = {
        "edge_qc_root": str(folder / "root"),
        "edge_qc_service_manager": "process",
        "edge_qc_python": sys.executable,
        "edge_qc_wheel": wheel,
        "edge_qc_pip_no_deps": True,
        "edge_qc_venv_extra_site_dirs": [sysconfig.get_path("purelib")],
        "edge_qc_initial_model": str(MODELS / "0.1.0"),
        "edge_qc_site": "h1",
        "edge_qc_room": "xr1",
        "edge_qc_threads": 1,
        "edge_qc_dicom_bind": "127.0.0.1",
        "edge_qc_dicom_port": free_port(),
        "edge_qc_metrics_bind": "127.0.0.1",
        "edge_qc_metrics_port": metrics_port,
        "edge_qc_mqtt_port": broker.port,
        "edge_qc_mosquitto_port": free_port(),
        "edge_qc_site_broker_host": "127.0.0.1",
        "edge_qc_site_broker_port": free_port(),
        "edge_qc_site_broker_tls": True,
        "edge_qc_site_broker_cafile": str(site_tls(folder / "site-tls")),
        "edge_qc_bridge_restart_timeout": "1",
        "edge_qc_mosquitto_user": MOSQUITTO_USER,
        "edge_qc_prometheus_promtool": shutil.which("promtool") or "",  # checks each rules file when present
        "edge_qc_opening_hours": {"start_hour": 6, "end_hour": 20, "days": [6, 1, 2, 3, 4, 5]},
    }
    (folder / "vars.json").write_text(json.dumps(variables))
    env = ansible_environment(folder)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/#")
    stage = Staging(folder, folder / "root", inventory, folder / "vars.json", env, subscriber, metrics_port)
    yield stage
    control = stage.root / "opt/edge-qc/bin/edge-qc-ctl"
    if control.exists():
        stopped = subprocess.run([str(control), "stop"], capture_output=True, text=True, timeout=120, check=False)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert not (stage.root / "var/lib/edge-qc/run/edge-qc.pid").exists()
    subscriber.close()
    broker.stop()


def test_site_installs_the_appliance(staging: Staging) -> None:
    run = staging.playbook("site.yml")
    print(run.recap)
    assert run.rc == 0 and run.failed == 0 and run.changed > 0, run.output[-4000:]
    root = staging.root
    config = (root / "etc/edge-qc/site.toml").read_text()
    assert f'path = "{staging.engines}/current"' in config
    assert 'allowed_calling_aets = ["MODALITY", "EDGEQC-PROBE"]' in config
    assert '[qc]\nlanguage = "en"' in config and "[room]\nenabled = true\nshow_accession = false" in config
    assert f'[history]\nenabled = true\npath = "{root}/var/lib/edge-qc/history.sqlite"' in config
    assert "[writeback]" not in config  # only where the site names its PACS (edge_qc_writeback_host)
    for unit in ("edge-qc.service", "edge-qc-engine-build.service"):
        assert (root / "etc/systemd/system" / unit).read_text() == (REPO / "systemd" / unit).read_text()
    assert "MemoryMax=4G" in (root / "etc/systemd/system/edge-qc.service.d/limits.conf").read_text()
    # the package is this repo's wheel, installed into the staging venv (not the development checkout)
    where = subprocess.run(
        [str(root / "opt/edge-qc/venv/bin/python"), "-c", "import edge.probe; print(edge.probe.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=staging.folder,
    ).stdout
    assert where.startswith(str(root / "opt/edge-qc/venv/lib/"))
    assert staging.pointer("current") == "0.1.0" and not (staging.engines / "previous").exists()
    assert json.loads((root / "var/lib/edge-qc/health/expected.json").read_text()).keys() == {
        "ap-good.dcm",
        "oblique-under-rotated.dcm",
    }
    target = json.loads((root / "etc/prometheus/file_sd/edge-qc-room1.json").read_text())
    assert target == [
        {
            "targets": [f"room1:{staging.metrics_port}"],
            "labels": {"job": "edgeqc", "site": "h1", "room": "xr1", "device": "room1", "module": ""},
        }
    ]
    rules = sorted((root / "etc/prometheus/rules").iterdir())
    assert [r.name for r in rules] == ["edgeqc-alerts.yml", "edgeqc-opening-hours.yml", "edgeqc-recording.yml"]
    assert "(hour() >= 6 < 20) and on() (day_of_week() >= 1 <= 6)" in rules[1].read_text()
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "rules", *map(str, rules)], capture_output=True, text=True)
        assert check.returncode == 0 and "SUCCESS: 1 rules found" in check.stdout, check.stdout + check.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{staging.metrics_port}/readyz", timeout=10) as r:
        assert r.status == 200


def test_site_again_changes_nothing(staging: Staging) -> None:
    run = staging.playbook("site.yml")
    print(run.recap)
    assert run.rc == 0 and run.failed == 0 and run.changed == 0, run.output[-4000:]


def test_rollout_of_a_good_model_activates_it_behind_the_health_gate(staging: Staging) -> None:
    run = staging.playbook("rollout.yml", "-e", f"engine_rollout_model_dir={MODELS / '0.2.0'}")
    print(run.recap)
    assert run.rc == 0 and run.failed == 0 and run.changed > 0, run.output[-4000:]
    assert staging.pointer("current") == "0.2.0" and staging.pointer("previous") == "0.1.0"
    # the gate's probes went through the running daemon, which served the new version
    verdicts = staging.verdicts_from("0.2.0")
    assert sorted(v["verdict"] for v in verdicts) == ["fail", "pass"]
    assert "Roll out in batches" in run.output and "skipping: no hosts matched" in run.output


def test_rollout_again_changes_nothing(staging: Staging) -> None:
    run = staging.playbook("rollout.yml", "-e", f"engine_rollout_model_dir={MODELS / '0.2.0'}")
    print(run.recap)
    assert run.rc == 0 and run.failed == 0 and run.changed == 0, run.output[-4000:]
    assert staging.pointer("current") == "0.2.0"
    assert len(staging.verdicts_from("0.2.0")) == 4  # the gate ran again (2 probes), read-only


def test_a_model_that_fails_validation_is_never_activated(staging: Staging) -> None:
    """FP16 overflow: first-layer weights scaled so the FP16 body saturates to Inf/NaN (FP32 stays finite)."""
    first_conv = ("onnx::Conv_343", "onnx::Conv_344")
    bad = derived_model(
        MODELS / "0.2.0", staging.folder, "0.2.1-fp16-overflow", lambda n, a: a * 3e4 if n in first_conv else a
    )
    served_before = len(staging.subscriber.payloads("verdict"))
    two_rooms = staging.folder / "hosts-two-rooms.yml"
    run = staging.playbook("rollout.yml", "-e", f"engine_rollout_model_dir={bad}", inventory=two_rooms)
    print(run.recap)
    assert run.rc != 0 and run.failed == 1, run.output[-4000:]
    assert "[room0]" not in run.output and not re.search(r"^room0 ", run.output, re.MULTILINE)  # canary stopped it
    assert "0.2.1-fp16-overflow failed validation on room1 and was not activated; current stays 0.2.0" in run.output
    assert "NaN or Inf in the engine's outputs" in run.output
    assert staging.pointer("current") == "0.2.0" and staging.pointer("previous") == "0.1.0"
    assert (staging.engines / "0.2.1-fp16-overflow" / "model.onnx").exists()  # pushed, but never current
    assert "Activate the engine" not in run.output.split("Stop here when validation failed")[1]
    assert len(staging.subscriber.payloads("verdict")) == served_before  # no probe: the gate never ran


def test_rollback_goes_back_under_the_gate_and_a_second_run_changes_nothing(staging: Staging) -> None:
    run = staging.playbook("rollback.yml", "-e", "engine_rollout_rollback_from=0.2.0")
    print(run.recap)
    assert run.rc == 0 and run.failed == 0 and run.changed == 1, run.output[-4000:]
    assert staging.pointer("current") == "0.1.0" and staging.pointer("previous") == "0.2.0"
    assert wait_for(lambda: len(staging.verdicts_from("0.1.0")) == 2)  # the gate's probes, served by 0.1.0
    again = staging.playbook("rollback.yml", "-e", "engine_rollout_rollback_from=0.2.0")
    print(again.recap)
    assert again.rc == 0 and again.failed == 0 and again.changed == 0, again.output[-4000:]
    assert staging.pointer("current") == "0.1.0"


def test_a_model_that_fails_the_health_gate_is_rolled_back(staging: Staging) -> None:
    """A model blind to one structure (the articular processes: the oblique view's "Scotty dog"): FP16
    agrees with FP32 and the other 17 structures still segment the validation phantoms, so validation
    passes; but the daemon judges the oblique health image on other items than expected: the gate
    fails and the host rolls back."""
    facets = STRUCTURES.index("articular_process")

    def blind_to_facets(name: str, array: np.ndarray) -> np.ndarray:
        if name in ("model.head.weight", "model.head.bias"):
            array = array.copy()
            array[facets] = 0.0 if name.endswith("weight") else -20.0  # sigmoid(-20): never there
        return array

    blind = derived_model(MODELS / "0.2.0", staging.folder, "0.2.2-blind", blind_to_facets)
    run = staging.playbook("rollout.yml", "-e", f"engine_rollout_model_dir={blind}")
    print(run.recap)
    assert run.rc != 0 and run.failed == 1, run.output[-4000:]
    assert "0.2.2-blind failed the health gate on room1" in run.output
    assert "rolled back, current is 0.1.0" in run.output
    failure = run.output.split("TASK [engine_rollout : Fail the host]")[1]
    assert '"result": "mismatched"' in failure and "expected ['facet_joints', 'obliquity']" in failure
    assert staging.pointer("current") == "0.1.0" and staging.pointer("previous") == "0.2.2-blind"
    assert staging.verdicts_from("0.2.2-blind")  # the daemon really served it before the rollback


def test_the_device_broker_stores_and_forwards_to_the_site_broker(staging: Staging) -> None:
    """The rendered mosquitto.conf runs, and what the daemon publishes while the site broker is down
    reaches the site once it is back (bridge queue, persisted across a device broker restart)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tools.testbed import mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto not installed")
    variables = json.loads(staging.variables.read_text())
    conf = staging.root / "etc/mosquitto/mosquitto.conf"
    rendered = conf.read_text()
    assert "connection site" in rendered and "topic edgeqc/# out 1" in rendered and "cleansession false" in rendered
    assert f"bridge_cafile {staging.root}/etc/mosquitto/certs/site-ca.crt" in rendered
    tls = staging.folder / "site-tls"
    (staging.folder / "site-broker").mkdir()
    site = Broker(staging.folder / "site-broker")
    site.port = variables["edge_qc_site_broker_port"]  # where the rendered bridge points
    site.config.write_text(
        f"listener {site.port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {tls / 'ca.crt'}\ncertfile {tls / 'site.crt'}\nkeyfile {tls / 'site.key'}\n"
        f"persistence true\npersistence_location {site.config.parent}/\n"
        + (f"user {MOSQUITTO_USER}\n" if MOSQUITTO_USER else "")
    )
    received: list[bytes] = []
    subscribed = threading.Event()
    consumer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="site-consumer", clean_session=False)
    consumer.on_message = lambda c, u, m: received.append(bytes(m.payload))
    consumer.on_subscribe = lambda *_: subscribed.set()
    consumer.tls_set(ca_certs=str(tls / "ca.crt"))

    def device_broker() -> subprocess.Popen[bytes]:
        log = staging.folder / "device-broker.log"
        with log.open("ab") as out:
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        port = variables["edge_qc_mosquitto_port"]
        started = wait_for(lambda: accepts(port) or process.poll() is not None, timeout=30)
        assert started and process.poll() is None, f"device broker on port {port}: {log.read_text()[-2000:]}"
        return process

    site.start()
    consumer.connect("127.0.0.1", site.port)
    consumer.loop_start()
    consumer.subscribe("edgeqc/#", qos=1)
    assert subscribed.wait(10)
    consumer.disconnect()  # a persistent session: what arrives while it is away is kept for it
    consumer.loop_stop()
    device = device_broker()
    try:
        publish(variables["edge_qc_mosquitto_port"], b"one")
        site.stop()
        publish(variables["edge_qc_mosquitto_port"], b"two")
        device.terminate()  # the queued message must survive a device broker restart too
        device.wait(timeout=10)
        device = device_broker()
        site.start()
        consumer.connect("127.0.0.1", site.port)
        consumer.loop_start()
        assert wait_for(lambda: b"one" in received and b"two" in received, timeout=30), received  # QoS 1: at least once
    finally:
        consumer.loop_stop()
        device.terminate()
        device.wait(timeout=10)
        site.stop()


def publish(port: int, payload: bytes) -> None:
    """Publish as the daemon does: QoS 1 to the device broker, acknowledged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-daemon")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish("edgeqc/h1/xr1/room1/verdict", payload, qos=1).wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()
