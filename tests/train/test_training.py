"""Training smoke run and export equivalence, on tiny images so that they run in CI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.engines.precision import output_layers, to_mixed_precision
from edge.qc.structures import STRUCTURES, VIEW_CLASSES
from tools.export.export import export_run, ort_session
from tools.train.train import Recipe, losses_of_first_steps, train

TINY = Recipe(
    seed=3, samples=8, validation_samples=4, size=64, base_channels=4, epochs=1, batch=4, bf16=False, attention=True
)


def test_loss_falls_on_a_fixed_batch(tmp_path: Path) -> None:
    losses = losses_of_first_steps(tmp_path, TINY, steps=30)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 0.8 * (len(losses) - 1)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(run, TINY, max_steps=2, quiet=True)
    out = tmp_path_factory.mktemp("engines") / "0.0.0-test"
    export_run(run, out)
    return out


def test_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    train(tmp_path, TINY, max_steps=1, quiet=True)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 2  # header and one epoch
    with pytest.raises(ValueError, match="another recipe"):
        train(tmp_path, Recipe(**{**TINY.__dict__, "seed": 4}), max_steps=1, quiet=True)


def test_export_writes_a_checked_model_with_its_manifest(tiny_export: Path) -> None:
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    model = onnx.load(str(tiny_export / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["masks", "view"]
    assert manifest["outputs"][0]["channels"] == list(STRUCTURES)
    assert manifest["outputs"][1]["classes"] == list(VIEW_CLASSES)
    assert manifest["input"]["shape"] == [1, 1, 64, 64]
    assert manifest["export_check"]["onnxruntime_vs_pytorch_max_abs_diff"] <= 1e-4
    assert len(manifest["sha256"]) == 64 and manifest["parameters"] > 0 and manifest["flops_per_image"] > 0
    assert len(list((tiny_export / "validation").glob("*.npz"))) == manifest["validation_set"]["count"]


def test_mixed_precision_keeps_outputs_fp32_and_close(tiny_export: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_export / "model.onnx"))
    blocked = output_layers(model)
    assert any("Sigmoid" in n for n in blocked) and any("Softmax" in n for n in blocked)
    mixed = to_mixed_precision(model)
    fp16_inits = [i for i in mixed.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "no weight was converted to FP16"
    path = tmp_path / "fp16.onnx"
    onnx.save(mixed, str(path))
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    full = ort_session(tiny_export / "model.onnx").run(["masks", "view"], {"image": x})
    half = ort_session(path).run(["masks", "view"], {"image": x})
    assert half[0].dtype == np.float32 or half[0].dtype == np.float16
    assert np.abs(half[0].astype(np.float32) - full[0]).max() < 0.02


def test_export_refuses_to_overwrite_a_version(tiny_export: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "tools.export", str(tiny_export), "--out", str(tiny_export)],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "never overwritten" in result.stderr


def test_train_cli_rejects_a_recipe_that_cannot_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "tools.train", "--out", str(tmp_path), "--samples", "4", "--batch", "8"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--samples >= --batch" in result.stderr


def test_lateral_pedicle_targets_follow_the_prediction_order() -> None:
    """On a lateral the loss must not ask which pedicle is the left one: targets swap to the order the
    prediction fits better; on other views they never swap."""
    import torch

    from tools.train.train import order_pedicles

    left, right = STRUCTURES.index("pedicle_left"), STRUCTURES.index("pedicle_right")
    masks = torch.zeros(2, len(STRUCTURES), 8, 8)
    masks[:, left, :, :4] = 1.0  # target: left pedicle in the left half, right pedicle in the right half
    masks[:, right, :, 4:] = 1.0
    logits = torch.full((2, len(STRUCTURES), 8, 8), -8.0)
    logits[:, left, :, 4:] = 8.0  # prediction: the other way round
    logits[:, right, :, :4] = 8.0
    views = torch.tensor([VIEW_CLASSES.index("lateral"), VIEW_CLASSES.index("ap")])
    ordered = order_pedicles(logits, masks, views)
    assert torch.equal(ordered[0, left], masks[0, right]) and torch.equal(ordered[0, right], masks[0, left])
    assert torch.equal(ordered[1], masks[1])  # AP: the sides are visible, never swapped


def test_bottleneck_attention_starts_as_identity_and_sees_the_whole_image() -> None:
    """Global self-attention: a new block changes nothing; once trained, a cell's output depends on a
    cell at the far corner (a vertebra's level can follow from the sacrum or the last ribs)."""
    import torch

    from tools.train.model import GlobalAttention

    torch.manual_seed(0)
    block = GlobalAttention(channels=16, cells=8).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        torch.nn.init.normal_(block.out.weight)
        moved = x.clone()
        moved[0, :, 0, 0] += 5.0  # change the top-left cell only
        assert not torch.allclose(block(moved)[0, :, 7, 7], block(x)[0, :, 7, 7])
