"""Backends behind one interface; a configured engine that cannot run falls back, marked degraded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jsonschema
import pytest

from edge.config import parse_config
from edge.inference.backend import BackendUnavailableError, open_backend
from edge.pipeline import Pipeline
from edge.qc.verdict import schema
from tests.qc.conftest import fault_case, write_case

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-runtime path cannot be seen")
def test_tensorrt_without_tensorrt_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="needs tensorrt and pycuda"):
        open_backend("tensorrt", tmp_path / "model.plan")
    with pytest.raises(BackendUnavailableError, match="unknown inference backend 'tvm'"):
        open_backend("tvm", tmp_path / "model.onnx")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the fallback path needs it absent")
def test_a_refused_engine_falls_back_to_onnxruntime_and_every_verdict_says_degraded(tmp_path: Path) -> None:
    config = parse_config({"model": {"backend": "tensorrt", "engine": "missing.plan"}}, "site.toml", tmp_path)
    pipeline = Pipeline(config)
    assert pipeline.backend.name == "onnxruntime" and "tensorrt unavailable" in pipeline.degraded
    image = write_case(fault_case("ap", "cut_top", 61), tmp_path)
    verdict = pipeline.process(image).verdict
    assert verdict.degraded and verdict.verdict == "fail"
    assert any(n.startswith("degraded: tensorrt unavailable") for n in verdict.notes)
    assert verdict.versions["engine"].startswith("onnxruntime")
    jsonschema.validate(verdict.as_dict(), schema())
    rejected = pipeline.process(b"not dicom").verdict
    assert rejected.verdict == "rejected" and rejected.degraded
    strict = parse_config(
        {"model": {"backend": "tensorrt", "engine": "missing.plan", "fallback": False}}, "site.toml", tmp_path
    )
    with pytest.raises(BackendUnavailableError):
        Pipeline(strict)


def test_onnxruntime_is_not_degraded(tmp_path: Path) -> None:
    pipeline = Pipeline(parse_config({}, "site.toml", tmp_path))
    assert pipeline.degraded == ""
    verdict = pipeline.process(write_case(fault_case("lateral", "tilt", 61), tmp_path)).verdict
    assert not verdict.degraded and not any(n.startswith("degraded") for n in verdict.notes)
