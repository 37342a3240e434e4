"""The expected QC outcome of a phantom image, derived from its 3D truth by exact projection.

Each QC item of the standard (edge/qc/standards) is evaluated on projected 3D landmarks (pedicle
centres, endplate rims, facet joint planes...) and on the unclipped projected masks, never on the
rendered pixels: this is what the QC engine must reproduce from the image alone. Lengths are in
millimetres in the plane of the spine (detector millimetres over the magnification), the unit the
engine gets from the calibrated Pixel Spacing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge.qc.items import ITEMS
from edge.qc.measure import DISC_JOINTS, FACET_JOINTS
from edge.qc.standard import ItemRule, Standard
from edge.qc.structures import LUMBAR_LEVELS, REQUIRED_STRUCTURES, View
from tools.phantom.acquisition import OBLIQUE_SIDE, Acquisition
from tools.phantom.anatomy import Anatomy
from tools.phantom.raycast import project_points
from tools.phantom.render import Rendering

F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]
Outcome = Literal["pass", "warn", "fail"]

# Half-width of the band around a threshold inside which a case is "borderline" (issue: faults
# within 1 degree or 2 mm of a threshold are counted separately), in each item's own unit.
BORDERLINE: Final[dict[str, float]] = {
    name: spec.borderline for name, spec in ITEMS.items() if spec.borderline is not None
}  # from the item registry (edge.qc.items): one definition per item


@dataclass(frozen=True)
class ItemTruth:
    item: str
    value: float
    unit: str
    outcome: Outcome
    borderline: bool
    detail: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        value = round(self.value, 4) if np.isfinite(self.value) else None
        return {
            "value": value,
            "unit": self.unit,
            "outcome": self.outcome,
            "borderline": self.borderline,
            **self.detail,
        }


class _Geometry:
    """Projection of named landmarks into the detector plane, patient-plane millimetres."""

    def __init__(self, anatomy: Anatomy, rendering: Rendering) -> None:
        self.anatomy = anatomy
        self.r = rendering
        self.pose = rendering.pose
        self.mag = rendering.pose.magnification

    def xy(self, name: str) -> F64:
        """Projected points (N x 2) in detector millimetres."""
        pts = self.anatomy.points[name]
        lab = self.pose.to_lab(pts, pelvis=name.startswith("pelvis."))
        return project_points(lab, self.pose.source)

    def one(self, name: str) -> F64:
        return np.asarray(self.xy(name).mean(axis=0))

    def lab(self, name: str) -> F64:
        pts = self.anatomy.points[name]
        return self.pose.to_lab(pts, pelvis=name.startswith("pelvis."))

    def mask_extent(self, names: Iterable[str]) -> tuple[float, float, float, float] | None:
        """Bounding box (x0, x1, y0, y1), detector mm, of the union of unclipped masks."""
        det = self.r.detector
        union = np.zeros((det.rows, det.cols), dtype=bool)
        for name in names:
            union |= self.r.unclipped.get(name, np.zeros_like(union))
        if not union.any():
            return None
        rows = np.flatnonzero(union.any(axis=1))
        cols = np.flatnonzero(union.any(axis=0))
        half = det.pitch_mm / 2
        xs, ys = det.col_x(), det.row_y()
        return (
            float(xs[cols[0]] - half),
            float(xs[cols[-1]] + half),
            float(ys[rows[0]] - half),
            float(ys[rows[-1]] + half),
        )

    def margin(self, extent: tuple[float, float, float, float] | None, sides: str = "xy") -> float:
        """Smallest distance (patient mm) from the extent to the field edge; negative when cut."""
        if extent is None:
            return float("-inf")
        f = self.r.field
        x0, x1, y0, y1 = extent
        gaps = []
        if "x" in sides:
            gaps += [x0 - f.x0, f.x1 - x1]
        if "y" in sides:
            gaps += [y0 - f.y0, f.y1 - y1]
        return min(gaps) / self.mag

    def points_extent(self, names: Iterable[str]) -> tuple[float, float, float, float]:
        pts = np.concatenate([self.xy(n) for n in names])
        return float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()), float(pts[:, 1].max())

    def spine_axis(self) -> F64:
        """Unit vector of the projected L1 -> L5 line (downwards in the image)."""
        top, bottom = self.one("body.L1.centre"), self.one("body.L5.centre")
        v = bottom - top
        return np.asarray(v / np.linalg.norm(v))

    def across(self) -> F64:
        """Unit vector perpendicular to the spine axis, towards +X."""
        a = self.spine_axis()
        v = np.array([a[1], -a[0]])
        return v if v[0] >= 0 else -v


def _band(value: float, lo: float | None, hi: float | None, tol: float) -> tuple[Outcome, bool]:
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    near = any(abs(value - t) < tol for t in (lo, hi) if t is not None and np.isfinite(value))
    return ("pass" if ok else "fail"), near


def _visible_levels(
    item: str, values: dict[str, float], rule: ItemRule, limit_key: str, at_least: bool, tol: float, detail: str
) -> ItemTruth:
    """Items that count the levels at which a structure is shown: pass with at least
    `min_visible_levels` levels whose value is >= (or <=, with at_least False) the limit; borderline
    when shifting the limit by `tol` either way changes the outcome."""
    need = int(rule.number("min_visible_levels"))
    limit = rule.number(limit_key)

    def count(shift: float) -> int:
        if at_least:
            return sum(v >= limit + shift for v in values.values())
        return sum(v <= limit + shift for v in values.values())

    n = count(0.0)
    strict, loose = count(tol if at_least else -tol), count(-tol if at_least else tol)
    outcome: Outcome = "pass" if n >= need else "fail"
    return ItemTruth(
        item,
        float(n),
        "levels",
        outcome,
        (strict >= need) != (loose >= need),
        {"threshold": need, detail: {k: round(v, 3) for k, v in values.items()}},
    )


def evaluate(anatomy: Anatomy, acq: Acquisition, rendering: Rendering, standard: Standard) -> dict[str, ItemTruth]:
    g = _Geometry(anatomy, rendering)
    view = acq.view
    out: dict[str, ItemTruth] = {}
    for name, rule in standard.items[view].items():
        out[name] = ITEM_TRUTHS[name](g, acq, rule)
    return out


# ---------------------------------------------------------------------------------------- items
def _coverage(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    item = rule.item
    min_margin = rule.number("min_margin_mm")
    if "structure" in rule.params:
        names: tuple[str, ...] = (rule.text("structure"),)
        margin = g.margin(g.mask_extent(names))
    elif item == "lower_coverage" and acq.view == "ap":
        names = ("si_joint_left", "si_joint_right")
        margin = g.margin(g.mask_extent(names))
    elif item == "lower_coverage":  # lateral: the whole L5/S1 disc space
        names = ("disc.L5-S1.upper_rim", "disc.L5-S1.lower_rim")
        margin = g.margin(g.points_extent(names))
    elif item == "lateral_coverage":
        names = ("transverse_process",)
        margin = g.margin(g.mask_extent(names), sides="x")
    else:  # front_back_coverage
        names = (*(f"body_{lv}" for lv in LUMBAR_LEVELS), "spinous_process")
        margin = g.margin(g.mask_extent(names), sides="x")
    outcome, near = _band(margin, min_margin, None, BORDERLINE[item])
    return ItemTruth(item, margin, "mm", outcome, near, {"threshold": min_margin, "structures": list(names)})


def _centring(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    ext = g.mask_extent(REQUIRED_STRUCTURES[acq.view])
    f = g.r.field
    if ext is None:
        return ItemTruth("centring", float("inf"), "fraction", "fail", False, {"reason": "anatomy not projected"})
    cx, cy = (ext[0] + ext[1]) / 2, (ext[2] + ext[3]) / 2
    fx, fy = (f.x0 + f.x1) / 2, (f.y0 + f.y1) / 2
    frac = max(abs(cx - fx) / (f.x1 - f.x0), abs(cy - fy) / (f.y1 - f.y0))
    limit = rule.number("max_offset_fraction")
    outcome, near = _band(frac, None, limit, BORDERLINE["centring"])
    return ItemTruth(
        "centring",
        frac,
        "fraction",
        outcome,
        near,
        {"threshold": limit, "offset_x_mm": (cx - fx) / g.mag, "offset_y_mm": (cy - fy) / g.mag},
    )


def _axis_tilt(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    centres = np.stack([g.one(f"body.{lv}.centre") for lv in LUMBAR_LEVELS])
    slope = np.polyfit(centres[:, 1], centres[:, 0], 1)[0]  # x as a function of y
    tilt = float(np.degrees(np.arctan(slope)))
    limit = rule.number("max_tilt_deg")
    outcome, near = _band(abs(tilt), None, limit, BORDERLINE["axis_tilt"])
    return ItemTruth("axis_tilt", tilt, "deg", outcome, near, {"threshold": limit})


def _rotation_spinous(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    across = g.across()
    ratios = []
    for lv in LUMBAR_LEVELS:
        s = g.one(f"spinous.{lv}.centre") @ across
        left = g.one(f"pedicle.{lv}.left.centre") @ across
        right = g.one(f"pedicle.{lv}.right.centre") @ across
        ratios.append((s - (left + right) / 2) / abs(left - right))
    value = float(np.median(np.abs(ratios)))
    limit = rule.number("max_offset_ratio")
    outcome, near = _band(value, None, limit, BORDERLINE["rotation_spinous"])
    return ItemTruth(
        "rotation_spinous",
        value,
        "ratio",
        outcome,
        near,
        {"threshold": limit, "per_level": [round(float(r), 4) for r in ratios], "rotation_deg": acq.rotation_deg},
    )


def _pedicle_edge_distance(g: _Geometry, level: str, side: str, across: F64) -> float:
    centre = g.one(f"pedicle.{level}.{side}.centre") @ across
    ring = g.xy(f"body.{level}.ring_at_pedicles") @ across
    surface = g.xy(f"pedicle.{level}.{side}.surface") @ across
    mid_body = float(np.median(ring))
    if centre >= mid_body:
        return float(ring.max() - surface.min())  # pedicle on the +across side: medial border = min
    return float(surface.max() - ring.min())


def _rotation_pedicles(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    across = g.across()
    ratios = []
    for lv in LUMBAR_LEVELS:
        d_left = _pedicle_edge_distance(g, lv, "left", across)
        d_right = _pedicle_edge_distance(g, lv, "right", across)
        ratios.append(d_left / max(d_right, 1e-6))
    value = float(np.median(ratios))
    lo, hi = rule.number("min_ratio"), rule.number("max_ratio")
    outcome, near = _band(value, lo, hi, BORDERLINE["rotation_pedicles"])
    return ItemTruth(
        "rotation_pedicles",
        value,
        "ratio",
        outcome,
        near,
        {"threshold": [lo, hi], "per_level": [round(r, 4) for r in ratios]},
    )


def _pelvis_rotation(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    a, b = g.one("spinous.L4.centre"), g.one("spinous.L5.centre")
    direction = (b - a) / np.linalg.norm(b - a)
    normal = np.array([direction[1], -direction[0]])

    def distance(name: str) -> float:
        return float(abs((g.one(name) - a) @ normal))

    d_left, d_right = distance("pelvis.si_joint.left.centre"), distance("pelvis.si_joint.right.centre")
    value = d_left / max(d_right, 1e-6)
    lo, hi = rule.number("min_ratio"), rule.number("max_ratio")
    outcome, near = _band(value, lo, hi, BORDERLINE["pelvis_rotation"])
    return ItemTruth(
        "pelvis_rotation",
        value,
        "ratio",
        outcome,
        near,
        {"threshold": [lo, hi], "pelvis_rotation_deg": acq.pelvis_rotation_deg},
    )


def disc_gap_mm(g: _Geometry, joint: str) -> float:
    """Open disc space between the projected endplate rims (negative when they overlap)."""
    upper, lower = g.xy(f"disc.{joint}.upper_rim"), g.xy(f"disc.{joint}.lower_rim")
    n = upper.mean(axis=0) - lower.mean(axis=0)
    n /= np.linalg.norm(n)
    return float((upper @ n).min() - (lower @ n).max()) / g.mag


def _disc_spaces(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    gaps = {joint: disc_gap_mm(g, joint) for joint in DISC_JOINTS}
    return _visible_levels("disc_spaces", gaps, rule, "min_gap_mm", True, 0.5, "gap_mm")


def _foramina(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    """The left and right foramina superimpose on a true lateral: overlap of the two openings."""
    overlaps = {}
    axis, across = g.spine_axis(), g.across()
    for joint in DISC_JOINTS:
        d = g.one(f"foramen.{joint}.left.centre") - g.one(f"foramen.{joint}.right.centre")
        _, half_ap, half_height = g.anatomy.points[f"foramen.{joint}.half_mm"][0] * g.mag
        dist = np.hypot((d @ across) / (2 * half_ap), (d @ axis) / (2 * half_height))
        overlaps[joint] = max(0.0, 1.0 - float(dist))
    return _visible_levels("foramina", overlaps, rule, "min_overlap", True, 0.05, "overlap")


def _collimation(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    ext = g.mask_extent(REQUIRED_STRUCTURES[acq.view])
    margin = rule.number("margin_mm") * g.mag
    limit = rule.number("max_area_ratio")
    if ext is None:
        return ItemTruth("collimation", float("inf"), "ratio", "fail", False, {"reason": "anatomy not projected"})
    minimal = (ext[1] - ext[0] + 2 * margin) * (ext[3] - ext[2] + 2 * margin)
    value = g.r.field.area_mm2 / minimal
    outcome, near = _band(value, None, limit, BORDERLINE["collimation"])
    return ItemTruth("collimation", value, "ratio", outcome, near, {"threshold": limit})


def _exposure(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    di = g.r.deviation_index
    fail_lo, fail_hi = rule.number("fail_below"), rule.number("fail_above")
    warn_lo, warn_hi = rule.number("warn_below"), rule.number("warn_above")
    outcome: Outcome = "fail" if not fail_lo <= di <= fail_hi else "warn" if not warn_lo <= di <= warn_hi else "pass"
    near = min(abs(di - fail_lo), abs(di - fail_hi)) < BORDERLINE["exposure_index"]
    return ItemTruth(
        "exposure_index",
        di,
        "DI",
        outcome,
        near,
        {"threshold": [fail_lo, fail_hi], "exposure_index": g.r.exposure_index, "target_exposure_index": acq.target_ei},
    )


def _clipping(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    value = g.r.clipped_fraction
    limit = rule.number("max_clipped_fraction")
    outcome, near = _band(value, None, limit, BORDERLINE["clipping"])
    return ItemTruth("clipping", value, "fraction", outcome, near, {"threshold": limit})


def _double_margins(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    across = g.across()
    gaps = []
    for lv in ("L2", "L3", "L4"):
        lobes = g.xy(f"body.{lv}.posterior_lobes")
        gaps.append(abs(float((lobes[0] - lobes[1]) @ across)) / g.mag)
    value = float(np.median(gaps))
    limit = rule.number("max_gap_mm")
    outcome, near = _band(value, None, limit, BORDERLINE["rotation_double_margins"])
    return ItemTruth(
        "rotation_double_margins",
        value,
        "mm",
        outcome,
        near,
        {"threshold": limit, "per_level_mm": [round(x, 3) for x in gaps], "rotation_deg": acq.rotation_deg},
    )


def _double_endplates(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    level = min(LUMBAR_LEVELS, key=lambda lv: float(np.linalg.norm(g.one(f"body.{lv}.centre"))))
    ring = g.xy(f"body.{level}.top_rim")
    centred = ring - ring.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    thickness = float(np.ptp(centred @ vt[1])) / g.mag
    limit = rule.number("max_gap_mm")
    outcome, near = _band(thickness, None, limit, BORDERLINE["tilt_double_endplates"])
    return ItemTruth(
        "tilt_double_endplates",
        thickness,
        "mm",
        outcome,
        near,
        {"threshold": limit, "level": level, "tilt_deg": acq.tilt_deg},
    )


def effective_obliquity(acq: Acquisition) -> float:
    """How far the patient is actually turned from AP/PA (degrees, magnitude)."""
    return turned_from_ap(acq.projection, acq.obliquity_deg, acq.rotation_deg)


def turned_from_ap(projection: str, obliquity_deg: float, rotation_deg: float) -> float:
    """The oblique's intended turn plus the unintended axial rotation, as a magnitude (degrees); the
    CT DRRs' truth uses the same convention."""
    sign = {"LPO": 1.0, "RAO": 1.0, "RPO": -1.0, "LAO": -1.0}.get(projection, 0.0)
    return abs(sign * obliquity_deg + rotation_deg)


def eye_position(g: _Geometry, acq: Acquisition, level: str) -> float:
    """Where the demonstrated pedicle ('eye') sits across the body: 0 anterior edge, 1 posterior edge."""
    side = OBLIQUE_SIDE.get(acq.projection, "left")
    across = g.across()
    eye = g.one(f"pedicle.{level}.{side}.centre") @ across
    ring = g.xy(f"body.{level}.ring_at_pedicles") @ across
    anterior = g.one(f"body.{level}.anterior") @ across
    centre = g.one(f"body.{level}.centre") @ across
    lo, hi = float(ring.min()), float(ring.max())
    if anterior <= centre:
        return float((eye - lo) / (hi - lo))
    return float((hi - eye) / (hi - lo))


def _obliquity(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    angle = effective_obliquity(acq)
    lo, hi = rule.number("min_angle_deg"), rule.number("max_angle_deg")
    outcome, near = _band(angle, lo, hi, BORDERLINE["obliquity"])
    positions = {lv: round(eye_position(g, acq, lv), 4) for lv in ("L2", "L3", "L4")}
    direction = "under" if angle < lo else "over" if angle > hi else "ok"
    return ItemTruth(
        "obliquity",
        angle,
        "deg",
        outcome,
        near,
        {
            "threshold": [lo, hi],
            "eye_position": positions,
            "direction": direction,
            "side": OBLIQUE_SIDE.get(acq.projection),
        },
    )


def _facet_joints(g: _Geometry, acq: Acquisition, rule: ItemRule) -> ItemTruth:
    side = OBLIQUE_SIDE.get(acq.projection, "left")
    angles = {}
    for joint in FACET_JOINTS:
        centre = g.lab(f"facet.{joint}.{side}.centre")[0]
        normal = g.pose.rotation @ g.anatomy.points[f"facet.{joint}.{side}.normal"][0]
        beam = centre - g.pose.source
        beam /= np.linalg.norm(beam)
        angles[joint] = float(np.degrees(np.arcsin(min(1.0, abs(float(normal @ beam))))))
    return _visible_levels("facet_joints", angles, rule, "max_angle_deg", False, 1.0, "beam_to_joint_deg")


ITEM_TRUTHS: Final[dict[str, Callable[[_Geometry, Acquisition, ItemRule], ItemTruth]]] = {
    "upper_coverage": _coverage,
    "lower_coverage": _coverage,
    "lateral_coverage": _coverage,
    "front_back_coverage": _coverage,
    "centring": _centring,
    "axis_tilt": _axis_tilt,
    "rotation_spinous": _rotation_spinous,
    "rotation_pedicles": _rotation_pedicles,
    "pelvis_rotation": _pelvis_rotation,
    "disc_spaces": _disc_spaces,
    "foramina": _foramina,
    "collimation": _collimation,
    "exposure_index": _exposure,
    "clipping": _clipping,
    "rotation_double_margins": _double_margins,
    "tilt_double_endplates": _double_endplates,
    "obliquity": _obliquity,
    "facet_joints": _facet_joints,
}


def summarise(items: dict[str, ItemTruth], standard: Standard, view: View) -> dict[str, object]:
    failed = [name for name, t in items.items() if t.outcome == "fail" and standard.rule(view, name).severity == "fail"]
    warned = [
        name
        for name, t in items.items()
        if t.outcome == "warn" or (t.outcome == "fail" and standard.rule(view, name).severity == "warn")
    ]
    return {
        "verdict": "fail" if failed else "pass",
        "failed_items": failed,
        "warned_items": warned,
        "borderline": any(t.borderline for t in items.values()),
        "borderline_items": [name for name, t in items.items() if t.borderline],
        "standard_version": standard.version,
    }
