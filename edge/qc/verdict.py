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
from typing import Any, Final, Literal

from edge.qc.confidence import Reading
from edge.qc.judge import ItemResult, overall

SCHEMA_ID: Final = "https://edge-qc.invalid/schemas/verdict-1.json"
VerdictValue = Literal["pass", "fail", "indeterminate", "rejected"]


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

    def __post_init__(self) -> None:
        for name in ("items", "image", "versions", "timings_ms"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "notes", tuple(self.notes))

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
    ) -> Verdict:
        """The standard applied: pass, fail, or indeterminate when a failing-severity item could not
        be measured."""
        outcome = overall(dict(items))
        reason, code = "", ""
        if outcome == "indeterminate":
            missing = [r.item for r in items.values() if r.outcome == "indeterminate" and r.severity == "fail"]
            reason, code = f"could not judge: {', '.join(missing)}", "items_unmeasurable"
        return cls(
            outcome, reason, code, view, items, tuple(notes), image, versions, timings_ms or {}, degraded, reading
        )

    @classmethod
    def indeterminate(
        cls,
        *,
        reason: str,
        code: str,
        view: ViewInfo | None,
        image: Mapping[str, object],
        versions: Mapping[str, str],
        notes: Iterable[str] = (),
        timings_ms: Mapping[str, float] | None = None,
        degraded: bool = False,
        reading: Reading | None = None,
    ) -> Verdict:
        """The image was read but cannot be judged (not a lumbar spine, view unknown, masks that cannot
        be trusted): no items."""
        return cls(
            "indeterminate", reason, code, view, {}, tuple(notes), image, versions, timings_ms or {}, degraded, reading
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
    ) -> Verdict:
        """The image could not be read at all (not a radiograph, unsupported encoding, a decompression
        bomb...). The SOP Instance UID, where the file names one, lets the sender match the verdict."""
        image = {"sop_instance_uid": sop_instance_uid}
        return cls("rejected", reason, code, None, {}, tuple(notes), image, versions, timings_ms or {}, degraded)

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
        }

    def summary(self) -> str:
        """One line per finding, for a console or a log."""
        head = self.verdict.upper()
        if self.view is not None and self.view.judged:
            head += f" ({self.view.judged})"
        if self.reason:
            head += f": {self.reason}"
        lines = [head]
        for r in self.failed:
            lines.append(f"  FAIL {r.item}: {r.message} -> {r.correction}")
        for r in self.warned:
            lines.append(f"  WARN {r.item}: {r.message} -> {r.correction}")
        lines.extend(f"  NOTE {n}" for n in self.notes)
        return "\n".join(lines)


def schema() -> dict[str, Any]:
    text = resources.files("edge.qc").joinpath("verdict.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
