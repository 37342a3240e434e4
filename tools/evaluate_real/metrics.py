"""How well body masks match clinicians' corner boxes on a real film: pure functions of arrays.

Scoring happens on the film's own pixel grid (at `GRID_STRIDE`), not on the network's: the model's
probabilities are sampled bilinearly at each grid point's network position, so the figures are what a
measurement on the film sees. A corner quadrilateral is not a body outline (the body's sides are
concave, its corners rounded), so even a perfect body mask scores below 1 against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from edge.imaging.preprocess import Transform
from edge.qc.structures import VERTEBRAL_LEVELS

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

GRID_STRIDE: Final = 2  # film pixels per scoring cell along each axis
FOUND_DICE: Final = 0.5  # a box is found when some body channel overlaps it with at least this Dice
MIN_INSIDE: Final = 0.5  # a level is scored when at least half of its box lies inside the crop


@dataclass(frozen=True)
class Grid:
    """The scoring grid: cell centres of a crop of rows x cols film pixels at GRID_STRIDE."""

    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.rows // GRID_STRIDE), -(-self.cols // GRID_STRIDE)

    def centres(self) -> tuple[F64, F64]:
        """Film-pixel x and y of every cell centre (2-D arrays of the grid's shape)."""
        ys = np.arange(self.shape[0], dtype=np.float64) * GRID_STRIDE + (GRID_STRIDE - 1) / 2
        xs = np.arange(self.shape[1], dtype=np.float64) * GRID_STRIDE + (GRID_STRIDE - 1) / 2
        return np.meshgrid(xs, ys)


def on_grid(probabilities: F32, transform: Transform, grid: Grid) -> F32:
    """Network-grid probability maps (C x S x S) sampled at the scoring grid (C x gh x gw)."""
    x, y = grid.centres()
    net = transform.to_network(np.stack([x, y], axis=-1))
    coords = np.stack([net[..., 1], net[..., 0]])
    return np.stack(
        [ndimage.map_coordinates(p, coords, order=1, mode="constant", cval=0.0) for p in probabilities]
    ).astype(np.float32)


def quad_mask(quad: F64, grid: Grid) -> Bool:
    """The quadrilateral (film pixels of the crop) rasterised on the scoring grid."""
    gh, gw = grid.shape
    canvas = Image.new("1", (gw, gh), 0)
    pts = (np.asarray(quad, dtype=np.float64) - (GRID_STRIDE - 1) / 2) / GRID_STRIDE
    ImageDraw.Draw(canvas).polygon([(float(px), float(py)) for px, py in pts], fill=1)
    return np.asarray(canvas, dtype=bool)


def quad_height(quad: F64) -> float:
    """Mean length of the left and right edges (TL-BL, TR-BR) of a TL, TR, BR, BL quadrilateral."""
    tl, tr, br, bl = quad
    return float((np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2)


def quad_tilt_deg(quad: F64) -> float:
    """Endplate tilt: the mean direction of the top and bottom edges, degrees from horizontal."""
    tl, tr, br, bl = quad
    top, bottom = tr - tl, br - bl
    return float(np.degrees(np.arctan2(top[1] + bottom[1], top[0] + bottom[0])))


def mask_tilt_deg(mask: Bool) -> float | None:
    """Endplate tilt of a body mask on an AP view, in degrees: the mean slope of its upper and lower
    boundaries over the middle half of its columns (a principal axis would follow the shear of a
    scoliotic body, not its endplates)."""
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size < 4:
        return None
    lo, hi = np.percentile(columns, [25, 75])
    middle = columns[(columns >= lo) & (columns <= hi)]
    if middle.size < 2:
        return None
    sub = mask[:, middle]
    top = np.argmax(sub, axis=0).astype(np.float64)
    bottom = (sub.shape[0] - 1 - np.argmax(sub[::-1], axis=0)).astype(np.float64)
    slope = (np.polyfit(middle, top, 1)[0] + np.polyfit(middle, bottom, 1)[0]) / 2
    return float(np.degrees(np.arctan(slope)))


def angle_difference(a: float, b: float) -> float:
    """Smallest difference of two axis directions (degrees, modulo 180)."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def dice(a: Bool, b: Bool) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 0.0


def centroid(mask: Bool) -> F64 | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return np.array([cols.mean(), rows.mean()], dtype=np.float64) * GRID_STRIDE + (GRID_STRIDE - 1) / 2


@dataclass
class LevelScore:
    level: str
    dice: float  # the level's own channel against its box
    best_dice: float  # the best of all body channels against the box
    best_level: str  # that channel's level
    centroid_error: float  # distance of the channel's centroid from the box's, in body heights (inf: none)
    tilt_error_deg: float | None  # None: no mask to take a direction from

    @property
    def found(self) -> bool:
        return self.best_dice >= FOUND_DICE

    @property
    def level_right(self) -> bool:
        return self.best_dice > 0 and self.best_level == self.level

    @property
    def shift(self) -> int | None:
        """Levels between the channel that found this body and the body's own (+1: the body was named
        one level lower, L3 called L4; -1: one higher); None when the body was not found."""
        if not self.found:
            return None
        return VERTEBRAL_LEVELS.index(self.best_level) - VERTEBRAL_LEVELS.index(self.level)


@dataclass
class FilmScore:
    levels: dict[str, LevelScore] = field(default_factory=dict)

    def whole_shift(self, levels: tuple[str, ...]) -> int | None:
        """The shift every found level of `levels` shares (a whole spine counted from the wrong
        vertebra); None when they differ or none was found."""
        shifts = {s for lv in levels if lv in self.levels and (s := self.levels[lv].shift) is not None}
        return shifts.pop() if len(shifts) == 1 else None

    def all_right(self, levels: tuple[str, ...]) -> bool | None:
        """All of `levels` scored and right; None when not all of them were scored on this crop."""
        if any(lv not in self.levels for lv in levels):
            return None
        return all(self.levels[lv].level_right for lv in levels)


def score_film(probabilities: F32, transform: Transform, grid: Grid, quads: dict[str, F64]) -> FilmScore:
    """Score body channels (`probabilities` in STRUCTURES order restricted to body_T12..body_L5, i.e. 6
    maps) against the truth boxes `quads` (crop pixels) of the levels inside the crop."""
    sampled = on_grid(probabilities, transform, grid) > 0.5
    score = FilmScore()
    for level, quad in quads.items():
        full = _unclipped_area(quad)
        truth = quad_mask(quad, grid)  # the part inside the crop
        if full <= 0 or truth.sum() * GRID_STRIDE**2 < MIN_INSIDE * full:
            continue
        dices = [dice(sampled[c], truth) for c in range(len(VERTEBRAL_LEVELS))]
        best = int(np.argmax(dices))
        own = sampled[VERTEBRAL_LEVELS.index(level)]
        c_pred, c_true = centroid(own), centroid(truth)
        error = float("inf")
        if c_pred is not None and c_true is not None:
            error = float(np.linalg.norm(c_pred - c_true)) / max(quad_height(quad), 1e-6)
        tilt = mask_tilt_deg(own)
        score.levels[level] = LevelScore(
            level=level,
            dice=dices[VERTEBRAL_LEVELS.index(level)],
            best_dice=dices[best],
            best_level=VERTEBRAL_LEVELS[best],
            centroid_error=error,
            tilt_error_deg=None if tilt is None else angle_difference(tilt, quad_tilt_deg(quad)),
        )
    return score


def _unclipped_area(quad: F64) -> float:
    x, y = quad[:, 0], quad[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
