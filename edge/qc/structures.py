"""The anatomy the segmentation model outputs, one channel per structure.

Structures overlap in a projection radiograph (a pedicle lies on its vertebral body), so each is a
channel of its own (multi-label), never a class in one exclusive map. The order here is the order of
the model's output channels; the phantom writes ground truth under the same names.
"""

from __future__ import annotations

from typing import Final, Literal

View = Literal["ap", "lateral", "oblique"]
VIEWS: Final[tuple[View, ...]] = ("ap", "lateral", "oblique")

VERTEBRAL_LEVELS: Final[tuple[str, ...]] = ("T12", "L1", "L2", "L3", "L4", "L5")
LUMBAR_LEVELS: Final[tuple[str, ...]] = VERTEBRAL_LEVELS[1:]

STRUCTURES: Final[tuple[str, ...]] = (
    "field",  # the exposed (collimated) field
    *(f"body_{level}" for level in VERTEBRAL_LEVELS),
    "sacrum",
    "pedicle_left",
    "pedicle_right",
    "spinous_process",
    "transverse_process",
    "si_joint_left",
    "si_joint_right",
    "iliac_crest",
    "disc",
    "foramen",
    "articular_process",
)

# What the radiographer reads for a structure (English msgids, translated by edge.qc.words); a
# vertebral body is its level ("T12"), the same in every language.
STRUCTURE_NAMES: Final[dict[str, str]] = {
    "field": "the exposed field",
    **{f"body_{level}": level for level in VERTEBRAL_LEVELS},
    "sacrum": "sacrum",
    "pedicle_left": "left pedicle",
    "pedicle_right": "right pedicle",
    "spinous_process": "spinous processes",
    "transverse_process": "transverse processes",
    "si_joint_left": "left SI joint",
    "si_joint_right": "right SI joint",
    "iliac_crest": "iliac crests",
    "disc": "disc spaces",
    "foramen": "intervertebral foramina",
    "articular_process": "articular processes",
}

# The views and the view head's classes as the radiographer reads them (English msgids).
VIEW_NAMES: Final[dict[str, str]] = {
    "ap": "AP",
    "lateral": "lateral",
    "oblique": "oblique",
    "oblique_left": "left oblique",
    "oblique_right": "right oblique",
}

# The vertebral bodies' channels, top to bottom (index an array with `list(BODY_CHANNELS)`), and the
# paired SI joints (the pelvis items rely on both).
BODY_CHANNELS: Final[tuple[int, ...]] = tuple(STRUCTURES.index(f"body_{lv}") for lv in VERTEBRAL_LEVELS)
SI_JOINTS: Final[tuple[str, str]] = ("si_joint_left", "si_joint_right")

# Where a structure is defined. Elsewhere its ground truth is empty by definition (an intervertebral
# foramen is hidden behind the pedicles on an AP view), and training should not penalise it there.
STRUCTURE_VIEWS: Final[dict[str, frozenset[View]]] = {name: frozenset(VIEWS) for name in STRUCTURES} | {
    "foramen": frozenset({"lateral"}),
    "articular_process": frozenset({"oblique"}),
    "si_joint_left": frozenset({"ap", "oblique"}),
    "si_joint_right": frozenset({"ap", "oblique"}),
    "transverse_process": frozenset({"ap", "oblique"}),
}


# The anatomy each view must show: the centring and collimation items measure its bounding box.
REQUIRED_STRUCTURES: Final[dict[View, tuple[str, ...]]] = {
    "ap": (*(f"body_{lv}" for lv in VERTEBRAL_LEVELS), "transverse_process", "si_joint_left", "si_joint_right"),
    "lateral": (*(f"body_{lv}" for lv in VERTEBRAL_LEVELS), "spinous_process", "disc"),
    "oblique": (*(f"body_{lv}" for lv in VERTEBRAL_LEVELS), "articular_process"),
}

# The model's view head: the view as seen, with the side an oblique demonstrates.
VIEW_CLASSES: Final[tuple[str, ...]] = ("ap", "lateral", "oblique_left", "oblique_right")


def view_of_class(view_class: str) -> View:
    """The standard's view for one of the view head's classes (an oblique of either side is "oblique")."""
    if view_class not in VIEW_CLASSES:
        raise ValueError(f"unknown view class {view_class!r}; expected one of {VIEW_CLASSES}")
    return "oblique" if view_class.startswith("oblique") else view_class  # type: ignore[return-value]
