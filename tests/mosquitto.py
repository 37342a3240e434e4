"""A real Mosquitto for tests: a broker on a free loopback port that a test can stop and start again,
and a subscriber that collects what arrives."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.demo import free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")
# Started as root, Mosquitto drops to the "mosquitto" user, which cannot read a test's private temporary
# files (certificates, password file, persistence); "user root" keeps it as it was started.
RUN_AS_INVOKER = "user root\n"


class Broker:
    """A Mosquitto on a loopback port that a test can stop and start again."""

    def __init__(self, folder: Path, persistent: bool = False) -> None:
        """`persistent`: sessions and queued messages survive a restart (saved on a clean stop)."""
        if not MOSQUITTO.exists() and shutil.which("mosquitto") is None:
            pytest.skip("mosquitto not installed (apt-get install mosquitto)")
        self.binary = str(MOSQUITTO if MOSQUITTO.exists() else shutil.which("mosquitto"))
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        persistence = f"persistence true\npersistence_location {folder}/\n" if persistent else "persistence false\n"
        self.config.write_text(f"{RUN_AS_INVOKER}listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Subscriber:
    """Collects every message on a topic filter, resubscribing after a broker restart."""

    def __init__(self, port: int, topic: str, persistent_session: bool = False) -> None:
        """`persistent_session`: the broker keeps what arrives while this subscriber is away (QoS 1)."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="test-subscriber",
            clean_session=not persistent_session,
        )
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic_part: str) -> list[dict[str, object]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if topic_part in t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False
