"""A verdict the outbox cannot take (a full disk) is an infrastructure failure, not a bad image: the
image stays in the spool, /readyz says why, and the verdict goes out once the disk has room again."""

from __future__ import annotations

from pathlib import Path

from edge.config import load_config
from edge.service import COMMIT_RETRY_S, Service
from tests.qc.conftest import fault_case, write_case
from tools.testbed import Broker, VerdictSubscriber, endpoint, metrics_port, site_config, store, wait_for

UNLIMITED_PAGES = 1_073_741_823


def test_a_full_outbox_keeps_the_image_spooled_and_the_daemon_unready(broker: Broker, tmp_path: Path) -> None:
    study = write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path)
    config_path, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/verdict")
    http = metrics_port(config_path)
    service = Service(load_config(config_path))
    service.start()
    try:
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"))
        # SQLite's own "database or disk is full": no page may be added to the outbox file
        (pages,) = service.outbox._db.execute("PRAGMA page_count").fetchone()
        service.outbox._db.execute(f"PRAGMA max_page_count = {pages}")
        store(port, study)
        assert wait_for(lambda: endpoint(http, "/readyz")[0] == 503, timeout=60)
        _, why = endpoint(http, "/readyz")
        assert "outbox cannot be written" in why and "full" in why, why
        assert len(list((tmp_path / "spool").glob("*.dcm"))) == 1  # kept for the retry
        assert not list((tmp_path / "spool" / "failed").glob("*"))  # a good image is not "failed"
        assert service.outbox.depth() == 0 and not subscriber.payloads("verdict")

        service.outbox._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")  # room again
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 1, timeout=COMMIT_RETRY_S + 60)
        assert wait_for(lambda: endpoint(http, "/readyz") == (200, "ready"))
        assert not list((tmp_path / "spool").glob("*.dcm"))
        assert subscriber.payloads("verdict")[0]["verdict"]["verdict"] == "fail"
    finally:
        service.stop(drain_s=5)
        subscriber.close()
