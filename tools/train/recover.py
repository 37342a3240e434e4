"""Start training from a shipped model: its PyTorch weights, recovered from the exported ONNX file.

Only model folders ship (engines/<model>/<version>/model.onnx); the training checkpoints that made
them are not kept. Export folds each BatchNorm into the convolution before it, so the recovered
network puts the folded weights into the convolution and makes the BatchNorm after it an identity
(mean 0, variance 1 - eps, scale 1) that carries the folded bias. In evaluation mode that is the
exported function exactly; fine-tuning keeps those BatchNorms frozen (`ResUNet.frozen_batch_norm`),
since batch statistics would re-normalise activations the folded weights already scale. A new
attention block's BatchNorm is frozen too, at its initial statistics (mean 0, variance 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import numpy_helper
from torch import nn

from tools.train.model import ExportWrapper, ResUNet

F32 = NDArray[np.float32]


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").exists()


def _convs_in_call_order(model: ResUNet, size: int) -> list[tuple[str, nn.Conv2d]]:
    """The convolutions the exported graph runs, in the order it runs them (auxiliary heads and a
    bottleneck attention block absent from older models are not in the graph)."""
    names = {module: name for name, module in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ExportWrapper(model)(torch.zeros(1, 1, size, size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [(n, m) for n, m in order if not n.startswith(("aux_heads", "attention"))]


def _batch_norm_after(model: ResUNet) -> dict[str, nn.BatchNorm2d]:
    """conv name -> the BatchNorm that follows it (and was folded into it at export)."""
    modules = dict(model.named_modules())
    pairs: dict[str, nn.BatchNorm2d] = {}
    for name, module in modules.items():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("skip.0", "skip.1")):
            if name.endswith(conv) and isinstance(module, nn.Conv2d):
                partner = modules.get(name[: -len(conv)] + bn)
                if isinstance(partner, nn.BatchNorm2d):
                    pairs[name] = partner
    return pairs


def load_exported_weights(model: ResUNet, folder: Path, size: int) -> int:
    """Copy the weights of the exported model in `folder` into `model` (same architecture, with or
    without the attention block, which then keeps its identity initialisation); returns the number of
    tensors copied. Raises ValueError when the graph and the network do not line up."""
    manifest = json.loads((folder / "manifest.json").read_text())
    graph = onnx.load(str(folder / manifest["file"])).graph
    tensors: dict[str, F32] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    graph_convs = [n for n in graph.node if n.op_type == "Conv"]
    convs = _convs_in_call_order(model, size)
    if len(graph_convs) != len(convs):
        raise ValueError(f"{folder}: {len(graph_convs)} convolutions in the graph, {len(convs)} in the network")
    folded = _batch_norm_after(model)
    copied = 0
    with torch.no_grad():
        for node, (name, conv) in zip(graph_convs, convs, strict=True):
            weight = tensors[node.input[1]].copy()
            bias = tensors[node.input[2]].copy() if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
            if tuple(weight.shape) != tuple(conv.weight.shape):
                wanted = tuple(conv.weight.shape)
                raise ValueError(f"{folder}: {node.name} has weights {weight.shape}, {name} wants {wanted}")
            conv.weight.copy_(torch.from_numpy(weight))
            if name in folded:
                bn = folded[name]
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(bias))
                assert bn.running_mean is not None and bn.running_var is not None  # tracked statistics
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            elif conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias))
            else:
                raise ValueError(f"{folder}: {name} has no bias and no BatchNorm after it")
            copied += 1
        state = model.state_dict()
        for key, value in tensors.items():  # named tensors outside the convolutions: the view head
            if key.startswith("model.") and key[len("model.") :] in state and "view_head" in key:
                target = state[key[len("model.") :]]
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(f"{folder}: {key} has shape {value.shape}, the network {tuple(target.shape)}")
                target.copy_(torch.from_numpy(value.copy()))
                copied += 1
    model.frozen_batch_norm = True
    model.train(model.training)
    return copied
