"""Exact line integrals through convex primitives under a divergent (point-source) beam.

The phantom is a set of convex primitives (ellipsoids, elliptic cylinders, boxes, each optionally cut
by half-spaces). For every detector pixel the ray from the focal spot to the pixel centre is
intersected analytically with each primitive, so the projection of the 3D truth is exact: no voxel
grid, no sampling error, and masks come out of the same computation as the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Shape = Literal["ellipsoid", "cylinder", "box"]
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

# Chords shorter than this (grazing rays) do not mark a mask pixel.
MASK_MIN_CHORD_MM = 0.05


@dataclass(frozen=True)
class Plane:
    """Half-space {p : normal . (p - point) <= 0}, in the same frame as the primitive."""

    point: F64
    normal: F64


@dataclass(frozen=True)
class Primitive:
    """A convex solid. Local coordinates q map to the frame as p = centre + axes @ (half * q).

    ellipsoid: |q| <= 1; cylinder: q_x^2 + q_y^2 <= 1 and |q_z| <= 1; box: |q_i| <= 1.
    `mu_per_mm` is the attenuation added to what surrounds it (negative for gas or a cavity), and
    `structure` names the mask it marks (None: attenuation only; mu 0 and a name: a mask only).
    """

    shape: Shape
    centre: F64
    axes: F64
    half_mm: F64
    mu_per_mm: float
    structure: str | None = None
    local_bounds: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None = None
    planes: tuple[Plane, ...] = field(default=())

    def transformed(self, rotation: F64, translation: F64) -> Primitive:
        """The same solid after p -> rotation @ p + translation."""
        return Primitive(
            shape=self.shape,
            centre=rotation @ self.centre + translation,
            axes=rotation @ self.axes,
            half_mm=self.half_mm,
            mu_per_mm=self.mu_per_mm,
            structure=self.structure,
            local_bounds=self.local_bounds,
            planes=tuple(Plane(rotation @ p.point + translation, rotation @ p.normal) for p in self.planes),
        )

    def bounds(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        base = ((-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0))
        if self.local_bounds is None:
            return base
        return tuple(  # type: ignore[return-value]
            (max(lo, blo), min(hi, bhi)) for (lo, hi), (blo, bhi) in zip(self.local_bounds, base, strict=True)
        )

    def corners(self) -> F64:
        """The 8 corners of a box that contains the solid, in the frame (8 x 3)."""
        (x0, x1), (y0, y1), (z0, z1) = self.bounds()
        local = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
        return np.asarray(self.centre + (local * self.half_mm) @ self.axes.T, dtype=np.float64)


@dataclass(frozen=True)
class Detector:
    """A flat detector in the lab plane Z = 0, centred on the origin; X along columns, Y along rows."""

    rows: int
    cols: int
    pitch_mm: float

    @property
    def height_mm(self) -> float:
        return self.rows * self.pitch_mm

    @property
    def width_mm(self) -> float:
        return self.cols * self.pitch_mm

    def col_x(self) -> F64:
        return np.asarray((np.arange(self.cols) + 0.5) * self.pitch_mm - self.width_mm / 2, dtype=np.float64)

    def row_y(self) -> F64:
        return np.asarray((np.arange(self.rows) + 0.5) * self.pitch_mm - self.height_mm / 2, dtype=np.float64)

    def to_pixel(self, xy_mm: F64) -> F64:
        """Detector-plane mm (..., 2) -> continuous pixel coordinates (col, row), pixel centres at k."""
        out = np.empty_like(xy_mm)
        out[..., 0] = (xy_mm[..., 0] + self.width_mm / 2) / self.pitch_mm - 0.5
        out[..., 1] = (xy_mm[..., 1] + self.height_mm / 2) / self.pitch_mm - 0.5
        return out


def project_points(points: F64, source: F64) -> F64:
    """Central projection of lab points (N x 3) from `source` onto the plane Z = 0 -> (N x 2) mm."""
    pts = np.atleast_2d(points)
    t = -source[2] / (pts[:, 2] - source[2])
    return np.asarray(source[:2] + t[:, None] * (pts[:, :2] - source[:2]), dtype=np.float64)


def _pixel_box(prim: Primitive, det: Detector, source: F64) -> tuple[int, int, int, int] | None:
    xy = project_points(prim.corners(), source)
    pix = det.to_pixel(xy)
    c0 = max(int(np.floor(pix[:, 0].min())) - 1, 0)
    c1 = min(int(np.ceil(pix[:, 0].max())) + 2, det.cols)
    r0 = max(int(np.floor(pix[:, 1].min())) - 1, 0)
    r1 = min(int(np.ceil(pix[:, 1].max())) + 2, det.rows)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _slab(o: float, d: F32, lo: float, hi: float) -> tuple[F32, F32]:
    """Ray parameter interval where lo <= o + t d <= hi (d never exactly 0: nudged)."""
    d_safe = np.where(np.abs(d) < 1e-12, np.float32(1e-12), d)
    ta = (lo - o) / d_safe
    tb = (hi - o) / d_safe
    return np.minimum(ta, tb), np.maximum(ta, tb)


Box = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1


def intersect(a: Box, b: Box) -> Box | None:
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def chord_lengths(prim: Primitive, det: Detector, source: F64, within: Box | None = None) -> tuple[Box, F32] | None:
    """Length (mm) of every detector ray inside `prim`, over the pixel box the solid can reach."""
    box = _pixel_box(prim, det, source)
    if box is not None and within is not None:
        box = intersect(box, within)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    xs = det.col_x()[c0:c1].astype(np.float32)[None, :]
    ys = det.row_y()[r0:r1].astype(np.float32)[:, None]
    dx, dy = xs - np.float32(source[0]), ys - np.float32(source[1])
    ray_len = np.sqrt(dx * dx + dy * dy + np.float32(source[2] ** 2))

    # Local-from-frame linear map; rays are p(t) = S + t (P - S), t in [0, 1].
    inv = (prim.axes / prim.half_mm).T  # rows: local axes scaled
    o = inv @ (source - prim.centre)
    m_x = inv[:, 0].astype(np.float32)
    m_y = inv[:, 1].astype(np.float32)
    e = (-(inv @ source)).astype(np.float32)
    d = [xs * m_x[k] + ys * m_y[k] + e[k] for k in range(3)]

    t_in: F32 = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    t_out: F32 = np.ones((r1 - r0, c1 - c0), dtype=np.float32)
    quad_axes = {"ellipsoid": (0, 1, 2), "cylinder": (0, 1), "box": ()}[prim.shape]
    if quad_axes:
        a = sum(d[k] * d[k] for k in quad_axes)
        b = 2.0 * sum(np.float32(o[k]) * d[k] for k in quad_axes)
        c = np.float32(sum(o[k] ** 2 for k in quad_axes) - 1.0)
        disc = b * b - 4.0 * a * c
        parallel = a < 1e-12  # ray along a cylinder's axis: inside for all t, or never
        hit = (disc > 0) & ~parallel
        root = np.sqrt(np.where(hit, disc, 0.0))
        inv2a = 0.5 / np.where(parallel, np.float32(1.0), a)
        inside_always = parallel & (c <= 0)
        t1 = np.where(hit, (-b - root) * inv2a, np.where(inside_always, -2.0, 2.0))
        t2 = np.where(hit, (-b + root) * inv2a, np.where(inside_always, 2.0, -2.0))
        t_in = np.maximum(t_in, t1)
        t_out = np.minimum(t_out, t2)
    slab_axes = {"ellipsoid": (), "cylinder": (2,), "box": (0, 1, 2)}[prim.shape]
    bounds = prim.bounds()
    for k in range(3):
        if k in slab_axes or (prim.local_bounds is not None and bounds[k] != (-1.0, 1.0)):
            lo, hi = _slab(float(o[k]), d[k], bounds[k][0], bounds[k][1])
            t_in = np.maximum(t_in, lo)
            t_out = np.minimum(t_out, hi)
    for plane in prim.planes:
        # normal . (S + t (P - S) - point) <= 0  ->  base + t * slope <= 0
        base = float(plane.normal @ (source - plane.point))
        slope = xs * np.float32(plane.normal[0]) + ys * np.float32(plane.normal[1]) - np.float32(plane.normal @ source)
        slope_safe = np.where(np.abs(slope) < 1e-12, np.float32(1e-12), slope)
        t_cross = -base / slope_safe
        t_out = np.where(slope > 0, np.minimum(t_out, t_cross), t_out)
        t_in = np.where(slope < 0, np.maximum(t_in, t_cross), t_in)
        if base > 0:  # source outside and ray parallel: nothing inside
            t_out = np.where(np.abs(slope) < 1e-12, np.float32(-1.0), t_out)
    length = np.maximum(t_out - t_in, 0.0) * ray_len
    return box, length.astype(np.float32, copy=False)


def project(
    prims: list[Primitive],
    det: Detector,
    source: F64,
    roi: Box | None = None,
    full_frame: frozenset[str] | None = None,
) -> tuple[F32, dict[str, Bool]]:
    """Line integral of attenuation (unitless) per pixel and the projected mask of every structure.

    With `roi`, attenuation is computed only inside it (the exposed field: nothing outside reaches the
    detector), and so are the masks of structures not named in `full_frame`; the masks named there
    are projected over the whole detector, as truth needs to see what the field cut off.
    """
    total = np.zeros((det.rows, det.cols), dtype=np.float32)
    masks: dict[str, Bool] = {}
    for prim in prims:
        whole = prim.structure is not None and (full_frame is None or prim.structure in full_frame)
        result = chord_lengths(prim, det, source, None if whole else roi)
        if result is None:
            continue
        box, length = result
        if prim.mu_per_mm != 0.0:
            inner = box if roi is None else intersect(box, roi)
            if inner is not None:
                r0, r1, c0, c1 = inner
                sub = length[r0 - box[0] : r1 - box[0], c0 - box[2] : c1 - box[2]]
                total[r0:r1, c0:c1] += np.float32(prim.mu_per_mm) * sub
        if prim.structure is not None:
            mask = masks.get(prim.structure)
            if mask is None:
                mask = masks[prim.structure] = np.zeros((det.rows, det.cols), dtype=bool)
            r0, r1, c0, c1 = box
            mask[r0:r1, c0:c1] |= length > MASK_MIN_CHORD_MM
    return total, masks
