"""Electronic shutters: the parts of a radiograph the modality painted over (black or white) to frame it.

A shutter is not the collimator's shadow, yet it frames the image the same way; painted black it looks
like air to the model (the field would grow over it) and its constant value sits at the detector's
limit (it would count as clipping). So shuttered pixels are shown as the collimator's shadow is shown
(white, unexposed) and never count as clipped. Two sources:
- the Display Shutter module's tags (PS3.3 C.7.6.11): rectangular, circular and polygonal shutters;
- a burnt-in rectangular shutter: whole rows or columns from an image edge inwards that hold one
  stored value, the lowest or the highest of the image. Exposed or collimated detector pixels are
  never exactly uniform over a whole line (noise, scatter); a painted frame is.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from edge.imaging.radiograph import Shutter

# A painted frame this thin is no shutter (a detector's dead line, a burnt-in label's edge)...
MIN_BURNT_IN_FRACTION: Final = 0.01
# ...and one this wide leaves too little image to be a shutter of a radiograph.
MAX_BURNT_IN_FRACTION: Final = 0.45
LINES_PER_LOOK: Final = 32


def _uniform_lines(stored: NDArray[np.integer], side: str, values: tuple[int, ...]) -> int:
    """How many whole lines from `side` inwards hold one value, the image's lowest or highest. Lines
    are looked at LINES_PER_LOOK at a time, in memory order (rows of a column block for the left and
    right sides), so the cost is the frame's area, not the image's."""
    rows, cols = stored.shape
    along_rows = side in ("top", "bottom")
    length = rows if along_rows else cols
    depth = int(length * MAX_BURNT_IN_FRACTION)
    corner = {"top": (0, 0), "bottom": (rows - 1, 0), "left": (0, 0), "right": (0, cols - 1)}[side]
    value = int(stored[corner])
    if value not in values:
        return 0
    count = 0
    while count < depth:
        n = min(LINES_PER_LOOK, depth - count)
        if side == "top":
            block, axis = stored[count : count + n], 1
        elif side == "bottom":
            block, axis = stored[rows - count - n : rows - count][::-1], 1
        elif side == "left":
            block, axis = stored[:, count : count + n], 0
        else:
            block, axis = stored[:, cols - count - n : cols - count][:, ::-1], 0
        if int(block.min()) == int(block.max()) == value:  # two reductions, no mask: the common case
            count += n
            continue
        count += int(np.argmin(np.all(block == value, axis=axis)))
        break
    return count if count >= length * MIN_BURNT_IN_FRACTION else 0


def burnt_in(
    stored: NDArray[np.integer], value_range: tuple[int, int] | None = None, padding: int | None = None
) -> Shutter | None:
    """A rectangular shutter painted into the pixels, or None. `value_range` is the stored values' min
    and max (found when not given). Lines of the Pixel Padding Value are padding (shown as background),
    not a shutter."""
    lowest, highest = value_range or (int(stored.min()), int(stored.max()))
    values = tuple(v for v in (lowest, highest) if v != padding)
    top, bottom = _uniform_lines(stored, "top", values), _uniform_lines(stored, "bottom", values)
    middle = stored[top : stored.shape[0] - bottom]  # the rows above and below are shuttered already
    if middle.shape[0] == 0:
        return None
    left, right = _uniform_lines(middle, "left", values), _uniform_lines(middle, "right", values)
    if not (top or bottom or left or right):
        return None
    rows, cols = stored.shape
    return Shutter(box=(top, rows - bottom, left, cols - right))


def _values(ds: Dataset, keyword: str) -> list[object]:
    """A tag's values as a list: one value or many (pydicom gives a bare value for one)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _number_list(ds: Dataset, keyword: str) -> list[float]:
    try:
        return [float(v) for v in _values(ds, keyword)]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def from_tags(ds: Dataset, shape: tuple[int, int]) -> Shutter | None:
    """The Display Shutter module's shutters (all of them combined), or None. Coordinates in the tags
    are 1-based rows and columns; a shape with missing or malformed coordinates is ignored."""
    shapes = {str(s).upper() for s in _values(ds, "ShutterShape")}
    if not shapes:
        return None
    rows, cols = shape
    box = (0, rows, 0, cols)
    mask: NDArray[np.bool_] | None = None
    if "RECTANGULAR" in shapes:
        edges = [_number_list(ds, k) for k in (
            "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge",
            "ShutterLeftVerticalEdge", "ShutterRightVerticalEdge",
        )]  # fmt: skip
        if all(len(e) == 1 for e in edges):
            upper, lower, left, right = (int(e[0]) for e in edges)
            box = (max(upper - 1, 0), min(lower, rows), max(left - 1, 0), min(right, cols))
    outside = np.zeros(shape, dtype=bool) if shapes & {"CIRCULAR", "POLYGONAL"} else None
    if outside is not None and "CIRCULAR" in shapes:
        centre, radius = _number_list(ds, "CenterOfCircularShutter"), _number_list(ds, "RadiusOfCircularShutter")
        if len(centre) == 2 and len(radius) == 1:
            yy, xx = np.ogrid[0:rows, 0:cols]
            outside |= (yy - (centre[0] - 1)) ** 2 + (xx - (centre[1] - 1)) ** 2 > radius[0] ** 2
    if outside is not None and "POLYGONAL" in shapes:
        vertices = _number_list(ds, "VerticesOfThePolygonalShutter")
        if len(vertices) >= 6 and len(vertices) % 2 == 0:
            canvas = Image.new("1", (cols, rows), 1)
            points = [(vertices[i + 1] - 1, vertices[i] - 1) for i in range(0, len(vertices), 2)]  # (x, y)
            ImageDraw.Draw(canvas).polygon(points, fill=0)
            outside |= np.asarray(canvas, dtype=bool)
    if outside is not None and outside.any():
        mask = outside
    if box == (0, rows, 0, cols) and mask is None:
        return None
    return Shutter(box=box, mask=mask)


def find(
    ds: Dataset, stored: NDArray[np.integer], value_range: tuple[int, int], padding: int | None
) -> Shutter | None:
    """The image's shutter from its tags, else one burnt into its pixels (whose min and max are
    `value_range`; `padding` the Pixel Padding Value, if any), else None."""
    shape = (int(stored.shape[0]), int(stored.shape[1]))
    return from_tags(ds, shape) or burnt_in(stored, value_range, padding)
