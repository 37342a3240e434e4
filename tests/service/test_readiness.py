"""/readyz tells the truth: a nearly full spool disk, a broker that takes the connection but never
acknowledges (a real Mosquitto, frozen with SIGSTOP), and association slots held by idle peers each
turn it 503 with the reason, and it is "ready" again once the cause is gone."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

from edge.config import load_config
from edge.service import IDLE_PEER_S, Service
from tests.qc.conftest import fault_case, write_case
from tools.testbed import Broker, endpoint, metrics_port, site_config, store, wait_for


def with_settings(config: Path, **sections: str) -> Path:
    """The test bed's site.toml with extra lines appended to its sections."""
    text = config.read_text()
    for section, lines in sections.items():
        text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1)
    config.write_text(text)
    return config


def test_a_nearly_full_spool_disk_is_not_ready(broker: Broker, tmp_path: Path) -> None:
    config_path, _ = site_config(tmp_path, broker.port)
    free = shutil.disk_usage(tmp_path).free
    with_settings(config_path, service=f"min_free_bytes = {free * 2}")  # more than the disk will ever have
    service = Service(load_config(config_path))
    service.start()
    try:
        http = metrics_port(config_path)
        assert wait_for(lambda: endpoint(http, "/readyz")[0] == 503)
        assert "spool disk nearly full" in endpoint(http, "/readyz")[1]
    finally:
        service.stop(drain_s=2)


def test_a_broker_that_never_acknowledges_is_not_ready(broker: Broker, tmp_path: Path) -> None:
    study = write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path)
    config_path, port = site_config(tmp_path, broker.port)
    with_settings(config_path, mqtt="ack_timeout_s = 2")
    service = Service(load_config(config_path))
    service.start()
    http = metrics_port(config_path)
    assert broker.process is not None
    try:
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"))
        broker.process.send_signal(signal.SIGSTOP)  # connected, and silent
        store(port, study)
        assert wait_for(lambda: "has not acknowledged" in endpoint(http, "/readyz")[1], timeout=30)
        assert endpoint(http, "/readyz")[0] == 503
        broker.process.send_signal(signal.SIGCONT)
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"), timeout=60)
        assert service.outbox.depth() == 0  # the verdict went out
    finally:
        broker.process.send_signal(signal.SIGCONT)
        service.stop(drain_s=2)


def test_association_slots_held_by_idle_peers_are_not_ready(broker: Broker, tmp_path: Path) -> None:
    config_path, port = site_config(tmp_path, broker.port)
    with_settings(config_path, dicom="max_associations = 2\nassociation_timeout_s = 60")
    service = Service(load_config(config_path))
    service.start()
    http = metrics_port(config_path)
    peers: list[socket.socket] = []
    try:
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"))
        for _ in range(2):
            peer = socket.socket()
            peer.bind(("127.0.0.2", 0))
            peer.connect(("127.0.0.1", port))
            peers.append(peer)
        assert wait_for(lambda: "held by idle peers" in endpoint(http, "/readyz")[1], timeout=IDLE_PEER_S + 10)
        peers.pop().close()
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"), timeout=10)
    finally:
        for peer in peers:
            peer.close()
        service.stop(drain_s=2)
