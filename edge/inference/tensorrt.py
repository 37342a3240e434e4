"""TensorRT 10/11 backend with pycuda: the Jetson's engine, isolated here and imported only when asked for.

Written against the documented TensorRT 10 Python API (name-based I/O tensors, `execute_async_v3`)
and pycuda (see docs/tensorrt-jetson.md):
- the engine's recorded device is compared with this device before deserialising, and a mismatch is
  refused with a message naming what differs (a "Version tag does not match" never reaches the field);
- a None from deserialisation, or a False from `execute_async_v3`, is an error, never a silent zero;
- inputs and outputs are bound by tensor name with the engine's own dtypes and shapes; pinned host
  buffers, device buffers and one CUDA stream are allocated once;
- the device's primary context is retained once and pushed/popped around every call, so the
  inference thread owns it without `pycuda.autoinit` (which breaks threaded daemons);
- optionally, mapped pinned memory (zero-copy on Jetson's shared memory) instead of copies.

Not executed on the development machine (no TensorRT, no GPU); the tests marked `tensorrt` run it
where both exist and skip with the reason elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.backend import F32, BackendUnavailableError, ModelOutputs
from edge.inference.device import incompatibilities, read_fingerprint


def engine_manifest(engine_path: Path) -> dict[str, Any]:
    """The manifest written next to an engine (ENGINE.plan -> ENGINE.json) by `edge-qc engine build`."""
    path = engine_path.with_suffix(".json")
    try:
        loaded: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise BackendUnavailableError(f"{path}: an engine without its manifest is never loaded") from exc
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(f"{path}: unreadable engine manifest: {exc}") from exc
    return loaded


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_path: Path, zero_copy: bool = False) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the TensorRT backend needs tensorrt and pycuda on a CUDA device ({exc.name} is not installed)"
            ) from exc
        manifest = engine_manifest(engine_path)
        problems = incompatibilities(manifest.get("device", {}), read_fingerprint())
        if problems:
            raise BackendUnavailableError(f"{engine_path}: built for another device: " + "; ".join(problems))
        self.precision = str(manifest.get("precision", "fp16"))
        self._trt_version = str(trt.__version__)
        self._cuda = cuda
        cuda.init()
        self._device_name = str(cuda.Device(0).name())
        self._context = cuda.Device(0).retain_primary_context()
        self._context.push()
        try:  # anything that fails from here on releases what it took: the stream, buffers, the context
            self._open(engine_path, zero_copy, trt, cuda)
        except BaseException:
            self._release()
            self._context.pop()
            self._context.detach()
            raise
        self._context.pop()

    def _open(self, engine_path: Path, zero_copy: bool, trt: Any, cuda: Any) -> None:
        """Deserialise the engine and allocate its buffers and stream (the context is current)."""
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(f"{engine_path}: TensorRT could not deserialise the engine")
        self._execution = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        self._host: dict[str, Any] = {}
        self._device: dict[str, Any] = {}
        self._inputs: list[str] = []
        self._zero_copy = zero_copy
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            if zero_copy:
                host = cuda.pagelocked_empty(shape, dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
                device = host.base.get_device_pointer()
            else:
                host = cuda.pagelocked_empty(shape, dtype)
                device = cuda.mem_alloc(host.nbytes)
            self._host[name], self._device[name] = host, device
            self._execution.set_tensor_address(name, int(device))
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
        if self._inputs != ["image"] or not {"masks", "view"} <= self._host.keys():
            raise BackendUnavailableError(f"{engine_path}: expected input 'image' and outputs 'masks', 'view'")

    def infer(self, image: F32) -> ModelOutputs:
        cuda = self._cuda
        self._context.push()
        try:
            np.copyto(self._host["image"], image.reshape(self._host["image"].shape))
            if not self._zero_copy:
                cuda.memcpy_htod_async(self._device["image"], self._host["image"], self._stream)
            if not self._execution.execute_async_v3(self._stream.handle):
                raise RuntimeError("TensorRT execute_async_v3 reported a failure")
            if not self._zero_copy:
                for name in ("masks", "view"):
                    cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
            self._stream.synchronize()
            masks = np.array(self._host["masks"][0], dtype=np.float32)
            view = np.array(self._host["view"][0], dtype=np.float32)
        finally:
            self._context.pop()
        return ModelOutputs(masks=masks, view=view)

    def warm_up(self, runs: int = 3) -> None:
        blank = np.zeros(self._host["image"].shape, np.float32)
        for _ in range(runs):
            self.infer(blank)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "precision": self.precision,
            "device": self._device_name,
            "versions": {"tensorrt": self._trt_version},
        }

    def _release(self) -> None:
        """Free the execution context, engine, stream and buffers that exist (the context is current)."""
        for name in ("_execution", "_engine", "_stream"):
            self.__dict__.pop(name, None)
        for buffers in ("_device", "_host"):
            getattr(self, buffers, {}).clear()

    def close(self) -> None:
        """Free everything and release the primary context; closing twice is harmless."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._context.push()
        try:
            self._release()
        finally:
            self._context.pop()
            self._context.detach()
