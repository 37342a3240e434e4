"""The picture a radiographer wants: the image, what the model found, and what failed, in one glance.

Structure outlines in fixed colours with a legend beside the image, the exposed field, the spine's
axis, level labels that read on white bone, and each failed item drawn where it fails: its
structures in red and the marker its measurement left in the verdict (the endplate pair for tilt,
the suggested field for collimation, an arrow for centring and coverage). A banner above the image
says the verdict, the corrections (the standard's titles, never item ids) and EI/DI.

Outlines are the 0.5 level of the network's probabilities upsampled bilinearly to the overlay's
pixels (not enlarged masks, whose edges step by the enlargement factor), drawn anti-aliased at one
width from the distance to that level. Everything is vectorised over each structure's bounding box:
the daemon draws an overlay after every verdict.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from edge.imaging.preprocess import area_average
from edge.imaging.radiograph import Radiograph
from edge.qc.items import ITEMS
from edge.qc.judge import ItemResult
from edge.qc.measure import Spine
from edge.qc.segmentation import THRESHOLD, Segmentation, field_box
from edge.qc.structures import STRUCTURE_NAMES, STRUCTURES
from edge.qc.verdict import Verdict, exposure_line
from edge.qc.words import N_, Words

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
RGB = tuple[int, int, int]
ToOverlay = Callable[[float, float], tuple[float, float]]  # image pixel -> overlay pixel

MAX_SIDE: Final = 1024
BANNER_COLOURS: Final[dict[str, RGB]] = {
    "pass": (30, 140, 60),
    "fail": (190, 30, 30),
    "indeterminate": (200, 130, 0),
    "rejected": (90, 90, 90),
}
BANNER_WORDS: Final = {"pass": "PASS", "fail": "FAIL", "indeterminate": "CHECK", "rejected": "NOT JUDGED"}
# One colour per legend entry, none of them grey (a grey is a radiograph's own pixel) and none twice.
STRUCTURE_COLOURS: Final[dict[str, RGB]] = {
    "body": (80, 170, 255),
    "sacrum": (120, 120, 255),
    "pedicle_left": (255, 220, 0),
    "pedicle_right": (255, 140, 0),
    "spinous_process": (0, 230, 160),
    "transverse_process": (180, 255, 120),
    "si_joint_left": (255, 90, 200),
    "si_joint_right": (200, 90, 255),
    "iliac_crest": (150, 110, 60),
    "disc": (0, 200, 255),
    "foramen": (255, 190, 255),
    "articular_process": (255, 170, 130),
}
FAILED: Final[RGB] = (255, 40, 40)
FIELD: Final[RGB] = (255, 255, 0)
AXIS: Final[RGB] = (0, 255, 255)
TEXT: Final[RGB] = (255, 255, 255)
TEXT_OUTLINE: Final[RGB] = (0, 0, 0)
PANEL: Final[RGB] = (24, 24, 24)
WARN_TEXT: Final[RGB] = (255, 235, 150)
# Legend labels that are not a structure's name (English msgids; the verdict's language translates them).
BODIES: Final = N_("vertebral bodies")
SPINE_AXIS: Final = N_("spine axis")
# Font sizes by the overlay's height: a 1024 px overlay on a 1080p screen is read from across the room.
BANNER_FONT_PER_HEIGHT: Final = 1 / 40
MIN_FONT_PX: Final = 18
FONTS: Final = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")


@dataclass(frozen=True)
class LegendEntry:
    label: str  # what the radiographer reads (a structure's name, or a failed item's title with its structures)
    colour: RGB
    structures: tuple[str, ...]  # the structures drawn in this colour under this label (none for field, axis)


@dataclass(frozen=True)
class Overlay:
    """The drawn overlay, with what a display or a test needs to know about it."""

    image: Image.Image
    legend: tuple[LegendEntry, ...]
    image_box: tuple[int, int, int, int]  # where the radiograph lies on the canvas: x0, y0, x1, y1 (exclusive)
    scale: tuple[float, float]  # overlay pixels per image pixel (x, y)


def draw_overlay(
    radiograph: Radiograph,
    seg: Segmentation | None,
    verdict: Verdict,
    *,
    max_side: int = MAX_SIDE,
    banner: bool = True,
    legend: bool = True,
) -> Image.Image:
    """The overlay as one RGB image (see `render_overlay`)."""
    return render_overlay(radiograph, seg, verdict, max_side=max_side, banner=banner, legend=legend).image


def render_overlay(
    radiograph: Radiograph,
    seg: Segmentation | None,
    verdict: Verdict,
    *,
    max_side: int = MAX_SIDE,
    banner: bool = True,
    legend: bool = True,
) -> Overlay:
    """The radiograph at most `max_side` pixels on its long side, drawn on; a banner strip above it
    (a display with a banner of its own leaves it out) and a legend panel on its right, so that
    neither hides anatomy."""
    rows, cols = radiograph.shape
    scale = min(1.0, max_side / max(rows, cols))
    out_rows, out_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    sx, sy = out_cols / cols, out_rows / rows
    rgb = np.repeat(_grey(radiograph.pixels, out_rows, out_cols)[:, :, None], 3, axis=2)
    words = _words(verdict.language)
    line = max(2, round(max(out_rows, out_cols) / 512))
    failed = verdict.failed
    highlighted = {s for r in failed for s in ITEMS[r.item].structures if r.item in ITEMS}
    drawn: dict[str, RGB] = {}
    if seg is not None:
        for name in STRUCTURES[1:]:
            if seg.present(name):
                colour = FAILED if name in highlighted else _colour(name)
                if _draw_outline(rgb, seg, name, sx, sy, colour, line):
                    drawn[name] = colour
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    extras: list[LegendEntry] = []

    def at(x: float, y: float) -> tuple[float, float]:  # image pixel -> overlay pixel
        return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5

    label_px = max(MIN_FONT_PX, round(out_rows / 48))
    if seg is not None:
        t = seg.transform
        box = field_box(seg)
        if box is not None:
            corners = t.to_image(np.array([[box.x0, box.y0], [box.x1, box.y1]]))
            draw.rectangle((at(*corners[0]), at(*corners[1])), outline=FIELD, width=line)
            extras.append(LegendEntry(words.text(STRUCTURE_NAMES["field"]), FIELD, ()))
        spine = Spine(seg)
        levels = list(spine.centres)
        if len(levels) >= 2:
            ends = t.to_image(np.stack([spine.centres[levels[0]], spine.centres[levels[-1]]]))
            draw.line([at(*ends[0]), at(*ends[1])], fill=AXIS, width=line)
            extras.append(LegendEntry(words.text(SPINE_AXIS), AXIS, ()))
        font = _font(label_px)
        for level, centre in spine.centres.items():
            x, y = at(*t.to_image(centre))
            draw.text((x + label_px / 3, y), level, fill=TEXT, font=font, anchor="lm",
                      stroke_width=max(2, label_px // 7), stroke_fill=TEXT_OUTLINE)  # fmt: skip
    marked = {r.item for r in failed if _draw_marker(draw, r.detail.get("marker"), at, line + 1)}
    entries = _legend(drawn, failed, marked, words) + extras
    canvas, image_box = _compose(image, verdict, entries, banner, legend, words)
    return Overlay(canvas, tuple(entries), image_box, (sx, sy))


@functools.lru_cache(maxsize=4)
def _words(language: str) -> Words:
    try:
        return Words(language)
    except ValueError:  # a language this build has no catalogue for: the msgids are English
        return Words()


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans Bold where the system has it (every Latin letter a translation needs), else
    Pillow's own scalable font."""
    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _grey(pixels: F32, out_rows: int, out_cols: int) -> NDArray[np.uint8]:
    """Display pixels area-averaged to the overlay's size (no aliasing of noise or grid lines), 8 bits."""
    small = pixels
    if pixels.shape != (out_rows, out_cols):
        small = area_average(area_average(np.asarray(pixels, dtype=np.float32), out_rows, axis=0), out_cols, axis=1)
    return np.asarray(np.clip(small * 255.0 + 0.5, 0, 255), dtype=np.uint8)


def _colour(name: str) -> RGB:
    return STRUCTURE_COLOURS["body" if name.startswith("body_") else name]


def upsampled(prob: F32, xs: F64, ys: F64) -> F32:
    """The probability map bilinearly interpolated at network coordinates xs (columns) by ys (rows):
    separable, over the block of the map the coordinates span only."""
    size_y, size_x = prob.shape
    x0 = np.clip(np.floor(xs).astype(np.intp), 0, size_x - 2)
    y0 = np.clip(np.floor(ys).astype(np.intp), 0, size_y - 2)
    tx = np.clip(xs - x0, 0.0, 1.0).astype(np.float32)
    ty = np.clip(ys - y0, 0.0, 1.0).astype(np.float32)
    c_lo, c_hi, r_lo, r_hi = int(x0[0]), int(x0[-1]) + 2, int(y0[0]), int(y0[-1]) + 2
    block = prob[r_lo:r_hi, c_lo:c_hi].astype(np.float32)
    yi, xi = y0 - r_lo, x0 - c_lo
    across = block[:, xi] * (1 - tx) + block[:, xi + 1] * tx
    return np.asarray(across[yi] * (1 - ty)[:, None] + across[yi + 1] * ty[:, None], dtype=np.float32)


def outline_alpha(p: F32, width: float) -> F32:
    """Coverage (0..1) of a line `width` pixels wide along the threshold level of `p`, from each pixel's
    distance to that level (the value's offset over its gradient): anti-aliased, one width everywhere."""
    gy, gx = np.gradient(p)
    gradient = np.maximum(np.hypot(gx, gy), np.float32(1e-6))
    distance = np.abs(p - np.float32(THRESHOLD)) / gradient
    return np.asarray(np.clip(np.float32(width / 2 + 0.5) - distance, 0.0, 1.0), dtype=np.float32)


def _draw_outline(
    rgb: NDArray[np.uint8], seg: Segmentation, name: str, sx: float, sy: float, colour: RGB, width: float
) -> bool:
    """Blend one structure's outline into `rgb` (overlay pixels) over its bounding box; True when any
    of it landed on the image."""
    found = seg.extent(name)
    if found is None:
        return False
    _, net_rows, net_cols = found
    t = seg.transform
    out_rows, out_cols = rgb.shape[:2]
    # overlay pixel centres -> image pixels -> network pixels, per axis (the transform is separable)
    image_x = (np.arange(out_cols, dtype=np.float64) + 0.5) / sx - 0.5
    image_y = (np.arange(out_rows, dtype=np.float64) + 0.5) / sy - 0.5
    net_x = (image_x + 0.5) * t.scale_x + t.offset_x - 0.5
    net_y = (image_y + 0.5) * t.scale_y + t.offset_y - 0.5
    c0, c1 = np.searchsorted(net_x, [net_cols.start - 2, net_cols.stop + 1])
    r0, r1 = np.searchsorted(net_y, [net_rows.start - 2, net_rows.stop + 1])
    if c1 - c0 < 2 or r1 - r0 < 2:
        return False
    p = upsampled(seg.prob(name), net_x[c0:c1], net_y[r0:r1])
    alpha = outline_alpha(p, width)[:, :, None]
    if not alpha.any():
        return False
    region = rgb[r0:r1, c0:c1].astype(np.float32)
    blended = region + (np.asarray(colour, dtype=np.float32) - region) * alpha
    rgb[r0:r1, c0:c1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return True


def _draw_marker(draw: ImageDraw.ImageDraw, marker: object, at: ToOverlay, width: int) -> bool:
    """Draw a measurement's marker (edge.qc.measure.marker) in red; False when there is none to draw."""
    if not isinstance(marker, dict) or not isinstance(marker.get("points"), list):
        return False
    try:
        points = [at(float(x), float(y)) for x, y in marker["points"]]
    except (TypeError, ValueError):
        return False
    kind = marker.get("kind")
    if kind == "box" and len(points) == 2:
        (xa, ya), (xb, yb) = points
        _dashed_rectangle(draw, (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)), width, 6 * width)
    elif kind == "arrow" and len(points) == 2:
        _arrow(draw, points[0], points[1], width)
    elif kind == "segments" and len(points) >= 2:
        for a, b in zip(points[::2], points[1::2], strict=False):
            draw.line([a, b], fill=FAILED, width=width)
    else:
        return False
    return True


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], width: int, dash: int) -> None:
    """A dashed red rectangle: the suggested field, told apart from the exposed field's solid one."""
    x0, y0, x1, y1 = box
    for (xa, ya), (xb, yb) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = float(np.hypot(xb - xa, yb - ya))
        for start in np.arange(0.0, length, 2 * dash):
            end = min(start + dash, length)
            f0, f1 = start / max(length, 1e-9), end / max(length, 1e-9)
            draw.line([(xa + (xb - xa) * f0, ya + (yb - ya) * f0), (xa + (xb - xa) * f1, ya + (yb - ya) * f1)],
                      fill=FAILED, width=width)  # fmt: skip


def _arrow(draw: ImageDraw.ImageDraw, tail: tuple[float, float], head: tuple[float, float], width: int) -> None:
    """A red arrow from tail to head; a short one is drawn long enough to see (same direction)."""
    d = np.array(head) - np.array(tail)
    length = float(np.hypot(*d))
    if length < 1e-6:
        return
    u = d / length
    tip = np.array(tail) + u * max(length, 12.0 * width)
    size = 5.0 * width
    back = tip - u * size
    normal = np.array([-u[1], u[0]])
    draw.line([tail, tuple(back)], fill=FAILED, width=width)
    draw.polygon([tuple(tip), tuple(back + normal * size * 0.6), tuple(back - normal * size * 0.6)], fill=FAILED)


def _legend(drawn: dict[str, RGB], failed: Sequence[ItemResult], marked: set[str], words: Words) -> list[LegendEntry]:
    """One entry per colour drawn: each structure by its name (the vertebral bodies as one), then each
    failed item drawn (its structures in red, or its marker) under its title."""
    entries: list[LegendEntry] = []
    bodies = tuple(n for n, c in drawn.items() if n.startswith("body_") and c != FAILED)
    if bodies:
        entries.append(LegendEntry(words.text(BODIES), STRUCTURE_COLOURS["body"], bodies))
    for name, colour in drawn.items():
        if colour != FAILED and not name.startswith("body_"):
            entries.append(LegendEntry(words.text(STRUCTURE_NAMES[name]), colour, (name,)))
    for r in failed:
        spec = ITEMS.get(r.item)
        mine = tuple(s for s in (spec.structures if spec else ()) if drawn.get(s) == FAILED)
        if mine or r.item in marked:
            names = ", ".join(words.text(STRUCTURE_NAMES[s]) for s in mine)
            entries.append(LegendEntry(f"{r.title}: {names}" if names else r.title, FAILED, mine))
    return entries


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """Greedy word wrap to a pixel width."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines


def banner_lines(verdict: Verdict) -> list[tuple[str, RGB]]:
    """The verdict's own words: headline, reason, corrections (each once, after the titles of the
    items they fix), EI/DI."""
    head = BANNER_WORDS[verdict.verdict]
    if verdict.view is not None and verdict.view.judged:
        head += f" {verdict.view.judged.upper()}"
    lines = [(f"{head}: {verdict.headline}" if verdict.headline else head, TEXT)]
    if verdict.reason:
        lines.append((verdict.reason, TEXT))
    for c in verdict.corrections:
        lines.append((f"{', '.join(c.items)}: {c.text}", TEXT if c.outcome == "fail" else WARN_TEXT))
    if verdict.exposure is not None and verdict.exposure.exposure_index is not None:
        lines.append((exposure_line(verdict.exposure), TEXT))
    return lines


def _compose(
    image: Image.Image, verdict: Verdict, entries: list[LegendEntry], banner: bool, legend: bool, words: Words
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The drawn radiograph with the banner above it and the legend panel on its right."""
    out_cols, out_rows = image.size
    font_px = banner_font_px(out_rows)
    legend_px = max(MIN_FONT_PX, round(font_px * 0.8))
    pad = font_px // 3
    panel_w = 0
    legend_font = _font(legend_px)
    if legend and entries:
        widest = max(legend_font.getlength(e.label) for e in entries)
        panel_w = int(min(widest, out_cols * 0.6)) + legend_px + 3 * pad
    width = out_cols + panel_w
    strip: list[tuple[str, RGB, ImageFont.FreeTypeFont | ImageFont.ImageFont]] = []
    if banner:
        big, small = _font(round(font_px * 1.3)), _font(font_px)
        for i, (text, colour) in enumerate(banner_lines(verdict)):
            font = big if i == 0 else small
            strip += [(part, colour, font) for part in _wrap(text, font, width - 2 * pad)]
    heights = [_line_height(font) for _, _, font in strip]
    banner_h = sum(heights) + 2 * pad if strip else 0
    legend_h = 0
    legend_rows: list[tuple[LegendEntry, list[str]]] = []
    if panel_w:
        legend_rows = [(e, _wrap(e.label, legend_font, panel_w - legend_px - 3 * pad)) for e in entries]
        legend_h = sum(len(lines) for _, lines in legend_rows) * _line_height(legend_font) + 2 * pad
    canvas = Image.new("RGB", (width, banner_h + max(out_rows, legend_h)), PANEL)
    canvas.paste(image, (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    if strip:
        draw.rectangle((0, 0, width, banner_h - 1), fill=BANNER_COLOURS[verdict.verdict])
        y = pad
        for (text, colour, font), h in zip(strip, heights, strict=True):
            draw.text((pad, y), text, fill=colour, font=font)
            y += h
    y = banner_h + pad
    row_h = _line_height(legend_font)
    for entry, lines in legend_rows:
        x = out_cols + pad
        swatch = y + row_h * 0.15
        draw.rectangle((x, swatch, x + legend_px * 0.8, swatch + legend_px * 0.8), fill=entry.colour)
        for part in lines:
            draw.text((x + legend_px + pad, y), part, fill=TEXT, font=legend_font)
            y += row_h
    return canvas, (0, banner_h, out_cols, banner_h + out_rows)


def banner_font_px(rows: int) -> int:
    """The banner's text size for an overlay `rows` high: a fortieth of it, never under MIN_FONT_PX."""
    return max(MIN_FONT_PX, round(rows * BANNER_FONT_PER_HEIGHT))


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom + max(4, (bottom - top) // 4))
