"""Measurements + the QC standard -> item outcomes and the corrections a radiographer can act on.

Pure: no I/O, no model. The direction of every correction comes from the measured value (which
edge cut the anatomy, which way the patient is turned), never from a fixed sentence.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from edge.qc.measure import Measurement
from edge.qc.standard import ItemRule, Standard
from edge.qc.structures import View

Outcome = Literal["pass", "warn", "fail", "indeterminate"]

# How each item compares its value with the standard: (kind, parameter keys)
COMPARISONS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "upper_coverage": ("at_least", ("min_margin_mm",)),
    "lower_coverage": ("at_least", ("min_margin_mm",)),
    "lateral_coverage": ("at_least", ("min_margin_mm",)),
    "front_back_coverage": ("at_least", ("min_margin_mm",)),
    "centring": ("at_most", ("max_offset_fraction",)),
    "axis_tilt": ("abs_at_most", ("max_tilt_deg",)),
    "rotation_spinous": ("at_most", ("max_offset_ratio",)),
    "rotation_pedicles": ("within", ("min_ratio", "max_ratio")),
    "pelvis_rotation": ("within", ("min_ratio", "max_ratio")),
    "disc_spaces": ("at_least", ("min_visible_levels",)),
    "foramina": ("at_least", ("min_visible_levels",)),
    "facet_joints": ("at_least", ("min_visible_levels",)),
    "collimation": ("at_most", ("max_area_ratio",)),
    "clipping": ("at_most", ("max_clipped_fraction",)),
    "rotation_double_margins": ("at_most", ("max_gap_mm",)),
    "tilt_double_endplates": ("at_most", ("max_gap_mm",)),
    "obliquity": ("within", ("min_angle_deg", "max_angle_deg")),
    "exposure_index": ("bands", ("fail_below", "fail_above", "warn_below", "warn_above")),
}


@dataclass(frozen=True)
class ItemResult:
    item: str
    outcome: Outcome
    severity: str
    value: float | None
    unit: str
    threshold: list[float]
    message: str  # the standard's message (what is wrong)
    correction: str  # what to do about it ("" when it passed)
    detail: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        value = None if self.value is None or not np.isfinite(self.value) else round(float(self.value), 4)
        out: dict[str, object] = {
            "outcome": self.outcome,
            "severity": self.severity,
            "value": value,
            "unit": self.unit,
            "threshold": list(self.threshold),
            "detail": copy.deepcopy(self.detail),
        }
        if self.outcome != "pass":
            out["message"] = self.message
            out["correction"] = self.correction
        return out


def _compare(rule: ItemRule, value: float, detail: dict[str, object]) -> Outcome:
    kind, keys = COMPARISONS[rule.item]
    limits = [rule.number(k) for k in keys]
    if kind == "at_least":
        ok = value >= limits[0] and not detail.get("cut", False)
    elif kind == "at_most":
        ok = value <= limits[0]
    elif kind == "abs_at_most":
        ok = abs(value) <= limits[0]
    elif kind == "within":
        ok = limits[0] <= value <= limits[1]
    else:  # exposure bands: outside the fail band fails, outside the warn band warns
        fail_lo, fail_hi, warn_lo, warn_hi = limits
        if not fail_lo <= value <= fail_hi:
            return "fail"
        return "pass" if warn_lo <= value <= warn_hi else "warn"
    return "pass" if ok else "fail"


# The textbook oblique: 45 degrees shows the facet joints of most lumbar levels (35-45 for the upper).
TARGET_OBLIQUITY_DEG: Final = 45.0
_MOVE: Final = {"top": "up", "bottom": "down", "left": "towards the image's left", "right": "towards the image's right"}


def correction(m: Measurement, rule: ItemRule, view: View) -> str:
    """The action that fixes a failed item, sized from the measurement where that is meaningful."""
    d, v = m.detail, m.value
    item = m.item
    if item.endswith("_coverage"):
        missing = d.get("missing")
        if isinstance(missing, list) and missing:
            return f"{', '.join(str(x) for x in missing)} not in the field: re-centre or open the field"
        edge = str(d.get("nearest_edge", ""))
        need = rule.number("min_margin_mm") - (v or 0.0)
        return f"move the field {_MOVE.get(edge, 'outwards')} (or open it) by at least {max(need, 5.0):.0f} mm"
    if item == "centring":
        dx, dy = float(d.get("offset_x_mm", 0.0)), float(d.get("offset_y_mm", 0.0))  # type: ignore[arg-type]
        parts = []
        if abs(dx) >= 5:
            parts.append(f"{abs(dx):.0f} mm towards the image's {'right' if dx > 0 else 'left'}")
        if abs(dy) >= 5:
            parts.append(f"{abs(dy):.0f} mm {'down' if dy > 0 else 'up'}")
        return "move the central ray " + " and ".join(parts or ["onto the spine"])
    if item == "axis_tilt":
        return (
            f"straighten the patient on the table: the spine runs {abs(v or 0):.0f} degrees off the field's long axis"
        )
    if item in ("rotation_spinous", "rotation_pedicles"):
        angle = d.get("rotation_deg")
        if isinstance(angle, float | int) and abs(angle) >= 1:
            side = "left" if angle > 0 else "right"
            return (
                f"patient rotated about {abs(angle):.0f} degrees (the {side} side turned back): "
                f"bring the {side} side forward until the shoulders and hips are level"
            )
        return "level the shoulders and hips: spinous processes must sit midway between the pedicles"
    if item == "pelvis_rotation":
        return "level the pelvis: both anterior superior iliac spines the same height above the table"
    if item == "disc_spaces":
        if view == "ap":
            return "flex the hips and knees to flatten the lordosis, or angle the tube 5-10 degrees cranially"
        return "align the central ray with the disc spaces (support the waist so the spine is parallel to the table)"
    if item == "foramina" or item == "rotation_double_margins":
        return "bring the patient to a true lateral: shoulders and hips perpendicular to the table"
    if item == "tilt_double_endplates":
        return "place a radiolucent pad under the waist so the spine lies parallel to the table"
    if item in ("obliquity", "facet_joints"):
        estimate = v if item == "obliquity" else d.get("obliquity_deg")
        if not isinstance(estimate, float | int):
            return "turn the patient to 45 degrees"
        angle = float(estimate)
        target, now = TARGET_OBLIQUITY_DEG, f"obliquity about {angle:.0f} degrees"
        if angle < target - 5.0:
            return f"{now}: turn the patient further, by about {target - angle:.0f} degrees"
        if angle <= target + 5.0:
            return f"{now}: adjust it towards {target:.0f} degrees"
        return f"{now}: turn the patient back, by about {angle - target:.0f} degrees"
    if item == "collimation":
        size = d.get("minimal_field_mm")
        return f"collimate to about {size[0]} x {size[1]} mm" if isinstance(size, list) else "collimate tighter"
    if item == "exposure_index":
        di = v or 0.0
        factor = 10 ** (di / 10)
        if di > 0:
            return f"over-exposed by about {factor:.1f}x the target dose: reduce the mAs for the next patient"
        return f"under-exposed at about {factor:.2f}x the target dose: increase the mAs"
    if item == "clipping":
        return "detector clipped inside the anatomy: check kV/mAs and the detector's dose range"
    return ""


def _message(rule: ItemRule, m: Measurement) -> str:
    """The standard's message; {value} and detail keys may appear in it as placeholders."""
    try:
        return rule.message.format(value=m.value, **{k: v for k, v in m.detail.items() if isinstance(k, str)})
    except (KeyError, IndexError, ValueError):
        return rule.message


def judge_item(m: Measurement, rule: ItemRule, view: View) -> ItemResult:
    keys = COMPARISONS[rule.item][1]
    threshold = [rule.number(k) for k in keys]
    if m.value is None or np.isnan(m.value):
        return ItemResult(
            m.item,
            "indeterminate",
            rule.severity,
            None,
            m.unit,
            threshold,
            m.reason or "could not be measured",
            "",
            m.detail,
        )
    outcome = _compare(rule, m.value, m.detail)
    if outcome == "fail" and rule.severity == "warn":
        outcome = "warn"
    fix = correction(m, rule, view) if outcome != "pass" else ""
    return ItemResult(m.item, outcome, rule.severity, m.value, m.unit, threshold, _message(rule, m), fix, m.detail)


def judge(measurements: dict[str, Measurement], standard: Standard, view: View) -> dict[str, ItemResult]:
    return {name: judge_item(m, standard.rule(view, name), view) for name, m in measurements.items()}


def overall(results: Mapping[str, ItemResult]) -> Literal["pass", "fail", "indeterminate"]:
    """Any failed item fails the image; otherwise an item that could not be judged makes it
    indeterminate (a radiograph is never passed on items nobody measured)."""
    if any(r.outcome == "fail" for r in results.values()):
        return "fail"
    if any(r.outcome == "indeterminate" and r.severity == "fail" for r in results.values()):
        return "indeterminate"
    return "pass"
