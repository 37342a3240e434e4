"""Oblique family: the obliquity and the facet joints it shows. Measurements and corrections, and
their ItemSpecs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.qc.item import ItemSpec, Setting
from edge.qc.measure import (
    PEDICLE_BAND,
    Context,
    Measurement,
    Spine,
)
from edge.qc.rules import ItemRule
from edge.qc.segmentation import Box, Segmentation, fine_points
from edge.qc.words import Phrase, phrase

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


# Facet joint angle to the mid-sagittal plane, population means per joint (Masharawi et al. 2004:
# the joints turn from sagittal towards coronal going down). A joint is shown when the beam runs
# within a few degrees of its plane, i.e. when the obliquity is near 90 minus this angle.
FACET_ANGLE_TO_SAGITTAL_DEG: Final[dict[str, float]] = {
    "L1-L2": 30.0,
    "L2-L3": 32.0,
    "L3-L4": 44.0,
    "L4-L5": 48.0,
    "L5-S1": 52.0,
}


OBLIQUITY_LEVELS: Final = ("L2", "L3", "L4")


def pedicle_positions(seg: Segmentation, spine: Spine, side: str) -> dict[str, tuple[float, float | None]]:
    """Where the two pedicles sit across the body, per level L2-L4: 0 at the anterior edge, 1 at the
    posterior edge. First the demonstrated pedicle (`side`, the Scotty dog's eye), then the far one
    (None where it was not found). Posterior is the side of the articular processes (or of the spinous
    process where those were not found). A body the field cuts is left out: its extent is the field's."""
    other = "right" if side == "left" else "left"
    out: dict[str, tuple[float, float | None]] = {}
    for level in OBLIQUITY_LEVELS:
        if level not in spine.centres or seg.touches_field(f"body_{level}"):
            continue
        band = spine.band(level, *PEDICLE_BAND)
        eye = seg.centroid(f"pedicle_{side}", band)
        far = seg.centroid(f"pedicle_{other}", band)
        body = fine_points(seg.prob(f"body_{level}"), band)
        around = spine.band(level, -0.8, 0.8)
        posterior = seg.centroid("articular_process", around)
        if posterior is None:
            posterior = seg.centroid("spinous_process", around)
        if eye is None or len(body) < 4 or posterior is None:
            continue
        axis = spine.local_axis(level)
        across = np.array([axis[1], -axis[0]])
        b = body @ across
        lo, hi = float(b.min()), float(b.max())
        # position across the body, from the anterior edge
        if float(posterior @ across) >= float(spine.centres[level] @ across):
            start, step = lo, 1.0 / max(hi - lo, 1e-6)
        else:
            start, step = hi, -1.0 / max(hi - lo, 1e-6)
        out[level] = (
            float(eye @ across - start) * step,
            None if far is None else float(far @ across - start) * step,
        )
    return out


# Both pedicles -> obliquity. Across the body (its centre 0, its projected half-extent e) a patient
# turned by a from AP shows the near pedicle at (-p cos a + d sin a) / e and the far one at
# (p cos a + d sin a) / e, p being half the distance between the pedicles and d their depth behind the
# body's centre. Their sum over their difference is (d / p) tan a: the body's size and shape drop out
# and one anatomical ratio is left, p / d. Fitted by `python -m tools.fit_obliquity` on phantom
# obliques (model 0.2.0's masks) and the DRRs of the training CT totalseg (exact labels), each source
# weighted alike. Mean absolute error: phantom 2.1 degrees (the eye line alone: 1.3 there, but 5.3 on
# totalseg and 4.8 on the held-out verse012), totalseg 1.6, held-out verse012 0.9 (README).
PEDICLE_HALF_SPAN_TO_DEPTH: Final = 0.735
MIN_PEDICLE_SPREAD: Final = 0.1  # the far pedicle at least this much of the body behind the near one


def angle_from_pedicles(
    near: float, far: float, half_span_to_depth: float = PEDICLE_HALF_SPAN_TO_DEPTH
) -> float | None:
    """Obliquity (degrees) from the two pedicles' positions across the body (0 anterior, 1 posterior)."""
    if far - near < MIN_PEDICLE_SPREAD:
        return None
    return float(np.degrees(np.arctan(half_span_to_depth * (far + near - 1.0) / (far - near))))


Pedicles = Mapping[str, tuple[float, float | None]]  # level -> (near, far) positions across the body


def both_pedicles(
    positions: Pedicles, half_span_to_depth: float = PEDICLE_HALF_SPAN_TO_DEPTH
) -> tuple[dict[str, float], float | None]:
    """Each level's obliquity from its two pedicles, and the image's: their median, when two levels at
    least have both (None otherwise)."""
    angles = {}
    for level, (near, far) in positions.items():
        angle = None if far is None else angle_from_pedicles(near, far, half_span_to_depth)
        if angle is not None:
            angles[level] = angle
    return angles, float(np.median(list(angles.values()))) if len(angles) >= 2 else None


def eye_position(positions: Pedicles) -> float:
    """The near pedicle's position across the body, the median over the levels."""
    return float(np.median([near for near, _ in positions.values()]))


# Eye position alone -> obliquity (degrees), for an image whose far pedicles were not found: a straight
# line, fitted by `python -m tools.fit_obliquity` on the same sources (phantom 3.0 degrees, totalseg
# 2.9, held-out verse012 1.5). It carries each anatomy's own proportions (the body's width and depth),
# so it errs more across patients than the two pedicles do.
EYE_TO_ANGLE: Final = (-12.89, 98.87)


def eye_to_angle(r: float) -> float:
    offset, slope = EYE_TO_ANGLE
    return float(offset + slope * r)


def obliquity(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    side = ctx.oblique_side or "left"
    positions = pedicle_positions(seg, spine, side)
    if len(positions) < 2:
        return Measurement("obliquity", None, "deg", reason="pedicle or vertebral bodies not found at L2-L4")
    detail: dict[str, object] = {
        "side": side,
        # per level: the near pedicle's position across the body, then the far one's (null: not found)
        "pedicles": {k: [round(n, 3), None if f is None else round(f, 3)] for k, (n, f) in positions.items()},
    }
    angles, angle = both_pedicles(positions)
    if angle is not None:
        detail.update(method="both pedicles", per_level_deg={k: round(v, 1) for k, v in angles.items()})
        return Measurement("obliquity", angle, "deg", detail)
    r = eye_position(positions)
    detail.update(method="eye position", eye_position=round(r, 3))
    return Measurement("obliquity", eye_to_angle(r), "deg", detail)


def facet_joints(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    measured = obliquity(rule, seg, spine, field, ctx)
    if measured.value is None:
        return Measurement("facet_joints", None, "levels", reason=measured.reason)
    limit = rule.number("max_angle_deg")
    angles = {j: abs(measured.value - (90.0 - a)) for j, a in FACET_ANGLE_TO_SAGITTAL_DEG.items()}
    visible = sum(a <= limit for a in angles.values())
    return Measurement(
        "facet_joints",
        float(visible),
        "levels",
        {
            "beam_to_joint_deg": {k: round(v, 1) for k, v in angles.items()},
            "obliquity_deg": round(measured.value, 1),
            "from": "estimated obliquity",
        },
    )


# The textbook oblique: 45 degrees shows the facet joints of most lumbar levels (35-45 for the upper).
TARGET_OBLIQUITY_DEG: Final = 45.0


def obliquity_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    estimate = m.value if m.item == "obliquity" else m.detail.get("obliquity_deg")
    target = TARGET_OBLIQUITY_DEG
    if not isinstance(estimate, float | int):
        return phrase("turn the patient to {target:.0f} degrees", target=target)
    # whole degrees, so that the obliquity and the facet joints (whose detail keeps a rounded estimate)
    # give one sentence, and the turn it asks for adds up to the target
    angle = float(round(float(estimate)))
    if angle < target - 5.0:
        return phrase(
            "obliquity about {angle:.0f} degrees: turn the patient further, by about {degrees:.0f} degrees",
            angle=angle,
            degrees=target - angle,
        )
    if angle <= target + 5.0:
        return phrase(
            "obliquity about {angle:.0f} degrees: adjust it towards {target:.0f} degrees", angle=angle, target=target
        )
    return phrase(
        "obliquity about {angle:.0f} degrees: turn the patient back, by about {degrees:.0f} degrees",
        angle=angle,
        degrees=angle - target,
    )


SPECS: Final = (
    ItemSpec(
        "obliquity", "within", ("min_angle_deg", "max_angle_deg"), obliquity, obliquity_correction,
        params=frozenset({"min_eye_position", "max_eye_position"}), structures=("pedicle_left", "pedicle_right"),
        borderline=1.0,
    ),
    ItemSpec(
        "facet_joints", "at_least", ("min_visible_levels",), facet_joints, obliquity_correction,
        params=frozenset({"max_angle_deg"}), structures=("articular_process",),
    ),
)  # fmt: skip
