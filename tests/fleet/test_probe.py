"""`edge-qc probe` and `edge-qc config-check`: the health gate's tools, against a real daemon and Mosquitto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge.cli import main
from edge.config import DEFAULT_MODEL, load_config
from tools.testbed import Broker, Daemon, VerdictSubscriber, site_config, wait_for

HEALTH = Path(__file__).resolve().parents[2] / "engines" / "health"
SERVED = DEFAULT_MODEL.name  # the daemon serves the default model version


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Daemon]]:
    """A real Mosquitto and `edge-qc serve` (the default model), shared by the probes of this module."""
    folder = tmp_path_factory.mktemp("probe")
    broker = Broker(folder)
    broker.start()
    config, _ = site_config(folder, broker.port)
    process = Daemon.start(config)
    yield config, process
    assert process.stop() == 0
    broker.stop()


def probe(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, object]]:
    code = main(["probe", *map(str, args)])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def expected() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((HEALTH / "expected.json").read_text())
    return data


def test_every_health_image_gets_its_expected_verdict_through_the_daemon(
    daemon: tuple[Path, Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = daemon
    assert len(expected()) == 2
    for name, want in expected().items():
        items = [a for item in want["failed_items"] for a in ("--expect-item", item)]
        if not items:
            items = ["--expect-none-failed"]
        code, summary = probe(
            capsys, "--config", config, HEALTH / name, "--expect", want["verdict"], *items, "--expect-model", SERVED
        )
        assert code == 0, summary
        assert summary["result"] == "matched" and summary["problems"] == []
        got = summary["got"]
        assert isinstance(got, dict)
        assert got["verdict"] == want["verdict"] and got["failed_items"] == sorted(want["failed_items"])
        assert got["model"] == f"lumbar-resunet {SERVED}" and got["view"] == want["view"]
        original = pydicom.dcmread(HEALTH / name)
        text = json.dumps(summary)
        assert str(original.PatientName) not in text and str(original.PatientID) not in text


def test_each_probe_is_a_new_image_marked_as_a_probe(
    daemon: tuple[Path, Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two probes with the same file both get their own verdict (a fresh SOP Instance UID each time);
    their payloads say "probe" and they are counted as probes, not as the room's images."""
    config, process = daemon
    subscriber = VerdictSubscriber(load_config(config).mqtt.port, "edgeqc/h1/xr2/jetson7/verdict")
    before = process.scrape()
    image = HEALTH / "ap-good.dcm"
    for _ in range(2):
        code, summary = probe(capsys, "--config", config, image, "--expect", "pass")
        assert code == 0 and summary["result"] == "matched"
    assert wait_for(lambda: len(subscriber.payloads("verdict")) == 2)
    assert all(m["probe"] is True for m in subscriber.payloads("verdict"))
    subscriber.close()
    after = process.scrape()
    probes, clinical = 'edgeqc_probes_total{verdict="pass"}', 'edgeqc_images_judged_total{verdict="pass",view="ap"}'
    assert counter(after, probes) - counter(before, probes) == 2
    assert counter(after, clinical) == counter(before, clinical)  # a rollout does not move the room's figures


def counter(text: str, sample: str) -> float:
    """A sample's value in an exposition (0 when it has not appeared yet)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_different_verdict_exits_1_and_says_what_came(
    daemon: tuple[Path, Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = daemon
    code, summary = probe(capsys, "--config", config, HEALTH / "oblique-under-rotated.dcm", "--expect", "pass")
    assert code == 1 and summary["result"] == "mismatched"
    assert summary["problems"] == ["verdict 'fail', expected 'pass'"]
    code, summary = probe(
        capsys, "--config", config, HEALTH / "ap-good.dcm", "--expect", "pass", "--expect-model", "0.1.0"
    )
    assert code == 1 and summary["problems"] == [f"served by 'lumbar-resunet {SERVED}', expected version '0.1.0'"]
    code, summary = probe(
        capsys,
        "--config",
        config,
        HEALTH / "oblique-under-rotated.dcm",
        "--expect",
        "fail",
        "--expect-item",
        "obliquity",
    )
    assert code == 1
    assert summary["problems"] == ["failed items ['facet_joints', 'obliquity'], expected ['obliquity']"]


def test_a_refused_association_or_a_silent_topic_exits_2_naming_it(
    daemon: tuple[Path, Daemon], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, _ = daemon
    code, summary = probe(
        capsys, "--config", config, HEALTH / "ap-good.dcm", "--expect", "pass", "--calling-aet", "STRANGER"
    )
    assert code == 2 and summary["result"] == "error"
    assert "DICOM association with EDGEQC" in str(summary["error"]) and "STRANGER" in str(summary["error"])
    elsewhere = tmp_path / "site.toml"  # same daemon, but the probe listens on another device's topic
    elsewhere.write_text(config.read_text().replace('device = "jetson7"', 'device = "jetson8"'))
    code, summary = probe(capsys, "--config", elsewhere, HEALTH / "ap-good.dcm", "--expect", "pass", "--timeout", "5")
    assert code == 2 and summary["error"] == "no verdict on edgeqc/h1/xr2/jetson8/verdict within 5 s of the C-STORE"


def test_config_check_exits_2_naming_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, _ = site_config(tmp_path, 1883)
    assert main(["config-check", str(good)]) == 0
    assert "configuration valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("[metrics]\n", "[metrics]\nprot = 1\n"))
    assert main(["config-check", str(bad)]) == 2
    assert "unknown key 'metrics.prot'" in capsys.readouterr().err
    assert main(["config-check", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the configuration" in capsys.readouterr().err
