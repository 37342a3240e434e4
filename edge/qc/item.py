"""One QC item, defined once: its parameters, how its value is compared, how it is measured, what
to do when it fails, which structures an overlay highlights, and where the phantom's truth is too
close to call. The item families (`edge.qc.items.*`) each hold theirs; every table the standard
loader, the judge, the overlay and the phantom use is derived from the registry (`edge.qc.items`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.qc.measure import Context, Measurement, Spine
from edge.qc.rules import ItemRule
from edge.qc.segmentation import Box, Segmentation
from edge.qc.structures import View
from edge.qc.words import Phrase

# at_least / at_most: one limit; abs_at_most: |value| <= limit; within: [lo, hi];
# bands (exposure): fail outside [fail_below, fail_above], warn outside [warn_below, warn_above].
Comparison = Literal["at_least", "at_most", "abs_at_most", "within", "bands"]
Measure = Callable[[ItemRule, Segmentation, Spine, Box, Context], Measurement]

# Lengths at the detector over lengths as measured, where the image does not say: the spine lies
# 10-20 % magnified on the detector in a lumbar radiograph (source-image ~115 cm, spine ~15-20 cm above).
TYPICAL_MAGNIFICATION = 1.15


@dataclass(frozen=True)
class Setting:
    """What a correction may use besides the measurement: the view, and how the measured millimetres
    scale to the detector, where collimator dials and the light field read them."""

    view: View
    to_detector: float | None = None  # detector mm per measured mm; None: unknown (the typical magnification)

    def detector_cm(self, mm: float) -> int:
        """A measured length as whole centimetres at the detector (at least 1)."""
        scale = TYPICAL_MAGNIFICATION if self.to_detector is None else self.to_detector
        return max(1, round(mm * scale / 10.0))


# The action that fixes a failed item: an English msgid with its values (edge.qc.words translates it).
Corrects = Callable[[Measurement, ItemRule, Setting], Phrase]


@dataclass(frozen=True)
class ItemSpec:
    name: str
    comparison: Comparison
    limits: tuple[str, ...]  # the standard's parameters the value is compared with, in the comparison's order
    measure: Measure
    correction: Corrects  # the action that fixes a failed item, sized from the measurement
    params: frozenset[str] = frozenset()  # further parameters the standard must give
    optional: frozenset[str] = frozenset()  # parameters the standard may give
    structures: tuple[str, ...] = ()  # highlighted on an overlay when the item fails
    borderline: float | None = None  # phantom truth within this of a threshold is too close to call
    # structures whose reading the item cannot do without: when the reading checks distrust one, the
    # item is indeterminate (None: the overlay's structures)
    relies_on: tuple[str, ...] | None = None

    @property
    def dependencies(self) -> frozenset[str]:
        return frozenset(self.structures if self.relies_on is None else self.relies_on)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.limits) | self.params
