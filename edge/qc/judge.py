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

from edge.qc.item import Setting
from edge.qc.items import ITEMS
from edge.qc.measure import Measurement
from edge.qc.standard import ItemRule, Standard
from edge.qc.words import ENGLISH, N_, Phrase, Words

Outcome = Literal["pass", "warn", "fail", "indeterminate"]
NOT_MEASURED: Final = N_("could not be measured")

@dataclass(frozen=True)
class ItemResult:
    item: str
    title: str  # the standard's title for the item, for the radiographer (never the item id)
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
            "title": self.title,
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


def _compare(rule: ItemRule, value: float, m: Measurement) -> Outcome:
    spec = ITEMS[rule.item]
    limits = [rule.number(k) for k in spec.limits]
    if spec.comparison == "at_least":
        ok = value >= limits[0] and not m.cut
    elif spec.comparison == "at_most":
        ok = value <= limits[0]
    elif spec.comparison == "abs_at_most":
        ok = abs(value) <= limits[0]
    elif spec.comparison == "within":
        ok = limits[0] <= value <= limits[1]
    else:  # exposure bands: outside the fail band fails, outside the warn band warns
        fail_lo, fail_hi, warn_lo, warn_hi = limits
        if not fail_lo <= value <= fail_hi:
            return "fail"
        return "pass" if warn_lo <= value <= warn_hi else "warn"
    return "pass" if ok else "fail"


def correction(m: Measurement, rule: ItemRule, setting: Setting) -> Phrase:
    """The action that fixes a failed item (the item's own correction, from the registry), untranslated."""
    return ITEMS[m.item].correction(m, rule, setting)


def _message(rule: ItemRule, m: Measurement, words: Words) -> str:
    """The standard's message, translated; {value} and detail keys may appear in it as placeholders."""
    return words.fill(rule.message, {"value": m.value, **{k: v for k, v in m.detail.items() if isinstance(k, str)}})


def judge_item(m: Measurement, rule: ItemRule, setting: Setting, words: Words = ENGLISH) -> ItemResult:
    """One item's outcome, with the standard's title and message and the correction in `words`' language."""
    keys = ITEMS[rule.item].limits
    threshold = [rule.number(k) for k in keys]
    title = words.text(rule.title)
    if m.value is None or np.isnan(m.value):
        why = words.text(m.reason or NOT_MEASURED)
        return ItemResult(m.item, title, "indeterminate", rule.severity, None, m.unit, threshold, why, "", m.detail)
    outcome = _compare(rule, m.value, m)
    if outcome == "fail" and rule.severity == "warn":
        outcome = "warn"
    fix = words.say(correction(m, rule, setting)) if outcome != "pass" else ""
    message = _message(rule, m, words)
    return ItemResult(m.item, title, outcome, rule.severity, m.value, m.unit, threshold, message, fix, m.detail)


def judge(
    measurements: dict[str, Measurement], standard: Standard, setting: Setting, words: Words = ENGLISH
) -> dict[str, ItemResult]:
    return {name: judge_item(m, standard.rule(setting.view, name), setting, words) for name, m in measurements.items()}


def overall(results: Mapping[str, ItemResult]) -> Literal["pass", "fail", "indeterminate"]:
    """Any failed item fails the image; otherwise an item that could not be judged makes it
    indeterminate (a radiograph is never passed on items nobody measured)."""
    if any(r.outcome == "fail" for r in results.values()):
        return "fail"
    if any(r.outcome == "indeterminate" and r.severity == "fail" for r in results.values()):
        return "indeterminate"
    return "pass"
