"""The systemd units: Type=notify with a watchdog, hardened, verified and scored by systemd-analyze."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "edge-qc.service"
BUILD = UNITS / "edge-qc-engine-build.service"
MAX_EXPOSURE = 2.5  # systemd-analyze security: "OK" is below 5, our aim for a network daemon is 2.5


def installable(unit: Path, folder: Path) -> Path:
    """The unit with ExecStart pointing at this environment's edge-qc (verify wants the binary to exist)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    executable = Path(sys.executable).parent / "edge-qc"
    if not executable.exists():
        pytest.skip("the edge-qc console script is not installed in this environment")
    copy = folder / unit.name
    copy.write_text(unit.read_text().replace("/opt/edge-qc/venv/bin/edge-qc", str(executable)))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


def test_unit_declares_notify_watchdog_drain_and_hardening() -> None:
    text = SERVICE.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",  # systemctl reload: SIGHUP (JetPack 6's systemd 249: no notify-reload)
        "WatchdogSec=",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "edge-qc serve --config",
        "User=edge-qc",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edge-qc",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "MemoryMax=",
    ):
        assert line in text, line
    build = BUILD.read_text()
    for line in ("Type=oneshot", "Nice=19", "IOSchedulingClass=idle", "ReadWritePaths=/var/lib/edge-qc/engines"):
        assert line in build, line


@pytest.mark.parametrize("unit", [SERVICE, BUILD], ids=lambda u: u.name)
def test_systemd_analyze_verifies_the_unit(unit: Path, tmp_path: Path) -> None:
    proc = analyze("verify", str(installable(unit, tmp_path)))
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.name in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


@pytest.mark.parametrize("unit", [SERVICE, BUILD], ids=lambda u: u.name)
def test_security_exposure_is_recorded_and_low(unit: Path, tmp_path: Path) -> None:
    proc = analyze("security", "--offline=yes", str(installable(unit, tmp_path)))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security {unit.name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE


def test_the_gpu_device_groups_of_orin_and_thor_are_allowed_and_nothing_else() -> None:
    """DeviceAllow=char-GLOB matches /proc/devices group names. Orin's GPU driver registers its regions
    under the device-tree name ("17000000.gpu"), Thor's driver as nvidia, nvidia-uvm, nvidia-caps
    (names from the drivers' sources, issue 16); a disk, a tty or the serial ports stay denied."""
    import fnmatch

    text = SERVICE.read_text()
    assert "DevicePolicy=closed" in text
    allow = [line.split("=", 1)[1].split()[0] for line in text.splitlines() if line.startswith("DeviceAllow=")]
    groups = [spec[len("char-") :] for spec in allow if spec.startswith("char-")]

    def allowed(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in groups)

    for name in ("17000000.gpu", "nvhost-ctrl", "nvgpu", "nvidia", "nvidia-uvm", "nvidia-caps", "drm"):
        assert allowed(name), name
    for name in ("sd", "tty", "ttyS", "mem", "input", "usb_device", "hidraw"):
        assert not allowed(name), name
