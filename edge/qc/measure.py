"""Measurements of a radiograph from its segmentation and DICOM metadata: pure functions, no I/O.

Every QC item of the standard has one measurement here, in the item's own unit (millimetres in the
plane of the spine, degrees, ratios). Judging against thresholds happens in `judge`; this module only
says what the image shows. Where a quantity cannot be seen directly on the masks it is measured
through what moves with it, and the detail says so: the two halves of the posterior vertebral wall
on a lateral through the left and right pedicles they sit on; the facet joint planes on an oblique
through the estimated obliquity against population facet orientations; double endplates on a
lateral on the image's own pixels (edge_profile), because 2 mm is about one network pixel.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge.imaging.radiograph import ExposureTags
from edge.qc.segmentation import THRESHOLD, Box, Segmentation, fine_points
from edge.qc.structures import LUMBAR_LEVELS, REQUIRED_STRUCTURES, VERTEBRAL_LEVELS, View

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

# A structure whose mask comes within this distance of the field edge is cut by it: the model only
# ever sees the exposed part, so a cut structure ends on the edge.
EDGE_TOLERANCE_PX: Final = 0.75
# A body mask taller than this many times its neighbours' median carries a neighbour's bone too.
MAX_BODY_HEIGHT_RATIO: Final = 1.5
# Vertebrae come with pedicles and spinous processes: on every phantom development image at least
# 137 and 52 network pixels of them per lumbar body were found; a quarter of that is required.
MIN_PEDICLE_PX_PER_BODY: Final = 30.0
MIN_SPINOUS_PX_PER_BODY: Final = 12.0
# Neighbouring vertebrae are spaced evenly to within this ratio on any lumbar radiograph.
MAX_SPACING_RATIO: Final = 1.6
# Where along a body's axis (in body heights from its centre, negative = above) the pedicles sit,
# and where its spinous process projects on an AP view (the process slopes down behind the body).
PEDICLE_BAND: Final = (-0.6, 0.45)
SPINOUS_BAND: Final = (-0.3, 0.8)
DISC_JOINTS: Final = ("L1-L2", "L2-L3", "L3-L4", "L4-L5")
FACET_JOINTS: Final = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")


@dataclass(frozen=True)
class Measurement:
    item: str
    value: float | None  # None: could not be measured (the judge calls the item indeterminate)
    unit: str
    detail: dict[str, object] = field(default_factory=dict)  # for people and the payload; the judge never reads it
    reason: str = ""  # why the value is None
    cut: bool = False  # the structure ends on the field edge: the item fails whatever its margin


@dataclass(frozen=True)
class Context:
    """What a measurement may use besides the masks."""

    view: View
    oblique_side: str  # "left"/"right": the side an oblique demonstrates ("" for AP/lateral)
    exposure: ExposureTags
    clipped_fraction: float | None  # share of anatomy pixels at the detector's limits
    target_exposure_index: float | None  # the site's target for this view, if configured
    image: F32 | None = None  # display pixels, for the measurements that need the detector's resolution
    image_spacing_mm: float | None = None  # millimetres per image pixel (spine plane)


class Spine:
    """The vertebral bodies found on the image, ordered, and the local frame of the spine."""

    def __init__(self, seg: Segmentation) -> None:
        self.seg = seg
        self._along_cache: dict[str, tuple[F64, float]] = {}
        self.centres: dict[str, F64] = {}
        self.points: dict[str, F64] = {}
        for level in VERTEBRAL_LEVELS:
            name = f"body_{level}"
            if seg.present(name):
                c = seg.centroid(name)
                if c is not None:
                    self.centres[level] = c
                    self.points[level] = fine_points(seg.prob(name))
        lumbar = [lv for lv in LUMBAR_LEVELS if lv in self.centres]
        if len(lumbar) >= 2:
            pts = np.stack([self.centres[lv] for lv in lumbar])
            slope = np.polyfit(pts[:, 1], pts[:, 0], 1)[0]  # x as a function of y
            axis = np.array([slope, 1.0])
            self.axis: F64 = axis / np.linalg.norm(axis)
        else:
            self.axis = np.array([0.0, 1.0])
        self.across: F64 = np.array([self.axis[1], -self.axis[0]])  # +x side

    def implausible(self) -> str:
        """Why these masks are not a lumbar spine ("" when they may be): too few bodies, or bodies
        without the pedicles and spinous processes every lumbar vertebra has (a chest, a knee)."""
        levels = self.lumbar_levels
        if len(levels) < 3:
            return f"lumbar spine not found ({len(levels)} of 5 lumbar bodies)"
        pedicles = self.seg.area("pedicle_left") + self.seg.area("pedicle_right")
        if pedicles < MIN_PEDICLE_PX_PER_BODY * len(levels):
            return "no pedicles beside the vertebral bodies: not a lumbar spine"
        if self.seg.area("spinous_process") < MIN_SPINOUS_PX_PER_BODY * len(levels):
            return "no spinous processes behind the vertebral bodies: not a lumbar spine"
        return ""

    def misread(self) -> str:
        """Why the bodies of what looks like a spine cannot be the levels the model named ("" when they
        can): too few well-formed bodies, bodies out of order along the spine, or spacing between
        neighbours that no spine has. A spine is there; its reading is wrong."""
        levels = self.lumbar_levels
        # order and spacing are judged on the well-formed bodies: a body cut by the field edge or
        # half-labelled by the model moves its centre, which is no sign of a different anatomy
        areas = {lv: self.seg.area(f"body_{lv}") for lv in self.centres}
        typical = float(np.median([areas[lv] for lv in levels]))
        found = [
            lv
            for lv in VERTEBRAL_LEVELS
            if lv in self.centres and areas[lv] >= 0.5 * typical and not self.seg.touches_field(f"body_{lv}")
        ]
        if len(found) < 3:
            cut = any(self.seg.touches_field(f"body_{lv}") for lv in self.centres)
            return "" if cut else f"only {len(found)} well-formed vertebral bodies"  # cut: coverage judges it
        along = [float(self.centres[lv] @ self.axis) for lv in found]
        if any(b <= a for a, b in itertools.pairwise(along)):
            return "vertebral bodies out of order"
        position = dict(zip(found, along, strict=True))
        steps = [
            (position[lb] - position[la]) / (VERTEBRAL_LEVELS.index(lb) - VERTEBRAL_LEVELS.index(la))
            for la, lb in itertools.pairwise(found)
        ]
        inner = steps[1:-1] if len(steps) >= 3 else steps  # an end body may be cut by the field
        if max(inner) > MAX_SPACING_RATIO * min(inner):
            return "vertebral spacing irregular"
        return ""

    def unanchored(self) -> str:
        """Why the lumbar levels cannot be counted ("" when they can): levels are named by counting
        from the lumbosacral junction, or from the iliac crests beside L4-L5. With neither in sight, a
        run of well-formed bodies named L1-L5 may be T11-L3 (a CT DRR of T10-L3 is read so)."""
        if not self.lumbar_levels or self.seg.present("sacrum") or self.seg.present("iliac_crest"):
            return ""
        return "lumbar levels not counted: neither the sacrum nor the iliac crests found"

    @property
    def lumbar_levels(self) -> list[str]:
        return [lv for lv in LUMBAR_LEVELS if lv in self.centres]

    def local_axis(self, level: str) -> F64:
        """Spine direction at a level from its neighbours (follows the lordosis on a lateral)."""
        i = VERTEBRAL_LEVELS.index(level)
        above = next((VERTEBRAL_LEVELS[j] for j in range(i - 1, -1, -1) if VERTEBRAL_LEVELS[j] in self.centres), None)
        below = next(
            (VERTEBRAL_LEVELS[j] for j in range(i + 1, len(VERTEBRAL_LEVELS)) if VERTEBRAL_LEVELS[j] in self.centres),
            None,
        )
        a = self.centres[above] if above else self.centres[level]
        b = self.centres[below] if below else self.centres[level]
        v = b - a
        n = float(np.linalg.norm(v))
        return self.axis if n < 1e-6 else np.asarray(v / n)

    def edge(
        self, level: str, side: str, posterior: F64 | None = None, span: tuple[float, float] = (0.25, 0.75)
    ) -> tuple[F64, F64] | None:
        """Points (network px) along the middle half of one edge of a body and the edge's outward
        normal. side: "top", "bottom" (endplates) or "posterior" (towards `posterior`, a point)."""
        if level not in self.points:
            return None
        axis = self.local_axis(level)
        across = np.array([axis[1], -axis[0]])
        pts = self.points[level]
        if side == "posterior":
            if posterior is None:
                return None
            sign = 1.0 if float((posterior - self.centres[level]) @ across) > 0 else -1.0
            run, out = axis, across * sign
        else:
            run, out = across, (-axis if side == "top" else axis)
        t, depth = pts @ run, pts @ out
        bins = np.round((t - t.min()) * 4).astype(int)
        extreme = np.full(bins.max() + 1, -np.inf)
        np.maximum.at(extreme, bins, depth)
        centres = t.min() + np.arange(len(extreme)) / 4
        lo, hi = int(len(extreme) * span[0]), int(len(extreme) * span[1])
        keep = np.isfinite(extreme[lo:hi])
        if keep.sum() < 4:
            return None
        tt, dd = centres[lo:hi][keep], extreme[lo:hi][keep]
        slope, intercept = np.polyfit(tt, dd, 1)
        ts = np.linspace(tt[0], tt[-1], 32)
        line = ts[:, None] * run[None, :] + (slope * ts + intercept)[:, None] * out[None, :]
        normal = out - slope * run
        return line, normal / np.linalg.norm(normal)

    def band(self, level: str, lo: float, hi: float) -> Bool:
        """Network pixels whose position along the local axis lies between lo and hi body heights
        from the body's centre (negative = above)."""
        v, height = self._along(level)
        return np.asarray((v >= lo * height) & (v <= hi * height))

    def _along(self, level: str) -> tuple[F64, float]:
        """Every network pixel's position along the level's local axis from its centre, and the body's
        height (computed once per level: bands of one level are cut many times per image)."""
        if level not in self._along_cache:
            axis = self.local_axis(level)
            along = self.points[level] @ axis
            centre = float(self.centres[level] @ axis)
            xx, yy = grid(self.seg.probabilities.shape[-1])
            self._along_cache[level] = (xx * axis[0] + yy * axis[1] - centre, float(along.max() - along.min()))
        return self._along_cache[level]


@functools.lru_cache(maxsize=4)
def grid(size: int) -> tuple[F64, F64]:
    """Column and row coordinates of the network square (cached: bands are cut many times per image)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return xx, yy


def to_mm(seg: Segmentation, px: float) -> float:
    return px * seg.mm_per_px


MarkerKind = Literal["box", "arrow", "segments"]


def marker(kind: MarkerKind, points: F64) -> dict[str, object]:
    """Where an item fails, drawn by the overlay from the measurement itself (no second measurement):
    plain JSON for the verdict's detail, in IMAGE pixel coordinates ([x = column, y = row], 0.1 px).
    "box": two opposite corners; "arrow": tail, head; "segments": consecutive pairs of end points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return {"kind": kind, "points": [[round(float(x), 1), round(float(y), 1)] for x, y in pts]}


def box_marker(seg: Segmentation, box: Box) -> dict[str, object]:
    """A box in network pixels (edges at half pixels) as a marker on the image."""
    return marker("box", seg.transform.to_image(np.array([[box.x0, box.y0], [box.x1, box.y1]])))


def arrow_marker(seg: Segmentation, tail: F64, head: F64) -> dict[str, object]:
    """An arrow between two network-pixel points as a marker on the image."""
    return marker("arrow", seg.transform.to_image(np.stack([np.asarray(tail), np.asarray(head)]).astype(np.float64)))


def pedicle_centres(seg: Segmentation, spine: Spine, level: str) -> tuple[F64, F64] | None:
    band = spine.band(level, *PEDICLE_BAND)
    left, right = seg.centroid("pedicle_left", band), seg.centroid("pedicle_right", band)
    return None if left is None or right is None else (left, right)


def anatomy_mask(seg: Segmentation, view: View, field: Box | None) -> Bool:
    """Network pixels of the anatomy the view must show, inside the field by one pixel (the
    collimator's shadow is at the detector's limit by design and must not count as clipping)."""
    mask = seg.union(list(REQUIRED_STRUCTURES[view])) > THRESHOLD
    if field is not None:
        xx, yy = grid(mask.shape[0])
        inside = (xx > field.x0 + 1) & (xx < field.x1 - 1) & (yy > field.y0 + 1) & (yy < field.y1 - 1)
        mask &= inside
    return np.asarray(mask)


