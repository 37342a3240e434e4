"""Engine validation: the shipped validation set through an engine against ONNX Runtime FP32."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.engines.manifest import load_manifest
from edge.engines.validate import validate
from edge.inference.backend import F32, ModelOutputs
from edge.inference.onnxruntime import OnnxRuntimeBackend
from edge.qc.standard import load_standard
from edge.qc.structures import STRUCTURES

MODEL = Path(__file__).resolve().parents[2] / "engines" / "lumbar-resunet" / "0.2.0"


class Corrupted:
    """A real ONNX Runtime backend whose outputs are damaged the way a broken FP16 engine damages them."""

    def __init__(self, how: str) -> None:
        self.inner = OnnxRuntimeBackend(load_manifest(MODEL).model_path)
        self.name = f"corrupted-{how}"
        self.how = how

    def infer(self, image: F32) -> ModelOutputs:
        out = self.inner.infer(image)
        masks = out.masks.copy()
        if self.how == "nan":
            masks[0, 0, 0] = np.nan
        elif self.how == "pedicles":  # one structure lost: a saturated sigmoid in FP16
            masks[STRUCTURES.index("pedicle_left")] = 0.0
        elif self.how == "blind":  # a model that sees nothing (it agrees with itself perfectly)
            masks[:] = 0.0
        return ModelOutputs(masks, out.view)

    def warm_up(self, runs: int = 3) -> None:
        self.inner.warm_up(runs)

    def describe(self) -> dict[str, object]:
        return {**self.inner.describe(), "name": self.name}

    def close(self) -> None:
        self.inner.close()


def test_fp32_against_itself_agrees_exactly() -> None:
    manifest = load_manifest(MODEL)
    backend = OnnxRuntimeBackend(manifest.model_path)
    report = validate(manifest, backend, backend, load_standard())
    assert report.passed and report.images == 6
    assert set(report.dice_agreement.values()) == {1.0} and report.verdict_agreement == 1.0
    assert 0.85 <= report.truth_dice <= 0.9 and report.truth_view_accuracy == 1.0  # 0.863 measured


def test_a_model_that_agrees_with_itself_but_sees_nothing_is_refused() -> None:
    manifest = load_manifest(MODEL)
    blind = Corrupted("blind")
    report = validate(manifest, blind, blind, load_standard())
    assert set(report.dice_agreement.values()) <= {1.0}  # perfect agreement, nothing to compare...
    assert not report.passed and report.truth_dice == 0.0
    assert any("against the phantom truth" in p for p in report.problems), report.problems


@pytest.mark.parametrize(("how", "problem"), [("nan", "NaN or Inf"), ("pedicles", "pedicle_left")])
def test_a_damaged_engine_is_refused(how: str, problem: str) -> None:
    manifest = load_manifest(MODEL)
    report = validate(manifest, Corrupted(how), OnnxRuntimeBackend(manifest.model_path), load_standard())
    assert not report.passed and any(problem in p for p in report.problems), report.problems


def test_cli_validates_fp16_and_records_the_result(tmp_path: Path) -> None:
    model = tmp_path / "0.2.0"
    shutil.copytree(MODEL, model)
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "engine", "validate", str(model), "--precision", "fp16", "--write"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
    recorded = json.loads((model / "manifest.json").read_text())["engine_validation"]["onnxruntime-fp16"]
    assert recorded["passed"] and min(recorded["dice_agreement"].values()) >= 0.98
    assert recorded["verdict_agreement"] == 1.0


def test_validating_a_tensorrt_plan_loads_it_through_the_tensorrt_backend(tmp_path: Path) -> None:
    """`engine validate --engine PLAN` checks the plan that will run, not an ONNX stand-in: where
    TensorRT is absent it says so and exits 2 (it never validates something else in its place)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the plan is validated on the device (issue 16's device check)")
    plan = tmp_path / "device.plan"
    plan.write_bytes(b"not built here")
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "engine", "validate", str(MODEL), "--engine", str(plan)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot validate {plan} here" in proc.stderr and "needs tensorrt and pycuda" in proc.stderr
