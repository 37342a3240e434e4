"""The one test bed: a real Mosquitto, `edge-qc serve`, DCMTK's storescu and a verdict subscriber, all on
free loopback ports, and a headless Chromium for the room display. The demo, the end-to-end benchmark
and the tests use these and nothing else, so "start the daemon and wait until it is ready" is written
once (it waits on /readyz, the same signal systemd and the fleet's health gate use, not on a line of
log text).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO: Final = Path("/usr/sbin/mosquitto")
STORESCU: Final = Path("/usr/bin/storescu")  # DCMTK's; pynetdicom's own storescu is another program
STORESCP: Final = Path("/usr/bin/storescp")  # DCMTK's: the write-back tests' PACS
PROMETHEUS: Final = Path("/usr/bin/prometheus")  # Debian's: the monitoring pack's live test
CHROMIUM: Final = ("chromium", "chromium-browser", "google-chrome")  # Debian's first
# Started as root, Mosquitto drops to the "mosquitto" user, which cannot read a test's private temporary
# files (certificates, password file, persistence); "user root" keeps it as it was started.
RUN_AS_INVOKER: Final = "user root\n"


class ToolMissingError(RuntimeError):
    """A program the test bed needs is not installed; the message names the Debian package."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    return str(MOSQUITTO) if MOSQUITTO.exists() else shutil.which("mosquitto")


def storescu_binary() -> Path:
    if STORESCU.exists():
        return STORESCU
    raise ToolMissingError(f"{STORESCU} not installed (apt-get install dcmtk)")


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class Broker:
    """A Mosquitto on a loopback port that a test can stop and start again."""

    def __init__(self, folder: Path, persistent: bool = False, tls: Path | None = None) -> None:
        """`persistent`: sessions and queued messages survive a restart (saved on a clean stop). `tls`: a
        folder with ca.crt, server.crt and server.key (tests/conftest.py's pki): a second listener, on
        `tls_port`, speaks TLS and wants a client certificate that CA signed."""
        binary = mosquitto_binary()
        if binary is None:
            raise ToolMissingError("mosquitto not installed (apt-get install mosquitto)")
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else 0
        self.config = folder / "mosquitto.conf"
        persistence = f"persistence true\npersistence_location {folder}/\n" if persistent else "persistence false\n"
        listeners = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        if tls is not None:
            listeners += (
                f"listener {self.tls_port} 127.0.0.1\ncafile {tls / 'ca.crt'}\ncertfile {tls / 'server.crt'}\n"
                f"keyfile {tls / 'server.key'}\nrequire_certificate true\ntls_version tlsv1.2\n"
            )
        self.config.write_text(f"{RUN_AS_INVOKER}{listeners}{persistence}")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        if not wait_for(lambda: accepts(self.port), timeout=10):
            raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Prometheus:
    """A real Prometheus (Debian's) on a free loopback port with its own storage: it scrapes each target
    (a metrics port and its labels) as job "edgeqc" and evaluates `rule_files`, both every second;
    `query` asks its HTTP API."""

    def __init__(self, folder: Path, targets: list[tuple[int, dict[str, str]]], rule_files: list[Path]) -> None:
        binary = str(PROMETHEUS) if PROMETHEUS.exists() else shutil.which("prometheus")
        if binary is None:
            raise ToolMissingError(f"{PROMETHEUS} not installed (apt-get install prometheus)")
        folder.mkdir(parents=True, exist_ok=True)
        self.binary, self.folder, self.port = binary, folder, free_port()
        static = [{"targets": [f"127.0.0.1:{port}"], "labels": labels} for port, labels in targets]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(f) for f in rule_files],
            "scrape_configs": [{"job_name": "edgeqc", "static_configs": static}],
        }
        self.config = folder / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        command = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with (self.folder / "log").open("wb") as log:  # the child keeps its own descriptor
            process = self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        if not wait_for(lambda: process.poll() is not None or self._ready(), timeout):
            raise RuntimeError("prometheus did not become ready")
        if process.poll() is not None:
            raise RuntimeError("prometheus exited:\n" + (self.folder / "log").read_text()[-4000:])

    def _ready(self) -> bool:
        return endpoint(self.port, "/-/ready")[0] == 200

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar) through /api/v1/query; raises on a query error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{expr}: {exc.read().decode()}") from exc
        data = answer["data"]
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else [
            {"metric": {}, "value": data["result"]}]  # fmt: skip
        return result

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


def accepts(port: int) -> bool:
    """Something listens on this loopback TCP port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class VerdictSubscriber:
    """Collects every message on a topic filter, resubscribing after a broker restart; `on_message`
    sees each one as it arrives (the demo prints them, the e2e benchmark times them)."""

    def __init__(
        self,
        port: int,
        topic: str,
        persistent_session: bool = False,
        on_message: Callable[[str, dict[str, Any]], None] | None = None,
        client_id: str = "test-subscriber",
    ) -> None:
        """`persistent_session`: the broker keeps what arrives while this subscriber is away (QoS 1)."""
        self.messages: list[tuple[str, bytes, bool]] = []  # topic, payload, retained
        self.lock = threading.Lock()
        self._callback = on_message
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent_session
        )
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
        if self._callback is not None:
            self._callback(message.topic, json.loads(message.payload))

    def payloads(self, topic_part: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if topic_part in t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def site_config(
    folder: Path,
    broker_port: int,
    names: tuple[str, str, str] = ("h1", "xr2", "jetson7"),
    calling_aets: tuple[str, ...] = ("MODALITY", "EDGEQC-PROBE"),
    threads: int = 1,
    extra: str = "",
    mqtt: str = "",
) -> tuple[Path, int]:
    """A site.toml for a daemon on loopback (spool and outbox in `folder`), with `mqtt` TOML lines in
    its [mqtt] table (TLS, say) and `extra` TOML (more tables) at its end; returns it and the DICOM port."""
    port, metrics_port = free_port(), free_port()
    site, room, device = names
    config = folder / "site.toml"
    config.write_text(
        f"""[model]
threads = {threads}
[dicom]
ae_title = "EDGEQC"
bind = "127.0.0.1"
port = {port}
allowed_calling_aets = {json.dumps(list(calling_aets))}
[mqtt]
port = {broker_port}
site = "{site}"
room = "{room}"
device = "{device}"
{mqtt}
[service]
spool_dir = "spool"
outbox_path = "outbox.sqlite"
[metrics]
port = {metrics_port}
{extra}"""
    )
    return config, port


def send(
    port: int, *files: Path, calling: str = "MODALITY", called: str = "EDGEQC"
) -> subprocess.CompletedProcess[str]:
    """C-STORE `files` in one association with DCMTK's storescu; the finished process (not checked)."""
    command = [str(storescu_binary()), "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def store(port: int, *files: Path, calling: str = "MODALITY", called: str = "EDGEQC") -> None:
    """C-STORE `files`; raises with storescu's output unless every store succeeded."""
    done = send(port, *files, calling=calling, called=called)
    if done.returncode != 0:
        raise RuntimeError(f"storescu exited {done.returncode}: {done.stdout}{done.stderr}")


class StoreScp:
    """DCMTK's storescp on a free loopback port, storing what it receives into `folder`: the PACS a
    write-back test sends to, which it can start late (the destination down) and stop."""

    def __init__(self, folder: Path, ae_title: str = "PACS") -> None:
        if not STORESCP.exists():
            raise ToolMissingError(f"{STORESCP} not installed (apt-get install dcmtk)")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [str(STORESCP), "-aet", self.ae_title, "-od", str(self.folder), "+uf", "-fe", ".dcm", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: accepts(self.port), timeout=10):
            raise RuntimeError("storescp did not start")

    def received(self) -> list[Path]:
        """The files stored so far, in the order they arrived (storescp writes each before it answers)."""
        return sorted(self.folder.glob("*.dcm"), key=lambda p: p.stat().st_mtime_ns)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def endpoint(port: int, path: str) -> tuple[int, str]:
    """GET one of a daemon's HTTP endpoints on loopback: status and body (0 while nothing listens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode().strip()
    except OSError:
        return 0, ""


def metrics_port(config: Path) -> int:
    from edge.config import load_config

    return load_config(config).metrics.port


class Daemon:
    """`edge-qc serve --config CONFIG` in a child process; `start` returns once /readyz answers 200 (model
    warm, spool writable, broker connected). Its output is kept in `lines` (and in `log` when given).
    `journal`: its stdout is announced as the journal's stream ($JOURNAL_STREAM names the pipe's device
    and inode, as systemd names its socket), so it writes what journald would read: `<N>{json}` lines."""

    def __init__(
        self, config: Path, env: Mapping[str, str] | None = None, log: Path | None = None, journal: bool = False
    ) -> None:
        self.config = config
        self.port = metrics_port(config)
        self.lines: list[str] = []
        self._log = log
        environment = {**os.environ, **(env or {})}
        environment.pop("JOURNAL_STREAM", None)
        read_end, write_end = os.pipe()
        if journal:
            pipe = os.fstat(write_end)
            environment["JOURNAL_STREAM"] = f"{pipe.st_dev}:{pipe.st_ino}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "serve", "--config", str(config)],
            stdout=write_end,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        os.close(write_end)
        self._output = os.fdopen(read_end, encoding="utf-8", errors="replace")
        self._reader = threading.Thread(target=self._read, name="daemon-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        sink = self._log.open("a") if self._log is not None else None
        try:
            for line in self._output:
                self.lines.append(line)
                if sink is not None:
                    sink.write(line)
                    sink.flush()
        finally:
            self._output.close()
            if sink is not None:
                sink.close()

    @classmethod
    def start(
        cls,
        config: Path,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        timeout: float = 120,
        journal: bool = False,
    ) -> Daemon:
        daemon = cls(config, env, log, journal)
        if not wait_for(lambda: daemon.process.poll() is not None or daemon.endpoint("/readyz")[0] == 200, timeout):
            daemon.process.kill()
            raise RuntimeError("the daemon did not become ready:\n" + "".join(daemon.lines))
        if daemon.process.poll() is not None:
            raise RuntimeError("the daemon exited:\n" + "".join(daemon.lines))
        return daemon

    @property
    def pid(self) -> int:
        return self.process.pid

    def endpoint(self, path: str) -> tuple[int, str]:
        return endpoint(self.port, path)

    def scrape(self) -> str:
        status, text = self.endpoint("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {text}")
        return text

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: the daemon drains (judges what it received, hands verdicts to the broker); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=5)


def chromium_binary() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    raise ToolMissingError("chromium not installed (apt-get install chromium)")


class Browser:
    """A headless Chromium with one page, driven over the DevTools protocol (websocket-client): the room
    display's tests and benchmark open the page, read its DOM and take screenshots through it."""

    def __init__(self, folder: Path, size: tuple[int, int] = (1920, 1080)) -> None:
        import websocket  # only the room display's tests and benchmark need it

        binary = chromium_binary()
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--headless=new",
            "--disable-gpu",
            "--remote-debugging-port=0",
            f"--user-data-dir={folder}",
            f"--window-size={size[0]},{size[1]}",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium refuses its sandbox as root
            "about:blank",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = folder / "DevToolsActivePort"
        if not wait_for(lambda: active.is_file() and active.read_text().strip(), timeout=30):
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        width, height = size  # the viewport itself, as a kiosk's full screen (the window would be less)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events arriving meanwhile are dropped)."""
        number = next(self._ids)
        self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def open(self, url: str, timeout: float = 20.0) -> None:
        self.call("Page.navigate", url=url)
        if not wait_for(lambda: self.evaluate("document.readyState") == "complete", timeout):
            raise RuntimeError(f"{url} did not load")

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """A JavaScript expression's value in the page (JSON-able values only); with `await_promise`,
        what the promise it gives resolves to (the call returns then)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
