"""Engine activation while images flow: the new version loads beside the running one on the activation
thread, so no image waits for the load; it serves from the first image after it is warm."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.engines.store import EngineStore
from edge.inference.backend import open_with_fallback
from edge.service import Service
from tests.qc.conftest import fault_case, write_case
from tools.testbed import Broker, VerdictSubscriber, site_config, store, wait_for

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "lumbar-resunet"


def test_no_image_waits_for_an_activation(broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engines = tmp_path / "engines"
    for version in ("0.1.0", "0.2.0"):
        shutil.copytree(SHIPPED / version, engines / version, ignore=shutil.ignore_patterns("validation"))
    engine_store = EngineStore(engines)
    engine_store.activate("0.1.0")
    config_path, port = site_config(tmp_path, broker.port)
    config_path.write_text(config_path.read_text().replace("[model]\n", f'[model]\npath = "{engines / "current"}"\n'))
    studies = []
    for seed in (61, 62, 63):
        (tmp_path / f"study{seed}").mkdir()
        studies.append(write_case(fault_case("ap", "cut_top", seed, size_px=512), tmp_path / f"study{seed}"))

    # The load of the next version is held until the test lets it go: an image that arrives meanwhile
    # must be judged, by the running version, without waiting.
    loading, release = threading.Event(), threading.Event()
    loaders: list[str] = []

    def held_open(*args: Any, **kwargs: Any) -> Any:
        if not release.is_set():
            loaders.append(threading.current_thread().name)
            loading.set()
            assert release.wait(60), "the test never released the load"
        return open_with_fallback(*args, **kwargs)

    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/verdict")
    service = Service(load_config(config_path))
    service.start()
    try:

        def served(count: int) -> list[str]:
            return [m["verdict"]["versions"]["model"] for m in subscriber.payloads("verdict")][:count]

        store(port, studies[0])
        assert wait_for(lambda: len(served(1)) == 1, timeout=60)
        monkeypatch.setattr("edge.pipeline.open_with_fallback", held_open)
        engine_store.activate("0.2.0")
        assert loading.wait(30)  # the watcher began loading 0.2.0 ...
        store(port, studies[1])  # ... and an image arrives while it loads
        assert wait_for(lambda: len(served(2)) == 2, timeout=60), "an image waited for the activation"
        assert not release.is_set() and loaders == ["activation"]  # loaded off the inference thread
        release.set()
        assert wait_for(lambda: service.pipeline.serving == "lumbar-resunet 0.2.0", timeout=60)
        store(port, studies[2])
        assert wait_for(lambda: len(served(3)) == 3, timeout=60)
        assert served(3) == ["lumbar-resunet 0.1.0", "lumbar-resunet 0.1.0", "lumbar-resunet 0.2.0"]
    finally:
        release.set()
        service.stop(drain_s=5)
        subscriber.close()
