"""The model's outputs as anatomy: per-structure probability maps with the geometry to measure them.

Measurements work in network pixels (x = column, y = row) and convert to millimetres in the plane of
the spine with `mm_per_px`. Edges and extents are found on the probability maps at sub-pixel
precision (bilinear upsampling of a small window around the structure), because one network pixel
is about 1.5 mm and several QC thresholds are a few millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.imaging.preprocess import Transform
from edge.qc.structures import STRUCTURES

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

THRESHOLD: Final = 0.5
UPSAMPLE: Final = 4  # sub-pixel grid for extents: a quarter of a network pixel (~0.4 mm)
MIN_AREA_PX: Final = 6.0  # a structure smaller than this (network pixels) counts as absent


@dataclass(frozen=True)
class Box:
    """Axis-aligned extent in network pixels (pixel centres at integers; edges at half pixels)."""

    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True)
class Segmentation:
    probabilities: F32  # structures x size x size, sigmoid outputs in STRUCTURES order
    view_probabilities: F32  # VIEW_CLASSES order
    transform: Transform
    mm_per_px: float  # millimetres (spine plane) per network pixel

    def prob(self, name: str) -> F32:
        return np.asarray(self.probabilities[STRUCTURES.index(name)], dtype=np.float32)

    def union(self, names: tuple[str, ...] | list[str]) -> F32:
        return np.asarray(np.max(np.stack([self.prob(n) for n in names]), axis=0), dtype=np.float32)

    def area(self, name: str) -> float:
        return float((self.prob(name) > THRESHOLD).sum())

    def present(self, name: str) -> bool:
        return self.area(name) >= MIN_AREA_PX

    def centroid(self, name: str, within: NDArray[np.bool_] | None = None) -> F64 | None:
        """Probability-weighted centre of the mask (optionally inside a region), or None if absent."""
        p = self.prob(name)
        mask = p > THRESHOLD
        if within is not None:
            mask = mask & within
        if np.count_nonzero(mask) < 2:
            return None
        weights = np.where(mask, p, np.float32(0.0)).astype(np.float64)  # projections: no pixel lists
        total = float(weights.sum())
        x = float(weights.sum(axis=0) @ np.arange(weights.shape[1], dtype=np.float64)) / total
        y = float(weights.sum(axis=1) @ np.arange(weights.shape[0], dtype=np.float64)) / total
        return np.array([x, y])


def _fine_grid(
    prob: F32, region: NDArray[np.bool_] | None, factor: int
) -> tuple[NDArray[np.bool_], F64, F64] | None:
    """The thresholded, bilinearly interpolated probability on a sub-pixel grid over the mask's
    bounding box (plus a pixel), with the grid's x and y coordinates; None when the mask is empty."""
    mask = prob > THRESHOLD if region is None else (prob > THRESHOLD) & region
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 1, prob.shape[0] - 1)
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 1, prob.shape[1] - 1)
    if r1 - r0 < 1 or c1 - c0 < 1:  # a one-pixel-wide strip at the border: the pixel itself
        single = np.zeros((1, 1), dtype=bool)
        single[0, 0] = True
        return single, cols[[0]].astype(np.float64), rows[[0]].astype(np.float64)
    window = prob[r0 : r1 + 1, c0 : c1 + 1].astype(np.float32)  # float32: probabilities need no more
    if region is not None:
        window = np.where(region[r0 : r1 + 1, c0 : c1 + 1], window, np.float32(0.0))
    ys = np.arange(r0, r1 + 1e-9, 1.0 / factor)
    xs = np.arange(c0, c1 + 1e-9, 1.0 / factor)
    fy, fx = ys - r0, xs - c0
    iy, ix = np.minimum(fy.astype(int), window.shape[0] - 2), np.minimum(fx.astype(int), window.shape[1] - 2)
    ty, tx = (fy - iy).astype(np.float32)[:, None], (fx - ix).astype(np.float32)[None, :]
    # separable: interpolate between rows first (factor x fewer products than four corner gathers)
    between_rows = window[iy] * (1 - ty) + window[iy + 1] * ty
    fine = between_rows[:, ix] * (1 - tx) + between_rows[:, ix + 1] * tx
    return fine > THRESHOLD, xs, ys


def fine_points(prob: F32, region: NDArray[np.bool_] | None = None, factor: int = UPSAMPLE) -> F64:
    """Coordinates (network pixels) of a sub-pixel grid where the bilinearly interpolated probability
    exceeds the threshold: the mask's shape at a quarter-pixel resolution."""
    grid = _fine_grid(prob, region, factor)
    if grid is None:
        return np.zeros((0, 2))
    inside, xs, ys = grid
    yy, xx = np.nonzero(inside)
    return np.stack([xs[xx], ys[yy]], axis=1)


def fine_box(prob: F32, region: NDArray[np.bool_] | None = None) -> Box | None:
    """The extent of `fine_points` (without listing them)."""
    grid = _fine_grid(prob, region, UPSAMPLE)
    if grid is None:
        return None
    inside, xs, ys = grid
    cols, rows = np.flatnonzero(inside.any(axis=0)), np.flatnonzero(inside.any(axis=1))
    if len(cols) == 0:
        return None
    half = 0.5 / UPSAMPLE
    x0, x1, y0, y1 = xs[cols[0]], xs[cols[-1]], ys[rows[0]], ys[rows[-1]]
    return Box(float(x0 - half), float(x1 + half), float(y0 - half), float(y1 + half))


def field_box(seg: Segmentation) -> Box | None:
    """The exposed field: edges where the field's row and column occupancy crosses one half, so that
    a stray pixel or a rounded corner does not move an edge."""
    p = seg.prob("field")
    mask = p > THRESHOLD
    if mask.sum() < 100:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mid_rows = slice(int(np.percentile(rows, 25)), int(np.percentile(rows, 75)) + 1)
    mid_cols = slice(int(np.percentile(cols, 25)), int(np.percentile(cols, 75)) + 1)
    col_profile = p[mid_rows].mean(axis=0).astype(np.float64)
    row_profile = p[:, mid_cols].mean(axis=1).astype(np.float64)
    x0, x1 = _crossings(col_profile)
    y0, y1 = _crossings(row_profile)
    return Box(x0, x1, y0, y1)


def _crossings(profile: F64) -> tuple[float, float]:
    """First rising and last falling crossing of the threshold, interpolated, as pixel-edge positions."""
    above = np.flatnonzero(profile > THRESHOLD)
    first, last = int(above[0]), int(above[-1])
    lo = first - 0.5
    if first > 0:
        a, b = profile[first - 1], profile[first]
        lo = float(first - 1 + (THRESHOLD - a) / max(b - a, 1e-9))
    hi = last + 0.5
    if last < len(profile) - 1:
        a, b = profile[last], profile[last + 1]
        hi = float(last + (a - THRESHOLD) / max(a - b, 1e-9))
    return float(lo), float(hi)
