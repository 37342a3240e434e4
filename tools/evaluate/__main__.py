"""python -m tools.evaluate --model engines/<model>/<version> --count N --seed S [--domain phantom|ctdrr]
[--no-fp16] [--write]: segmentation figures on held-out phantom renders or on DRRs of the held-out CT."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.evaluate.segmentation import evaluate_model, format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="engines/<model>/<version> (manifest.json)")
    parser.add_argument("--count", type=int, default=300, help="held-out images, cycling AP / lateral / oblique")
    parser.add_argument("--seed", type=int, default=900_001, help="phantom seed never used in training")
    parser.add_argument("--no-fp16", action="store_true", help="skip the FP16 (mixed-precision ONNX) run")
    parser.add_argument("--domain", choices=("phantom", "ctdrr"), default="phantom", help="which held-out images")
    parser.add_argument("--write", action="store_true", help="record the results in the model's manifest")
    args = parser.parse_args(argv)
    try:
        result = evaluate_model(args.model, args.seed, args.count, fp16=not args.no_fp16, domain=args.domain)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.write:
        manifest_path = args.model / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["evaluation" if args.domain == "phantom" else "evaluation_ctdrr"] = result
        manifest_path.write_text(json.dumps(manifest, indent=1))
        print(f"recorded in {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
