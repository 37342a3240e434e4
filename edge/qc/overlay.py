"""The picture a radiographer wants: the image, what the model found, and what failed, in one glance.

Structure outlines in fixed colours, the exposed field, the spine's axis with the pedicles and
spinous processes the rotation items use, and the structures of each failed item outlined in red;
a banner says the verdict and every failed item with its correction.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from edge.imaging.radiograph import Radiograph
from edge.qc.items import ITEMS
from edge.qc.measure import Spine
from edge.qc.segmentation import THRESHOLD, Segmentation, field_box
from edge.qc.structures import STRUCTURES
from edge.qc.verdict import Verdict

MAX_SIDE: Final = 1024
BANNER_COLOURS: Final = {
    "pass": (30, 140, 60),
    "fail": (190, 30, 30),
    "indeterminate": (200, 130, 0),
    "rejected": (90, 90, 90),
}
STRUCTURE_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "body": (80, 170, 255),
    "sacrum": (120, 120, 255),
    "pedicle_left": (255, 220, 0),
    "pedicle_right": (255, 140, 0),
    "spinous_process": (0, 230, 160),
    "transverse_process": (180, 255, 120),
    "si_joint_left": (255, 90, 200),
    "si_joint_right": (200, 90, 255),
    "iliac_crest": (160, 160, 160),
    "disc": (0, 200, 255),
    "foramen": (255, 255, 255),
    "articular_process": (255, 180, 180),
}


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return np.asarray(mask & ~inner)


def _colour(name: str) -> tuple[int, int, int]:
    return STRUCTURE_COLOURS.get("body" if name.startswith("body_") else name, (255, 255, 255))


def draw_overlay(radiograph: Radiograph, seg: Segmentation | None, verdict: Verdict) -> Image.Image:
    rows, cols = radiograph.shape
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    out_rows, out_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    r_idx = np.minimum((np.arange(out_rows) / scale).astype(int), rows - 1)
    c_idx = np.minimum((np.arange(out_cols) / scale).astype(int), cols - 1)
    grey = (radiograph.pixels[np.ix_(r_idx, c_idx)] * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)

    def net_coords(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        assert seg is not None
        return seg.transform.network_pixels(x / scale, y / scale)

    failed = {r.item for r in verdict.failed}
    if seg is not None:
        nx, ny = net_coords(np.arange(out_cols, dtype=np.float64), np.arange(out_rows, dtype=np.float64))
        highlighted = {s for item in failed for s in ITEMS[item].structures}
        for name in STRUCTURES[1:]:
            mask = seg.prob(name)[np.ix_(ny, nx)] > THRESHOLD
            if not mask.any():
                continue
            edge = _outline(mask)
            rgb[edge] = (255, 40, 40) if name in highlighted else _colour(name)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    font_px = max(12, out_cols // 60)
    font = ImageFont.load_default(size=font_px)
    if seg is not None:
        t = seg.transform

        def to_overlay(p: NDArray[np.float64]) -> tuple[float, float]:
            xy = t.to_image(p) * scale
            return float(xy[0]), float(xy[1])

        box = field_box(seg)
        if box is not None:
            a = to_overlay(np.array([box.x0, box.y0]))
            b = to_overlay(np.array([box.x1, box.y1]))
            colour = (255, 40, 40) if failed & {"collimation", "centring"} else (255, 255, 0)
            draw.rectangle((a, b), outline=colour, width=2)
        spine = Spine(seg)
        levels = [lv for lv in spine.centres]
        if len(levels) >= 2:
            top, bottom = spine.centres[levels[0]], spine.centres[levels[-1]]
            colour = (255, 40, 40) if "axis_tilt" in failed else (0, 255, 255)
            draw.line([to_overlay(top), to_overlay(bottom)], fill=colour, width=2)
        for level, centre in spine.centres.items():
            x, y = to_overlay(centre)
            draw.text((x + 4, y - 6), level, fill=(255, 255, 255), font=font)
    lines = [verdict.verdict.upper() + (f" ({verdict.view.judged})" if verdict.view and verdict.view.judged else "")]
    if verdict.reason:
        lines.append(verdict.reason)
    lines += [f"{r.item}: {r.correction}" for r in verdict.failed]
    lines += [f"(warn) {r.item}: {r.correction}" for r in verdict.warned]
    height = (font_px + 4) * len(lines) + 8
    draw.rectangle((0, 0, out_cols, height), fill=BANNER_COLOURS[verdict.verdict])
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * (font_px + 4)), line, fill=(255, 255, 255), font=font)
    return image
