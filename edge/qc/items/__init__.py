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
from edge.qc.words import N_

FAMILIES: Final = (coverage, ap, lateral, oblique, exposure)
ITEMS: Final[Mapping[str, ItemSpec]] = MappingProxyType(
    {spec.name: spec for family in FAMILIES for spec in family.SPECS}
)
# The items about where the field lies: measurable on a spine the field cuts down to a body or two.
FIELD_ITEMS: Final = frozenset(spec.name for spec in coverage.SPECS)
WHY_NOT_MEASURED: Final = N_("the field cuts the spine: judged once the spine is in the field")


def measure_all(
    seg: Segmentation, spine: Spine, standard: Standard, ctx: Context, field: Box, only: frozenset[str] | None = None
) -> dict[str, Measurement]:
    """Every item of the view's standard (or those in `only`; the rest unmeasured, WHY_NOT_MEASURED)."""
    rules = standard.items[ctx.view]
    return {
        name: ITEMS[name].measure(rule, seg, spine, field, ctx)
        if only is None or name in only
        else Measurement(name, None, "", reason=WHY_NOT_MEASURED)
        for name, rule in rules.items()
    }
