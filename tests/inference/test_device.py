"""Engine-to-device compatibility: each mismatching field refused with its own message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.inference.device import DeviceFingerprint, incompatibilities, parse_l4t, read_fingerprint

ORIN = DeviceFingerprint("10.3.0", "12.6", "8.7", "NVIDIA Jetson AGX Orin Developer Kit", "36.4.3")


def test_same_device_is_compatible() -> None:
    assert incompatibilities(ORIN.as_dict(), ORIN) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tensorrt", "10.16.1", "TensorRT: engine built with 10.3.0, this device has 10.16.1"),
        ("cuda", "13.2", "CUDA: engine built with 12.6, this device has 13.2"),
        ("compute_capability", "11.0", "GPU compute capability: engine built with 8.7, this device has 11.0"),
        ("module", "NVIDIA Jetson Orin Nano", "module: engine built with NVIDIA Jetson AGX Orin"),
        ("l4t", "36.4.4", "L4T release: engine built with 36.4.3, this device has 36.4.4"),
    ],
)
def test_each_mismatch_is_named(field: str, value: str, message: str) -> None:
    here = DeviceFingerprint(**{**ORIN.as_dict(), field: value})
    problems = incompatibilities(ORIN.as_dict(), here)
    assert len(problems) == 1 and problems[0].startswith(message)


def test_unknown_fields_are_refused_not_guessed() -> None:
    problems = incompatibilities(ORIN.as_dict(), DeviceFingerprint())
    assert len(problems) == 5 and all("this device's is unknown" in p for p in problems)
    assert "does not record it" in incompatibilities({}, ORIN)[0]


def test_fingerprint_from_a_jetson_file_tree(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}')
    found = read_fingerprint(tmp_path)
    assert found.module == "NVIDIA Jetson AGX Orin Developer Kit"  # no compatible list: the model text
    compatible = b"nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00"
    (tmp_path / "proc/device-tree/compatible").write_bytes(compatible)
    assert read_fingerprint(tmp_path).module == "nvidia,p3701-0005"  # the module, whatever the carrier
    assert found.l4t == "36.4.3" and found.cuda == "12.6"
    assert parse_l4t("garbage") is None
    assert read_fingerprint(tmp_path / "absent").module is None  # not a Jetson: unknown, no error
    from edge.inference.device import module_of

    assert module_of("nvidia,p3971-0000+p3834-0000\x00nvidia,tegra264\x00", None) == "nvidia,tegra264"  # no bare part
    assert module_of(None, "Some board") == "Some board"


def _plan(folder: Path, name: str, device: dict[str, str], mtime: float) -> Path:
    import json
    import os

    plan = folder / f"{name}.plan"
    plan.write_bytes(b"serialized engine")
    plan.with_suffix(".json").write_text(json.dumps({"device": device}))
    os.utime(plan, (mtime, mtime))
    return plan


def test_a_plan_from_before_a_tensorrt_upgrade_is_not_reused(tmp_path: Path) -> None:
    """After a JetPack upgrade the old plan has the right name and the wrong TensorRT: the rollout's
    `edge-qc engine find` passes it over (and the rollout builds a new one)."""
    from edge.inference.device import fitting_plan

    here = DeviceFingerprint("10.3.0", "12.6", "8.7", "NVIDIA Jetson AGX Orin", "36.4.3")
    built = {k: str(v) for k, v in here.as_dict().items()}
    old = _plan(tmp_path, "lumbar-resunet-0.2.0_a", {**built, "tensorrt": "8.6.2", "l4t": "35.5.0"}, 1e9)
    plan, refused = fitting_plan(tmp_path, here)
    assert plan is None and any("TensorRT: engine built with 8.6.2" in p for p in refused[old.name])
    new = _plan(tmp_path, "lumbar-resunet-0.2.0_b", built, 2e9)
    (tmp_path / "device.plan").symlink_to(new.name)
    assert fitting_plan(tmp_path, here)[0] == new
    newer = _plan(tmp_path, "lumbar-resunet-0.2.0_c", built, 3e9)
    assert fitting_plan(tmp_path, here)[0] == newer  # the newest of those that fit
    (tmp_path / "broken.plan").write_bytes(b"no manifest")
    assert "no readable manifest" in fitting_plan(tmp_path, here)[1]["broken.plan"][0]


def test_engine_find_exits_1_naming_why_when_no_plan_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    _plan(tmp_path, "lumbar-resunet-0.2.0_a", {"tensorrt": "8.6.2"}, 1e9)
    assert main(["engine", "find", str(tmp_path)]) == 1  # this machine has no TensorRT: nothing fits
    err = capsys.readouterr().err
    assert "lumbar-resunet-0.2.0_a.plan: not for this device" in err and "TensorRT" in err
    assert main(["engine", "find", str(tmp_path / "missing")]) == 2
