"""ONNX Runtime on the CPU: the embedded default, and the reference the other backends are held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.inference.backend import F32, BackendUnavailableError, ModelOutputs


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int = 2) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a runtime dependency
            raise BackendUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def infer(self, image: F32) -> ModelOutputs:
        masks, view = self._session.run(["masks", "view"], {self._input: np.ascontiguousarray(image, np.float32)})
        return ModelOutputs(masks=np.asarray(masks[0], np.float32), view=np.asarray(view[0], np.float32))

    def close(self) -> None:
        del self._session
