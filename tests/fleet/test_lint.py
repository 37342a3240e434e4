"""The playbooks and roles: ansible-lint (production profile) and ansible-playbook --syntax-check clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROLE_TASKS = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "edge_qc" / "tasks"

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ("site.yml", "rollout.yml", "rollback.yml")


def tool(name: str, *args: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run an Ansible tool from ansible/ with its state kept in `folder` (nothing in $HOME or the repo)."""
    if not (BIN / name).exists():
        pytest.skip(f"{name} is not installed in this environment (pip install -e '.[fleet]')")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(folder / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "XDG_CACHE_HOME": str(folder / "cache"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [str(BIN / name), *args], cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_playbooks_pass_the_syntax_check(tmp_path: Path) -> None:
    proc = tool("ansible-playbook", "--syntax-check", *PLAYBOOKS, folder=tmp_path)
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stdout + proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("playbook:")] == [
        f"playbook: {p}" for p in PLAYBOOKS
    ]


@pytest.mark.slow
def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    proc = tool("ansible-lint", "--profile", "production", "--offline", folder=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_example_inventory_places_every_room_in_one_site_and_one_module_type(tmp_path: Path) -> None:
    proc = tool("ansible-inventory", "--list", "--export", folder=tmp_path)
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    hosts = {h for group in ("site_north", "site_south") for h in inventory[group]["hosts"]}
    assert len(hosts) == 5
    for host in hosts:
        assert sum(host in inventory[g]["hosts"] for g in ("site_north", "site_south")) == 1
        assert sum(host in inventory[g]["hosts"] for g in ("orin_nano", "orin_nx", "agx_orin")) == 1
    assert inventory["canary"]["hosts"] == ["north-xr1"]
    module_types = {g: inventory[g]["vars"]["edge_qc_module_type"] for g in ("orin_nano", "orin_nx", "agx_orin")}
    assert module_types == {"orin_nano": "orin-nano", "orin_nx": "orin-nx", "agx_orin": "agx-orin"}


def test_the_units_are_installed_before_the_first_engine_is_built_and_before_the_configuration() -> None:
    """A new TensorRT device builds its first engine with edge-qc-engine-build.service: the unit must
    be on disk by then; the configuration's validate step needs the first engine (issue 16)."""
    import yaml

    tasks = yaml.safe_load((ROLE_TASKS / "main.yml").read_text())
    order = [task["ansible.builtin.import_tasks"] for task in tasks]
    assert order.index("units.yml") < order.index("initial_engine.yml") < order.index("config.yml")
    assert order.index("config.yml") < order.index("service.yml")
    units = yaml.safe_load((ROLE_TASKS / "units.yml").read_text())
    copied = next(task for task in units if "ansible.builtin.copy" in task)
    assert "edge-qc-engine-build.service" in copied["loop"]
