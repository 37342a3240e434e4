"""python -m tools.calibrate_reading --model DIR --phantom DIR [--write]: fit the reading-confidence limits.

The limits of `edge.qc.confidence` are chosen by measured error rates, not by eye:
- own phantom images (a development set, never the held-out evaluation seed) are read correctly by
  construction: the limits may call at most `--phantom-budget` of them unreadable (on top of those
  indeterminate whatever the limits: not a spine, a misread spine);
- real AP films of development patients (the `validation` part when the model trained on the rest),
  cropped to the lumbar spine, with the clinicians' corner boxes saying whether every lumbar level was
  found and named right: among the films read wrong, as many as possible are called unreadable, and
  among those read right, as few as possible.
Among the limits within the phantom budget that catch at least `--min-caught` of the wrong films,
those that lose the fewest phantom images, then the fewest right films, win. With `--write` they go
into the model's manifest (`reading_confidence`), with where they came from; the runtime reads them
from there. The phantom development set: `python -m tools.evaluate_qc --count 300 --seed 424250
--size 1024 --out DIR` (the held-out evaluation seed is 424242).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.qc.confidence import LIMITS, Calibration, reading
from edge.qc.measure import Spine
from edge.qc.structures import LUMBAR_LEVELS
from tools.aasce.dataset import load_films
from tools.aasce.dicom import film_dataset
from tools.evaluate_real.run import RealEvaluator

# no check fails: every value is reported
PERMISSIVE = Calibration(min_body_fill=0.0, min_body_probability=0.0, max_level_ambiguity=1.0, max_body_area_ratio=1e9)
# the limits tried, one row per check of edge.qc.confidence.LIMITS (same order)
GRID: dict[str, Any] = {
    "min_body_fill": np.round(np.arange(0.10, 0.62, 0.02), 2),
    "min_body_probability": np.round(np.arange(0.70, 0.97, 0.01), 2),
    "max_level_ambiguity": np.round(np.arange(0.10, 0.92, 0.04), 2),
    "max_body_area_ratio": np.round(np.arange(2.0, 7.5, 0.5), 1),
}


@dataclass(frozen=True)
class Sample:
    source: str  # "phantom" or "real"
    name: str
    read_right: bool  # phantom: always; real: every lumbar level found and named right
    checks: dict[str, float]  # empty: indeterminate whatever the limits


def _checks(result: Any) -> dict[str, float]:
    """The reading checks' values; empty when the image is indeterminate whatever the limits (no view,
    not a spine, a spine misread)."""
    seg, view = result.segmentation, result.verdict.view
    if seg is None or view is None or view.judged is None:
        return {}
    spine = Spine(seg)
    if spine.implausible():
        return {}
    read = reading(seg, spine, view.judged, PERMISSIVE)
    return {} if read.failed else dict(read.checks)  # with no limits, only a misread fails


def phantom_samples(evaluator: RealEvaluator, folder: Path) -> list[Sample]:
    entries = json.loads((folder / "manifest.json").read_text())["images"]
    out = []
    for entry in entries:
        result = evaluator.pipeline.process(folder / entry["file"])
        out.append(Sample("phantom", entry["file"], True, _checks(result)))
    return out


def real_samples(evaluator: RealEvaluator, split: str) -> list[Sample]:
    out = []
    for film in (f for f in load_films(split=split) if f.trusted):  # type: ignore[arg-type]
        scored = evaluator.evaluate(film, "lumbar")
        levels = [scored.score.levels[lv] for lv in LUMBAR_LEVELS if lv in scored.score.levels]
        if len(levels) < len(LUMBAR_LEVELS):
            continue  # a crop that does not hold all five: no verdict on "read right"
        right = all(s.found and s.level_right for s in levels)
        x0, y0, x1, y1 = scored.crop
        stored = np.clip(np.rint(film.pixels()[y0:y1, x0:x1] * 255), 0, 255).astype(np.uint8)
        result = evaluator.pipeline.process(film_dataset(stored, f"{film.name}:lumbar", "LSPINE"))
        out.append(Sample("real", film.name, right, _checks(result)))
    return out


def unreadable(sample: Sample, limits: Calibration) -> bool:
    return not sample.checks or bool(limits.exceeded(sample.checks))


def rates(samples: list[Sample], limits: Calibration) -> dict[str, float | int]:
    phantom = [unreadable(s, limits) for s in samples if s.source == "phantom"]
    wrong = [unreadable(s, limits) for s in samples if s.source == "real" and not s.read_right]
    right = [unreadable(s, limits) for s in samples if s.source == "real" and s.read_right]
    return {
        "phantom_images": len(phantom),
        "phantom_unreadable": float(np.mean(phantom)) if phantom else 0.0,
        "real_read_wrong": len(wrong),
        "real_wrong_caught": float(np.mean(wrong)) if wrong else 0.0,
        "real_read_right": len(right),
        "real_right_unreadable": float(np.mean(right)) if right else 0.0,
    }


def fit(
    samples: list[Sample], phantom_budget: float, min_caught: float
) -> tuple[Calibration, dict[str, float | int]]:
    """Every combination of GRID, vectorised over the samples: `Calibration.exceeded` on arrays (a
    check not made is NaN, which no comparison flags)."""
    assert list(GRID) == [limit for limit, _ in LIMITS.values()], "GRID follows confidence.LIMITS"
    columns = [
        (np.array([s.checks.get(name, np.nan) for s in samples]), kind) for name, (_, kind) in LIMITS.items()
    ]
    no_spine = np.array([not s.checks for s in samples])
    phantom = np.array([s.source == "phantom" for s in samples])
    wrong = np.array([s.source == "real" and not s.read_right for s in samples])
    right = np.array([s.source == "real" and s.read_right for s in samples])
    best: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    for values in itertools.product(*GRID.values()):
        by_limits = np.zeros(len(samples), dtype=bool)
        for (column, kind), bound in zip(columns, values, strict=True):
            by_limits |= column < bound if kind == "at_least" else column > bound
        if phantom.any() and (by_limits & ~no_spine)[phantom].mean() > phantom_budget:
            continue
        flagged = no_spine | by_limits
        caught = float(flagged[wrong].mean()) if wrong.any() else 0.0
        key = (  # wrong films caught, up to the target; then the fewest phantom and right films lost
            min(caught, min_caught),
            -float(flagged[phantom].mean()) if phantom.any() else 0.0,
            -float(flagged[right].mean()) if right.any() else 0.0,
            caught,
        )
        if best is None or key > best[0]:
            best = (key, values)
    if best is None:
        raise SystemExit("no limits keep the phantom within its budget")
    limits = Calibration.from_mapping({limit: float(v) for limit, v in zip(GRID, best[1], strict=True)})
    return limits, rates(samples, limits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.calibrate_reading", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model version folder")
    parser.add_argument("--phantom", type=Path, required=True, help="a phantom development set (tools.evaluate_qc)")
    parser.add_argument("--split", default="development", choices=("development", "validation"))
    parser.add_argument("--phantom-budget", type=float, default=0.02)
    parser.add_argument("--min-caught", type=float, default=0.99, help="share of wrongly read real films to catch")
    parser.add_argument("--write", action="store_true", help="record the limits in the model's manifest")
    parser.add_argument("--samples", type=Path, help="keep the measured checks here, and reuse them when present")
    args = parser.parse_args(argv)
    if args.samples and args.samples.exists():
        samples = [Sample(**s) for s in json.loads(args.samples.read_text())]
    else:
        evaluator = RealEvaluator(args.model)
        try:
            samples = phantom_samples(evaluator, args.phantom) + real_samples(evaluator, args.split)
        finally:
            evaluator.close()
        if args.samples:
            args.samples.write_text(json.dumps([dataclasses.asdict(s) for s in samples]))
    for source in ("phantom", "real"):
        own = [s for s in samples if s.source == source]
        print(f"{source}: {len(own)} images, {sum(not s.checks for s in own)} indeterminate whatever the limits")
    limits, r = fit(samples, args.phantom_budget, args.min_caught)
    phantom_set = json.loads((args.phantom / "manifest.json").read_text())
    source = (
        f"tools.calibrate_reading: own phantom seed {phantom_set.get('seed')} at {phantom_set.get('size_px')} px"
        f" ({r['phantom_images']} images, "
        f"{100 * r['phantom_unreadable']:.1f} % unreadable) and real AP films, {args.split} patients, lumbar crop "
        f"({r['real_read_wrong']} read wrong, {100 * r['real_wrong_caught']:.1f} % caught; {r['real_read_right']} "
        f"read right, {100 * r['real_right_unreadable']:.1f} % unreadable)"
    )
    limits = dataclasses.replace(limits, source=source)
    print(json.dumps({"limits": dataclasses.asdict(limits), "rates": r}, indent=1))
    if args.write:
        path = args.model / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["reading_confidence"] = dataclasses.asdict(limits)
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
