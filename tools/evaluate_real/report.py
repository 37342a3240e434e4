"""Figures over a set of films, the side-by-side table, and the contact sheet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image, ImageDraw

from edge.qc.structures import LUMBAR_LEVELS, VERTEBRAL_LEVELS
from tools.aasce.targets import truth_quads
from tools.evaluate_real.metrics import GRID_STRIDE, Grid, on_grid
from tools.evaluate_real.run import FilmResult

QUAD_NOTE: Final = (
    "Dice is against the corner quadrilateral, not a traced outline: a perfect body mask scores below 1."
)
LEVEL_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "T12": (255, 140, 0),
    "L1": (255, 60, 60),
    "L2": (255, 230, 0),
    "L3": (0, 200, 255),
    "L4": (200, 80, 255),
    "L5": (255, 80, 200),
}


def _rate(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(results: list[FilmResult]) -> dict[str, Any]:
    """The issue's table for one model and one crop (L1-L5 unless the key names T12)."""
    per_level: dict[str, dict[str, Any]] = {}
    for level in VERTEBRAL_LEVELS:
        scores = [r.score.levels[level] for r in results if level in r.score.levels]
        per_level[level] = {
            "n": len(scores),
            "dice": float(np.mean([s.dice for s in scores])) if scores else None,
            "found": _rate([s.found for s in scores]),
            "level_right": _rate([s.level_right for s in scores]),
        }
    lumbar = [r.score.levels[lv] for r in results for lv in LUMBAR_LEVELS if lv in r.score.levels]
    all_right = [a for r in results if (a := r.score.all_right(LUMBAR_LEVELS)) is not None]
    tilts = [s.tilt_error_deg for s in lumbar if s.tilt_error_deg is not None]
    verdicts = Counter(r.verdict["verdict"] for r in results)
    reasons = Counter(
        r.verdict["reason_code"] or ",".join(r.verdict["failed_items"]) or r.verdict["verdict"] for r in results
    )
    return {
        "images": len(results),
        "levels_scored": len(lumbar),
        "dice_l1_l5": float(np.mean([s.dice for s in lumbar])) if lumbar else None,
        "found_l1_l5": _rate([s.found for s in lumbar]),
        "level_right_l1_l5": _rate([s.level_right for s in lumbar]),
        "all_five_right": _rate(all_right),
        "all_five_images": len(all_right),
        "centroid_error_median": float(np.median([s.centroid_error for s in lumbar])) if lumbar else None,
        "tilt_error_median_deg": float(np.median(tilts)) if tilts else None,
        "tilt_measured": len(tilts),
        "level_shifts": _shift_counts([s.shift for s in lumbar]),
        "films_shifted_whole": dict(
            Counter(
                f"{w:+d}"
                for r in results
                if (w := r.score.whole_shift(LUMBAR_LEVELS)) is not None and w != 0
            )
        ),
        "per_level": per_level,
        **_gate(results),
        "verdicts": dict(verdicts),
        "verdict_reasons": dict(reasons.most_common(8)),
    }


def _gate(results: list[FilmResult]) -> dict[str, Any]:
    """The reading gate (issue 14): of the films with all five lumbar levels scored, those read wrong
    (a level missed or misnamed) should be indeterminate, those read right judged."""
    read: list[tuple[bool, bool]] = []  # (read right, indeterminate)
    for r in results:
        levels = [r.score.levels.get(lv) for lv in LUMBAR_LEVELS]
        if any(s is None for s in levels):
            continue
        right = all(s is not None and s.found and s.level_right for s in levels)
        read.append((right, r.verdict["verdict"] == "indeterminate"))
    wrong = [undecided for right, undecided in read if not right]
    good = [undecided for right, undecided in read if right]
    return {
        "read_wrong": len(wrong),
        "read_wrong_indeterminate": _rate(wrong),
        "read_right": len(good),
        "read_right_indeterminate": _rate(good),
    }


def _shift_counts(shifts: list[int | None]) -> dict[str, int]:
    """How the L1-L5 bodies were named: right, one too high/low, further off, or not found."""
    names = {0: "right", -1: "one level too high", 1: "one level too low"}
    counts = Counter("not found" if s is None else names.get(s, "two or more off") for s in shifts)
    return {name: counts.get(name, 0) for name in (*names.values(), "two or more off", "not found")}


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def format_table(crop: str, labels: list[str], summaries: list[dict[str, Any]], targets: bool = True) -> str:
    """One crop, one column per model."""
    width = max(12, *(len(lb) + 2 for lb in labels))
    head = f"{'':44s}" + "".join(f"{lb:>{width}s}" for lb in labels) + ("   target" if targets else "")
    rows: list[tuple[str, list[str], str]] = [
        ("images (levels L1-L5 scored)", [f"{s['images']} ({s['levels_scored']})" for s in summaries], ""),
        ("body Dice vs boxes, L1-L5 mean", [_fmt(s["dice_l1_l5"]) for s in summaries], ">= 0.85 (lumbar)"),
        ("found (Dice >= 0.5), L1-L5", [_fmt(s["found_l1_l5"], True) for s in summaries], ">= 98 % (lumbar)"),
        (
            "level right, L1-L5",
            [_fmt(s["level_right_l1_l5"], True) for s in summaries],
            ">= 95 % lumbar, >= 90 % whole",
        ),
        ("images with all five lumbar levels right", [_fmt(s["all_five_right"], True) for s in summaries], ">= 90 %"),
        (
            "centroid error, median (body heights)",
            [_fmt(s["centroid_error_median"]) for s in summaries],
            "<= 0.10",
        ),
        ("endplate tilt error, median (degrees)", [_fmt(s["tilt_error_median_deg"]) for s in summaries], ""),
        (
            "L1-L5 named right / 1 high / 1 low / 2+ off / missed",
            ["/".join(str(v) for v in s["level_shifts"].values()) for s in summaries],
            "",
        ),
        (
            "films counted whole from the wrong level",
            [", ".join(f"{k}: {v}" for k, v in sorted(s["films_shifted_whole"].items())) or "0" for s in summaries],
            "",
        ),
    ]
    for level in VERTEBRAL_LEVELS:
        rows.append(
            (
                f"  {level}: Dice / found / level right",
                [
                    f"{_fmt(p['dice'])}/{_fmt(p['found'])}/{_fmt(p['level_right'])}"
                    for p in (s["per_level"][level] for s in summaries)
                ],
                "",
            )
        )
    rows.append(
        (
            "read wrong (a level missed/misnamed): indeterminate",
            [f"{_fmt(s['read_wrong_indeterminate'], True)} of {s['read_wrong']}" for s in summaries],
            ">= 95 %",
        )
    )
    rows.append(
        (
            "read right: indeterminate",
            [f"{_fmt(s['read_right_indeterminate'], True)} of {s['read_right']}" for s in summaries],
            "<= 10 %",
        )
    )
    for outcome in ("pass", "fail", "indeterminate", "rejected"):
        rows.append((f"verdict {outcome}", [str(s["verdicts"].get(outcome, 0)) for s in summaries], ""))
    lines = [f"crop: {crop}", head]
    for name, values, target in rows:
        lines.append(f"{name:44s}" + "".join(f"{v:>{width}s}" for v in values) + (f"   {target}" if targets else ""))
    for label, s in zip(labels, summaries, strict=True):
        reasons = ", ".join(f"{k} {v}" for k, v in s["verdict_reasons"].items())
        lines.append(f"  {label} verdicts by reason: {reasons}")
    return "\n".join(lines)


def contact_sheet(results: list[FilmResult], path: Path, tile_height: int = 300, columns: int = 10) -> Path:
    """Every film: truth boxes in white, predicted body outlines in level colours (legend at the top)."""
    tiles = [_tile(r, tile_height) for r in results]
    if not tiles:
        raise ValueError("no films to draw")
    tile_width = max(t.width for t in tiles)
    legend_height = 22
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (tile_width * min(columns, len(tiles)), legend_height + tile_height * rows), "black")
    draw = ImageDraw.Draw(sheet)
    x = 4
    draw.text((x, 5), "truth box", fill=(255, 255, 255))
    x += 70
    for level, colour in LEVEL_COLOURS.items():
        draw.text((x, 5), f"{level} predicted", fill=colour)
        x += 90
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * tile_width, legend_height + (i // columns) * tile_height))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _tile(result: FilmResult, tile_height: int) -> Image.Image:
    x0, y0, x1, y1 = result.crop
    grid = Grid(y1 - y0, x1 - x0)
    with Image.open(result.film.path) as im:
        film = im.convert("L").crop(result.crop).resize(grid.shape[::-1], Image.Resampling.BOX)
    rgb = np.stack([np.asarray(film)] * 3, axis=-1).copy()
    masks = on_grid(result.probabilities, result.transform, grid) > 0.5
    for level, mask in zip(VERTEBRAL_LEVELS, masks, strict=True):
        inner = mask.copy()
        inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        rgb[mask & ~inner] = LEVEL_COLOURS[level]
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for quad in truth_quads(result.film, result.crop).values():
        pts = (quad - (GRID_STRIDE - 1) / 2) / GRID_STRIDE
        draw.polygon([(float(px), float(py)) for px, py in pts], outline=(255, 255, 255))
    scale = tile_height / image.height
    image = image.resize((max(1, round(image.width * scale)), tile_height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    right = sum(s.level_right for s in result.score.levels.values())
    label = f"{result.film.patient} {result.verdict['verdict']} {right}/{len(result.score.levels)}"
    draw.rectangle((0, 0, 8 + 6 * len(label), 12), fill=(0, 0, 0))
    draw.text((2, 0), label, fill=(255, 255, 255))
    return image
