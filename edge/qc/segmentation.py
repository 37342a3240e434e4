"""The model's outputs as anatomy: per-structure probability maps with the geometry to measure them.

Measurements work in network pixels (x = column, y = row) and convert to millimetres in the plane of
the spine with `mm_per_px`. Edges and extents are found on the probability maps at sub-pixel
precision (bilinear upsampling of a small window around the structure), because one network pixel
is about 1.5 mm and several QC thresholds are a few millimetres.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
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
    # each structure's thresholded mask inside its bounding box, found once: one image asks for the
    # same structure dozens of times, and most structures cover a small part of the square
    _extents: dict[str, tuple[NDArray[np.bool_], slice, slice] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _unions: dict[tuple[str, ...], F32] = field(default_factory=dict, init=False, repr=False, compare=False)
    _union_boxes: dict[tuple[str, ...], Box | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def prob(self, name: str) -> F32:
        return np.asarray(self.probabilities[STRUCTURES.index(name)], dtype=np.float32)

    def union(self, names: tuple[str, ...] | list[str]) -> F32:
        """The structures' combined probability (read-only; found once per image and set of names)."""
        key = tuple(names)
        if key not in self._unions:
            union = np.asarray(np.max(np.stack([self.prob(n) for n in key]), axis=0), dtype=np.float32)
            union.flags.writeable = False
            self._unions[key] = union
        return self._unions[key]

    def union_box(self, names: tuple[str, ...] | list[str]) -> Box | None:
        """`fine_box` of the union: the extent that coverage, centring and collimation all measure."""
        key = tuple(names)
        if key not in self._union_boxes:
            self._union_boxes[key] = fine_box(self.union(key))
        return self._union_boxes[key]

    def extent(self, name: str) -> tuple[NDArray[np.bool_], slice, slice] | None:
        """The structure's mask cut to its bounding box, and the box's rows and columns; None if empty."""
        if name not in self._extents:
            mask = self.prob(name) > THRESHOLD
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows) == 0:
                self._extents[name] = None
            else:
                box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
                self._extents[name] = (mask[box], *box)
        return self._extents[name]

    def touches_field(self, name: str) -> bool:
        """The structure's box reaches the field's box (within a pixel): the field may cut it, and a cut
        structure is partial for a reason the coverage items judge."""
        found, field_found = self.extent(name), self.extent("field")
        if found is None or field_found is None:
            return False
        _, rows, cols = found
        _, f_rows, f_cols = field_found
        touches_rows = rows.start <= f_rows.start + 1 or rows.stop >= f_rows.stop - 1
        return bool(touches_rows or cols.start <= f_cols.start + 1 or cols.stop >= f_cols.stop - 1)

    def area(self, name: str) -> float:
        found = self.extent(name)
        return 0.0 if found is None else float(np.count_nonzero(found[0]))

    def present(self, name: str) -> bool:
        return self.area(name) >= MIN_AREA_PX

    def centroid(self, name: str, within: NDArray[np.bool_] | None = None) -> F64 | None:
        """Probability-weighted centre of the mask (optionally inside a region), or None if absent."""
        found = self.extent(name)
        if found is None:
            return None
        mask, rows, cols = found
        if within is not None:
            mask = mask & within[rows, cols]
        if np.count_nonzero(mask) < 2:
            return None
        p = self.probabilities[STRUCTURES.index(name)][rows, cols]
        weights = np.where(mask, p, np.float32(0.0)).astype(np.float64)  # projections: no pixel lists
        total = float(weights.sum())
        x = float(weights.sum(axis=0) @ np.arange(cols.start, cols.stop, dtype=np.float64)) / total
        y = float(weights.sum(axis=1) @ np.arange(rows.start, rows.stop, dtype=np.float64)) / total
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
    # separable: interpolate between rows first (factor x fewer products than four corner gathers)
    fine = _refine(_refine(window, factor, axis=0), factor, axis=1)
    return fine > THRESHOLD, xs, ys


def _refine(window: F32, factor: int, axis: int) -> F32:
    """Linear interpolation at 1/factor steps along `axis`, ends included: (n - 1) * factor + 1 samples,
    each interval's `factor` samples computed together (broadcast, no gather)."""
    t = _steps(factor)
    moved = (window if axis == 0 else window.T)[:, None, :]
    out = np.empty(((moved.shape[0] - 1) * factor + 1, moved.shape[-1]), dtype=np.float32)
    out[:-1] = (moved[:-1] * (1 - t) + moved[1:] * t).reshape(-1, moved.shape[-1])
    out[-1] = moved[-1, 0]  # the last interval's end
    return out if axis == 0 else out.T


@functools.lru_cache(maxsize=8)
def _steps(factor: int) -> F32:
    """The interpolation weights within one interval: 0, 1/factor, ... (shaped to broadcast)."""
    steps = (np.arange(factor, dtype=np.float32) / np.float32(factor)).reshape((1, factor, 1))
    steps.flags.writeable = False
    return steps


def fine_points(prob: F32, region: NDArray[np.bool_] | None = None, factor: int = UPSAMPLE) -> F64:
    """Coordinates (network pixels) of a sub-pixel grid where the bilinearly interpolated probability
    exceeds the threshold: the mask's shape at a quarter-pixel resolution."""
    grid = _fine_grid(prob, region, factor)
    if grid is None:
        return np.zeros((0, 2))
    inside, xs, ys = grid
    yy, xx = np.nonzero(inside)
    points = np.empty((len(xx), 2))
    points[:, 0], points[:, 1] = xs[xx], ys[yy]
    return points


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
    a stray pixel or a rounded corner does not move an edge. None when there is no such field (a
    scattered field mask whose rows and columns never reach one half)."""
    p = seg.prob("field")
    mask = p > THRESHOLD
    if mask.sum() < 100:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mid_rows = slice(int(np.percentile(rows, 25)), int(np.percentile(rows, 75)) + 1)
    mid_cols = slice(int(np.percentile(cols, 25)), int(np.percentile(cols, 75)) + 1)
    col_profile = p[mid_rows].mean(axis=0).astype(np.float64)
    row_profile = p[:, mid_cols].mean(axis=1).astype(np.float64)
    across, along = _crossings(col_profile), _crossings(row_profile)
    if across is None or along is None:
        return None
    return Box(*across, *along)


def _crossings(profile: F64) -> tuple[float, float] | None:
    """First rising and last falling crossing of the threshold, interpolated, as pixel-edge positions."""
    above = np.flatnonzero(profile > THRESHOLD)
    if len(above) == 0:
        return None
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
