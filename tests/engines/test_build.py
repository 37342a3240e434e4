"""Engine build: the decisions that need no GPU run here; a real build runs where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.engines.build import BuildError, engine_name, prepare_onnx, timing_cache_path
from edge.engines.manifest import load_manifest
from edge.engines.precision import output_layers
from edge.inference.device import DeviceFingerprint, read_fingerprint

MODEL = Path(__file__).resolve().parents[2] / "engines" / "lumbar-resunet" / "0.2.0"
ORIN = DeviceFingerprint("10.3.0", "12.6", "8.7", "NVIDIA Jetson AGX Orin Developer Kit", "36.4.3")


def test_engine_and_timing_cache_names_carry_version_module_and_precision(tmp_path: Path) -> None:
    manifest = load_manifest(MODEL)
    name = engine_name(manifest, ORIN, "fp16")
    assert name == "lumbar-resunet-0.2.0_trt10.3.0_nvidia-jetson-agx-orin-developer-kit_fp16"
    other = engine_name(manifest, DeviceFingerprint(**{**ORIN.as_dict(), "tensorrt": "10.16.1"}), "fp16")
    assert other != name  # an upgrade builds a new engine instead of loading the old one
    cache = timing_cache_path(tmp_path, ORIN)
    assert cache.name == "timing_trt10.3.0_nvidia-jetson-agx-orin-developer-kit.cache"


def test_the_fp16_recipe_keeps_io_and_output_layers_in_fp32(tmp_path: Path) -> None:
    path = prepare_onnx(load_manifest(MODEL), "fp16", tmp_path)
    model = onnx.load(str(path))
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert all(t.type.tensor_type.elem_type == fp32 for t in [*model.graph.input, *model.graph.output])
    types = {init.data_type for init in model.graph.initializer}
    assert fp16 in types  # the body is FP16
    kept = set(output_layers(onnx.load(str(MODEL / "model.onnx"))))  # final conv, sigmoid, view head
    inputs_of_kept = {i for node in model.graph.node if node.name in kept for i in node.input}
    kept_weights = [init for init in model.graph.initializer if init.name in inputs_of_kept]
    assert {w.name for w in kept_weights} >= {"model.head.weight", "model.head.bias"}
    assert all(init.data_type == fp32 for init in kept_weights)
    assert prepare_onnx(load_manifest(MODEL), "fp32", tmp_path) == load_manifest(MODEL).model_path
    with pytest.raises(BuildError, match="precision must be one of"):
        prepare_onnx(load_manifest(MODEL), "int8", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_2_with_the_reason(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "engine", "build", str(MODEL), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "needs TensorRT on the device it will run on" in proc.stderr


def _gpu_present() -> bool:
    try:
        import pycuda.driver as cuda

        cuda.init()
        return bool(cuda.Device.count() > 0)
    except Exception:
        return False


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_builds_validates_and_runs(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    pytest.importorskip("pycuda", reason="pycuda is not installed here")
    if not _gpu_present():
        pytest.skip("no CUDA device here")
    from edge.engines.build import build_engine
    from edge.engines.validate import validate
    from edge.inference.onnxruntime import OnnxRuntimeBackend
    from edge.inference.tensorrt import TensorRTBackend
    from edge.qc.standard import load_standard

    manifest = load_manifest(MODEL)
    plan = build_engine(manifest, tmp_path, read_fingerprint(), "fp16", 512)
    record = json.loads(plan.with_suffix(".json").read_text())
    assert record["fp16_layers"] > 0
    engine = TensorRTBackend(plan)
    report = validate(manifest, engine, OnnxRuntimeBackend(manifest.model_path), load_standard())
    assert report.passed, report.problems
    image = np.zeros((1, 1, 256, 256), np.float32)
    out = engine.infer(image)
    assert out.masks.shape == (18, 256, 256) and np.isfinite(out.masks).all()
    engine.close()


def test_fp16_layers_are_counted_under_either_name_the_inspector_uses() -> None:
    """TensorRT's engine inspector says "Half" in some versions and "FP16" in tensor formats in others."""
    from edge.engines.build import is_fp16_layer

    assert is_fp16_layer({"Name": "conv1", "Inputs": [{"Format/Datatype": "Half"}]})
    assert is_fp16_layer({"Name": "conv1", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]})
    assert not is_fp16_layer({"Name": "head", "Outputs": [{"Format/Datatype": "Float"}]})
