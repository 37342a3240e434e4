"""python -m tools.export RUN_DIR --out engines/<model>/<version>/"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.export.export import export_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__)
    parser.add_argument("run", type=Path, help="training run folder (with last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="engines/<model>/<version>/")
    parser.add_argument("--force", action="store_true", help="replace a model already exported to --out")
    args = parser.parse_args(argv)
    if (args.out / "model.onnx").exists() and not args.force:
        print(
            f"error: {args.out} already holds a model; a shipped version is never overwritten "
            "(choose a new version, or --force for a scratch folder)",
            file=sys.stderr,
        )
        return 2
    if not (args.run / "last.pt").exists():
        print(
            f"error: {args.run / 'last.pt'} not found: train first (python -m tools.train --out {args.run})",
            file=sys.stderr,
        )
        return 2
    manifest = export_run(args.run, args.out)
    print(
        f"exported {args.out / manifest['file']} sha256 {manifest['sha256'][:16]}..., "
        f"{manifest['parameters'] / 1e6:.2f} M parameters, {manifest['flops_per_image'] / 1e9:.2f} GFLOPs/image, "
        f"ONNX Runtime vs PyTorch max |diff| {manifest['export_check']['onnxruntime_vs_pytorch_max_abs_diff']:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
