"""Metrics: counted from verdicts, Prometheus names; Jetson health from sysfs where present."""

from __future__ import annotations

from pathlib import Path

from edge.observability import Metrics


def test_verdicts_are_counted_with_low_cardinality_labels() -> None:
    metrics = Metrics(sysfs_root=Path("/nonexistent"))
    metrics.observe_verdict(
        {
            "verdict": "fail",
            "view": {"judged": "lateral"},
            "failed": [{"item": "tilt_double_endplates"}],
            "items": {"exposure_index": {"value": 1.5}},
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
    assert 'edgeqc_deviation_index_bucket{le="2.0",view="lateral"} 1.0' in text
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
