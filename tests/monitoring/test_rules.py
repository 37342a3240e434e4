"""The monitoring pack (monitoring/): Prometheus rules valid and unit-tested with promtool on synthetic
series, and every dashboard panel's query valid PromQL. That each query returns data from a running
daemon is tested in test_live.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "monitoring"
RULES = sorted((ROOT / "prometheus").glob("edgeqc-*.yml"))
DASHBOARD = ROOT / "grafana" / "edgeqc-dashboard.json"
# Grafana's variables, as a query sees them for "all rooms" and a one-hour dashboard range.
VARIABLES = {"$site": ".*", "$room": ".*", "$__rate_interval": "1m", "$__range": "1h"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool missing (Debian package prometheus)")
    return found


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled in) for every target of every panel."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def test_rule_files_are_valid() -> None:
    run = subprocess.run([promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 14 rules found" in run.stdout  # the alerts file: every alert the issue lists


def test_alert_rules_fire_on_synthetic_series() -> None:
    """Daemon down, broker down (and not ready), backlog growing, degraded, activation and reload
    failures, no images while the room is open (and none when closed), slow verdicts, exposure off
    target and its spread widening, hot device, filling spool disk, expiring certificate: each fires
    when it should and not before."""
    tests = sorted((ROOT / "prometheus" / "tests").glob("*.test.yml"))
    assert len(tests) == 2
    run = subprocess.run([promtool(), "test", "rules", *map(str, tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == 2


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the broker alert a minute too early fails."""
    source = ROOT / "prometheus" / "tests" / "edgeqc-alerts.test.yml"
    data = yaml.safe_load(source.read_text())
    data["rule_files"] = [str(ROOT / "prometheus" / Path(f).name) for f in data["rule_files"]]
    broker = next(t for t in data["tests"] if any(
        c["alertname"] == "EdgeQcBrokerDown" for c in t.get("alert_rule_test", [])))
    broker["alert_rule_test"][0]["eval_time"] = "8m"  # the alert is firing by then: [] is wrong
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(data))
    run = subprocess.run([promtool(), "test", "rules", str(broken)], capture_output=True, text=True)
    assert run.returncode != 0 and "EdgeQcBrokerDown" in run.stdout + run.stderr


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool checks each query as a recording rule's expression (it parses PromQL offline)."""
    queries = panel_queries()
    assert len(queries) >= 15
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_variables_and_provisioning() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "site", "room"]
    assert all("$" not in expr for _, expr in panel_queries())  # every variable a query uses is known
    provisioning = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards.yml").read_text())
    assert provisioning["providers"][0]["type"] == "file"
