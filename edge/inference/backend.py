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

    def close(self) -> None: ...


class BackendUnavailableError(RuntimeError):
    """The requested runtime is not installed or cannot run here; the message says which."""


def open_backend(name: str, model_path: Path, threads: int = 2) -> Backend:
    if name == "onnxruntime":
        from edge.inference.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads)
    raise BackendUnavailableError(f"unknown inference backend {name!r} (available here: onnxruntime)")
