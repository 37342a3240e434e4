"""Metrics: counted from verdicts, Prometheus names; Jetson health from sysfs where present."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.dicom.scp import REFUSAL_REASONS
from edge.observability import Metrics


def test_verdicts_are_counted_with_low_cardinality_labels() -> None:
    metrics = Metrics(sysfs_root=Path("/nonexistent"))
    metrics.observe_verdict(
        {
            "verdict": "fail",
            "view": {"judged": "lateral"},
            "failed": [{"item": "tilt_double_endplates"}],
            "exposure": {"exposure_index": 600.0, "target_exposure_index": 300.0, "deviation_index": 3.01},
            "timings_ms": {"infer": 50.0, "total": 130.0},
            "image": {"sop_instance_uid": "1.2.3.4.5"},
        }
    )
    metrics.observe_verdict({"verdict": "rejected", "reason_code": "not_greyscale", "timings_ms": {"decode": 2.0}})
    metrics.observe_verdict({"verdict": "indeterminate", "reason_code": "unreadable", "view": {"judged": "ap"}})
    text = metrics.exposition().decode()
    assert 'edgeqc_images_judged_total{verdict="fail",view="lateral"} 1.0' in text
    assert 'edgeqc_item_failures_total{item="tilt_double_endplates",view="lateral"} 1.0' in text
    assert 'edgeqc_images_rejected_total{reason="not_greyscale"} 1.0' in text
    assert 'edgeqc_images_indeterminate_total{reason="unreadable",view="ap"} 1.0' in text
    assert 'edgeqc_images_judged_total{verdict="indeterminate",view="ap"} 1.0' in text
    assert 'edgeqc_exposure_index_ratio_bucket{le="2.51188643150958",view="lateral"} 1.0' in text
    assert 'edgeqc_exposure_index_ratio_bucket{le="1.9952623149688795",view="lateral"} 0.0' in text
    assert 'edgeqc_exposure_index_ratio_sum{view="lateral"} 2.0' in text  # EI/EI_T, not 10^(DI/10)
    assert 'edgeqc_stage_duration_seconds_sum{stage="infer"} 0.05' in text
    assert "1.2.3.4.5" not in text  # never a UID as a label


def test_jetson_health_from_a_sysfs_tree(tmp_path: Path) -> None:
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text("47500\n")
    gpu = tmp_path / "sys/class/devfreq/17000000.ga10b"
    (gpu / "device").mkdir(parents=True)
    (gpu / "device/load").write_text("420\n")
    (gpu / "cur_freq").write_text("918000000\n")
    hwmon = tmp_path / "sys/bus/i2c/devices/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    (hwmon / "in1_label").write_text("VDD_IN\n")
    (hwmon / "in1_input").write_text("5000\n")
    (hwmon / "curr1_input").write_text("1200\n")
    text = Metrics(sysfs_root=tmp_path).exposition().decode()
    assert 'edgeqc_device_temperature_celsius{zone="gpu-thermal"} 47.5' in text
    assert 'edgeqc_gpu_load_ratio{gpu="17000000.ga10b"} 0.42' in text
    assert 'edgeqc_gpu_frequency_hertz{gpu="17000000.ga10b"} 9.18e+08' in text
    assert 'edgeqc_power_rail_watts{rail="VDD_IN"} 6.0' in text
    assert "edgeqc_gpu_load_ratio{" not in Metrics(sysfs_root=tmp_path / "none").exposition().decode()


def test_logs_are_json_lines() -> None:
    import json
    import logging

    from edge.logs import JsonFormatter

    record = logging.LogRecord("edge.service", logging.WARNING, __file__, 1, "spool %s full", ("x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["message"] == "spool x full" and entry["logger"] == "edge.service"


def test_idle_http_connections_are_dropped() -> None:
    """A client that opens connections and sends nothing costs a thread each only for a while, and
    the health endpoints answer meanwhile."""
    import socket
    import time
    import urllib.request

    from edge.observability import MetricsServer

    server = MetricsServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ready"))
    server._server.RequestHandlerClass.timeout = 2.0  # type: ignore[attr-defined]
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        time.sleep(0.5)

        def closed(connection: socket.socket, wait_s: float) -> bool:
            connection.settimeout(wait_s)
            try:
                return connection.recv(1) == b""
            except TimeoutError:
                return False

        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as answer:
            assert answer.status == 200  # answered while they are held
        started = time.monotonic()
        assert all(closed(c, 5) for c in idle)  # each closed once idle for 2 s
        assert time.monotonic() - started < 4
    finally:
        for connection in idle:
            connection.close()
        server.stop()


def test_metrics_can_be_bound_to_an_ipv6_address() -> None:
    import socket
    import urllib.request

    import pytest

    from edge.observability import MetricsServer

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = MetricsServer(Metrics(), "::1", 0, lambda: (True, "ready"))
    except OSError as exc:  # a kernel without an IPv6 loopback
        pytest.skip(f"::1 cannot be bound here ({exc})")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        server.stop()


def test_the_exposure_ratio_is_positive_and_its_buckets_are_the_di_steps() -> None:
    """A verdict with only DI +3 lands at 10^0.3 (the le="1.9952623149688795" bucket, not the one
    below); one at DI -4 at the lowest bound; the sum is of ratios, so it only grows; no exposure, no
    observation; a probe's exposure is not a room's, nor is an image that was not judged pass or fail."""
    from edge.observability import DI_RATIO_BUCKETS, exposure_ratio

    assert [f"{b!r}" for b in DI_RATIO_BUCKETS][4:8] == [
        "0.8912509381337456", "1.0", "1.1220184543019633", "1.2589254117941673"]  # fmt: skip
    metrics = Metrics(sysfs_root=Path("/nonexistent"))
    only_di = {"exposure_index": None, "target_exposure_index": None, "deviation_index": 3.0}
    metrics.observe_verdict({"verdict": "pass", "view": {"judged": "ap"}, "exposure": only_di})
    metrics.observe_verdict({"verdict": "pass", "view": {"judged": "ap"}, "exposure": {"deviation_index": -4.0}})
    metrics.observe_verdict({"verdict": "pass", "view": {"judged": "ap"}, "exposure": None})
    metrics.observe_verdict({"verdict": "pass", "view": {"judged": "ap"}, "exposure": only_di}, probe=True)
    chest = {"verdict": "indeterminate", "reason_code": "not_lumbar_spine", "view": {"judged": "ap"}}
    metrics.observe_verdict({**chest, "exposure": only_di})  # not a lumbar exposure
    text = metrics.exposition().decode()
    assert 'edgeqc_exposure_index_ratio_bucket{le="0.3981071705534972",view="ap"} 1.0' in text
    assert 'edgeqc_exposure_index_ratio_bucket{le="1.5848931924611136",view="ap"} 1.0' in text
    assert 'edgeqc_exposure_index_ratio_bucket{le="1.9952623149688795",view="ap"} 2.0' in text
    assert 'edgeqc_exposure_index_ratio_count{view="ap"} 2.0' in text
    (total,) = (float(x.split()[-1]) for x in text.splitlines() if x.startswith("edgeqc_exposure_index_ratio_sum"))
    assert total == pytest.approx(10**0.3 + 10**-0.4)
    assert exposure_ratio({"exposure_index": 0.0, "target_exposure_index": 300.0, "deviation_index": None}) is None
    assert exposure_ratio({"exposure_index": 150.0, "target_exposure_index": 300.0}) == 0.5


def test_gauges_without_a_daemon() -> None:
    """Build info, the reload result and the refusal reasons (each from zero); no `_created` series."""
    import platform

    metrics = Metrics(sysfs_root=Path("/nonexistent"))
    metrics.expect({}, (), REFUSAL_REASONS)  # as the daemon does at start
    metrics.reload_result(False)
    metrics.association_refused("wrong_called_aet")
    text = metrics.exposition().decode()
    assert f'python="{platform.python_version()}"' in text and "edgeqc_build_info{" in text
    assert "edgeqc_config_last_reload_success 0.0" in text
    stamp = next(line for line in text.splitlines() if line.startswith("edgeqc_config_last_reload_timestamp_seconds "))
    assert float(stamp.split()[1]) > 1.7e9
    assert 'edgeqc_associations_refused_total{reason="wrong_called_aet"} 1.0' in text
    assert 'edgeqc_associations_refused_total{reason="tls"} 0.0' in text
    assert "_created" not in text


def test_every_refusal_the_scp_classifies_is_a_primed_reason() -> None:
    """Whatever A-ASSOCIATE-RJ the SCP sends, its reason is one the counter starts at zero."""
    from edge.dicom.scp import rejection_reason

    seen = {rejection_reason(result, source, diagnostic)
            for result in (1, 2) for source in (1, 2, 3) for diagnostic in range(11)}  # fmt: skip
    assert seen <= set(REFUSAL_REASONS) and {"unknown_calling_aet", "wrong_called_aet", "too_many"} <= seen


def openssl_not_after(openssl: str, certificate: Path) -> float:
    """notAfter as the openssl CLI prints it (`notAfter=Apr 19 09:33:39 2054 GMT`), unix seconds."""
    import calendar
    import subprocess
    import time

    out = subprocess.run([openssl, "x509", "-in", str(certificate), "-noout", "-enddate"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(calendar.timegm(time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")))


def test_certificate_expiry_is_the_files_not_after(tmp_path: Path) -> None:
    """Self-signed certificates from the openssl CLI: a UTCTime one (2 days) and a GeneralizedTime one
    (year 2050 and later); a bundle counts its earliest; a missing or garbled file has no series."""
    import shutil
    import subprocess

    from edge.observability import certificate_file_expiry

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed (apt-get install openssl)")
    for name, days in (("soon", "2"), ("late", "10000")):
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.crt"), "-days", days,
             "-subj", f"/CN=edge-qc {name}"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
    soon, late = (openssl_not_after(openssl, tmp_path / f"{n}.crt") for n in ("soon", "late"))
    assert late > 2524608000  # 2050-01-01: GeneralizedTime in the certificate
    assert certificate_file_expiry(tmp_path / "soon.crt") == soon
    assert certificate_file_expiry(tmp_path / "late.crt") == late
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((tmp_path / "late.crt").read_text() + (tmp_path / "soon.crt").read_text())
    (tmp_path / "garbled.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    metrics = Metrics(sysfs_root=Path("/nonexistent"))
    metrics.certificates({"dicom": tmp_path / "late.crt", "mqtt_ca": bundle, "mqtt_client": "",
                          "dicom_ca": tmp_path / "garbled.crt", "other": tmp_path / "missing.crt"})  # fmt: skip
    text = metrics.exposition().decode()
    series = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("edgeqc_tls_certificate_expiry_timestamp_seconds{")
    }
    assert series == {"dicom": late, "mqtt_ca": soon}


def get(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers (lower-case names) and the raw body."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_metrics_endpoint_negotiates_compresses_and_filters() -> None:
    """prometheus-client's handler behind /metrics: gzip when asked, OpenMetrics when the Accept header
    asks, `name[]` filters; the probes answer GET and HEAD (no body), 200 or 503 as readiness says;
    a scrape passes `promtool check metrics`."""
    import gzip
    import shutil
    import subprocess

    from edge.observability import MetricsServer

    state = {"ready": True}
    server = MetricsServer(Metrics(sysfs_root=Path("/nonexistent")), "127.0.0.1", 0,
                           lambda: (state["ready"], "ready" if state["ready"] else "broker not connected"))  # fmt: skip
    server.start()
    try:
        status, headers, body = get(server.port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "edgeqc_build_info{" in body.decode() and "_created" not in body.decode()
        status, headers, packed = get(server.port, "/metrics", headers={"Accept-Encoding": "gzip"})
        assert headers.get("content-encoding") == "gzip" and gzip.decompress(packed) == body
        status, headers, om = get(server.port, "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert om.decode().endswith("# EOF\n") and "# TYPE edgeqc_associations_refused counter" in om.decode()
        status, _, only = get(server.port, "/metrics?name[]=edgeqc_ready")
        assert status == 200 and [line for line in only.decode().splitlines() if not line.startswith("#")] == [
            "edgeqc_ready 0.0"]  # fmt: skip
        for path in ("/healthz", "/readyz"):
            status, headers, body = get(server.port, path, method="HEAD")
            assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
        state["ready"] = False
        assert get(server.port, "/readyz", method="HEAD")[::2] == (503, b"")
        assert get(server.port, "/readyz")[::2] == (503, b"broker not connected\n")
        assert get(server.port, "/healthz", method="HEAD")[::2] == (200, b"")
        assert get(server.port, "/nowhere", method="HEAD")[0] == 405
        assert get(server.port, "/nowhere")[0] == 404
        promtool = shutil.which("promtool")
        if promtool is not None:
            lint = subprocess.run([promtool, "check", "metrics"], input=get(server.port, "/metrics")[2],
                                  capture_output=True, check=False)  # fmt: skip
            assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        server.stop()
