"""python -m tools.ctdrr.judge --set DIR [--model DIR]: the appliance's verdicts on CT DRRs, and how many
of its passes and fails stand on wrong anatomy.

A DRR of a real CT carries exact projected labels, so each verdict can be checked against what the
model read: a lumbar level counts as read when the model's body mask of that level overlaps the true
body with Dice >= 0.5 and no other level's mask overlaps it more. A pass or fail with any labelled
lumbar level not read is a verdict built on wrong anatomy; the reading gate should have made it
indeterminate. Domain: CT DRRs (real anatomy, rendered), not radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from edge.config import Config, ModelConfig
from edge.imaging.preprocess import resample
from edge.pipeline import Pipeline
from edge.qc.segmentation import THRESHOLD
from edge.qc.structures import LUMBAR_LEVELS, STRUCTURES, VERTEBRAL_LEVELS
from tools.phantom.dataset import load_masks

READ_DICE = 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def levels_misread(probabilities: np.ndarray, truth: dict[str, np.ndarray], transform: object) -> list[str]:
    """The labelled lumbar levels the model did not read (truth masks resampled onto the network grid)."""
    predicted = {lv: probabilities[STRUCTURES.index(f"body_{lv}")] > THRESHOLD for lv in VERTEBRAL_LEVELS}
    wrong = []
    for level in LUMBAR_LEVELS:
        key = f"body_{level}"
        if key not in truth or not truth[key].any():
            continue
        true = resample(truth[key].astype(np.float32), transform) > 0.5  # type: ignore[arg-type]
        scores = {lv: _dice(mask, true) for lv, mask in predicted.items()}
        if scores[level] < READ_DICE or max(scores, key=lambda lv: scores[lv]) != level:
            wrong.append(level)
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ctdrr.judge", description=__doc__)
    parser.add_argument("--set", type=Path, required=True, help="a CT DRR set (python -m tools.ctdrr --out DIR)")
    parser.add_argument("--model", type=Path, help="a model version folder (default: the configured default)")
    args = parser.parse_args(argv)
    manifest = json.loads((args.set / "manifest.json").read_text())
    config = Config() if args.model is None else Config(model=ModelConfig(path=args.model))
    pipeline = Pipeline(config)
    counts: Counter[str] = Counter()
    print(f"verdicts of {pipeline.manifest.label} on {len(manifest['images'])} CT DRRs ({args.set}); domain: CT DRRs")
    for entry in manifest["images"]:
        result = pipeline.process(args.set / entry["file"])
        verdict = result.verdict
        truth = load_masks(args.set / entry["masks"])
        wrong: list[str] = []
        if result.segmentation is not None:
            wrong = levels_misread(result.segmentation.probabilities, truth, result.segmentation.transform)
        judged = verdict.verdict in ("pass", "fail")
        counts[verdict.verdict] += 1
        counts["judged on wrong anatomy"] += int(judged and bool(wrong))
        counts["judged on right anatomy"] += int(judged and not wrong)
        counts["indeterminate, anatomy misread"] += int(verdict.verdict == "indeterminate" and bool(wrong))
        print(
            f"  {entry['file']} ({entry['ct']}, {entry['view']}): {verdict.verdict} {verdict.reason_code}"
            f" levels not read: {', '.join(wrong) or '-'}"
        )
    pipeline.close()
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
