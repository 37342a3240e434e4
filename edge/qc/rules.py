"""What a loaded QC standard is: per view, per item, a severity, a message and thresholds.

The types only (no loading and no item knowledge), so that the item families can use rules and the
standard loader can use the item registry without an import loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edge.qc.structures import View

Severity = Literal["fail", "warn"]
ParamValue = float | int | str

class StandardError(ValueError):
    """A QC standard file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ItemRule:
    view: View
    item: str
    severity: Severity
    title: str  # what the item checks, in the radiographer's words (the standard's English)
    message: str
    params: Mapping[str, ParamValue]

    def number(self, key: str) -> float:
        value = self.params[key]
        if isinstance(value, str):
            raise StandardError(f"{self.view}.{self.item}.{key}: expected a number, got {value!r}")
        return float(value)

    def text(self, key: str) -> str:
        return str(self.params[key])


@dataclass(frozen=True)
class Standard:
    name: str
    version: str
    items: Mapping[View, Mapping[str, ItemRule]]

    def rule(self, view: View, item: str) -> ItemRule:
        return self.items[view][item]
