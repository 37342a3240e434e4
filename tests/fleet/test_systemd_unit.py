"""The systemd unit: Type=notify with a watchdog, verified by systemd-analyze where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-qc.service"


def test_unit_declares_notify_watchdog_and_drain() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "KillSignal=SIGTERM", "Restart=on-failure", "edge-qc serve --config"):
        assert line in text


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    executable = Path(sys.executable).parent / "edge-qc"
    if not executable.exists():
        pytest.skip("the edge-qc console script is not installed in this environment")
    unit = tmp_path / "edge-qc.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-qc/venv/bin/edge-qc", str(executable)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "edge-qc.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
