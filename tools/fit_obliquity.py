"""python -m tools.fit_obliquity --phantom DIR --ct DIR [--heldout-phantom DIR] [--heldout-ct DIR]:
fit the obliquity measurement's constants on more than one source, and show how they transfer.

The oblique item reads the turn from where the two pedicles sit across the vertebral body
(`edge.qc.items.oblique`): tan(obliquity) = PEDICLE_HALF_SPAN_TO_DEPTH x (far + near - 1) / (far - near),
and, for an image whose far pedicles were not found, from the near pedicle (the eye) alone by the line
EYE_TO_ANGLE. Both constants stand for anatomy (the pedicles' half span over their depth behind the
body's centre; the body's width and depth), so they are fitted on every source at hand, each source
weighted alike so that no single anatomy rules the fit:

- phantom sets (`python -m tools.evaluate_qc --out DIR` or `python -m tools.phantom`): the model's masks,
  as the appliance reads them; truth is the phantom's turn;
- CT DRR sets (`python -m tools.ctdrr --views obl --out DIR`): the exact labels (a perfect model) of each
  CT, each CT a source of its own; truth is the pose's turn.

Held-out sets are only measured, never fitted. Nothing is written: the constants printed are copied
into edge/qc/items/oblique.py by hand, with the figures, when they are to ship.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config, ModelConfig
from edge.pipeline import Pipeline
from edge.qc.items.oblique import EYE_TO_ANGLE, PEDICLE_HALF_SPAN_TO_DEPTH, both_pedicles, eye_position

RATIOS = np.arange(0.40, 1.0001, 0.0025)  # pedicle half span over depth: anatomy keeps it well inside


@dataclass(frozen=True)
class Sample:
    """One oblique: its source, the true turn, and each level's (near, far) pedicle positions."""

    source: str
    truth: float
    pedicles: dict[str, tuple[float, float | None]]


def pedicles_of(detail: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    found = detail.get("pedicles", {})
    return {level: (float(pair[0]), None if pair[1] is None else float(pair[1])) for level, pair in found.items()}


def oblique_samples(pipeline: Pipeline, folder: Path, exact_labels: bool) -> list[Sample]:
    """The measured obliques of a set: a phantom set through the whole pipeline (the model's masks), a
    CT DRR set on its exact labels, each CT a source of its own."""
    from tools.ctdrr.judge import assess_on_truth, true_obliquity  # the CT tools need torch: only here

    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for entry in manifest["images"]:
        if entry["view"] != "oblique":
            continue
        if exact_labels:
            verdict = assess_on_truth(pipeline, folder, entry).verdict
            source, truth = f"CT {entry['ct']}", true_obliquity(entry)
        else:
            verdict = pipeline.process(folder / entry["file"]).verdict
            source, truth = f"phantom {folder.name}", float(entry["qc"]["items"]["obliquity"]["value"])
        item = verdict.items.get("obliquity")
        if item is not None and item.value is not None:
            out.append(Sample(source, truth, pedicles_of(item.detail)))
    return out


def collect(pipeline: Pipeline, phantom_sets: list[Path], ct_sets: list[Path]) -> list[Sample]:
    phantom = [s for folder in phantom_sets for s in oblique_samples(pipeline, folder, exact_labels=False)]
    return phantom + [s for folder in ct_sets for s in oblique_samples(pipeline, folder, exact_labels=True)]


def two_pedicle_angle(sample: Sample, ratio: float) -> float | None:
    """The item's reading of the sample with `ratio` for the constant."""
    return both_pedicles(sample.pedicles, ratio)[1]


def by_source(samples: list[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.source].append(s)
    return dict(groups)


def ratio_errors(samples: list[Sample], ratio: float) -> list[float]:
    return [a - s.truth for s in samples if (a := two_pedicle_angle(s, ratio)) is not None]


def fit_ratio(samples: list[Sample]) -> float:
    """The ratio with the least mean, over sources, of each source's mean squared error: every anatomy
    counts alike however many images it has, and the constant lands between them (a mean of absolute
    errors would be flat between two sources and settle on either)."""
    groups = by_source(samples)

    def cost(ratio: float) -> float:
        return float(np.mean([np.mean(np.square(ratio_errors(g, ratio))) for g in groups.values()]))

    return float(min(RATIOS, key=cost))


def fit_eye_line(samples: list[Sample]) -> tuple[float, float]:
    """Least squares of truth on eye position, each source's samples weighted to one source's worth."""
    groups = by_source(samples)
    rows = [(eye_position(s.pedicles), s.truth, 1.0 / len(groups[s.source])) for s in samples]
    x, y, w = (np.array(column) for column in zip(*rows, strict=True))
    design = np.column_stack([np.ones_like(x), x]) * np.sqrt(w)[:, None]
    offset, slope = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)[0]
    return float(offset), float(slope)


def describe(errors: list[float], total: int) -> str:
    if not errors:
        return f"n 0 of {total}"
    e = np.asarray(errors)
    return f"MAE {np.abs(e).mean():4.2f} bias {e.mean():+5.2f} (n {len(e)} of {total})"


def report(title: str, samples: list[Sample], ratio: float, line: tuple[float, float]) -> None:
    print(title)
    for source, group in by_source(samples).items():
        eye = [line[0] + line[1] * eye_position(s.pedicles) - s.truth for s in group]
        print(f"  {source:<24} both pedicles {describe(ratio_errors(group, ratio), len(group))};"
              f" eye line {describe(eye, len(group))}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fit_obliquity", description=__doc__)
    parser.add_argument("--phantom", type=Path, action="append", default=[], help="phantom set to fit on")
    parser.add_argument("--ct", type=Path, action="append", default=[], help="CT DRR set to fit on")
    parser.add_argument("--heldout-phantom", type=Path, action="append", default=[], help="phantom set, measured only")
    parser.add_argument("--heldout-ct", type=Path, action="append", default=[], help="CT DRR set, measured only")
    parser.add_argument("--model", type=Path, help="a model version folder (default: the configured default)")
    args = parser.parse_args(argv)
    if not args.phantom and not args.ct:
        parser.error("give at least one set to fit on (--phantom or --ct)")
    pipeline = Pipeline(Config() if args.model is None else Config(model=ModelConfig(path=args.model)))
    try:
        fitting = collect(pipeline, args.phantom, args.ct)
        heldout = collect(pipeline, args.heldout_phantom, args.heldout_ct)
    finally:
        pipeline.close()
    if not fitting:
        print("no oblique was measured in the sets to fit on", file=sys.stderr)
        return 1
    ratio, line = fit_ratio(fitting), fit_eye_line(fitting)
    shipped = (PEDICLE_HALF_SPAN_TO_DEPTH, (EYE_TO_ANGLE[0], EYE_TO_ANGLE[1]))
    for name, (r, ln) in (("shipped", shipped), ("fitted", (ratio, line))):
        print(f"{name}: PEDICLE_HALF_SPAN_TO_DEPTH = {r:.3f}, EYE_TO_ANGLE = ({ln[0]:.2f}, {ln[1]:.2f})")
        report("  fitted on", fitting, r, ln)
        if heldout:
            report("  held out", heldout, r, ln)
    return 0


if __name__ == "__main__":
    sys.exit(main())
