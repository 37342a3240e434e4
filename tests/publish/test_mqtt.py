"""Publishing through a real Mosquitto broker: in order, acknowledged, and nothing lost while it is away."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from edge.config import MqttConfig
from edge.publish.mqtt import Publisher, Timing
from edge.publish.outbox import Outbox
from tests.conftest import require_tool
from tools.testbed import RUN_AS_INVOKER, Broker, VerdictSubscriber, free_port, wait_for

MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")


def queue(outbox: Outbox, first: int, count: int) -> None:
    for i in range(first, first + count):
        outbox.put("edgeqc/s/r/d/verdict", json.dumps({"message_id": f"m{i:03d}", "n": i}).encode(), f"m{i:03d}")


def test_verdicts_arrive_in_order_and_status_is_retained(broker: Broker, tmp_path: Path) -> None:
    subscriber = VerdictSubscriber(broker.port, "edgeqc/#")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = MqttConfig(port=broker.port, site="s", room="r", device="d")
    publisher = Publisher(outbox, settings, birth={"model": "m 0.2.0"})
    queue(outbox, 0, 20)
    publisher.start()
    assert wait_for(lambda: len(subscriber.payloads("verdict")) >= 20)
    assert [p["n"] for p in subscriber.payloads("verdict")] == list(range(20))
    assert outbox.depth() == 0 and publisher.published == 20
    assert {"state": "online", "model": "m 0.2.0"} in subscriber.payloads("status")
    publisher.stop()
    assert wait_for(lambda: subscriber.payloads("status")[-1]["state"] == "offline")
    subscriber.close()


def test_nothing_is_lost_while_the_broker_is_down(broker: Broker, tmp_path: Path) -> None:
    subscriber = VerdictSubscriber(broker.port, "edgeqc/+/+/+/verdict")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    publisher = Publisher(outbox, MqttConfig(port=broker.port), timing=Timing(ack_timeout_s=2.0))
    publisher.start()
    queue(outbox, 0, 10)
    assert wait_for(lambda: len(subscriber.payloads("verdict")) >= 10)
    broker.stop()
    assert wait_for(lambda: not publisher.connected.is_set())
    queue(outbox, 10, 15)  # verdicts made while the broker is away wait in the outbox
    time.sleep(1.0)
    assert outbox.depth() == 15
    broker.start()
    assert wait_for(lambda: outbox.depth() == 0, timeout=40)
    assert wait_for(lambda: {p["n"] for p in subscriber.payloads("verdict")} == set(range(25)), timeout=20)
    received = [p["n"] for p in subscriber.payloads("verdict")]
    first_seen = list(dict.fromkeys(received))  # at-least-once: a duplicate may follow a reconnect
    assert first_seen == list(range(25))
    publisher.stop()
    subscriber.close()


def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path)
    queue(first, 0, 3)
    queue(first, 1, 1)  # the same message id again: ignored (idempotent replay after a crash)
    first.close()
    second = Outbox(path)
    assert [m.message_id for m in second.pending()] == ["m000", "m001", "m002"]
    second.remove(second.pending()[0].row)
    assert second.depth() == 2


def tls_broker(folder: Path, pki: Path) -> tuple[Broker, int]:
    """Mosquitto with a TLS listener that wants a client certificate from the test CA and a password,
    and a plain loopback listener for the test's subscriber."""
    broker = Broker(folder)
    tls_port = free_port()
    subprocess.run([str(MOSQUITTO_PASSWD), "-b", "-c", str(folder / "passwd"), "edgeqc", "s3cret"], check=True)
    broker.config.write_text(
        f"{RUN_AS_INVOKER}per_listener_settings true\n"
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
        f"listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {folder / 'passwd'}\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate true\ntls_version tlsv1.2\n"
    )
    broker.start()
    return broker, tls_port


def test_tls_with_client_certificate_and_password(tmp_path: Path, pki: Path) -> None:
    require_tool(MOSQUITTO_PASSWD, package="mosquitto")
    broker, tls_port = tls_broker(tmp_path, pki)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/+/+/+/verdict")
    def settings(password: str) -> MqttConfig:
        return MqttConfig(
            port=tls_port,
            username="edgeqc",
            password=password,
            ca_certs=str(pki / "ca.crt"),
            certfile=str(pki / "client.crt"),
            keyfile=str(pki / "client.key"),
        )

    wrong = Publisher(Outbox(tmp_path / "wrong.sqlite"), settings("guess"))
    right = Publisher(Outbox(tmp_path / "right.sqlite"), settings("s3cret"))
    try:
        queue(wrong.outbox, 0, 2)
        queue(right.outbox, 10, 2)
        wrong.start()
        right.start()
        assert wait_for(lambda: {p["n"] for p in subscriber.payloads("verdict")} == {10, 11})
        assert right.outbox.depth() == 0
        time.sleep(1.0)
        assert not wrong.connected.is_set() and wrong.outbox.depth() == 2  # refused, and nothing lost
    finally:
        wrong.stop()
        right.stop()
        subscriber.close()
        broker.stop()
