"""The metrics of a running daemon (tools.testbed: Mosquitto with TLS, `edge-qc serve`, DCMTK storescu),
read first from /metrics and then through a real Prometheus (Debian's) that scrapes it every second
with the monitoring pack's rules: every gauge has its value, every dashboard panel's query returns
data through /api/v1/query, and stopping the broker turns the broker gauge to 0 (and its alert
pending). The tests run in order on one daemon: gauges, reload, panels, broker.
Needs mosquitto, DCMTK, openssl and prometheus: without one it skips, naming the package."""

from __future__ import annotations

import calendar
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from edge.service import SYSFS_ROOT_ENV
from tests.conftest import require_tool
from tests.monitoring.test_rules import RULES, panel_queries
from tests.qc.conftest import fault_case, write_case
from tools.testbed import (
    Broker,
    Daemon,
    Prometheus,
    ToolMissingError,
    VerdictSubscriber,
    send,
    site_config,
    store,
    wait_for,
)

pytestmark = pytest.mark.slow

HEALTH = Path(__file__).resolve().parents[2] / "engines" / "health"  # a pass (AP) and a fail (oblique)
LABELS = {"site": "h1", "room": "xr2", "device": "jetson7"}
# Panels that cannot have data on this machine, and why. A new panel that returns nothing here fails
# the test until it is listed (with its reason) or given data. (Device temperature has data: the daemon
# reads a thermal zone the test writes, through EDGEQC_SYSFS_ROOT, as it reads a Jetson's /sys.)
NO_DATA_HERE: dict[str, str] = {}
GPU_ZONE_MILLI_C = 47500


@dataclass
class Bed:
    folder: Path
    pki: Path
    broker: Broker
    daemon: Daemon
    subscriber: VerdictSubscriber
    config: Path
    dicom_port: int
    studies: dict[str, Path]

    def verdicts(self) -> int:
        return len(self.subscriber.payloads("verdict"))

    def store_and_wait(self, *names: str) -> None:
        """Store studies in one association and wait for each one's verdict over MQTT."""
        before = self.verdicts()
        store(self.dicom_port, *(self.studies[name] for name in names))
        assert wait_for(lambda: self.verdicts() >= before + len(names), timeout=180), self.daemon.lines[-20:]


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric in an exposition: {label text: value} ("" for no labels)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            out[head[len(name) :].strip("{}")] = float(value)
    return out


def value(text: str, name: str) -> float:
    (only,) = samples(text, name).values()
    return only


def not_after(certificate: Path) -> float:
    """notAfter as the openssl CLI prints it (`notAfter=Apr 19 09:33:39 2054 GMT`), unix seconds."""
    openssl = str(require_tool(Path("/usr/bin/openssl"), package="openssl"))
    out = subprocess.run([openssl, "x509", "-in", str(certificate), "-noout", "-enddate"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(calendar.timegm(time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")))


def uncompressed(source: Path, folder: Path) -> Path:
    """The probe images are RLE, which storescu does not offer by default: a copy in Explicit VR Little Endian."""
    ds = pydicom.dcmread(source)
    ds.decompress()
    out = folder / source.name
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[Bed]:
    store_ = pytest.importorskip("data_store", reason="pydicom-data holds the CR chest (an indeterminate)")
    folder = tmp_path_factory.mktemp("live")
    try:
        broker = Broker(folder / "broker", tls=pki)
    except ToolMissingError as exc:
        pytest.skip(str(exc))
    broker.start()
    cases = folder / "studies"
    cases.mkdir()
    data = Path(store_.__file__).parent / "data"
    studies = {
        "ap-pass": uncompressed(HEALTH / "ap-good.dcm", cases),
        "oblique-fail": uncompressed(HEALTH / "oblique-under-rotated.dcm", cases),
        "lateral-fail": write_case(fault_case("lateral", "tilt", 62), cases),  # tests/service's clear lateral
        "ap-fail": write_case(fault_case("ap", "cut_top", 61), cases),
        "chest": data / "RG1_UNCR.dcm",  # a CR chest: indeterminate (not_lumbar_spine)
        "rgb": data / "SC_rgb.dcm",  # an RGB secondary capture: rejected (not_greyscale)
    }
    tls = (f'ca_certs = "{pki / "ca.crt"}"\ncertfile = "{pki / "client.crt"}"\n'
           f'keyfile = "{pki / "client.key"}"')  # fmt: skip
    config, dicom_port = site_config(folder, broker.tls_port, mqtt=tls)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/#", client_id="live-test")
    zone = folder / "sys" / "class" / "thermal" / "thermal_zone0"  # as an Orin names its GPU zone
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text(f"{GPU_ZONE_MILLI_C}\n")
    daemon = Daemon.start(config, log=folder / "daemon.log", env={SYSFS_ROOT_ENV: str(folder)})
    try:
        yield Bed(folder, pki, broker, daemon, subscriber, config, dicom_port, studies)
    finally:
        if broker.process is None:
            broker.start()  # so that the daemon drains quickly
        daemon.stop()
        subscriber.close()
        broker.stop()


def test_every_gauge_has_its_value_in_a_running_daemon(bed: Bed) -> None:
    """Ready, broker connected, build info, spool free bytes, the certificates' expiry (openssl's
    notAfter), the reload result; a clinical verdict sets the last-verdict time, a probe does not;
    refused associations are counted by reason; the scrape is clean for promtool, without `_created`."""
    text = bed.daemon.scrape()
    assert value(text, "edgeqc_ready") == 1 and value(text, "edgeqc_broker_connected") == 1
    (build,) = samples(text, "edgeqc_build_info")
    assert 'version="' in build and 'python="' in build
    assert 0 < value(text, "edgeqc_spool_free_bytes") <= shutil.disk_usage(bed.folder).total
    expiry = samples(text, "edgeqc_tls_certificate_expiry_timestamp_seconds")
    assert expiry == {
        'certificate="mqtt_ca"': not_after(bed.pki / "ca.crt"),
        'certificate="mqtt_client"': not_after(bed.pki / "client.crt"),
    }
    assert value(text, "edgeqc_config_last_reload_success") == 1
    assert value(text, "edgeqc_last_verdict_timestamp_seconds") == 0  # none yet
    assert set(samples(text, "edgeqc_associations_refused_total").values()) == {0.0}
    assert "_created" not in text
    assert samples(text, "edgeqc_device_temperature_celsius") == {'zone="gpu-thermal"': GPU_ZONE_MILLI_C / 1000}
    # every view and item of the standard counts from zero, so the first failure shows in increase()
    judged = {frozenset(k.split(",")): v for k, v in samples(text, "edgeqc_images_judged_total").items()}
    assert judged[frozenset({'view="lateral"', 'verdict="fail"'})] == 0
    assert judged[frozenset({'view="unknown"', 'verdict="indeterminate"'})] == 0
    failures = {frozenset(k.split(",")): v for k, v in samples(text, "edgeqc_item_failures_total").items()}
    assert failures[frozenset({'view="oblique"', 'item="obliquity"'})] == 0
    assert len(failures) == 31  # every item of every view of the shipped standard
    unsure = {frozenset(k.split(",")): v for k, v in samples(text, "edgeqc_images_indeterminate_total").items()}
    assert len(unsure) == 16 and set(unsure.values()) == {0.0}  # ap/lateral/oblique/unknown x 4 reason codes
    assert unsure[frozenset({'view="unknown"', 'reason="not_lumbar_spine"'})] == 0

    before = time.time()
    bed.store_and_wait("ap-pass")
    text = bed.daemon.scrape()
    last = value(text, "edgeqc_last_verdict_timestamp_seconds")
    assert before <= last <= time.time()
    assert samples(text, "edgeqc_exposure_index_ratio_count") == {'view="ap"': 1.0}

    probes = bed.verdicts()
    store(bed.dicom_port, bed.studies["ap-pass"], calling="EDGEQC-PROBE")
    assert wait_for(lambda: bed.verdicts() > probes, timeout=120)
    text = bed.daemon.scrape()
    assert samples(text, "edgeqc_probes_total") == {'verdict="pass"': 1.0}
    assert value(text, "edgeqc_last_verdict_timestamp_seconds") == last  # a probe is not a room's verdict

    assert send(bed.dicom_port, bed.studies["ap-pass"], calling="WRONGAE").returncode != 0
    assert send(bed.dicom_port, bed.studies["ap-pass"], called="NOTUS").returncode != 0
    assert wait_for(lambda: sum(samples(bed.daemon.scrape(), "edgeqc_associations_refused_total").values()) == 2)
    refused = samples(bed.daemon.scrape(), "edgeqc_associations_refused_total")
    assert refused['reason="unknown_calling_aet"'] == refused['reason="wrong_called_aet"'] == 1

    promtool = require_tool(Path("/usr/bin/promtool"), package="prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=bed.daemon.scrape() + "\n",
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_refused_reload_shows_and_a_good_one_clears_it(bed: Bed) -> None:
    good = bed.config.read_text()
    stamp = value(bed.daemon.scrape(), "edgeqc_config_last_reload_timestamp_seconds")
    try:
        bed.config.write_text(good + "\n[metrics]\nport = 0\n")  # a table twice: not TOML
        bed.daemon.signal(signal.SIGHUP)
        assert wait_for(lambda: value(bed.daemon.scrape(), "edgeqc_config_last_reload_success") == 0)
        assert value(bed.daemon.scrape(), "edgeqc_config_last_reload_timestamp_seconds") > stamp
    finally:
        bed.config.write_text(good)
    bed.daemon.signal(signal.SIGHUP)
    assert wait_for(lambda: value(bed.daemon.scrape(), "edgeqc_config_last_reload_success") == 1)
    assert bed.daemon.endpoint("/readyz") == (200, "ready")


@pytest.fixture(scope="module")
def prometheus(bed: Bed) -> Iterator[Prometheus]:
    try:
        server = Prometheus(bed.folder / "prometheus", [(bed.daemon.port, LABELS)], RULES)
    except ToolMissingError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def has_data(result: list[dict[str, object]]) -> bool:
    """At least one series with a number (NaN, which an empty histogram's quantile gives, is no data)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)  # type: ignore[index]


def test_every_dashboard_panel_returns_data_from_prometheus(bed: Bed, prometheus: Prometheus) -> None:
    """A mix of studies in two rounds (rates and increases need a series before its increase): a pass
    and a fail per view, an indeterminate, a rejected image; then every panel's query, variables filled
    in as Grafana would (tests/monitoring/test_rules.py), answers with a number."""
    assert wait_for(lambda: prometheus.query('up{job="edgeqc", site="h1", room="xr2", device="jetson7"} == 1'), 60)
    bed.store_and_wait("ap-pass", "oblique-fail", "lateral-fail")
    assert wait_for(lambda: prometheus.query('count(edgeqc_images_judged_total{verdict="fail"} > 0) == 2'), 60)
    bed.store_and_wait("ap-fail", "lateral-fail", "oblique-fail", "ap-pass", "chest", "rgb")
    queries = panel_queries()
    answered: set[int] = set()

    def all_answered() -> bool:
        for i, (title, expr) in enumerate(queries):
            if i not in answered and title not in NO_DATA_HERE and has_data(prometheus.query(expr)):
                answered.add(i)
        return len(answered) == sum(1 for title, _ in queries if title not in NO_DATA_HERE)

    wait_for(all_answered, timeout=120)
    missing = sorted({title for i, (title, _) in enumerate(queries) if i not in answered} - set(NO_DATA_HERE))
    assert missing == []
    for title in NO_DATA_HERE:  # the list holds only panels that really have none here
        assert any(t == title for t, _ in queries), f"{title}: no such panel"
        assert not any(has_data(prometheus.query(e)) for t, e in queries if t == title), f"{title} has data now"
    # the counters start at zero, so a panel has data before the last verdicts are scraped: wait for them
    assert wait_for(lambda: prometheus.query('sum(edgeqc_images_indeterminate_total{reason="not_lumbar_spine"}) == 1'))
    assert wait_for(lambda: prometheus.query('edgeqc_images_rejected_total{reason="not_greyscale"} == 1'))
    # the exposure histogram per view: every view's median DI is a number (the ratio is positive)
    medians = prometheus.query(
        "10 * log10(histogram_quantile(0.5, sum by (view, le) (edgeqc_exposure_index_ratio_bucket)))")
    assert {s["metric"]["view"] for s in medians if has_data([s])} >= {"ap", "lateral", "oblique"}
    assert prometheus.query('ALERTS{alertname="EdgeQcTlsCertificateExpiring", certificate="mqtt_ca"}')
    assert not prometheus.query('ALERTS{alertname=~"EdgeQcBrokerDown|EdgeQcNotReady|EdgeQcDaemonDown"}')


def test_stopping_the_broker_turns_the_gauge_to_zero_through_prometheus(bed: Bed, prometheus: Prometheus) -> None:
    """Broker down: edgeqc_broker_connected and edgeqc_ready 0 through Prometheus's API and the broker
    alert pending (it fires after 5 minutes, tested in promtool); back up: 1 again."""
    bed.broker.stop()
    assert wait_for(lambda: prometheus.query('edgeqc_broker_connected{room="xr2"} == 0'), timeout=60)
    assert wait_for(lambda: prometheus.query('edgeqc_ready{room="xr2"} == 0'), timeout=60)
    assert wait_for(lambda: prometheus.query('ALERTS{alertname="EdgeQcBrokerDown", alertstate="pending"}'), 60)
    assert value(bed.daemon.scrape(), "edgeqc_broker_connected") == 0
    bed.broker.start()
    assert wait_for(lambda: prometheus.query('edgeqc_broker_connected{room="xr2"} == 1'), timeout=60)
    assert wait_for(lambda: not prometheus.query('ALERTS{alertname="EdgeQcBrokerDown"}'), timeout=60)
