"""Batched training augmentation: geometry, shutters, and what real radiographs vary in.

Every source (phantom, CT DRRs, real films) arrives as the appliance's network input (normalised
0..1, zero padding outside the image) with soft masks and supervision maps (`known`: 1 where a
channel's target is known). Augmentation changes image, masks and supervision together, and ends
with the appliance's own intensity normalisation (1st..99th percentile of the image area), so the
network always sees inputs shaped like those `edge.imaging.preprocess` makes.

What is varied, and why (the shipped model failed on each):
- geometry: zoom in and out (tight and wide fields), shift, small rotation; laterals mirrored
  (a lateral may face either way; nothing else may be mirrored: left and right are labels);
- electronic shutters, black or white, that cut the field (the field and the anatomy under a
  shutter are not visible: their targets are cleared, and the field is known to be absent there);
- vendor processing: tone curves, gamma, multi-scale contrast (edge enhancement at two scales,
  range compression), blur and sharpening;
- noise (quantum-like and electronic), anti-scatter grid lines, burned-in text and markers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor
from torch.nn import functional as F

from edge.imaging.preprocess import NORMALISE_PERCENTILES
from edge.qc.structures import STRUCTURES, VIEW_CLASSES

FIELD: Final = STRUCTURES.index("field")
LATERAL: Final = VIEW_CLASSES.index("lateral")


@dataclass(frozen=True)
class AugmentSettings:
    geometry: float = 0.8  # probability of a random zoom / shift / rotation
    zoom: tuple[float, float] = (0.7, 1.3)  # > 1 zooms in
    rotation_deg: float = 8.0
    shift: float = 0.12  # fraction of the image
    lateral_mirror: float = 0.5
    shutter: float = 0.3
    appearance: float = 0.9  # probability of tone / contrast processing
    noise_sd: float = 0.05
    grid_lines: float = 0.15
    text: float = 0.35
    blur: float = 0.25


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _chance(n: int, p: float | Tensor, g: torch.Generator) -> Tensor:
    """N draws, each True with probability p (one for all, or one per sample)."""
    return torch.rand(n, generator=g) < p


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    row, column = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), row, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), column, groups=c)


def geometry(
    images: Tensor, masks: Tensor, known: Tensor, valid: Tensor, views: Tensor, s: AugmentSettings, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random affine per sample (identity for some). Outside the source, images and masks are empty
    and each channel is known exactly where it was supervised at all (nothing lies there)."""
    n = images.shape[0]
    apply = _chance(n, s.geometry, g)
    zoom = torch.where(apply, torch.exp(_uniform(n, math.log(s.zoom[0]), math.log(s.zoom[1]), g)), torch.ones(n))
    angle = torch.where(apply, _uniform(n, -s.rotation_deg, s.rotation_deg, g) * math.pi / 180, torch.zeros(n))
    tx = torch.where(apply, _uniform(n, -2 * s.shift, 2 * s.shift, g), torch.zeros(n))
    ty = torch.where(apply, _uniform(n, -2 * s.shift, 2 * s.shift, g), torch.zeros(n))
    mirror = (views == LATERAL) & _chance(n, s.lateral_mirror, g)
    sx = torch.where(mirror, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * sx, -sin, tx], dim=1), torch.stack([sin * sx, cos, ty], dim=1)], dim=1
    ).to(images.dtype)
    if not bool((apply | mirror).any()):
        return images, masks, known, valid
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)

    def warp(x: Tensor) -> Tensor:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    inside = warp(torch.ones_like(images))
    labelled = (known.flatten(2).amax(dim=2) > 0).to(known.dtype)[:, :, None, None]
    known_out = (warp(known) > 0.5).to(known.dtype) * inside + (1 - inside) * labelled
    return warp(images), warp(masks), (known_out > 0.5).to(known.dtype), (warp(valid) > 0.5).to(valid.dtype)


def shutters(
    images: Tensor, masks: Tensor, known: Tensor, valid: Tensor, s: AugmentSettings, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Electronic shutters: a black or white border that hides part of the image on up to four sides."""
    n, _, size, _ = images.shape
    apply = _chance(n, s.shutter, g)
    if not bool(apply.any()):
        return images, masks, known
    images, masks, known = images.clone(), masks.clone(), known.clone()
    coords = torch.arange(size, dtype=images.dtype)
    for i in torch.nonzero(apply).flatten().tolist():
        rows = torch.nonzero(valid[i, 0].amax(dim=1) > 0).flatten()
        cols = torch.nonzero(valid[i, 0].amax(dim=0) > 0).flatten()
        if rows.numel() < 16 or cols.numel() < 16:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        cut = _uniform(4, 0.0, 0.22, g) * _chance(4, 0.6, g)
        top, bottom = r0 + cut[0] * (r1 - r0), r1 - cut[1] * (r1 - r0)
        left, right = c0 + cut[2] * (c1 - c0), c1 - cut[3] * (c1 - c0)
        inside = ((coords[:, None] >= top) & (coords[:, None] < bottom) & (coords[None, :] >= left)) & (
            coords[None, :] < right
        )
        hidden = ~inside & (valid[i, 0] > 0)
        images[i, 0][hidden] = 0.0 if bool(torch.rand(1, generator=g) < 0.5) else 1.0
        masks[i][:, ~inside] = 0.0
        known[i, FIELD][hidden] = 1.0
    return images, masks, known


def appearance(
    images: Tensor, valid: Tensor, s: AugmentSettings, g: torch.Generator, chance: Tensor | None = None
) -> Tensor:
    """Tone, processing, noise, grid lines and burned-in text, inside the image area. `chance`: per
    sample, the probability of tone and processing changes (default `s.appearance` for all)."""
    n, _, size, _ = images.shape
    x = images.clamp(0, 1)
    apply = _chance(n, s.appearance if chance is None else chance, g)[:, None, None, None]
    # tone: gamma, then an S-curve (or its inverse) of random strength
    gamma = torch.exp(_uniform(n, math.log(0.6), math.log(1.7), g))[:, None, None, None]
    toned = x.clamp(1e-4, 1) ** gamma
    k = _uniform(n, -3.0, 5.0, g)[:, None, None, None]
    s_curve = torch.sigmoid(k * (toned - 0.5))
    lo, hi = torch.sigmoid(-k * 0.5), torch.sigmoid(k * 0.5)
    curved = torch.where(k.abs() > 0.1, (s_curve - lo) / (hi - lo), toned)
    # multi-scale processing: fine and coarse detail bands boosted or damped
    fine_sigma, coarse_sigma = float(_uniform(1, 1.0, 2.5, g)), float(_uniform(1, 6.0, 24.0, g))
    fine, coarse = _gaussian_blur(curved, fine_sigma), _gaussian_blur(curved, coarse_sigma)
    a_fine = _uniform(n, -0.4, 1.5, g)[:, None, None, None]
    a_coarse = _uniform(n, -0.6, 1.0, g)[:, None, None, None]
    processed = curved + a_fine * (curved - fine) + a_coarse * (fine - coarse)
    blurred = _chance(n, s.blur, g)[:, None, None, None]
    processed = torch.where(blurred, _gaussian_blur(processed, float(_uniform(1, 0.6, 1.6, g))), processed)
    x = torch.where(apply, processed, x)
    # noise: quantum-like (larger where the detector saw less, i.e. in bright bone) plus electronic
    sd = _uniform(n, 0.0, s.noise_sd, g)[:, None, None, None]
    x = x + torch.randn(x.shape, generator=g) * sd * (0.5 + x.clamp(0, 1))
    # anti-scatter grid lines: a fine stripe pattern (aliased at the network's pixel pitch)
    lines = _chance(n, s.grid_lines, g)
    if bool(lines.any()):
        coords = torch.arange(size, dtype=x.dtype)
        period = _uniform(n, 2.1, 7.0, g)[:, None]
        phase = _uniform(n, 0, 2 * math.pi, g)[:, None]
        wave = torch.sin(2 * math.pi * coords[None, :] / period + phase) * _uniform(n, 0.01, 0.06, g)[:, None]
        vertical = _chance(n, 0.5, g)[:, None, None]
        pattern = torch.where(vertical, wave[:, None, :].expand(n, size, size), wave[:, :, None].expand(n, size, size))
        x = x + (pattern * lines[:, None, None])[:, None]
    x = _burned_in_text(x, valid, s, g)
    return x * valid


def _burned_in_text(x: Tensor, valid: Tensor, s: AugmentSettings, g: torch.Generator) -> Tensor:
    """Side markers and annotation text: small bright (or dark) blocks of strokes near the edges."""
    n = x.shape[0]
    apply = _chance(n, s.text, g)
    if not bool(apply.any()):
        return x
    x = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        rows = torch.nonzero(valid[i, 0].amax(dim=1) > 0).flatten()
        cols = torch.nonzero(valid[i, 0].amax(dim=0) > 0).flatten()
        if rows.numel() < 32 or cols.numel() < 32:
            continue
        value = 1.0 if bool(torch.rand(1, generator=g) < 0.8) else 0.0
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            h = int(torch.randint(3, 10, (1,), generator=g))
            w = int(torch.randint(4, 40, (1,), generator=g))
            near_top = bool(torch.rand(1, generator=g) < 0.5)
            band = max(2, int(0.15 * rows.numel()))
            r_lo = int(rows[0]) if near_top else int(rows[-1]) - band
            r = r_lo + int(torch.randint(0, max(1, band - h), (1,), generator=g))
            c = int(cols[0]) + int(torch.randint(0, max(1, cols.numel() - w), (1,), generator=g))
            block = torch.rand(h, w, generator=g) < 0.55  # strokes, not a solid rectangle
            region = x[i, 0, r : r + h, c : c + w]
            hh, ww = region.shape
            region[block[:hh, :ww]] = value
    return x


def renormalise(images: Tensor, valid: Tensor) -> Tensor:
    """The appliance's normalisation (edge.imaging.preprocess.normalise) over each image's area."""
    lo_q, hi_q = (p / 100.0 for p in NORMALISE_PERCENTILES)
    out = torch.zeros_like(images)
    for i in range(images.shape[0]):
        area = valid[i, 0] > 0
        values = images[i, 0][area]
        if values.numel() < 16:
            continue
        lo, hi = torch.quantile(values, torch.tensor([lo_q, hi_q], dtype=values.dtype))
        out[i, 0][area] = ((values - lo) / torch.clamp(hi - lo, min=1e-6)).clamp(0, 1)
    return out


def augment_batch(
    images: Tensor,
    masks: Tensor,
    known: Tensor,
    valid: Tensor,
    views: Tensor,
    g: torch.Generator,
    settings: AugmentSettings | None = None,
    appearance_chance: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """images N x 1 x S x S (network input), masks and known N x C x S x S, valid N x 1 x S x S;
    `appearance_chance` per sample (real films need less vendor randomisation than renders)."""
    s = settings or AugmentSettings()
    images, masks, known, valid = geometry(images, masks, known, valid, views, s, g)
    images, masks, known = shutters(images, masks, known, valid, s, g)
    images = appearance(images, valid, s, g, appearance_chance)
    return renormalise(images, valid), masks, known
