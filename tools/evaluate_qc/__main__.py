"""python -m tools.evaluate_qc --count N --seed S: QC verdicts against phantom truth.

Generates a held-out phantom set (or reads one with --set), runs every DICOM file through the
appliance's own pipeline (edge.pipeline: decode -> preprocess -> ONNX Runtime -> measure -> judge),
and compares each verdict and each item with the truth the phantom derived from its 3D geometry.

Counting: "positive" = the image fails QC. The appliance flags an image when its verdict is fail or
indeterminate (a radiographer is asked to look either way); indeterminate verdicts are also counted
on their own. An image is borderline when its truth is decided only by items within the borderline
band of their threshold (1 degree, 2 mm or the item's equivalent): reported, not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = ("ap", "lateral", "oblique")


def clear_truth(qc: dict[str, Any]) -> str | None:
    """'fail' / 'pass' when the truth does not hinge on a borderline item, else None."""
    items = qc["items"]
    if any(t["outcome"] == "fail" and not t["borderline"] for t in items.values() if t["outcome"] != "warn"):
        return "fail" if qc["verdict"] == "fail" else None
    if any(t["borderline"] for t in items.values()):
        return None
    return str(qc["verdict"])


def rates(tp: int, fn: int, tn: int, fp: int) -> dict[str, float | int | None]:
    n = tp + fn + tn + fp
    return {
        "n": n,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "accuracy": (tp + tn) / n if n else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
    }


def evaluate(folder: Path, threads: int, model: Path | None = None) -> dict[str, Any]:
    from edge.config import Config, ModelConfig
    from edge.pipeline import Pipeline

    manifest = json.loads((folder / "manifest.json").read_text())
    model_config = ModelConfig(threads=threads) if model is None else ModelConfig(path=model, threads=threads)
    pipeline = Pipeline(Config(model=model_config))
    model_label = pipeline.manifest.label
    images: dict[str, Counter[str]] = defaultdict(Counter)
    items: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    confusion: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    angle_errors: dict[str, list[float]] = defaultdict(list)
    misses: list[dict[str, Any]] = []
    stage_ms: dict[str, list[float]] = defaultdict(list)
    for entry in manifest["images"]:
        result = pipeline.process(folder / entry["file"])
        verdict = result.verdict
        for stage, ms in verdict.timings_ms.items():
            stage_ms[stage].append(ms)
        view = entry["view"]
        truth = clear_truth(entry["qc"])
        predicted = verdict.verdict
        confusion[view][(entry["qc"]["verdict"] + ("*" if truth is None else ""), predicted)] += 1
        flagged = predicted != "pass"
        if truth is None:
            images[view]["borderline"] += 1
        else:
            key = ("tp" if flagged else "fn") if truth == "fail" else ("fp" if flagged else "tn")
            images[view][key] += 1
            if predicted == "indeterminate":
                images[view]["indeterminate"] += 1
            if key in ("fn", "fp"):
                misses.append(
                    {
                        "file": entry["file"],
                        "faults": entry["faults"],
                        "truth": entry["qc"]["failed_items"],
                        "verdict": predicted,
                        "failed": [r.item for r in verdict.failed],
                        "reason": verdict.reason,
                    }
                )
        for name, t in entry["qc"]["items"].items():
            r = verdict.items.get(name)
            if t["borderline"]:
                items[(view, name)]["borderline"] += 1
                continue
            got = "not judged" if r is None else r.outcome
            flag = got in ("fail", "indeterminate", "not judged")
            is_fail = t["outcome"] == "fail"
            items[(view, name)][("tp" if flag else "fn") if is_fail else ("fp" if flag else "tn")] += 1
            if got in ("indeterminate", "not judged"):
                items[(view, name)]["unjudged"] += 1
        if view == "oblique" and "obliquity" in verdict.items and verdict.items["obliquity"].value is not None:
            true_angle = entry["qc"]["items"]["obliquity"]["value"]
            angle_errors["obliquity_deg"].append(abs(float(verdict.items["obliquity"].value) - true_angle))
        if view == "ap" and "rotation_spinous" in verdict.items:
            estimate = verdict.items["rotation_spinous"].detail.get("rotation_deg")
            if isinstance(estimate, float | int):
                angle_errors["ap_rotation_deg"].append(abs(float(estimate) - entry["angles"]["rotation_deg"]))
    pipeline.close()
    report: dict[str, Any] = {
        "images": len(manifest["images"]),
        "set": str(folder),
        "seed": manifest["seed"],
        "model": model_label,
    }
    report["views"] = {
        v: {
            **rates(images[v]["tp"], images[v]["fn"], images[v]["tn"], images[v]["fp"]),
            "borderline": images[v]["borderline"],
            "indeterminate": images[v]["indeterminate"],
        }
        for v in VIEWS
    }
    report["items"] = {
        f"{v}.{name}": {
            **rates(c["tp"], c["fn"], c["tn"], c["fp"]),
            "borderline": c["borderline"],
            "unjudged": c["unjudged"],
        }
        for (v, name), c in sorted(items.items())
    }
    report["confusion"] = {v: {f"{t} -> {p}": n for (t, p), n in sorted(c.items())} for v, c in confusion.items()}
    report["angles"] = {
        k: {"n": len(e), "mean_abs_error": float(np.mean(e)), "p90_abs_error": float(np.percentile(e, 90))}
        for k, e in angle_errors.items()
    }
    report["stage_ms_median"] = {k: float(np.median(v)) for k, v in stage_ms.items()}
    report["misses"] = misses
    return report


def _fmt(x: float | int | None) -> str:
    return "  -  " if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def print_report(report: dict[str, Any]) -> None:
    print(
        f"QC evaluation of {report.get('model', 'the default model')} on {report['images']} phantom images"
        f" (seed {report['seed']}); phantom figures, not clinical"
    )
    print(
        f"{'view':8s} {'n':>4s} {'acc':>6s} {'sens':>6s} {'spec':>6s} {'TP':>4s} {'FN':>4s} {'TN':>4s} {'FP':>4s}"
        f" {'indet':>6s} {'border':>7s}"
    )
    for v, r in report["views"].items():
        print(
            f"{v:8s} {r['n']:4d} {_fmt(r['accuracy']):>6s} {_fmt(r['sensitivity']):>6s} {_fmt(r['specificity']):>6s}"
            f" {r['tp']:4d} {r['fn']:4d} {r['tn']:4d} {r['fp']:4d} {r['indeterminate']:6d} {r['borderline']:7d}"
        )
    print("\nper item (positive = item fails; borderline items not counted; unjudged counted as flagged)")
    print(
        f"{'item':34s} {'n':>4s} {'acc':>6s} {'sens':>6s} {'spec':>6s} {'FN':>4s} {'FP':>4s} {'unjdg':>6s} {'bord':>5s}"
    )
    for name, r in report["items"].items():
        print(
            f"{name:34s} {r['n']:4d} {_fmt(r['accuracy']):>6s} {_fmt(r['sensitivity']):>6s}"
            f" {_fmt(r['specificity']):>6s} {r['fn']:4d} {r['fp']:4d} {r['unjudged']:6d} {r['borderline']:5d}"
        )
    print("\nconfusion (truth -> verdict; * = borderline truth)")
    for v, c in report["confusion"].items():
        print(f"  {v}: " + ", ".join(f"{k}: {n}" for k, n in c.items()))
    print("\nangle estimates")
    for k, a in report["angles"].items():
        print(
            f"  {k}: mean absolute error {a['mean_abs_error']:.2f} deg, p90 {a['p90_abs_error']:.2f} deg (n={a['n']})"
        )
    print("\nmedian stage times (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_ms_median"].items()))
    if report["misses"]:
        print("\nmisclassified images:")
        for m in report["misses"]:
            print(
                f"  {m['file']}: faults {m['faults']} truth fails {m['truth']} -> {m['verdict']} {m['failed']}"
                f" {m['reason']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate_qc", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=600, help="images to generate (default 600, 200 per view)")
    parser.add_argument("--seed", type=int, default=424242, help="held-out set seed (default 424242)")
    parser.add_argument("--size", type=int, default=2500, help="detector pixels per side (default 2500)")
    parser.add_argument("--set", type=Path, help="evaluate an existing phantom set instead of generating one")
    parser.add_argument("--out", type=Path, help="where to generate the set (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--model", type=Path, help="a model version folder (default: the configured default)")
    parser.add_argument("--write", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.set is not None:
        if not (args.set / "manifest.json").is_file():
            parser.error(f"--set {args.set}: no manifest.json (generate one with python -m tools.phantom)")
        report = evaluate(args.set, args.threads, args.model)
    else:
        import tempfile

        from edge.qc.standard import load_standard
        from tools.phantom.dataset import SetOptions, generate_set, write_manifest

        with tempfile.TemporaryDirectory() as tmp:
            folder = args.out or Path(tmp)
            options = SetOptions(seed=args.seed, size_px=args.size)
            entries = list(generate_set(folder, args.count, options, None))
            write_manifest(folder, options, entries, load_standard())
            print(f"generated {len(entries)} images in {time.perf_counter() - start:.0f} s", flush=True)
            report = evaluate(folder, args.threads, args.model)
    print_report(report)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.write is not None:
        args.write.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
