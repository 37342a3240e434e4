"""Double contours on a lateral view, measured on the image's own pixels where the masks locate them.

A network pixel is ~1.5 mm, the QC thresholds for double contours are 2 mm: the masks say where an
endplate or the posterior vertebral wall is, the detector's pixels (0.15-0.4 mm) say whether it is
single or double. Along the normal of the edge, a single edge is a bright cortical rim followed at
once by the drop into the disc or canal; a doubled edge (tilt: the endplate seen as an ellipse;
rotation: the two halves of the posterior wall apart) keeps bone on only one side of the body for
a while, so the drop comes later. The distance from the rim to the drop is the spread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.imaging.preprocess import Transform

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

PROFILE_HALF_MM: Final = 8.0
PROFILE_STEP_MM: Final = 0.1
PLATEAU_MM: Final = (-8.0, -5.0)  # inside the body, clear of the edge
RIM_SEARCH_MM: Final = (-6.0, 4.0)  # where the rim may lie: the mask's edge is good to ~2 mm
DROP_SEARCH_MM: Final = 10.0  # the drop is looked for this far beyond the rim
MIN_CONTRAST: Final = 0.3  # the drop must be this share of the rim's height above the darker side


def bilinear(image: F32, x: F64, y: F64) -> F64:
    """Image values at fractional pixel positions (x = column), clamped at the border."""
    x0 = np.clip(np.floor(x).astype(int), 0, image.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, image.shape[0] - 2)
    tx, ty = np.clip(x - x0, 0.0, 1.0), np.clip(y - y0, 0.0, 1.0)
    top = image[y0, x0] * (1 - tx) + image[y0, x0 + 1] * tx
    bottom = image[y0 + 1, x0] * (1 - tx) + image[y0 + 1, x0 + 1] * tx
    return np.asarray(top * (1 - ty) + bottom * ty, dtype=np.float64)


def edge_profile(image: F32, transform: Transform, spacing_mm: float, edge_points: F64, normal: F64) -> tuple[F64, F64]:
    """Mean image profile across an edge: `edge_points` (network px) along it, `normal` pointing out
    of the structure. Returns (offsets in mm, values); offset 0 is the mask's edge."""
    offsets = np.arange(-PROFILE_HALF_MM, PROFILE_HALF_MM + 1e-9, PROFILE_STEP_MM)
    start = transform.to_image(edge_points)
    n = normal / np.linalg.norm(normal)
    x = start[:, 0:1] + n[0] * offsets[None, :] / spacing_mm
    y = start[:, 1:2] + n[1] * offsets[None, :] / spacing_mm
    return offsets, bilinear(image, x, y).mean(axis=0)


def rim_and_drop(offsets: F64, profile: F64) -> tuple[float, float] | None:
    """(rim, drop) positions in mm: the brightest point near the edge, and the point outside it
    where the profile has fallen half-way from that rim to the darkest value beyond it."""
    search = np.flatnonzero((offsets >= RIM_SEARCH_MM[0]) & (offsets <= RIM_SEARCH_MM[1]))
    rim = int(search[np.argmax(profile[search])])
    beyond = np.flatnonzero((offsets > offsets[rim]) & (offsets <= offsets[rim] + DROP_SEARCH_MM))
    if len(beyond) == 0:
        return None
    floor = float(profile[beyond].min())
    peak = float(profile[rim])
    inside = float(np.median(profile[(offsets >= PLATEAU_MM[0]) & (offsets <= PLATEAU_MM[1])]))
    if peak - floor < MIN_CONTRAST * max(peak - min(inside, floor), 1e-6) or peak - floor < 1e-3:
        return None
    half = (peak + floor) / 2
    below = beyond[profile[beyond] < half]
    if len(below) == 0:
        return None
    drop = int(below[0])
    a, b = profile[drop - 1], profile[drop]
    drop_mm = float(offsets[drop - 1] + (a - half) / max(a - b, 1e-9) * PROFILE_STEP_MM)
    return float(offsets[rim]), drop_mm


def spread_mm(offsets: F64, profile: F64) -> float | None:
    """Distance from the bright cortical rim at the edge to where the profile has dropped half-way
    from that rim to the darkest value just outside it. None when there is no rim-and-drop to measure
    (an edge against another bone, or no edge where the mask put one)."""
    found = rim_and_drop(offsets, profile)
    return None if found is None else max(found[1] - found[0], 0.0)
