"""Coverage family: the field shows the anatomy the view needs (coverage margins, centring, the
spine's tilt against the field, collimation). Measurements and corrections, and their ItemSpecs."""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.qc.item import ItemSpec, Setting
from edge.qc.measure import (
    EDGE_TOLERANCE_PX,
    MAX_BODY_HEIGHT_RATIO,
    Context,
    Measurement,
    Spine,
    arrow_marker,
    box_marker,
    grid,
    to_mm,
)
from edge.qc.rules import ItemRule
from edge.qc.segmentation import THRESHOLD, Box, Segmentation, fine_box
from edge.qc.structures import LUMBAR_LEVELS, REQUIRED_STRUCTURES, SI_JOINTS, View
from edge.qc.words import N_, Phrase, phrase, structures_phrase

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


def _margin(seg: Segmentation, box: Box | None, field: Box, sides: str) -> tuple[float, dict[str, float]]:
    """Smallest distance (mm) from the structure's extent to the field edge on the given sides."""
    assert box is not None
    gaps: dict[str, float] = {}
    if "x" in sides:
        gaps["left"], gaps["right"] = box.x0 - field.x0, field.x1 - box.x1
    if "y" in sides:
        gaps["top"], gaps["bottom"] = box.y0 - field.y0, field.y1 - box.y1
    return to_mm(seg, min(gaps.values())), {k: round(to_mm(seg, v), 2) for k, v in gaps.items()}


def _plausible_body(seg: Segmentation, spine: Spine, name: str, keep: str) -> F32:
    """A body's mask, cut back to the height of its neighbours when it is much taller than they are:
    the model sometimes carries a level's label onto the bone next to it (L5 onto S1 on an oblique),
    and a coverage margin measured on that would be wrong by a whole vertebra. `keep` is the end that
    is trusted ("top" for the lowest level, "bottom" for the highest)."""
    prob = seg.prob(name)
    level = name.removeprefix("body_")
    others = [lv for lv in spine.lumbar_levels if lv != level]
    if level not in spine.points or len(others) < 2:
        return prob
    heights = [float(np.ptp(spine.points[lv] @ spine.local_axis(lv))) for lv in others]
    typical = float(np.median(heights))
    axis = spine.local_axis(level)
    along = spine.points[level] @ axis
    if np.ptp(along) <= MAX_BODY_HEIGHT_RATIO * typical:
        return prob
    xx, yy = grid(prob.shape[0])
    v = xx * axis[0] + yy * axis[1]
    keep_mask = v <= along.min() + typical if keep == "top" else v >= along.max() - typical
    return np.where(keep_mask, prob, 0.0).astype(np.float32)


def beside_si_joints(seg: Segmentation) -> F32:
    """The upper half of the sacrum, beside which the SI joints lie: where the model missed the joints,
    the field must still show this much (empty when the sacrum is missing too)."""
    prob = seg.prob("sacrum")
    keep = np.zeros_like(prob)
    rows = np.flatnonzero((prob > THRESHOLD).any(axis=1))
    if len(rows):
        middle = (int(rows[0]) + int(rows[-1])) // 2 + 1
        keep[:middle] = prob[:middle]
    return keep



def required_box(seg: Segmentation, view: View) -> Box | None:
    """The extent of the anatomy the view must show; a missed SI joint is stood in for by the part of
    the sacrum it lies beside, so that a joint the model did not find moves no edge of the box."""
    names = REQUIRED_STRUCTURES[view]
    if not set(SI_JOINTS) <= set(names) or all(seg.present(j) for j in SI_JOINTS) or not seg.present("sacrum"):
        return seg.union_box(names)
    return fine_box(np.maximum(seg.union(names), beside_si_joints(seg)))


# The least move a coverage correction asks for; a structure the field left out entirely is pointed
# at by an arrow this long from the field's edge (the correction then gives no size).
MIN_MOVE_MM: Final = 5.0
MISSING_MOVE_MM: Final = 20.0
_OUTWARDS: Final = {"top": (0.0, -1.0), "bottom": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_MISSING_EDGE: Final = {"upper_coverage": "top", "lower_coverage": "bottom"}


def move_arrow(seg: Segmentation, box: Box | None, field: Box, edge: str, need_mm: float) -> dict[str, object]:
    """The way to move the field, as the overlay's arrow: from the middle of the anatomy's side that
    faces the field's `edge` (the middle of that field edge when the anatomy is not in the field),
    outwards by the move the correction asks for (at least MIN_MOVE_MM)."""
    direction = np.array(_OUTWARDS.get(edge, (0.0, -1.0)))
    ref = field if box is None else box
    half = np.array([ref.width, ref.height]) / 2
    tail = np.array(ref.centre) + direction * half
    return arrow_marker(seg, tail, tail + direction * max(need_mm, MIN_MOVE_MM) / seg.mm_per_px)


def _coverage_of(
    item: str,
    seg: Segmentation,
    names: tuple[str, ...],
    field: Box,
    sides: str,
    min_margin_mm: float,
    spine: Spine | None = None,
) -> Measurement:
    present = [n for n in names if seg.present(n)]
    missing = [n for n in names if n not in present]
    if missing:
        detail: dict[str, object] = {"structures": list(names), "missing": missing, "cut": True}
        if item in _MISSING_EDGE:
            detail["marker"] = move_arrow(seg, None, field, _MISSING_EDGE[item], MISSING_MOVE_MM)
        return Measurement(item, float("-inf"), "mm", detail, cut=True)
    if spine is not None and len(names) == 1 and names[0].startswith("body_"):
        keep = "top" if item == "lower_coverage" else "bottom"
        box = fine_box(_plausible_body(seg, spine, names[0], keep))
    else:
        box = seg.union_box(names)
    margin, gaps = _margin(seg, box, field, sides)
    edge = min(gaps, key=lambda k: gaps[k])
    cut = margin < to_mm(seg, EDGE_TOLERANCE_PX)
    detail = {"structures": list(names), "margins_mm": gaps, "nearest_edge": edge, "cut": cut}
    detail["marker"] = move_arrow(seg, box, field, edge, min_margin_mm - margin)
    return Measurement(item, margin, "mm", detail, cut=cut)


def coverage(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    item = rule.item
    min_margin_mm = rule.number("min_margin_mm")
    if "structure" in rule.params:
        return _coverage_of(item, seg, (rule.text("structure"),), field, "xy", min_margin_mm, spine)
    if item == "lower_coverage" and ctx.view == "ap":
        if not all(seg.present(j) for j in SI_JOINTS) and seg.present("sacrum"):
            # the model missed the joints (a field that cut them would cut the sacrum beside them too):
            # the joints lie beside the upper half of the sacrum, so that half is what must be in the field
            box = fine_box(beside_si_joints(seg))
            margin, gaps = _margin(seg, box, field, "xy")
            cut = margin < to_mm(seg, EDGE_TOLERANCE_PX)
            detail: dict[str, object] = {"structures": ["sacrum (upper half)"], "margins_mm": gaps, "cut": cut}
            detail["nearest_edge"] = min(gaps, key=lambda k: gaps[k])
            detail["note"] = "SI joints not found: measured beside them, on the upper half of the sacrum"
            detail["marker"] = move_arrow(seg, box, field, str(detail["nearest_edge"]), min_margin_mm - margin)
            return Measurement(item, margin, "mm", detail, cut=cut)
        return _coverage_of(item, seg, SI_JOINTS, field, "xy", min_margin_mm)
    if item == "lower_coverage":  # lateral: L5 and the L5/S1 disc with the top of the sacrum below it
        if not seg.present("sacrum") or "L5" not in spine.centres:
            missing = [n for n in ("body_L5", "sacrum") if not seg.present(n)]
            lost = move_arrow(seg, None, field, "bottom", MISSING_MOVE_MM)
            return Measurement(item, float("-inf"), "mm", {"missing": missing, "cut": True, "marker": lost}, cut=True)
        below_l5 = spine.band("L5", 0.0, 1.5)
        disc = np.where(below_l5, seg.prob("disc"), 0.0).astype(np.float32)
        union_box = fine_box(np.maximum(seg.prob("body_L5"), disc))
        margin, gaps = _margin(seg, union_box, field, "y")
        cut = margin < to_mm(seg, EDGE_TOLERANCE_PX)
        return Measurement(
            item,
            margin,
            "mm",
            {
                "structures": ["body_L5", "disc L5-S1", "sacrum"],
                "margins_mm": gaps,
                "nearest_edge": "bottom",
                "cut": cut,
                "marker": move_arrow(seg, union_box, field, "bottom", min_margin_mm - margin),
            },
            cut=cut,
        )
    if item == "lateral_coverage":
        return _coverage_of(item, seg, ("transverse_process",), field, "x", min_margin_mm)
    names = (*(f"body_{lv}" for lv in LUMBAR_LEVELS), "spinous_process")  # front_back_coverage
    present = tuple(n for n in names if seg.present(n))
    return _coverage_of(item, seg, present or names, field, "x", min_margin_mm)


def centring(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    box = required_box(seg, ctx.view)
    if box is None:
        return Measurement("centring", None, "fraction", reason="anatomy not found")
    (cx, cy), (fx, fy) = box.centre, field.centre
    frac = max(abs(cx - fx) / field.width, abs(cy - fy) / field.height)
    return Measurement(
        "centring",
        frac,
        "fraction",
        {
            "offset_x_mm": round(to_mm(seg, cx - fx), 1),
            "offset_y_mm": round(to_mm(seg, cy - fy), 1),
            "marker": arrow_marker(seg, np.array([fx, fy]), np.array([cx, cy])),  # field centre -> anatomy
        },
    )


def collimation(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    box = required_box(seg, ctx.view)
    if box is None:
        return Measurement("collimation", None, "ratio", reason="anatomy not found")
    margin = rule.number("margin_mm") / seg.mm_per_px
    minimal = (box.width + 2 * margin) * (box.height + 2 * margin)
    ratio = field.width * field.height / minimal
    return Measurement(
        "collimation",
        ratio,
        "ratio",
        {
            "field_mm": [round(to_mm(seg, field.width)), round(to_mm(seg, field.height))],
            "minimal_field_mm": [round(to_mm(seg, box.width + 2 * margin)), round(to_mm(seg, box.height + 2 * margin))],
            # the field it compares with: the required anatomy plus the margin all round
            "marker": box_marker(seg, Box(box.x0 - margin, box.x1 + margin, box.y0 - margin, box.y1 + margin)),
        },
    )


def axis_tilt(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    levels = spine.lumbar_levels
    if len(levels) < 3:
        return Measurement("axis_tilt", None, "deg", reason="fewer than 3 lumbar bodies found")
    tilt = float(np.degrees(np.arctan2(spine.axis[0], spine.axis[1])))
    return Measurement("axis_tilt", tilt, "deg", {"levels": levels})


# the field's edge nearest the anatomy -> which way to move the field (sizes in cm at the detector)
_MOVE: Final = {
    "top": N_("move the field up (or open it) by at least {cm} cm at the detector"),
    "bottom": N_("move the field down (or open it) by at least {cm} cm at the detector"),
    "left": N_("move the field towards the image's left (or open it) by at least {cm} cm at the detector"),
    "right": N_("move the field towards the image's right (or open it) by at least {cm} cm at the detector"),
}
_MOVE_OUT: Final = N_("move the field outwards (or open it) by at least {cm} cm at the detector")
# where a structure the field left out lies, by the item that asks for it
_MISSING_TOWARDS: Final = {
    "upper_coverage": N_("{structures} not in the field: move the field up (towards the head), or open the field"),
    "lower_coverage": N_("{structures} not in the field: move the field down (towards the feet), or open the field"),
}
_MISSING: Final = N_("{structures} not in the field: re-centre, or open the field")


def coverage_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    missing = m.detail.get("missing")
    if isinstance(missing, list) and missing:
        return Phrase(_MISSING_TOWARDS.get(m.item, _MISSING), {"structures": structures_phrase(missing)})
    edge = str(m.detail.get("nearest_edge", ""))
    need = rule.number("min_margin_mm") - (m.value or 0.0)
    return Phrase(_MOVE.get(edge, _MOVE_OUT), {"cm": setting.detector_cm(max(need, MIN_MOVE_MM))})


def centring_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    dx, dy = float(m.detail.get("offset_x_mm", 0.0)), float(m.detail.get("offset_y_mm", 0.0))  # type: ignore[arg-type]
    parts = []
    across, along = setting.detector_cm(abs(dx)), setting.detector_cm(abs(dy))
    if abs(dx) >= 5:
        right = phrase("{cm} cm towards the image's right", cm=across)
        parts.append(right if dx > 0 else phrase("{cm} cm towards the image's left", cm=across))
    if abs(dy) >= 5:
        parts.append(phrase("{cm} cm down", cm=along) if dy > 0 else phrase("{cm} cm up", cm=along))
    if len(parts) == 2:
        return phrase("move the central ray {across} and {along} at the detector", across=parts[0], along=parts[1])
    if parts:
        return phrase("move the central ray {move} at the detector", move=parts[0])
    return phrase("move the central ray onto the spine")


def axis_tilt_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    off = abs(m.value or 0)
    return phrase(
        "straighten the patient on the table: the spine runs {degrees:.0f} degrees off the field's long axis",
        degrees=off,
    )


def collimation_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    size = m.detail.get("minimal_field_mm")
    if not isinstance(size, list):
        return phrase("collimate tighter")
    width, height = (setting.detector_cm(float(mm)) for mm in size)
    return phrase("collimate to about {width} x {height} cm at the detector", width=width, height=height)


SPECS: Final = (
    ItemSpec(
        "upper_coverage", "at_least", ("min_margin_mm",), coverage, coverage_correction,
        params=frozenset({"structure"}), structures=("body_T12", "body_L1"), borderline=2.0,
    ),
    ItemSpec(
        "lower_coverage", "at_least", ("min_margin_mm",), coverage, coverage_correction,
        optional=frozenset({"structure"}), structures=(*SI_JOINTS, "sacrum", "body_L5"),
        borderline=2.0, relies_on=("sacrum", "body_L5"),  # missed SI joints: measured beside them
    ),
    ItemSpec(
        "lateral_coverage", "at_least", ("min_margin_mm",), coverage, coverage_correction,
        structures=("transverse_process",), borderline=2.0,
    ),
    ItemSpec(
        "front_back_coverage", "at_least", ("min_margin_mm",), coverage, coverage_correction,
        structures=("spinous_process",), borderline=2.0,
    ),
    ItemSpec("centring", "at_most", ("max_offset_fraction",), centring, centring_correction, borderline=0.01),
    ItemSpec("axis_tilt", "abs_at_most", ("max_tilt_deg",), axis_tilt, axis_tilt_correction, borderline=1.0),
    ItemSpec(
        "collimation", "at_most", ("max_area_ratio",), collimation, collimation_correction,
        params=frozenset({"margin_mm"}), borderline=0.05,
    ),
)  # fmt: skip
