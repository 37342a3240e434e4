"""ONNX Runtime: the embedded default (CPU; CUDA when its execution provider is installed), and the
reference the other backends are held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.inference.backend import F32, BackendUnavailableError, ModelOutputs


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int = 2, use_cuda: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a runtime dependency
            raise BackendUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        active = self._session.get_providers()
        self.device = "cuda" if active and active[0] == "CUDAExecutionProvider" else f"cpu ({threads} threads)"
        self.precision = "fp16" if "float16" in str(self._session.get_outputs()[0].type) else self._weights(model_path)
        self.versions = {"onnxruntime": ort.__version__}

    @staticmethod
    def _weights(model_path: Path) -> str:
        """fp32, or fp16 for a mixed-precision model (its outputs stay FP32; its weights do not)."""
        try:
            import onnx
        except ImportError:
            return "fp32"
        model = onnx.load(str(model_path), load_external_data=False)
        return "fp16" if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer) else "fp32"

    def warm_up(self, runs: int = 3) -> None:
        """First runs pay for allocations and kernel selection: do them before the first radiograph."""
        shape = [d if isinstance(d, int) else 1 for d in self._session.get_inputs()[0].shape]
        blank = np.zeros(shape, np.float32)
        for _ in range(runs):
            self.infer(blank)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "precision": self.precision, "device": self.device, "versions": self.versions}

    def infer(self, image: F32) -> ModelOutputs:
        masks, view = self._session.run(["masks", "view"], {self._input: np.ascontiguousarray(image, np.float32)})
        return ModelOutputs(masks=np.asarray(masks[0], np.float32), view=np.asarray(view[0], np.float32))

    def close(self) -> None:
        if hasattr(self, "_session"):  # closing twice is harmless
            del self._session
