"""What the fleet tests share: how ansible-playbook is run against a staging folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
ANSIBLE: Final = REPO / "ansible"
BUILD_WHEEL: Final = ANSIBLE / "roles" / "edge_qc" / "files" / "build-wheel.sh"


def build_wheel(folder: Path) -> str:
    """This repository's wheel, built by the role's own script as the controller builds it; its path."""
    return subprocess.run(
        ["sh", str(BUILD_WHEEL), str(REPO), str(folder / "wheels"), sys.executable],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()


def ansible_environment(folder: Path, **extra: str) -> dict[str, str]:
    """ansible-playbook's environment for a run in `folder`: the repository's ansible.cfg, its own
    home and temporary folders, no colour, and this venv's tools first on PATH."""
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(folder / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(folder / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **extra,
    }


PLAYBOOK: Final = Path(sys.executable).parent / "ansible-playbook"
RECAP: Final = r"^{host}\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+).*$"


@dataclass(frozen=True)
class Run:
    rc: int
    output: str
    recap: str  # the PLAY RECAP line of the device
    changed: int
    failed: int


def run_playbook(argv: Sequence[str], env: dict[str, str], log: Path, host: str = "room1", timeout: int = 600) -> Run:
    """ansible-playbook ARGV from the ansible folder; its output appended to `log`; the recap of `host`
    (a run without one is a failed test, shown with the end of the output)."""
    proc = subprocess.run(
        [str(PLAYBOOK), *argv], cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    with log.open("a") as f:
        f.write(output)
    found = re.search(RECAP.format(host=host), output, re.MULTILINE)
    assert found is not None, output[-3000:]
    recap = re.sub(r"\s+", " ", found.group(0))
    return Run(proc.returncode, output, recap, int(found.group(1)), int(found.group(2)))
