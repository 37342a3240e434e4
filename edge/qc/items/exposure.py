"""Exposure family: the deviation index and detector clipping. Measurements and corrections, and
their ItemSpecs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.imaging.radiograph import ExposureTags
from edge.qc.item import ItemSpec, Setting
from edge.qc.measure import (
    Context,
    Measurement,
    Spine,
)
from edge.qc.rules import ItemRule
from edge.qc.segmentation import Box, Segmentation
from edge.qc.words import Phrase, phrase

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


@dataclass(frozen=True)
class Exposure:
    """IEC 62494-1 indices as judged: EI, the target it was judged against, and the deviation index."""

    exposure_index: float | None
    target_exposure_index: float | None
    deviation_index: float | None

    def as_dict(self) -> dict[str, float | None]:
        def r(v: float | None) -> float | None:
            return None if v is None or not np.isfinite(v) else round(float(v), 2)

        return {
            "exposure_index": r(self.exposure_index),
            "target_exposure_index": r(self.target_exposure_index),
            "deviation_index": r(self.deviation_index),
        }


def exposure_of(tags: ExposureTags, site_target: float | None) -> tuple[Exposure, str]:
    """The deviation index and where it came from: the site's target when configured, else the
    modality's DI, else EI/EI_T (the one rule, for the item and the verdict's exposure alike)."""
    ei = tags.exposure_index
    if ei is not None and ei > 0 and site_target:
        return Exposure(ei, site_target, float(10 * np.log10(ei / site_target))), "site target"
    if tags.deviation_index is not None:
        return Exposure(ei, tags.target_exposure_index, float(tags.deviation_index)), "DeviationIndex tag"
    if ei and tags.target_exposure_index:
        di = float(10 * np.log10(ei / tags.target_exposure_index))
        return Exposure(ei, tags.target_exposure_index, di), "ExposureIndex/TargetExposureIndex"
    return Exposure(ei, tags.target_exposure_index, None), ""


def exposure_index(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    """Deviation index: from the site's target when configured, else the modality's DI, else EI/EI_T."""
    found, source = exposure_of(ctx.exposure, ctx.target_exposure_index)
    detail: dict[str, object] = {"exposure_index": found.exposure_index}
    if found.deviation_index is None:
        return Measurement("exposure_index", None, "DI", detail, reason="no exposure index in the image")
    detail |= {"target_exposure_index": found.target_exposure_index, "source": source}
    return Measurement("exposure_index", found.deviation_index, "DI", detail)


def clipping(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    if ctx.clipped_fraction is None:
        return Measurement("clipping", None, "fraction", reason="anatomy not found")
    return Measurement("clipping", ctx.clipped_fraction, "fraction")


def exposure_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    di = m.value or 0.0
    factor = 10 ** (di / 10)
    if di > 0:
        return phrase(
            "over-exposed by about {factor:.1f}x the target dose: reduce the mAs for the next patient", factor=factor
        )
    return phrase("under-exposed at about {factor:.2f}x the target dose: increase the mAs", factor=factor)


def clipping_correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    return phrase("detector clipped inside the anatomy: check kV/mAs and the detector's dose range")


SPECS: Final = (
    ItemSpec(
        "exposure_index", "bands", ("fail_below", "fail_above", "warn_below", "warn_above"), exposure_index,
        exposure_correction, borderline=0.2,
    ),
    ItemSpec(
        "clipping", "at_most", ("max_clipped_fraction",), clipping, clipping_correction, borderline=0.003,
    ),
)  # fmt: skip
