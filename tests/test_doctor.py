"""`edge-qc doctor`: on this machine (no GPU, no TensorRT, no Jetson), on a prepared Jetson file tree, and
against real peers (Mosquitto, a listening socket). TensorRT is never faked: where it is absent, the
checks that need it must say so."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from edge import doctor
from edge.cli import main as cli
from edge.config import Config, ModelConfig, ServiceConfig, load_config
from edge.doctor import Check, Context
from edge.engines.manifest import load_manifest
from edge.engines.store import sha256_of
from edge.inference.device import DeviceFingerprint
from tests.conftest import require_tool
from tools.testbed import RUN_AS_INVOKER, Broker, free_port, site_config

COMPATIBLE = "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0"
MODEL = "NVIDIA Jetson AGX Orin Developer Kit\0"
RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025\n"
PROC_DEVICES = "Character devices:\n  1 mem\n195 nvidia\n 10 misc\n226 drm\n489 17000000.gpu\n\nBlock devices:\n 8 sd\n"
ORIN_NODES = ("nvmap", "nvgpu/igpu0/ctrl", "nvgpu/igpu0/power", "nvhost-ctrl-gpu", "nvhost-gpu")
ORIN_DEVICE = DeviceFingerprint("10.3.0", "12.6", "8.7", MODEL.strip("\0"), "36.4.3")


def this_machine_has_a_gpu_stack() -> str:
    """Why the "this machine" tests do not apply here ("" when they do)."""
    if importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt is importable here"
    if Path("/etc/nv_tegra_release").exists() or list(Path("/dev").glob("nvidia*")):
        return "this machine is a Jetson or has an NVIDIA GPU"
    return ""


def clock_says(answer: str, status: int = 0) -> tuple[Callable[[Sequence[str]], tuple[int, str]], list[list[str]]]:
    """A timedatectl stand-in (the command runner is injected) and the commands it was asked to run."""
    asked: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str]:
        asked.append(list(argv))
        return status, answer

    return run, asked


def has_timedatectl(name: str) -> str | None:
    return "/usr/bin/timedatectl" if name == "timedatectl" else shutil.which(name)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def listening() -> Iterator[int]:
    """A real TCP listener on loopback (what the doctor must see as the DICOM port); its port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


def jetson_tree(root: Path, nodes: Sequence[str] = ORIN_NODES, devices: str = PROC_DEVICES) -> Path:
    """A Jetson AGX Orin's files as the doctor reads them; the device nodes are plain files (a test
    cannot make real ones), "openable" meaning os.open(O_RDWR) succeeds."""
    files = {
        "etc/nv_tegra_release": RELEASE,
        "proc/device-tree/compatible": COMPATIBLE,
        "proc/device-tree/model": MODEL,
        "proc/devices": devices,
        "usr/local/cuda/version.json": '{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}',
    }
    for name in nodes:
        files[f"dev/{name}"] = ""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        (root / name).chmod(0o666)
    return root


# --- this machine ----------------------------------------------------------------------------------------------


def test_on_this_machine_the_gpu_checks_skip_with_reasons_and_a_ready_site_passes(
    tmp_path: Path, broker: Broker, listening: int
) -> None:
    """Backend onnxruntime, no Jetson here: jetson/tensorrt/pycuda/gpu-device-nodes are skips that say
    why, everything real passes, and the exit status is 0; then the one real failure makes it 1."""
    if why := this_machine_has_a_gpu_stack():
        pytest.skip(why)
    path, _ = site_config(tmp_path, broker.port)
    config = load_config(path)
    config = dataclasses.replace(config, dicom=dataclasses.replace(config.dicom, port=listening))
    run, asked = clock_says("yes")
    checks = doctor.run_checks(Context(config, Path("/"), run=run, which=has_timedatectl))
    assert [c.name for c in checks] == [name for name, _ in doctor.CHECKS]
    found = by_name(checks)
    assert found["python"].status == "pass" and f"{sys.version_info[0]}.{sys.version_info[1]}" in found["python"].detail
    assert found["jetson"].status == "skip" and "not a Jetson" in found["jetson"].detail
    assert found["tensorrt"].status == "skip" and "No module named 'tensorrt'" in found["tensorrt"].detail
    assert "model.backend is 'onnxruntime'" in found["tensorrt"].detail
    assert found["pycuda"].status == "skip" and "No module named 'pycuda'" in found["pycuda"].detail
    assert found["gpu-device-nodes"].status == "skip" and "no /dev/nvidia*" in found["gpu-device-nodes"].detail
    skipped = {c.name for c in checks if c.status == "skip"}
    assert skipped == {"jetson", "tensorrt", "pycuda", "gpu-device-nodes"}, checks
    assert all(c.status == "pass" for c in checks if c.name not in skipped), [c for c in checks if c.status == "fail"]
    assert found["broker"].detail == f"connected to 127.0.0.1:{broker.port} without a login"
    assert asked == [["timedatectl", "show", "-p", "NTPSynchronized", "--value"]]
    assert doctor.exit_status(checks) == 0

    config = dataclasses.replace(config, dicom=dataclasses.replace(config.dicom, port=free_port()))
    checks = doctor.run_checks(Context(config, Path("/"), run=run, which=has_timedatectl))
    assert [c.name for c in checks if c.status == "fail"] == ["dicom-port"]
    assert doctor.exit_status(checks) == 1


def test_the_command_exits_0_with_json_when_everything_that_applies_passes(
    tmp_path: Path, broker: Broker, listening: int, capsys: pytest.CaptureFixture[str]
) -> None:
    if why := this_machine_has_a_gpu_stack():
        pytest.skip(why)
    path, dicom_port = site_config(tmp_path, broker.port)
    path.write_text(path.read_text().replace(f"port = {dicom_port}\n", f"port = {listening}\n", 1))
    args = argparse.Namespace(config=path, json=True, root=Path("/"))
    run, _ = clock_says("yes")
    assert doctor.main(args, run=run, which=has_timedatectl) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0 and report["config"] == str(path)
    assert {c["status"] for c in report["checks"]} == {"pass", "skip"}


def test_backend_tensorrt_without_tensorrt_fails_tensorrt_and_pycuda_with_the_fix(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here")
    engine = tmp_path / "lumbar-resunet-0.2.0_trt10.3.0_orin_fp16.plan"
    engine.write_bytes(b"not read: the checks before it fail")
    config = dataclasses.replace(Config(), model=ModelConfig(backend="tensorrt", engine=engine))
    ctx = Context(config, tmp_path / "no-such-root")
    tensorrt, pycuda = doctor.check_tensorrt(ctx), doctor.check_pycuda(ctx)
    assert tensorrt.status == "fail" and "No module named 'tensorrt'" in tensorrt.detail
    assert "degraded" in tensorrt.detail
    assert "python3-libnvinfer" in tensorrt.fix and "edge_qc_tensorrt_python_dir" in tensorrt.fix
    assert ".pth" in tensorrt.fix
    if importlib.util.find_spec("pycuda") is None:
        assert pycuda.status == "fail" and "No module named 'pycuda'" in pycuda.detail
        assert "CUDA_ROOT=/usr/local/cuda" in pycuda.fix and "from source" in pycuda.fix
    engine_check = doctor.check_engine(ctx)
    assert engine_check.status == "fail" and f"{engine.with_suffix('.json').name} is missing" in engine_check.detail
    assert f"edge-qc engine find {tmp_path}" in engine_check.fix


def test_the_command_exits_1_for_backend_tensorrt_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here")
    (tmp_path / "model.plan").write_bytes(b"x")
    site = tmp_path / "site.toml"
    site.write_text('[model]\nbackend = "tensorrt"\nengine = "model.plan"\n')
    assert cli(["doctor", "--config", str(site), "--json", "--root", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    assert checks["tensorrt"]["status"] == "fail" and checks["tensorrt"]["fix"]
    assert report["failed"] == sum(c["status"] == "fail" for c in report["checks"]) >= 2


def test_the_human_output_names_each_check_and_the_fix_of_each_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["doctor", "--root", str(tmp_path)]) == 1  # the defaults: empty allow-list, default names
    out = capsys.readouterr().out
    assert out.startswith("edge-qc doctor (configuration: built-in defaults)")
    for name, _ in doctor.CHECKS:
        assert f"  {name} " in out
    assert "FAIL  modality-aets" in out and "every modality is refused" in out
    assert out.rstrip().splitlines()[-1].endswith("skipped")


# --- configuration, exit 2 -----------------------------------------------------------------------------------


def test_a_configuration_with_a_bad_key_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[mqtt]\nhots = 'broker'\n")
    assert cli(["doctor", "--config", str(site)]) == 2
    assert "unknown key 'mqtt.hots'" in capsys.readouterr().err
    assert cli(["doctor", "--config", str(site), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["failed"] == 1 and report["checks"][0]["name"] == "configuration"
    assert "mqtt.hots" in report["checks"][0]["detail"]


def test_the_installed_site_toml_under_root_is_the_default_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "etc/edge-qc").mkdir(parents=True)
    (tmp_path / "etc/edge-qc/site.toml").write_text("[dicom]\nport = 0\n")
    assert cli(["doctor", "--root", str(tmp_path)]) == 2
    assert "'dicom.port'" in capsys.readouterr().err


# --- a prepared Jetson ----------------------------------------------------------------------------------------


def test_a_jetson_orin_is_recognised_with_its_l4t_release(tmp_path: Path) -> None:
    check = doctor.check_jetson(Context(Config(), jetson_tree(tmp_path)))
    assert check.status == "pass", check
    assert check.detail == "NVIDIA Jetson AGX Orin Developer Kit: Orin (tegra234), L4T 36.4.3 (JetPack 6)"


def test_a_tegra_without_its_release_file_fails(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path)
    (root / "etc/nv_tegra_release").unlink()
    check = doctor.check_jetson(Context(Config(), root))
    assert check.status == "fail" and "L4T release is unknown" in check.detail
    assert "nvidia-l4t-core" in check.fix


def test_the_orin_gpu_nodes_open_and_the_units_device_allow_lets_17000000_gpu_through(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path)
    check = doctor.check_gpu_device_nodes(Context(Config(), root))
    assert check.status == "pass", check
    for node in ORIN_NODES:
        assert f"/dev/{node}" in check.detail
    assert "all open read/write" in check.detail
    assert f"DeviceAllow in {doctor.REPO_UNIT}" in check.detail
    assert "group 17000000.gpu (char-*.gpu)" in check.detail
    assert "/dev/nvmap (by path)" in check.detail
    assert "systemd-run" not in check.fix  # offered only on the device itself (root "/")


def test_a_unit_without_the_gpu_glob_is_reported_as_blocking_the_gpu(tmp_path: Path) -> None:
    """The unit as it was before issue 16: nvhost*/nvgpu* only; Orin's GPU group slips through neither."""
    root = jetson_tree(tmp_path / "root")
    unit = tmp_path / "edge-qc.service"
    unit.write_text(
        "[Service]\nUser=edge-qc\nDevicePolicy=closed\nDeviceAllow=/dev/nvmap rw\n"
        "DeviceAllow=char-nvhost* rw\nDeviceAllow=char-nvgpu* rw\nDeviceAllow=char-nvidia* rw\n"
    )
    check = doctor.check_gpu_device_nodes(Context(Config(), root, unit=unit))
    assert check.status == "fail"
    assert "DevicePolicy=closed blocks group 17000000.gpu" in check.detail
    assert "DeviceAllow=char-GROUP rw" in check.fix and "DevicePolicy=closed" in check.fix
    (unit.parent / "edge-qc.service.d").mkdir()
    (unit.parent / "edge-qc.service.d/gpu.conf").write_text("[Service]\nDeviceAllow=char-*.gpu rw\n")
    assert doctor.check_gpu_device_nodes(Context(Config(), root, unit=unit)).status == "pass"


def test_a_read_only_allow_entry_does_not_count(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path / "root")
    unit = tmp_path / "edge-qc.service"
    unit.write_text("[Service]\nDevicePolicy=closed\nDeviceAllow=/dev/nvmap rw\nDeviceAllow=char-*.gpu r\n")
    check = doctor.check_gpu_device_nodes(Context(Config(), root, unit=unit))
    assert check.status == "fail" and "DevicePolicy=closed blocks group nvidia, group 17000000.gpu" in check.detail


def test_a_real_character_device_is_judged_by_its_major(tmp_path: Path) -> None:
    """/dev/null (major 1) behind a GPU node's name: its group in /proc/devices decides, by name."""
    root = jetson_tree(tmp_path / "root", nodes=("nvmap",), devices="Character devices:\n  1 mem\n 10 misc\n")
    (root / "dev/nvidiactl").symlink_to("/dev/null")
    check = doctor.check_gpu_device_nodes(Context(Config(), root))
    assert check.status == "fail" and "/dev/nvidiactl (major 1, group mem)" in check.detail
    (root / "proc/devices").write_text("Character devices:\n  1 nvidia-shadow\n")
    check = doctor.check_gpu_device_nodes(Context(Config(), root))
    assert check.status == "pass" and "group nvidia-shadow (char-nvidia*)" in check.detail


def test_a_missing_node_is_named_not_openable(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path)
    (root / "dev/nvhost-ctrl-gpu").unlink()
    (root / "dev/nvhost-ctrl-gpu").symlink_to(root / "dev/gone")
    check = doctor.check_gpu_device_nodes(Context(Config(), root))
    assert check.status == "fail" and "/dev/nvhost-ctrl-gpu not openable (ENOENT" in check.detail


def _check_as_nobody(ctx: Context) -> dict[str, str]:
    """check_gpu_device_nodes run in a child that became nobody (this test runs as root)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, check, report, exit without running pytest's teardown
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(doctor.check_gpu_device_nodes(ctx).as_dict()).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"status": "child", "detail": repr(exc), "fix": ""}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, str] = json.loads(data)
    return result


def test_a_node_the_user_cannot_open_fails_with_the_group_to_join() -> None:
    """Mode 000: EACCES for anyone but root; as root the check runs in a child that became nobody."""
    folder = Path(tempfile.mkdtemp(prefix="edge-qc-doctor-"))  # outside pytest's root-only folders
    try:
        root = jetson_tree(folder)
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        (root / "dev/nvhost-gpu").chmod(0o000)
        ctx = Context(Config(), root)
        check = _check_as_nobody(ctx) if os.geteuid() == 0 else doctor.check_gpu_device_nodes(ctx).as_dict()
    finally:
        shutil.rmtree(folder)
    assert check["status"] == "fail", check
    assert "/dev/nvhost-gpu not openable (EACCES, group " in check["detail"]
    assert "/dev/nvmap," in check["detail"] and "/dev/nvmap not openable" not in check["detail"]
    assert "sudo usermod -aG" in check["fix"] and "edge-qc" in check["fix"]


def test_the_systemd_run_command_carries_the_units_device_rules() -> None:
    rules = doctor.parse_unit([doctor.REPO_UNIT.read_text()], str(doctor.REPO_UNIT))
    assert rules.policy == "closed" and rules.user == "edge-qc"
    assert "char-*.gpu" in rules.allow and "/dev/nvmap" in rules.paths
    command = doctor._systemd_run_command(rules)
    assert command.startswith("systemd-run --wait --pipe -p DevicePolicy=closed -p 'DeviceAllow=/dev/nvmap rw'")
    assert "-p 'DeviceAllow=char-*.gpu rw'" in command and "-p User=edge-qc" in command
    assert command.endswith(f"{sys.executable} -c 'import pycuda.autoinit'")


def test_proc_devices_parsing_keeps_character_groups_only() -> None:
    groups = doctor.char_device_groups(PROC_DEVICES)
    assert (489, "17000000.gpu") in groups and (195, "nvidia") in groups
    assert all(name != "sd" for _, name in groups)


# --- engine ---------------------------------------------------------------------------------------------------


def _engine_for(folder: Path, model: Path, device: DeviceFingerprint) -> Path:
    """An engine file with the manifest `edge-qc engine build` writes next to it (the plan is not
    deserialised by the doctor; its checksum and the recorded device are what it compares)."""
    plan = folder / "lumbar-resunet-0.2.0_trt10.3.0_orin_fp16.plan"
    plan.write_bytes(b"serialised engine bytes")
    record = {
        "engine": plan.name,
        "sha256": sha256_of(plan),
        "source_onnx_sha256": load_manifest(model).sha256,
        "device": device.as_dict(),
    }
    plan.with_suffix(".json").write_text(json.dumps(record))
    return plan


def test_an_engine_for_another_device_fails_listing_the_mismatches(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path / "root")
    model = Config().model.path
    plan = _engine_for(tmp_path, model, DeviceFingerprint("10.3.0", "12.6", "8.7", "another board", "36.4.3"))
    config = dataclasses.replace(Config(), model=ModelConfig(path=model, backend="tensorrt", engine=plan))
    check = doctor.check_engine(Context(config, root))  # this machine's own fingerprint, read under root
    assert check.status == "fail"
    assert check.detail.startswith("built for another device: ")
    assert "module: engine built with another board, this device has " in check.detail
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT: engine built with 10.3.0, this device's is unknown" in check.detail
    assert "L4T" not in check.detail and "CUDA:" not in check.detail  # those match the tree
    assert f"edge-qc engine find {tmp_path}" in check.fix and "edge-qc engine build" in check.fix


def test_an_engine_built_here_from_this_model_passes_and_an_altered_one_fails(tmp_path: Path) -> None:
    model = Config().model.path
    plan = _engine_for(tmp_path, model, ORIN_DEVICE)
    config = dataclasses.replace(Config(), model=ModelConfig(path=model, backend="tensorrt", engine=plan))
    ctx = Context(config, tmp_path, fingerprint=lambda root: ORIN_DEVICE)  # the device's facts, not TensorRT
    check = doctor.check_engine(ctx)
    assert check.status == "pass", check
    assert f"{plan.name} built for this device from this model" in check.detail
    assert "validation recorded: onnxruntime-fp16 passed" in check.detail
    plan.write_bytes(b"truncated")
    check = doctor.check_engine(ctx)
    assert check.status == "fail" and "does not match the sha256" in check.detail


def test_an_onnx_file_that_differs_from_its_manifest_fails(tmp_path: Path) -> None:
    folder = tmp_path / "0.2.0"
    shutil.copytree(Config().model.path, folder, ignore=shutil.ignore_patterns("validation"))
    config = dataclasses.replace(Config(), model=ModelConfig(path=folder))
    assert doctor.check_engine(Context(config)).status == "pass"
    with (folder / "model.onnx").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    check = doctor.check_engine(Context(config))
    assert check.status == "fail" and "model.onnx: sha256" in check.detail and "altered" in check.detail
    config = dataclasses.replace(Config(), model=ModelConfig(path=tmp_path / "none"))
    check = doctor.check_engine(Context(config))
    assert check.status == "fail" and "edge-qc engine activate" in check.fix


# --- disk, clock ----------------------------------------------------------------------------------------------


def test_disk_fails_below_the_configured_minimum(tmp_path: Path) -> None:
    service = ServiceConfig(spool_dir=tmp_path / "spool", outbox_path=tmp_path / "state" / "outbox.sqlite")
    check = doctor.check_disk(Context(dataclasses.replace(Config(), service=service)))
    assert check.status == "pass" and f"(not there yet: measured at {tmp_path})" in check.detail
    greedy = dataclasses.replace(service, min_free_bytes=2**62)
    check = doctor.check_disk(Context(dataclasses.replace(Config(), service=greedy)))
    assert check.status == "fail" and "spool" in check.detail and "outbox" in check.detail
    assert "free space" in check.fix


def test_clock_follows_timedatectl(tmp_path: Path) -> None:
    yes, _ = clock_says("yes")
    no, _ = clock_says("no")
    broken, _ = clock_says("Failed to connect to bus", status=1)
    assert doctor.check_clock(Context(Config(), run=yes, which=has_timedatectl)).status == "pass"
    check = doctor.check_clock(Context(Config(), run=no, which=has_timedatectl))
    assert check.status == "fail" and "systemd-timesyncd or chrony" in check.fix
    assert doctor.check_clock(Context(Config(), run=yes, which=lambda name: None)).status == "skip"
    check = doctor.check_clock(Context(Config(), tmp_path, run=broken, which=has_timedatectl))
    assert check.status == "skip" and "not booted by systemd" in check.detail
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    check = doctor.check_clock(Context(Config(), tmp_path, run=broken, which=has_timedatectl))
    assert check.status == "fail" and "Failed to connect to bus" in check.detail


# --- broker, DICOM port, AE titles ------------------------------------------------------------------------------


def _mqtt(port: int, username: str = "", password: str = "") -> Config:
    mqtt = dataclasses.replace(Config().mqtt, port=port, username=username, password=password)
    return dataclasses.replace(Config(), mqtt=mqtt)


def test_broker_connects_to_a_real_mosquitto(broker: Broker) -> None:
    check = doctor.check_broker(Context(_mqtt(broker.port)))
    assert check.status == "pass" and check.detail == f"connected to 127.0.0.1:{broker.port} without a login"


def test_broker_fails_on_a_closed_port_and_on_silence(listening: int) -> None:
    port = free_port()
    check = doctor.check_broker(Context(_mqtt(port)))
    assert check.status == "fail"
    assert check.detail == f"cannot reach the broker at 127.0.0.1:{port}: Connection refused"
    assert "systemctl start mosquitto" in check.fix
    check = doctor.check_broker(Context(_mqtt(listening), broker_timeout_s=1))  # accepts, never answers
    assert check.status == "fail" and "no answer (CONNACK)" in check.detail


def test_broker_refusing_the_login_is_named_and_the_password_never_shown(tmp_path: Path) -> None:
    passwd = require_tool(Path("/usr/bin/mosquitto_passwd"), package="mosquitto")
    password_file = tmp_path / "passwords"
    subprocess.run([str(passwd), "-b", "-c", str(password_file), "edge", "right-horse-battery"], check=True)
    password_file.chmod(0o600)
    secured = Broker(tmp_path / "broker")
    secured.config.write_text(
        f"{RUN_AS_INVOKER}listener {secured.port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {password_file}\npersistence false\n"
    )
    secured.start()
    try:
        wrong = doctor.check_broker(Context(_mqtt(secured.port, username="edge", password="s3cret-wrong")))
        right = doctor.check_broker(Context(_mqtt(secured.port, username="edge", password="right-horse-battery")))
        missing = doctor.check_broker(Context(_mqtt(secured.port, username="edge")))
    finally:
        secured.stop()
    assert wrong.status == "fail" and "refused the connection as 'edge': Not authorized" in wrong.detail
    assert "s3cret-wrong" not in json.dumps(wrong.as_dict())
    assert right.status == "pass" and right.detail == f"connected to 127.0.0.1:{secured.port} as 'edge'"
    assert missing.status == "fail" and "EDGEQC_MQTT_PASSWORD" in missing.detail


def test_dicom_port_passes_when_something_listens_and_fails_on_a_free_port(listening: int) -> None:
    def on(port: int, bind: str = "0.0.0.0") -> Context:
        return Context(dataclasses.replace(Config(), dicom=dataclasses.replace(Config().dicom, port=port, bind=bind)))

    check = doctor.check_dicom_port(on(listening))
    assert check.status == "pass" and check.detail == f"listening on 127.0.0.1:{listening} (dicom.bind 0.0.0.0)"
    assert doctor.check_dicom_port(on(listening, "127.0.0.1")).status == "pass"
    check = doctor.check_dicom_port(on(free_port()))
    assert check.status == "fail" and "Connection refused" in check.detail
    assert check.fix.startswith("the daemon is not running: systemctl start edge-qc")


def test_modality_aets_fail_on_an_empty_allow_list_and_default_names() -> None:
    check = doctor.check_modality_aets(Context(Config()))
    assert check.status == "fail"
    assert "dicom.allowed_calling_aets is empty" in check.detail
    assert "mqtt.site is still 'site'; mqtt.room is still 'room'; mqtt.device is still 'device'" in check.detail
    assert "dicom.allowed_calling_aets: every modality is refused; add the calling AE title" in check.fix
    named = dataclasses.replace(Config().mqtt, site="h1", room="xr2", device="jetson7")
    check = doctor.check_modality_aets(Context(dataclasses.replace(Config(), mqtt=named)))
    assert check.status == "fail" and "allowed_calling_aets" in check.detail and "still" not in check.detail
    dicom = dataclasses.replace(Config().dicom, allowed_calling_aets=("CR_ROOM2",))
    check = doctor.check_modality_aets(Context(dataclasses.replace(Config(), mqtt=named, dicom=dicom)))
    assert check.status == "pass" and "CR_ROOM2" in check.detail


# --- the runner -----------------------------------------------------------------------------------------------


def test_a_check_that_raises_is_a_failure_naming_the_exception_and_the_rest_still_run() -> None:
    def broken(ctx: Context) -> Check:
        raise PermissionError(13, "Permission denied", "/proc/devices")

    checks = doctor.run_checks(Context(Config()), [("broken", broken), ("python", doctor.check_python)])
    assert checks[0] == Check(
        "broken",
        "fail",
        "the check itself failed: PermissionError: [Errno 13] Permission denied: '/proc/devices'",
        "report this to edge-qc",
    )
    assert checks[1].name == "python" and checks[1].status == "pass"


def test_python_older_than_3_10_fails() -> None:
    check = doctor.check_python(Context(Config(), python=(3, 9, 18)))
    assert check.status == "fail" and "Python 3.9.18" in check.detail
