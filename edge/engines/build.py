"""Build a TensorRT engine on the device it will run on: `edge-qc engine build MODEL_DIR`.

The recipe works on TensorRT 10.x and 11.x alike (docs/tensorrt-jetson.md):
- the ONNX model is converted to mixed precision first (FP16 body; FP32 inputs, outputs, final
  convolution and sigmoid: `edge.engines.precision`), then built as a strongly typed network, so no
  builder precision flag is needed (TensorRT 11 removed them);
- the workspace memory pool is limited explicitly (a Jetson shares its memory with the CPU);
- a timing cache per (TensorRT version, module) makes rebuilds after the first one quick;
- the engine is written with its own manifest (device fingerprint, source checksum, recipe, I/O) and
  named by model version, TensorRT version, module and precision, so an upgrade rebuilds instead of
  crashing; a build in which no layer runs in FP16 is refused (a silent FP32 engine is a bug).
The CLI runs it in its own process at low priority, never inside the daemon.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Final

from edge.engines.manifest import ModelManifest
from edge.engines.store import sha256_of
from edge.inference.device import DeviceFingerprint

PRECISIONS: Final = ("fp16", "fp32")
DEFAULT_WORKSPACE_MIB: Final = 1024


class BuildError(RuntimeError):
    """An engine that could not be built; the message says at which step and why."""


def _slug(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (text or "unknown").lower()).strip("-") or "unknown"


def engine_name(manifest: ModelManifest, device: DeviceFingerprint, precision: str) -> str:
    """e.g. lumbar-resunet-0.2.0_trt10.3.0_nvidia-jetson-agx-orin-developer-kit_fp16"""
    return f"{manifest.name}-{manifest.version}_trt{device.tensorrt or 'unknown'}_{_slug(device.module)}_{precision}"


def timing_cache_path(cache_dir: Path, device: DeviceFingerprint) -> Path:
    """One timing cache per TensorRT version and module: tactics timed on one do not apply to another."""
    return cache_dir / f"timing_trt{device.tensorrt or 'unknown'}_{_slug(device.module)}.cache"


def prepare_onnx(manifest: ModelManifest, precision: str, out_dir: Path) -> Path:
    """The ONNX model the engine is built from: the shipped one (fp32), or its mixed-precision form."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return manifest.model_path
    from edge.engines.precision import write_mixed_precision

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{manifest.name}-{manifest.version}-fp16.onnx"
    write_mixed_precision(manifest.model_path, path)
    return path


def _fp16_layers(engine: Any, trt: Any) -> int:
    """How many layers of a built engine carry FP16 tensors (needs detailed profiling verbosity). The
    inspector's JSON names the type "Half" in some TensorRT versions and "FP16" in others (tensor
    formats such as "Row major linear FP16 format"): either counts."""
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    return sum(1 for layer in layers if is_fp16_layer(layer))


def is_fp16_layer(layer: object) -> bool:
    """Whether one layer of the engine inspector's JSON carries a half-precision tensor."""
    text = json.dumps(layer)
    return "Half" in text or "FP16" in text


def build_engine(
    manifest: ModelManifest,
    out_dir: Path,
    device: DeviceFingerprint,
    precision: str = "fp16",
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    cache_dir: Path | None = None,
) -> Path:
    """Build, check and write ENGINE.plan with ENGINE.json; returns the .plan path."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BuildError("building an engine needs TensorRT on the device it will run on (not installed here)") from exc
    onnx_path = prepare_onnx(manifest, precision, out_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path}: the ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache_path = timing_cache_path(cache_dir or out_dir, device)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{onnx_path}: TensorRT could not build the network (see the log above)")
    seconds = time.perf_counter() - started
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(cache.serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise BuildError("the engine just built does not deserialise")
    fp16_layers = _fp16_layers(engine, trt)
    if precision == "fp16" and fp16_layers == 0:
        raise BuildError("no layer of the engine runs in FP16: refusing a silent FP32 engine")
    name = engine_name(manifest, device, precision)
    plan = out_dir / f"{name}.plan"
    plan.write_bytes(bytes(serialized))
    record = {
        "engine": plan.name,
        "sha256": sha256_of(plan),
        "model": manifest.name,
        "model_version": manifest.version,
        "source_onnx_sha256": manifest.sha256,
        "precision": precision,
        "recipe": "mixed-precision ONNX (FP16 body, FP32 I/O and output layers), strongly typed network"
        if precision == "fp16"
        else "FP32 ONNX, strongly typed network",
        "fp16_layers": fp16_layers,
        "workspace_mib": workspace_mib,
        "build_seconds": round(seconds, 1),
        "built_unix": int(time.time()),
        "device": device.as_dict(),
        "io": {"input": "image 1x1x256x256 float32", "outputs": ["masks 1x18x256x256 float32", "view 1x4 float32"]},
    }
    plan.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return plan
