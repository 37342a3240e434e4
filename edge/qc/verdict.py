"""The verdict: what the appliance says about one image, in one JSON document.

Its shape is fixed by `verdict.schema.json` (shipped next to this module): the daemon publishes it,
`edge-qc check --json` prints it, and tests validate every verdict they make against the schema.
It carries no patient name, ID or birth date: only the image's UIDs, which the RIS needs to match
a verdict to its image.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from edge.imaging.radiograph import AcquisitionTags
from edge.qc.confidence import Reading
from edge.qc.items.exposure import Exposure
from edge.qc.judge import ItemResult, overall
from edge.qc.words import ENGLISH, N_, Words, phrase

SCHEMA_ID: Final = "https://edge-qc.invalid/schemas/verdict-1.json"
VerdictValue = Literal["pass", "fail", "indeterminate", "rejected"]
# Why an image that was read could not be judged: the stable codes of indeterminate verdicts (metrics,
# history, reports), defined once; the daemon's counters start at zero for each.
IndeterminateCode = Literal["not_lumbar_spine", "view_unknown", "unreadable", "items_unmeasurable"]
INDETERMINATE_CODES: Final[tuple[IndeterminateCode, ...]] = get_args(IndeterminateCode)

# The banner line, by verdict (pass and fail count the checks: see `headline`).
HEADLINE_INDETERMINATE: Final = N_("Check the image yourself")
HEADLINE_REJECTED: Final = N_("Not judged")
# A correction already given under another item's title: the later item points to it, so no verdict
# says one sentence twice.
SEE_ALSO: Final = N_("see {title}")
COULD_NOT_JUDGE: Final = N_("could not judge: {titles}")


@dataclass(frozen=True)
class Correction:
    """One correction sentence and the titles of the items it fixes (one sentence may fix several: an
    under-rotated oblique hides the facet joints too)."""

    text: str
    items: tuple[str, ...]  # the items' titles, never their ids
    outcome: Literal["fail", "warn"]

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "items": list(self.items), "outcome": self.outcome}


@dataclass(frozen=True)
class ViewInfo:
    judged: str | None  # ap / lateral / oblique: the standard applied; None when unknown
    from_tags: str | None
    from_model: str | None  # the model's view class (ap, lateral, oblique_left, oblique_right)
    model_confidence: float | None
    agree: bool | None  # None when one of the two is unknown
    oblique_side: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "judged": self.judged,
            "from_tags": self.from_tags,
            "from_model": self.from_model,
            "model_confidence": None if self.model_confidence is None else round(self.model_confidence, 4),
            "agree": self.agree,
            "oblique_side": self.oblique_side,
        }


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Verdict:
    """Immutable: its mappings are read-only copies and `as_dict` returns fresh containers, so what a
    caller does to a payload (hashing the UID, say) never changes the verdict. Build one by keyword
    through `judged`, `indeterminate` or `rejected`."""

    verdict: VerdictValue
    reason: str  # why indeterminate or rejected ("" otherwise)
    reason_code: str  # stable code for metrics: "", "not_lumbar_spine", "view_unknown", a Rejection reason...
    view: ViewInfo | None
    items: Mapping[str, ItemResult]
    notes: tuple[str, ...]  # things worth knowing that are not QC items (view disagreement, estimated spacing)
    image: Mapping[str, object]
    versions: Mapping[str, str]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    degraded: bool = False  # judged by the fallback backend, not the configured one (a note says why)
    reading: Reading | None = None  # how far the masks could be trusted; None: the image was not read
    language: str = "en"  # the language of every text in the verdict
    headline: str = ""  # one short line for a banner
    corrections: tuple[Correction, ...] = ()  # unique sentences, failed items' first
    exposure: Exposure | None = None  # EI, target and DI as judged; None when no header could be read
    acquisition: AcquisitionTags | None = None  # date/time, station, kVp, mAs; None when no header could be read

    def __post_init__(self) -> None:
        for name in ("items", "image", "versions", "timings_ms"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "corrections", tuple(self.corrections))

    @classmethod
    def judged(
        cls,
        *,
        items: Mapping[str, ItemResult],
        view: ViewInfo,
        image: Mapping[str, object],
        versions: Mapping[str, str],
        notes: Iterable[str] = (),
        timings_ms: Mapping[str, float] | None = None,
        degraded: bool = False,
        reading: Reading | None = None,
        words: Words = ENGLISH,
        exposure: Exposure | None = None,
        acquisition: AcquisitionTags | None = None,
    ) -> Verdict:
        """The standard applied: pass, fail, or indeterminate when a failing-severity item could not
        be measured. The items' texts are in `words`' language already; a correction that repeats one
        given under an earlier item becomes a pointer to that item's title."""
        outcome = overall(dict(items))
        reason, code = "", ""
        if outcome == "indeterminate":
            missing = [r.title for r in items.values() if r.outcome == "indeterminate" and r.severity == "fail"]
            reason, code = words.say(phrase(COULD_NOT_JUDGE, titles=", ".join(missing))), "items_unmeasurable"
        items, corrections = unique_corrections(items, words)
        return cls(
            outcome,
            reason,
            code,
            view,
            items,
            tuple(notes),
            image,
            versions,
            timings_ms or {},
            degraded,
            reading,
            words.language,
            headline(outcome, items, words),
            corrections,
            exposure,
            acquisition,
        )

    @classmethod
    def indeterminate(
        cls,
        *,
        reason: str,
        code: IndeterminateCode,
        view: ViewInfo | None,
        image: Mapping[str, object],
        versions: Mapping[str, str],
        notes: Iterable[str] = (),
        timings_ms: Mapping[str, float] | None = None,
        degraded: bool = False,
        reading: Reading | None = None,
        words: Words = ENGLISH,
        exposure: Exposure | None = None,
        acquisition: AcquisitionTags | None = None,
    ) -> Verdict:
        """The image was read but cannot be judged (not a lumbar spine, view unknown, masks that cannot
        be trusted): no items. `reason` is in `words`' language already."""
        return cls(
            "indeterminate",
            reason,
            code,
            view,
            {},
            tuple(notes),
            image,
            versions,
            timings_ms or {},
            degraded,
            reading,
            words.language,
            headline("indeterminate", {}, words),
            (),
            exposure,
            acquisition,
        )

    @classmethod
    def rejected(
        cls,
        *,
        reason: str,
        code: str,
        versions: Mapping[str, str],
        notes: Iterable[str] = (),
        timings_ms: Mapping[str, float] | None = None,
        degraded: bool = False,
        sop_instance_uid: str = "",
        words: Words = ENGLISH,
        exposure: Exposure | None = None,
        acquisition: AcquisitionTags | None = None,
    ) -> Verdict:
        """The image could not be read at all (not a radiograph, unsupported encoding, a decompression
        bomb...). The SOP Instance UID, where the file names one, lets the sender match the verdict;
        `exposure` and `acquisition`, where its header could be read, let reject and dose analysis
        count it."""
        image = {"sop_instance_uid": sop_instance_uid}
        return cls(
            "rejected",
            reason,
            code,
            None,
            {},
            tuple(notes),
            image,
            versions,
            timings_ms or {},
            degraded,
            language=words.language,
            headline=headline("rejected", {}, words),
            exposure=exposure,
            acquisition=acquisition,
        )

    def with_timings(self, timings_ms: Mapping[str, float]) -> Verdict:
        """A copy with the stage timings of the whole pipeline (the verdict is made before they end)."""
        return dataclasses.replace(self, timings_ms=timings_ms)

    def with_note(self, note: str) -> Verdict:
        """A copy with one more note (the verdict itself never changes)."""
        return dataclasses.replace(self, notes=(*self.notes, note))

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items.values() if r.outcome == "fail"]

    @property
    def warned(self) -> list[ItemResult]:
        return [r for r in self.items.values() if r.outcome == "warn"]

    def as_dict(self) -> dict[str, Any]:
        def brief(r: ItemResult) -> dict[str, object]:
            d = r.as_dict()
            keys = ("title", "value", "unit", "threshold", "message", "correction")
            return {"item": r.item, **{k: d[k] for k in keys}}

        return {
            "$schema": SCHEMA_ID,
            "verdict": self.verdict,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "view": None if self.view is None else self.view.as_dict(),
            "failed": [brief(r) for r in self.failed],
            "warnings": [brief(r) for r in self.warned],
            "notes": list(self.notes),
            "items": {name: r.as_dict() for name, r in self.items.items()},
            "image": copy.deepcopy(dict(self.image)),
            "versions": dict(self.versions),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "degraded": self.degraded,
            "reading": None if self.reading is None else self.reading.as_dict(),
            "language": self.language,
            "headline": self.headline,
            "corrections": [c.as_dict() for c in self.corrections],
            "exposure": None if self.exposure is None else self.exposure.as_dict(),
            "acquisition": None if self.acquisition is None else self.acquisition.as_dict(),
        }

    def summary(self) -> str:
        """One line per finding, for a console or a log: the standard's titles (never item ids), the
        corrections once each, and EI/DI."""
        head = self.verdict.upper()
        if self.view is not None and self.view.judged:
            head += f" ({self.view.judged})"
        head += f": {self.headline}" if self.headline else ""
        if self.reason:
            head += f" - {self.reason}"
        lines = [head]
        for r in self.failed:
            lines.append(f"  FAIL {r.title}: {r.message}")
        for r in self.warned:
            lines.append(f"  WARN {r.title}: {r.message}")
        for c in self.corrections:
            lines.append(f"  -> {c.text} ({', '.join(c.items)})")
        if self.exposure is not None and self.exposure.exposure_index is not None:
            lines.append(f"  {exposure_line(self.exposure)}")
        lines.extend(f"  NOTE {n}" for n in self.notes)
        return "\n".join(lines)


def exposure_line(exposure: Exposure) -> str:
    """EI and DI as a radiographer reads them off the console (symbols, the same in every language)."""
    parts = [f"EI {exposure.exposure_index:.0f}"] if exposure.exposure_index is not None else []
    if exposure.target_exposure_index is not None:
        parts.append(f"EI_T {exposure.target_exposure_index:.0f}")
    if exposure.deviation_index is not None:
        parts.append(f"DI {exposure.deviation_index:+.1f}")
    return ", ".join(parts)


def headline(outcome: VerdictValue, items: Mapping[str, ItemResult], words: Words) -> str:
    """The banner line: positive on a pass (how many checks were met), the count on a fail."""
    if outcome == "pass":
        met = sum(r.outcome == "pass" for r in items.values())
        if met == len(items):
            return words.plural("Good image: {n} check met", "Good image: all {n} checks met", met)
        return words.plural(
            "Good image: {met} of {n} check met", "Good image: {met} of {n} checks met", len(items), met=met
        )
    if outcome == "fail":
        failed = sum(r.outcome == "fail" for r in items.values())
        return words.plural("Repeat advised: {n} check failed", "Repeat advised: {n} checks failed", failed)
    return words.text(HEADLINE_INDETERMINATE if outcome == "indeterminate" else HEADLINE_REJECTED)


def unique_corrections(
    items: Mapping[str, ItemResult], words: Words
) -> tuple[dict[str, ItemResult], tuple[Correction, ...]]:
    """Each correction sentence once, with the titles of every item it fixes (failed items first, then
    warnings); an item whose sentence an earlier item already gave points to that item instead."""
    out = dict(items)
    first: dict[str, ItemResult] = {}
    grouped: dict[str, list[str]] = {}
    outcomes: dict[str, Literal["fail", "warn"]] = {}
    for outcome in ("fail", "warn"):
        for name, r in items.items():
            if r.outcome != outcome or not r.correction:
                continue
            if r.correction in first:
                grouped[r.correction].append(r.title)
                pointer = words.say(phrase(SEE_ALSO, title=first[r.correction].title))
                out[name] = dataclasses.replace(r, correction=pointer)
            else:
                first[r.correction], grouped[r.correction], outcomes[r.correction] = r, [r.title], outcome
    return out, tuple(Correction(text, tuple(titles), outcomes[text]) for text, titles in grouped.items())


def schema() -> dict[str, Any]:
    text = resources.files("edge.qc").joinpath("verdict.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
