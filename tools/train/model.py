"""The segmentation network: a residual U-Net with squeeze-excitation on the skips, deep supervision
while training, and a small view head on the bottleneck.

Only operators that ONNX and TensorRT handle well: Conv, BatchNorm (folded at export), ReLU, MaxPool,
Resize (bilinear), Concat, GlobalAveragePool, Gemm, Sigmoid, Softmax, Mul.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


class SqueezeExcite(nn.Module):
    """Channel attention on a skip connection: which features of the encoder matter here."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class GlobalAttention(nn.Module):
    """Self-attention over the bottleneck's cells, with learnt positions: every cell sees the whole image.
    A vertebra's level follows from where the sacrum and the last ribs are, often farther away than a
    convolution's reach; on real films the model without it shifted whole chains of levels by one.
    Starts as the identity (zero output projection), so it only adds what training finds useful."""

    def __init__(self, channels: int, cells: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.position = nn.Parameter(torch.zeros(1, channels, cells, cells))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.norm = nn.BatchNorm2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x + self.position)).reshape(n, 3, self.heads, d, h * w).unbind(1)
        weights = torch.softmax(torch.matmul(q.transpose(-2, -1), k) * (d**-0.5), dim=-1)  # n, heads, hw, hw
        attended = torch.matmul(v, weights.transpose(-2, -1)).reshape(n, c, h, w)
        out: Tensor = x + self.out(attended)
        return out

    def matmul_flops(self, cells: int, channels: int) -> float:
        """The two attention products (2 x cells^2 x channels multiply-accumulates each)."""
        return 2.0 * 2.0 * cells**4 * channels


class ResUNet(nn.Module):
    def __init__(
        self, n_structures: int, n_views: int, base: int = 16, depth: int = 5, attention_cells: int = 0
    ) -> None:
        """`attention_cells`: the bottleneck's side in cells (input size / 2^(depth-1)) to add global
        self-attention there; 0 for none (models up to 0.2.0)."""
        super().__init__()
        widths = [base * 2**i for i in range(depth)]
        self.widths = widths
        self.attention = GlobalAttention(widths[-1], attention_cells) if attention_cells else None
        self.encoders = nn.ModuleList([ResidualBlock(1 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
        self.skips = nn.ModuleList([SqueezeExcite(w) for w in widths[:-1]])
        self.reduce = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(depth - 1)])
        self.decoders = nn.ModuleList([ResidualBlock(2 * widths[i], widths[i]) for i in range(depth - 1)])
        self.head = nn.Conv2d(widths[0], n_structures, 1)
        # deep supervision at 1/2 and 1/4 resolution (training only)
        self.aux_heads = nn.ModuleList([nn.Conv2d(widths[i], n_structures, 1) for i in (1, 2)])
        self.view_head = nn.Sequential(nn.Linear(widths[-1], 64), nn.ReLU(), nn.Linear(64, n_views))
        # BatchNorms stay in evaluation mode while training (weights recovered from an exported model
        # carry the folded statistics: tools/train/recover.py)
        self.frozen_batch_norm = False

    def train(self, mode: bool = True) -> ResUNet:
        super().train(mode)
        if self.frozen_batch_norm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Returns mask logits (N x C x H x W), view logits (N x V) and auxiliary mask logits."""
        features = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        if self.attention is not None:
            x = self.attention(x)
        view = self.view_head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        aux: list[Tensor] = []
        for i in reversed(range(len(self.decoders))):
            x = F.interpolate(self.reduce[i](x), scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.decoders[i](torch.cat([x, self.skips[i](features[i])], dim=1))
            if i in (1, 2):
                aux.append(self.aux_heads[i - 1](x))
        return self.head(x), view, aux


class ExportWrapper(nn.Module):
    """What ships: probabilities, named outputs, no auxiliary heads."""

    def __init__(self, model: ResUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        masks, view, _ = self.model(image)
        return torch.sigmoid(masks), torch.softmax(view, dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_flops(model: nn.Module, size: int) -> float:
    """Multiply-accumulates x 2 of the convolutions and linear layers for one size x size image."""
    total = 0.0
    hooks = []

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2.0 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * output.numel()
        elif isinstance(module, GlobalAttention):
            total += module.matmul_flops(int(output.shape[-1]), int(output.shape[1]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | GlobalAttention):
            hooks.append(m.register_forward_hook(conv_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
