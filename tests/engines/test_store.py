"""The engines directory: atomic activation, one-step rollback, damaged copies refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.config import Config, ModelConfig
from edge.engines.store import EngineStore, StoreError
from edge.pipeline import ReloadingPipeline
from tests.qc.conftest import fault_case, write_case

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "lumbar-resunet"


@pytest.fixture
def store(tmp_path: Path) -> EngineStore:
    for version in ("0.1.0", "0.2.0"):
        shutil.copytree(SHIPPED / version, tmp_path / version, ignore=shutil.ignore_patterns("validation"))
    return EngineStore(tmp_path)


def pointers(store: EngineStore) -> tuple[str | None, str | None]:
    return store.current, store.previous


def test_activate_and_rollback_switch_the_pointers(store: EngineStore) -> None:
    assert pointers(store) == (None, None) and [e.name for e in store.entries()] == ["0.1.0", "0.2.0"]
    store.activate("0.1.0")
    assert pointers(store) == ("0.1.0", None)
    store.activate("0.2.0")
    assert pointers(store) == ("0.2.0", "0.1.0")
    assert (store.root / "current" / "manifest.json").is_file()
    manifest = store.rollback()
    assert manifest.version == "0.1.0" and pointers(store) == ("0.1.0", "0.2.0")
    store.rollback()  # and back again
    assert pointers(store) == ("0.2.0", "0.1.0")
    flags = {e.name: (e.current, e.previous) for e in store.entries()}
    assert flags == {"0.1.0": (False, True), "0.2.0": (True, False)}


def test_damaged_or_unknown_versions_are_refused_and_nothing_changes(store: EngineStore) -> None:
    store.activate("0.1.0")
    model = store.root / "0.2.0" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(StoreError, match="does not match the manifest"):
        store.activate("0.2.0")
    with pytest.raises(StoreError, match=r"no engine version '9\.9\.9'"):
        store.activate("9.9.9")
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    assert store.current == "0.1.0"
    manifest = store.root / "0.2.0" / "manifest.json"
    manifest.write_text(json.dumps({"name": "x"}))
    broken = next(e for e in store.entries() if e.name == "0.2.0")
    assert broken.manifest is None and "missing or malformed field" in broken.problem


def test_a_serving_pipeline_loses_no_image_while_versions_switch(store: EngineStore, tmp_path: Path) -> None:
    """Activate and roll back continuously while a ReloadingPipeline (what the daemon runs) judges a
    stream of images: every image gets its verdict, each from one whole version."""

    store.activate("0.1.0")
    image = write_case(fault_case("ap", "cut_top", 61), tmp_path)
    serving = ReloadingPipeline(Config(model=ModelConfig(path=store.root / "current", threads=1)))
    verdicts: list[str] = []
    versions: list[str] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(8):
                verdict = serving.process(image).verdict
                verdicts.append(verdict.verdict)
                versions.append(verdict.versions["model"])
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    switches = 0
    while worker.is_alive():  # switch back and forth for as long as images flow
        if store.current == "0.1.0":
            store.activate("0.2.0")
        else:
            store.rollback()
        switches += 1
    worker.join()
    serving.close()
    assert not errors and verdicts == ["fail"] * 8 and switches > 8
    assert set(versions) <= {"lumbar-resunet 0.1.0", "lumbar-resunet 0.2.0"}


def test_cli(store: EngineStore) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "engine", *args, "--root", str(store.root)],
            capture_output=True,
            text=True,
            check=False,
        )

    assert run("activate", "0.2.0").returncode == 0
    listing = run("list").stdout
    assert "* 0.2.0" in listing and "lumbar-resunet 0.2.0" in listing
    assert run("rollback").returncode == 2  # nothing before 0.2.0
    bad = run("activate", "0.3.0")
    assert bad.returncode == 2 and "no engine version '0.3.0'" in bad.stderr


def test_reloading_pipeline_follows_activation_and_survives_a_broken_version(
    store: EngineStore, tmp_path: Path
) -> None:
    from edge.engines.store import sha256_of

    store.activate("0.1.0")
    image = write_case(fault_case("ap", "cut_top", 61), tmp_path)
    serving = ReloadingPipeline(Config(model=ModelConfig(path=store.root / "current", threads=1)))
    assert serving.process(image).verdict.versions["model"] == "lumbar-resunet 0.1.0"
    store.activate("0.2.0")
    assert serving.process(image).verdict.versions["model"] == "lumbar-resunet 0.2.0"
    # a version whose checksum is right but whose model does not load: the old one keeps serving
    broken = store.root / "0.3.0"
    shutil.copytree(store.root / "0.2.0", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest.update(version="0.3.0", sha256=sha256_of(broken / "model.onnx"))
    (broken / "manifest.json").write_text(json.dumps(manifest))
    store.activate("0.3.0")
    verdict = serving.process(image).verdict
    assert verdict.verdict == "fail" and verdict.versions["model"] == "lumbar-resunet 0.2.0"
    notes = " ".join(verdict.notes)
    assert "activation of 0.3.0 failed" in notes and "still serving lumbar-resunet 0.2.0" in notes
    store.rollback()  # back to 0.2.0: the problem clears
    verdict = serving.process(image).verdict
    assert verdict.versions["model"] == "lumbar-resunet 0.2.0" and not any("failed" in n for n in verdict.notes)
    serving.close()
