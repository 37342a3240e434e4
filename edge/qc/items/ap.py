"""AP family: rotation (spinous processes and pedicles), pelvis rotation and open disc spaces (the
latter judged on laterals too). Measurements and corrections, and their ItemSpecs."""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.qc.item import ItemSpec, Setting
from edge.qc.measure import (
    DISC_JOINTS,
    PEDICLE_BAND,
    SPINOUS_BAND,
    Context,
    Measurement,
    Spine,
    pedicle_centres,
    to_mm,
)
from edge.qc.rules import ItemRule
from edge.qc.segmentation import Box, Segmentation, fine_points
from edge.qc.structures import SI_JOINTS
from edge.qc.words import Phrase, phrase

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


# Spinous offset over inter-pedicle distance -> axial rotation: offset = D sin(a), distance = W cos(a),
# so a = atan(ratio / (D / W)). D / W, the depth from the pedicles' centres to the spinous process
# over the distance between the pedicles, is fitted on phantom images of known rotation (0.77 with
# model 0.2.0, Theil-Sen over 330 AP images; adult lumbar anatomy: ~30 mm over ~40 mm). Positive
# angles: the patient's left side turned back.
SPINOUS_DEPTH_OVER_WIDTH: Final = 0.77


def rotation_spinous(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    ratios: dict[str, float] = {}
    for level in spine.lumbar_levels:
        pedicles = pedicle_centres(seg, spine, level)
        spinous = seg.centroid("spinous_process", spine.band(level, *SPINOUS_BAND))
        if pedicles is None or spinous is None:
            continue
        left, right = pedicles
        width = float(np.linalg.norm(left - right))
        towards_left = (left - right) / max(width, 1e-6)
        ratios[level] = float((spinous - (left + right) / 2) @ towards_left) / max(width, 1e-6)
    if len(ratios) < 3:
        return Measurement("rotation_spinous", None, "ratio", reason="pedicles or spinous processes not found")
    signed = float(np.median(list(ratios.values())))
    angle = -float(np.degrees(np.arctan(signed / SPINOUS_DEPTH_OVER_WIDTH)))
    return Measurement(
        "rotation_spinous",
        float(np.median(np.abs(list(ratios.values())))),
        "ratio",
        {"per_level": {k: round(v, 3) for k, v in ratios.items()}, "rotation_deg": round(angle, 1)},
    )


def _edge_distance(seg: Segmentation, spine: Spine, level: str, side: str, rows: Bool) -> float | None:
    """Distance (px, across) from the pedicle's medial border to the body edge on its side."""
    ped = fine_points(seg.prob(f"pedicle_{side}"), rows)
    body = fine_points(seg.prob(f"body_{level}"), rows)
    if len(ped) < 4 or len(body) < 4:
        return None
    p, b = ped @ spine.across, body @ spine.across
    if float(np.median(p)) >= float(np.median(b)):
        return float(b.max() - p.min())
    return float(p.max() - b.min())


# Pedicle ratio -> axial rotation: the ratio tracks rotation almost linearly (Lee et al. 2024); on the
# phantom, rotation = 17.2 ln(ratio) degrees (330 AP images of known rotation, model 0.2.0).
PEDICLE_LOG_RATIO_DEG: Final = 17.2


def rotation_pedicles(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    ratios: dict[str, float] = {}
    for level in spine.lumbar_levels:
        rows = spine.band(level, *PEDICLE_BAND)
        d_left = _edge_distance(seg, spine, level, "left", rows)
        d_right = _edge_distance(seg, spine, level, "right", rows)
        if d_left is None or d_right is None or d_right <= 0:
            continue
        ratios[level] = d_left / d_right
    if len(ratios) < 3:
        return Measurement("rotation_pedicles", None, "ratio", reason="pedicles not found at 3 levels")
    ratio = float(np.median(list(ratios.values())))
    return Measurement(
        "rotation_pedicles",
        ratio,
        "ratio",
        {
            "per_level": {k: round(v, 3) for k, v in ratios.items()},
            "rotation_deg": round(PEDICLE_LOG_RATIO_DEG * float(np.log(max(ratio, 1e-3))), 1),
        },
    )


def pelvis_rotation(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    a = seg.centroid("spinous_process", spine.band("L4", *SPINOUS_BAND)) if "L4" in spine.centres else None
    b = seg.centroid("spinous_process", spine.band("L5", *SPINOUS_BAND)) if "L5" in spine.centres else None
    left, right = (seg.centroid(j) if seg.present(j) else None for j in SI_JOINTS)  # specks are no joints
    if a is None or b is None or left is None or right is None:
        return Measurement("pelvis_rotation", None, "ratio", reason="SI joints or lower spinous processes not found")
    # the line through the L4 and L5 spinous processes: its direction from the two bodies' centres
    # (large masks, precise centroids: two spinous centroids 30 mm apart would tilt the line by
    # degrees and move the SI joints' distances by millimetres), its position from the processes
    axis = spine.centres["L5"] - spine.centres["L4"]
    direction = axis / max(float(np.linalg.norm(axis)), 1e-6)
    normal = np.array([direction[1], -direction[0]])
    mid = (a + b) / 2
    d_left, d_right = abs(float((left - mid) @ normal)), abs(float((right - mid) @ normal))
    return Measurement(
        "pelvis_rotation",
        d_left / max(d_right, 1e-6),
        "ratio",
        {"left_mm": round(to_mm(seg, d_left), 1), "right_mm": round(to_mm(seg, d_right), 1)},
    )


# The model's body masks reach into the disc space by the blur of the endplates' rims: measured gaps
# run short by 1-1.5 mm near zero. With the robust edges below, the correction takes the AP
# disc-space item from 13 to 8 errors on about 300 phantom development AP images (model 0.2.0).
DISC_GAP_CORRECTION_MM: Final = 1.5


EDGE_PERCENTILE: Final = 5.0


def _edge_along(points: F64, direction: F64, side: str) -> float:
    """Position along `direction` of a body's bottom ("bottom") or top edge: per column across the
    spine the extreme of the mask, then a robust extreme over the middle 80 % of the columns (the
    5th percentile from the edge), so that one stray sub-pixel does not open or close a disc space."""
    across = np.array([direction[1], -direction[0]])
    t, v = points @ across, points @ direction
    bins = np.round((t - t.min()) * 4).astype(int)
    extreme = np.full(bins.max() + 1, -np.inf if side == "bottom" else np.inf)
    (np.maximum if side == "bottom" else np.minimum).at(extreme, bins, v)
    extreme = extreme[np.isfinite(extreme)]
    n = len(extreme)
    middle = extreme[int(n * 0.1) : int(n * 0.9) + 1]
    q = 100 - EDGE_PERCENTILE if side == "bottom" else EDGE_PERCENTILE
    return float(np.percentile(middle, q))


def _gap_px(spine: Spine, upper: str, lower: str) -> float:
    """Open space between two bodies along the line joining them (negative where they overlap)."""
    d = spine.centres[lower] - spine.centres[upper]
    d = d / np.linalg.norm(d)
    return _edge_along(spine.points[lower], d, "top") - _edge_along(spine.points[upper], d, "bottom")


def disc_spaces(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    limit = rule.number("min_gap_mm")
    gaps: dict[str, float] = {}
    for joint in DISC_JOINTS:
        upper, lower = joint.split("-")
        if upper in spine.centres and lower in spine.centres:
            gaps[joint] = to_mm(seg, _gap_px(spine, upper, lower)) + DISC_GAP_CORRECTION_MM
    visible = sum(g > limit for g in gaps.values())
    return Measurement("disc_spaces", float(visible), "levels", {"gap_mm": {k: round(v, 2) for k, v in gaps.items()}})


def rotation_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    angle = m.detail.get("rotation_deg")
    if isinstance(angle, float | int) and abs(angle) >= 1:
        if angle > 0:
            return phrase(
                "patient rotated about {degrees:.0f} degrees (the left side turned back): "
                "bring the left side forward until the shoulders and hips are level",
                degrees=abs(angle),
            )
        return phrase(
            "patient rotated about {degrees:.0f} degrees (the right side turned back): "
            "bring the right side forward until the shoulders and hips are level",
            degrees=abs(angle),
        )
    return phrase("level the shoulders and hips: spinous processes must sit midway between the pedicles")


def pelvis_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    return phrase("level the pelvis: both anterior superior iliac spines the same height above the table")


def disc_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    if setting.view == "ap":
        return phrase("flex the hips and knees to flatten the lordosis, or angle the tube 5-10 degrees cranially")
    return phrase(
        "align the central ray with the disc spaces (support the waist so the spine is parallel to the table)"
    )


SPECS: Final = (
    ItemSpec(
        "rotation_spinous", "at_most", ("max_offset_ratio",), rotation_spinous, rotation_correction,
        structures=("spinous_process", "pedicle_left", "pedicle_right"), borderline=0.02,
    ),
    ItemSpec(
        "rotation_pedicles", "within", ("min_ratio", "max_ratio"), rotation_pedicles, rotation_correction,
        structures=("pedicle_left", "pedicle_right"), borderline=0.04,
    ),
    ItemSpec(
        "pelvis_rotation", "within", ("min_ratio", "max_ratio"), pelvis_rotation, pelvis_correction,
        structures=SI_JOINTS, borderline=0.03,
    ),
    ItemSpec(
        "disc_spaces", "at_least", ("min_visible_levels",), disc_spaces, disc_correction,
        params=frozenset({"min_gap_mm"}), structures=("disc",),
    ),
)  # fmt: skip
