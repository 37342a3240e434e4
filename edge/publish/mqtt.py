"""MQTT publishing from the outbox (paho-mqtt, v2 callback API).

Only the sender thread publishes, one message at a time, and only while connected: paho's in-memory
queue is never the place a verdict waits (it is lost on a restart). A message leaves the outbox when
the broker has acknowledged it. A retained status topic says "online" with the versions when
connected, and the broker publishes the last will "offline" when the appliance vanishes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.publish.outbox import Message, Outbox

log = logging.getLogger("edge.publish.mqtt")


@dataclass(frozen=True)
class Timing:
    """How patient the publisher is with the broker (not site configuration: tests shorten them)."""

    keepalive_s: int = 30
    ack_timeout_s: float = 10.0
    reconnect_max_s: int = 30


def client_for(settings: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho client (v2 callbacks) with the site's login and TLS: the one way edge-qc talks to its
    broker (the publisher, and `edge-qc doctor` checking that it can)."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    if settings.ca_certs:
        client.tls_set(
            ca_certs=settings.ca_certs,
            certfile=settings.certfile or None,
            keyfile=settings.keyfile or None,
            keyfile_password=settings.keyfile_password or None,
        )
    return client


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        mqtt_config: MqttConfig,
        *,
        birth: Mapping[str, Any] | None = None,  # versions etc. sent with "online"
        timing: Timing = Timing(),
        on_published: Callable[[Message, float], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = mqtt_config
        self.timing = timing
        self.status_topic = mqtt_config.status_topic_name
        self.on_published = on_published  # (message, seconds from publish to PUBACK)
        self.on_failure = on_failure
        self.connected = threading.Event()
        self.published = 0
        self.failures_in_a_row = 0  # publishes not acknowledged since the last one that was
        self.waiting_since: float | None = None  # monotonic: when the message in front was first sent, unacknowledged
        self._refused = ""  # the broker's last reason for refusing the connection (logged once per change)
        self._was_connected = False  # for one "down" and one "up" line per transition
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._birth = dict(birth or {})
        settings = mqtt_config
        client_id = settings.client_id or f"edge-qc-{settings.device}"
        client = client_for(settings, client_id)
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=timing.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    def _status(self, state: str) -> bytes:
        return json.dumps({"state": state, **(self._birth if state == "online" else {})}).encode()

    def announce(self, birth: dict[str, Any]) -> None:
        """New facts for the retained "online" status (e.g. versions after an engine activation): sent
        now when connected, and with every later connection."""
        self._birth = dict(birth)
        if self.connected.is_set():
            self._client.publish(self.status_topic, self._status("online"), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            if str(reason) != self._refused:  # e.g. "Not authorized": a wrong password, logged without it
                self._refused = str(reason)
                log.error("the broker %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason)
            return
        again = " again" if self._was_connected or self._refused else ""
        self._refused = ""
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self.connected.set()
        self._wake.set()
        log.info(
            "broker %s:%d connected%s: verdicts are delivered (%d waiting in the outbox)",
            self.settings.host,
            self.settings.port,
            again,
            self.outbox.depth(),
            extra={"fields": {"event": "broker_up", "host": self.settings.host, "port": self.settings.port}},
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not was:  # paho also calls this after a failed reconnect: one line per transition
            return
        self._was_connected = True
        fields = {"event": "broker_down", "host": self.settings.host, "port": self.settings.port, "reason": str(reason)}
        if self._stop.is_set():
            log.info("broker %s:%d disconnected: edge-qc is stopping", self.settings.host, self.settings.port,
                     extra={"fields": fields})  # fmt: skip
            return
        log.warning(
            "broker %s:%d lost (%s): verdicts wait in the outbox and are sent when it is back; reconnecting",
            self.settings.host,
            self.settings.port,
            reason,
            extra={"fields": fields},
        )

    def start(self) -> None:
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.timing.keepalive_s)
        self._client.loop_start()
        self._sender.start()

    def notify(self) -> None:
        """A new message is in the outbox: send it now rather than at the next poll."""
        self._wake.set()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if not self.connected.is_set():
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            batch = self.outbox.pending(1)
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            message = batch[0]
            started = time.monotonic()
            if self.waiting_since is None:
                self.waiting_since = started
            try:
                info = self._client.publish(message.topic, message.payload, qos=1)
                info.wait_for_publish(timeout=self.timing.ack_timeout_s)
                acknowledged = info.is_published()
            except (ValueError, RuntimeError):
                acknowledged = False
            if acknowledged:
                self.outbox.remove(message.row)
                self.published += 1
                self.failures_in_a_row, self.waiting_since = 0, None
                if self.on_published is not None:
                    self.on_published(message, time.monotonic() - started)
            else:  # stays in the outbox, in front: tried again once the broker is back
                self.failures_in_a_row += 1
                if self.on_failure is not None:
                    self.on_failure()
                time.sleep(0.2)

    def problem(self, ack_timeout_s: float) -> str:
        """Why verdicts are not getting through ("" when they are): a broker that is connected but has
        not acknowledged the verdict in front for `ack_timeout_s` is as bad as no broker."""
        waiting = self.waiting_since
        if waiting is not None and time.monotonic() - waiting > ack_timeout_s:
            return (
                f"broker has not acknowledged a verdict for {time.monotonic() - waiting:.0f} s"
                f" ({self.failures_in_a_row} attempts)"
            )
        return ""

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (graceful stop); False if the broker did not take it all."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.depth() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return self.outbox.depth() == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=self.timing.ack_timeout_s + 1)
        if self.connected.is_set():
            self._client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
            time.sleep(0.1)
        self._client.disconnect()
        self._client.loop_stop()
