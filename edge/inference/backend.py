"""The `Backend` interface and the factory that picks an implementation by name.

Implementations are imported lazily so that a device without TensorRT (or a workstation without
ONNX Runtime) can still import the package and say clearly which runtime is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class ModelOutputs:
    masks: F32  # structures x size x size, sigmoid probabilities
    view: F32  # view-class probabilities (softmax), in the manifest's class order


class Backend(Protocol):
    name: str

    def infer(self, image: F32) -> ModelOutputs:
        """One network input (1 x 1 x size x size, float32) -> outputs."""
        ...

    def warm_up(self, runs: int = 3) -> None:
        """Run blank inputs so that the first radiograph does not pay for allocation and tuning."""
        ...

    def describe(self) -> dict[str, object]:
        """name, precision, device and runtime versions, for verdicts, metrics and logs."""
        ...

    def close(self) -> None: ...


class BackendUnavailableError(RuntimeError):
    """The requested runtime is not installed or cannot run here; the message says which."""


def open_backend(name: str, model_path: Path, threads: int = 2) -> Backend:
    """`model_path`: the ONNX file for onnxruntime, the engine file (.plan with its .json) for tensorrt."""
    if name == "onnxruntime":
        from edge.inference.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads)
    if name == "tensorrt":
        from edge.inference.tensorrt import TensorRTBackend

        return TensorRTBackend(model_path)
    raise BackendUnavailableError(f"unknown inference backend {name!r} (known: onnxruntime, tensorrt)")


@dataclass(frozen=True)
class OpenedBackend:
    backend: Backend
    degraded: str  # why the configured backend is not the one running ("" when it is)


def open_with_fallback(
    name: str, artifact: Path, onnx_path: Path, threads: int = 2, fallback: bool = True
) -> OpenedBackend:
    """The configured backend, or (when allowed) ONNX Runtime on the CPU with the reason: a bad engine
    must never take the appliance down, and everything it judges then says it is degraded."""
    try:
        return OpenedBackend(open_backend(name, artifact if name != "onnxruntime" else onnx_path, threads), "")
    except BackendUnavailableError as exc:
        if not fallback or name == "onnxruntime":
            raise
        return OpenedBackend(open_backend("onnxruntime", onnx_path, threads), f"{name} unavailable: {exc}")
