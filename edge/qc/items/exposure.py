"""Exposure family: the deviation index and detector clipping. Measurements and corrections, and
their ItemSpecs."""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.qc.item import ItemSpec
from edge.qc.measure import (
    Context,
    Measurement,
    Spine,
)
from edge.qc.rules import ItemRule
from edge.qc.segmentation import Box, Segmentation
from edge.qc.structures import View

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


def exposure_index(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    """Deviation index: from the site's target when configured, else the modality's DI, else EI/EI_T."""
    tags = ctx.exposure
    detail: dict[str, object] = {"exposure_index": tags.exposure_index}
    if tags.exposure_index is not None and tags.exposure_index > 0 and ctx.target_exposure_index:
        di = 10 * np.log10(tags.exposure_index / ctx.target_exposure_index)
        detail |= {"target_exposure_index": ctx.target_exposure_index, "source": "site target"}
    elif tags.deviation_index is not None:
        di = tags.deviation_index
        detail |= {"target_exposure_index": tags.target_exposure_index, "source": "DeviationIndex tag"}
    elif tags.exposure_index and tags.target_exposure_index:
        di = 10 * np.log10(tags.exposure_index / tags.target_exposure_index)
        detail |= {"target_exposure_index": tags.target_exposure_index, "source": "ExposureIndex/TargetExposureIndex"}
    else:
        return Measurement("exposure_index", None, "DI", detail, reason="no exposure index in the image")
    return Measurement("exposure_index", float(di), "DI", detail)


def clipping(rule: ItemRule, seg: Segmentation, spine: Spine, field: Box, ctx: Context) -> Measurement:
    if ctx.clipped_fraction is None:
        return Measurement("clipping", None, "fraction", reason="anatomy not found")
    return Measurement("clipping", ctx.clipped_fraction, "fraction")


def exposure_correction(m: Measurement, rule: ItemRule, view: View) -> str:
    di = m.value or 0.0
    factor = 10 ** (di / 10)
    if di > 0:
        return f"over-exposed by about {factor:.1f}x the target dose: reduce the mAs for the next patient"
    return f"under-exposed at about {factor:.2f}x the target dose: increase the mAs"


def clipping_correction(m: Measurement, rule: ItemRule, view: View) -> str:
    return "detector clipped inside the anatomy: check kV/mAs and the detector's dose range"


SPECS: Final = (
    ItemSpec(
        "exposure_index", "bands", ("fail_below", "fail_above", "warn_below", "warn_above"), exposure_index,
        exposure_correction, borderline=0.2,
    ),
    ItemSpec(
        "clipping", "at_most", ("max_clipped_fraction",), clipping, clipping_correction, borderline=0.003,
    ),
)  # fmt: skip
