"""What the fleet tests share: how ansible-playbook is run against a staging folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

ANSIBLE: Final = Path(__file__).resolve().parents[2] / "ansible"


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
