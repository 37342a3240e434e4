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
from typing import Any

import numpy as np

from edge.config import Config, ModelConfig
from edge.dicom.decode import decode, read_dataset
from edge.imaging.preprocess import preprocess, resample
from edge.inference.backend import ModelOutputs
from edge.pipeline import Pipeline
from edge.qc.assess import Assessment, assess
from edge.qc.segmentation import THRESHOLD
from edge.qc.structures import LUMBAR_LEVELS, STRUCTURES, VERTEBRAL_LEVELS, VIEW_CLASSES
from tools.ctdrr.truth import endplate_doubling_mm, pose_of
from tools.ctdrr.volumes import load_ct
from tools.evaluate_real.metrics import dice
from tools.phantom.dataset import load_masks
from tools.phantom.truth import turned_from_ap

READ_DICE = 0.5


def levels_misread(probabilities: np.ndarray, truth: dict[str, np.ndarray], transform: object) -> list[str]:
    """The labelled lumbar levels the model did not read (truth masks resampled onto the network grid)."""
    predicted = {lv: probabilities[STRUCTURES.index(f"body_{lv}")] > THRESHOLD for lv in VERTEBRAL_LEVELS}
    wrong = []
    for level in LUMBAR_LEVELS:
        key = f"body_{level}"
        if key not in truth or not truth[key].any():
            continue
        true = resample(truth[key].astype(np.float32), transform) > 0.5  # type: ignore[arg-type]
        scores = {lv: dice(mask, true) for lv, mask in predicted.items()}
        if scores[level] < READ_DICE or max(scores, key=lambda lv: scores[lv]) != level:
            wrong.append(level)
    return wrong


def truth_outputs(entry: dict[str, object], truth: dict[str, np.ndarray], transform: object) -> ModelOutputs:
    """The DRR's exact labels as if a perfect model had output them: each labelled structure's mask
    area-resampled onto the network grid (a probability of 0..1 at its edges), the true view one-hot."""
    size = transform.size  # type: ignore[attr-defined]
    masks = np.zeros((len(STRUCTURES), size, size), dtype=np.float32)
    for name, mask in truth.items():
        if name in STRUCTURES:
            masks[STRUCTURES.index(name)] = resample(mask.astype(np.float32), transform)  # type: ignore[arg-type]
    view = np.zeros(len(VIEW_CLASSES), dtype=np.float32)
    view[VIEW_CLASSES.index(str(entry["view_class"]))] = 1.0
    return ModelOutputs(masks, view)


def assess_on_truth(pipeline: Pipeline, folder: Path, entry: dict[str, Any]) -> Assessment:
    """The appliance's assessment of one DRR with its exact labels as the model's output."""
    radiograph = decode(read_dataset(folder / entry["file"]))
    _, transform = preprocess(radiograph.pixels, pipeline.manifest.input_size)
    outputs = truth_outputs(entry, load_masks(folder / entry["masks"]), transform)
    return assess(
        radiograph, outputs.masks, outputs.view, transform, pipeline.standard,
        target_exposure_index={}, versions=pipeline.versions, exact_masks=True,
    )  # fmt: skip


def true_obliquity(entry: dict[str, Any]) -> float:
    pose = entry["pose"]
    return turned_from_ap(str(pose["projection"]), float(pose["obliquity_deg"]), float(pose["rotation_deg"]))


def summary(name: str, errors: list[float], unit: str) -> str:
    e = np.asarray(errors)
    return f"{name} on exact masks: MAE {np.abs(e).mean():.2f} {unit}, bias {e.mean():+.2f} {unit} (n={len(e)})"


def measure_on_truth(pipeline: Pipeline, folder: Path, manifest: dict[str, Any]) -> int:
    """The measurements on exact masks (a perfect model): do constants fitted on the phantom transfer
    to real anatomy? Obliquity against the pose's turn, double endplates against the projected rim of
    the level the appliance measured (`tools.ctdrr.truth`)."""
    obliquity: list[float] = []
    endplates: list[float] = []
    for entry in manifest["images"]:
        if entry["view"] not in ("oblique", "lateral"):
            continue
        assessment = assess_on_truth(pipeline, folder, entry)
        name = f"  {entry['file']} ({entry['ct']})"
        item = assessment.verdict.items.get("obliquity" if entry["view"] == "oblique" else "tilt_double_endplates")
        if item is None or item.value is None:
            print(f"{name}: not measured: {assessment.verdict.reason or (item.message if item else '-')}")
            continue
        if entry["view"] == "lateral":
            level = str(item.detail["level"])
            ct = load_ct(entry["ct"])
            truth = endplate_doubling_mm(ct, pose_of(ct, entry["pose"]), level)
            endplates.append(item.value - truth)
            print(f"{name}: double endplates at {level}: truth {truth:.2f} mm, measured {item.value:.2f} mm")
            continue
        truth = true_obliquity(entry)
        obliquity.append(item.value - truth)
        print(f"{name}: truth {truth:.1f} deg, measured {item.value:.1f} deg ({item.detail.get('method')})")
    if obliquity:
        print(summary("obliquity", obliquity, "deg"))
    if endplates:
        print(summary("double endplates", endplates, "mm"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ctdrr.judge", description=__doc__)
    parser.add_argument("--set", type=Path, required=True, help="a CT DRR set (python -m tools.ctdrr --out DIR)")
    parser.add_argument("--model", type=Path, help="a model version folder (default: the configured default)")
    parser.add_argument(
        "--truth-masks", action="store_true", help="measure on the exact labels instead of the model's masks"
    )
    args = parser.parse_args(argv)
    manifest = json.loads((args.set / "manifest.json").read_text())
    config = Config() if args.model is None else Config(model=ModelConfig(path=args.model))
    pipeline = Pipeline(config)
    if args.truth_masks:
        print(f"measurements on the exact masks of {len(manifest['images'])} CT DRRs ({args.set}); domain: CT DRRs")
        return measure_on_truth(pipeline, args.set, manifest)
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
