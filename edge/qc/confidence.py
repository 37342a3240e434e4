"""How far the masks can be trusted: the reading confidence of one image, from what the appliance has.

A wrong FAIL sends a patient back for another exposure and a wrong PASS lets a useless image through;
"indeterminate: check the image yourself" is better than either. The model's masks are only as good
as the images it learned from, so before measuring, the appliance asks whether the masks look like a
lumbar spine it can read:
- each lumbar body is one compact blob (fragments scattered over bowel gas fill little of their extent),
- the model is sure of it (the mean probability inside the mask),
- the model is sure which level it is (a body shared between two level channels is a level it cannot
  name: the commonest real-film error is a whole spine named one level off),
- the bodies have sizes a spine has (neighbours within a factor, not a body beside a speck),
- paired structures come in pairs (one SI joint without the other is not a pelvis the model read),
- the levels can be counted: the sacrum or the iliac crests are found (`Spine.unanchored`).

Each check is a number with a limit; the limits are calibrated on labelled images (own phantom, and
real AP films of development patients whose levels clinicians marked), by measured error rates, and
live in `Calibration` (the defaults below, overridden by a model's manifest). Pure functions only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge.qc.measure import Spine
from edge.qc.segmentation import Segmentation
from edge.qc.structures import BODY_CHANNELS, SI_JOINTS, STRUCTURES, View

F32 = NDArray[np.float32]


# Each check and the limit it must keep (a field of `Calibration`): at least the minimum, or at most
# the maximum. The one statement of the rule: `reading` and the calibration tool both go through it.
LIMITS: Final[dict[str, tuple[str, Literal["at_least", "at_most"]]]] = {
    "body_fill": ("min_body_fill", "at_least"),
    "body_probability": ("min_body_probability", "at_least"),
    "level_ambiguity": ("max_level_ambiguity", "at_most"),
    "body_area_ratio": ("max_body_area_ratio", "at_most"),
}
# What a failed check means, in the radiographer's words (English msgids; {level}: the level it was read on).
CHECK_NAMES: Final[dict[str, str]] = {
    "body_fill": "vertebral body {level} broken up",
    "body_probability": "vertebral body {level} found with too little certainty",
    "level_ambiguity": "vertebral level {level} ambiguous",
    "body_area_ratio": "vertebral bodies of implausibly different sizes",
}


@dataclass(frozen=True)
class Calibration:
    """The limits of the reading checks (see `reading`); versioned with the model they fit."""

    # defaults: the limits fitted to model 0.2.0 (its manifest says how), for a model without its own
    min_body_fill: float = 0.28  # area / bounding-box area of the least compact lumbar body
    min_body_probability: float = 0.70  # mean probability inside the least sure lumbar body
    max_level_ambiguity: float = 0.38  # share of a body's pixels that another level's channel also claims
    max_body_area_ratio: float = 4.5  # largest / smallest lumbar body (those the field does not cut)
    source: str = "default limits (edge.qc.confidence: those fitted to lumbar-resunet 0.2.0)"

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Calibration:
        """From a manifest's `reading_confidence` table; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"reading_confidence: unknown key(s) {', '.join(unknown)}; expected {sorted(known)}")
        values: dict[str, object] = {}
        for key, value in data.items():
            if key == "source":
                values[key] = str(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = float(value)
            else:
                raise ValueError(f"reading_confidence.{key}: expected a number, got {value!r}")
        return cls(**values)  # type: ignore[arg-type]

    def exceeded(self, checks: Mapping[str, float]) -> list[str]:
        """The checks whose values lie beyond their limits, in LIMITS order (a check not made passes)."""
        out = []
        for name, (limit, kind) in LIMITS.items():
            if name in checks:
                value, bound = checks[name], float(getattr(self, limit))
                if value < bound if kind == "at_least" else value > bound:
                    out.append(name)
        return out


@dataclass(frozen=True)
class Reading:
    """The checks' values, which failed, and the structures the judged items must not rely on."""

    checks: Mapping[str, float]
    failed: tuple[str, ...]  # failed checks, with the level where one applies ("body_fill L3"), or why misread
    unreliable: frozenset[str] = field(default_factory=frozenset)  # structures, for per-item indeterminates
    misread: str = ""  # why the bodies cannot be the levels named (`Spine.misread`), "" when they can

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", MappingProxyType(dict(self.checks)))
        object.__setattr__(self, "failed", tuple(self.failed))
        object.__setattr__(self, "unreliable", frozenset(self.unreliable))

    @property
    def readable(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, object]:
        return {
            "readable": self.readable,
            "checks": {k: round(v, 3) for k, v in self.checks.items()},
            "failed": list(self.failed),
            "unreliable_structures": sorted(self.unreliable),
        }


def _level_ambiguity(seg: Segmentation, level: str) -> float:
    """Share of the body's mask that another level's channel also claims (its probability there is at
    least a third of the body's own): a body the model cannot put a single name to."""
    found = seg.extent(f"body_{level}")
    if found is None:
        return 1.0
    mask, rows, cols = found
    own = seg.probabilities[STRUCTURES.index(f"body_{level}")][rows, cols]
    others = [seg.probabilities[c][rows, cols] for c in BODY_CHANNELS if STRUCTURES[c] != f"body_{level}"]
    rival = np.max(np.stack(others), axis=0)
    contested = mask & (rival > own / 3)
    return float(np.count_nonzero(contested)) / max(float(np.count_nonzero(mask)), 1.0)


def body_signals(seg: Segmentation, level: str) -> dict[str, float] | None:
    """fill, probability, ambiguity and area of one body's mask; None when it is absent."""
    found = seg.extent(f"body_{level}")
    if found is None:
        return None
    mask, rows, cols = found
    area = float(np.count_nonzero(mask))
    probability = seg.probabilities[STRUCTURES.index(f"body_{level}")][rows, cols]
    return {
        "fill": area / float(mask.size),
        "probability": float(probability[mask].mean()),
        "ambiguity": _level_ambiguity(seg, level),
        "area": area,
    }


def reading(
    seg: Segmentation, spine: Spine, view: View, calibration: Calibration, view_disagreement: str = ""
) -> Reading:
    """The reading checks over the lumbar bodies the spine step found, against `calibration`; a spine
    whose bodies cannot be the levels named (`Spine.misread`), or a view the modality's tags and the
    model disagree on (`view_disagreement` says how), fails whatever the limits."""
    # a body the field cuts is partial for a reason the coverage items judge, not a sign of a misreading
    whole = [lv for lv in spine.lumbar_levels if not seg.touches_field(f"body_{lv}")]
    signals = {lv: s for lv in whole if (s := body_signals(seg, lv)) is not None}
    misread = spine.misread()
    failed: list[str] = [text for text in (view_disagreement, misread, spine.unanchored()) if text]
    checks: dict[str, float] = {}
    worst: dict[str, str] = {}  # the level each per-body check was read on
    if signals:
        worst["body_fill"] = min(signals, key=lambda lv: signals[lv]["fill"])
        worst["body_probability"] = min(signals, key=lambda lv: signals[lv]["probability"])
        worst["level_ambiguity"] = max(signals, key=lambda lv: signals[lv]["ambiguity"])
        checks["body_fill"] = signals[worst["body_fill"]]["fill"]
        checks["body_probability"] = signals[worst["body_probability"]]["probability"]
        checks["level_ambiguity"] = signals[worst["level_ambiguity"]]["ambiguity"]
        areas = [signals[lv]["area"] for lv in signals]
        if len(areas) >= 2:
            checks["body_area_ratio"] = max(areas) / max(min(areas), 1.0)
    failed += [f"{name} {worst[name]}" if name in worst else name for name in calibration.exceeded(checks)]
    unreliable: set[str] = set()
    if view in ("ap", "oblique"):
        left, right = (seg.present(j) for j in SI_JOINTS)
        if left != right:  # one joint without the other: the pelvis items cannot rely on either
            unreliable |= set(SI_JOINTS)
    return Reading(checks, tuple(failed), frozenset(unreliable), misread)
