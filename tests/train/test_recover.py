"""Fine-tuning starts from a shipped model: the weights recovered from its ONNX file give its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tools.export.export import ort_session
from tools.train.recover import load_exported_weights
from tools.train.train import Recipe, build_model

MODEL = Path(__file__).resolve().parents[2] / "engines" / "lumbar-resunet" / "0.2.0"


@pytest.mark.parametrize("attention", [False, True], ids=["same-architecture", "with-new-attention-block"])
def test_recovered_weights_reproduce_the_exported_model(attention: bool) -> None:
    """Within 1e-3 in probability (bfloat16 training, float32 export: folding reorders the sums), on a
    validation image of the model; a new attention block starts as the identity."""
    model = build_model(Recipe(attention=attention))
    assert load_exported_weights(model, MODEL, 256) == 44  # 40 convolutions and the view head's 2 x 2
    model.eval()
    image = np.load(sorted((MODEL / "validation").glob("*.npz"))[0])["image"]
    masks, view = ort_session(MODEL / "model.onnx").run(["masks", "view"], {"image": image})
    with torch.no_grad():
        logits, view_logits, _ = model(torch.from_numpy(image))
    assert np.abs(torch.sigmoid(logits).numpy() - masks).max() < 1e-3
    assert np.abs(torch.softmax(view_logits, dim=1).numpy() - view).max() < 1e-4


def test_batch_norms_stay_frozen_while_fine_tuning() -> None:
    model = build_model(Recipe())
    load_exported_weights(model, MODEL, 256)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and norms and not any(m.training for m in norms)
    before = norms[0].running_mean.clone()  # type: ignore[union-attr]
    model(torch.rand(2, 1, 256, 256))
    assert torch.equal(norms[0].running_mean, before)  # type: ignore[arg-type]


def test_a_model_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="has weights"):
        load_exported_weights(build_model(Recipe(base_channels=8)), MODEL, 256)
