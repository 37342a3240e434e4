"""The registry of QC items: every ItemSpec of every family, by name, and the measure step over them.

Adding an item: write its measurement, correction and ItemSpec in its family's module, add it to the
standard file; nothing else names it (tests check the registry, the standard and the phantom's truth
agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from edge.qc.item import ItemSpec
from edge.qc.items import ap, coverage, exposure, lateral, oblique
from edge.qc.measure import Context, Measurement, Spine
from edge.qc.rules import Standard
from edge.qc.segmentation import Box, Segmentation

FAMILIES: Final = (coverage, ap, lateral, oblique, exposure)
ITEMS: Final[Mapping[str, ItemSpec]] = MappingProxyType(
    {spec.name: spec for family in FAMILIES for spec in family.SPECS}
)


def measure_all(
    seg: Segmentation, standard: Standard, ctx: Context, field: Box | None
) -> tuple[dict[str, Measurement], str]:
    """Every item of the view's standard, or ({}, reason) when the image cannot be measured at all.
    `field` is the segmentation's field_box."""
    if field is None:
        return {}, "no exposed field found"
    spine = Spine(seg)
    problem = spine.implausible()
    if problem:
        return {}, problem
    out = {name: ITEMS[name].measure(rule, seg, spine, field, ctx) for name, rule in standard.items[ctx.view].items()}
    return out, ""
