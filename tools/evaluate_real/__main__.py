"""python -m tools.evaluate_real --model DIR [--model DIR2 ...] [--set DIR] [--split heldout]
[--crop lumbar|whole|both] [--out DIR]: score models on real AP films with clinicians' corner boxes.

Prints, per crop, one column per model: body Dice against the boxes, found, level right, films with
all five lumbar levels right, centroid and endplate-tilt errors, and the appliance's verdicts; writes
the per-film results (results-<crop>.json) and a contact sheet per model and crop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, get_args

from tools.aasce.dataset import DEFAULT_ROOT, LUMBAR_CROP_TOP, load_films
from tools.evaluate_real.report import QUAD_NOTE, contact_sheet, format_table, summarise
from tools.evaluate_real.run import Crop, FilmResult, RealEvaluator


def _film_record(r: FilmResult) -> dict[str, Any]:
    return {
        "film": r.film.name,
        "patient": r.film.patient,
        "crop": list(r.crop),
        "verdict": r.verdict,
        "levels": {
            lv: {
                "dice": round(s.dice, 4),
                "best_dice": round(s.best_dice, 4),
                "best_level": s.best_level,
                "found": s.found,
                "level_right": s.level_right,
                "centroid_error": None if s.centroid_error == float("inf") else round(s.centroid_error, 4),
                "tilt_error_deg": None if s.tilt_error_deg is None else round(s.tilt_error_deg, 2),
            }
            for lv, s in r.score.levels.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate_real", description=__doc__)
    parser.add_argument("--model", type=Path, action="append", required=True, help="a model version folder")
    parser.add_argument("--set", type=Path, default=DEFAULT_ROOT, help="a corner-labelled AP set (AASCE layout)")
    parser.add_argument("--split", choices=("heldout", "development", "validation", "all"), default="heldout")
    parser.add_argument("--crop", choices=(*get_args(Crop), "both"), default="both")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N films (0: all)")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate_real"))
    parser.add_argument("--write", action="store_true", help="record the figures in each model's manifest")
    args = parser.parse_args(argv)
    try:
        films = load_films(args.set, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    excluded = [f for f in films if not f.trusted]
    films = [f for f in films if f.trusted]
    if args.limit:
        films = films[: args.limit]
    if not films:
        print("error: no films to score", file=sys.stderr)
        return 2
    crops: list[Crop] = ["lumbar", "whole"] if args.crop == "both" else [args.crop]
    patients = len({f.patient for f in films})
    print(
        f"real AP radiographs: {args.set} (clinicians' corner landmarks), split {args.split}: "
        f"{len(films)} films of {patients} patients; {len(excluded)} excluded for labelling slips "
        f"({', '.join(f'{k} {v}' for k, v in Counter(p for f in excluded for p in f.problems).most_common())})"
    )
    print(
        f"domain: real radiographs (adolescent whole-spine AP films; lumbar crop = rows "
        f"{100 * LUMBAR_CROP_TOP:.0f}-100 % of the film, a rule that uses no labels)"
    )
    print(QUAD_NOTE)
    args.out.mkdir(parents=True, exist_ok=True)
    evaluators = []
    try:
        for model in args.model:
            evaluators.append(RealEvaluator(model))
    except Exception as exc:  # a model folder that cannot be opened: say which and why
        print(f"error: cannot open model {model}: {exc}", file=sys.stderr)
        return 2
    labels = [e.label for e in evaluators]
    report: dict[str, Any] = {"set": str(args.set), "split": args.split, "films": len(films), "models": labels}
    for crop in crops:
        summaries = []
        for evaluator in evaluators:
            started = time.perf_counter()
            results = [evaluator.evaluate(film, crop) for film in films]
            summaries.append(summarise(results))
            tag = evaluator.label.replace(" ", "-")
            sheet = contact_sheet(results, args.out / f"sheet-{tag}-{args.split}-{crop}.png")
            (args.out / f"results-{tag}-{args.split}-{crop}.json").write_text(
                json.dumps([_film_record(r) for r in results], indent=1)
            )
            print(f"  {evaluator.label} {crop}: {time.perf_counter() - started:.0f} s, contact sheet {sheet}")
        report[crop] = dict(zip(labels, summaries, strict=True))
        print()
        print(format_table(crop, labels, summaries))
        print()
    (args.out / f"summary-{args.split}.json").write_text(json.dumps(report, indent=1))
    if args.write:
        for model, label in zip(args.model, labels, strict=True):
            path = model / "manifest.json"
            manifest = json.loads(path.read_text())
            figures: dict[str, Any] = {crop: report[crop][label] for crop in crops}
            manifest["evaluation_real"] = {
                "domain": "real radiographs (AASCE AP whole-spine films; lumbar crop and whole film)",
                "set": str(args.set),
                "split": args.split,
                "films": len(films),
                "patients": patients,
                "excluded_label_slips": len(excluded),
                "note": QUAD_NOTE,
                **figures,
            }
            path.write_text(json.dumps(manifest, indent=1))
            print(f"recorded in {path}")
    for evaluator in evaluators:
        evaluator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
