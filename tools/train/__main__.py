"""python -m tools.train --out RUN_DIR [--epochs N] [--seed S] [--samples N] [--real-set DIR --real-fraction F]
[--ct-samples N --ct-fraction F] [--augment basic|full] [--steps-per-epoch N] [--cache DIR]: train the segmentation
model on phantom renders, and optionally real AP films and CT DRRs (partial labels)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.train.train import Recipe, train


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumes when it holds a checkpoint)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--samples", type=int, default=defaults.samples, help="phantom training images")
    parser.add_argument("--size", type=int, default=defaults.size, help="network input size")
    parser.add_argument("--base-channels", type=int, default=defaults.base_channels)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from the weights of this checkpoint (last.pt) or exported model (engines/<model>/<version>)",
    )
    parser.add_argument(
        "--lateral-rotation-samples", type=int, default=0, help="extra lateral views with axial rotation (fine-tuning)"
    )
    parser.add_argument(
        "--symmetric-pedicles", action="store_true", help="on laterals, score the pedicle channels in the better order"
    )
    parser.add_argument("--real-set", type=Path, default=None, help="corner-labelled AP set (its training patients)")
    parser.add_argument("--real-fraction", type=float, default=defaults.real_fraction, help="share of real films")
    parser.add_argument("--ct-samples", type=int, default=defaults.ct_samples, help="CT DRRs of the training CTs")
    parser.add_argument("--ct-fraction", type=float, default=defaults.ct_fraction, help="share of CT DRRs")
    parser.add_argument("--augment", choices=("basic", "full"), default=defaults.augment)
    parser.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch, help="0: one phantom pass")
    parser.add_argument("--attention", action="store_true", help="global self-attention at the bottleneck")
    parser.add_argument("--cache", type=Path, default=None, help="folder for sample caches (default: the run)")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="end the run after N steps in all (the schedule still spans --epochs)",
    )
    args = parser.parse_args(argv)
    recipe = Recipe(
        seed=args.seed,
        samples=args.samples,
        size=args.size,
        base_channels=args.base_channels,
        epochs=args.epochs,
        batch=args.batch,
        learning_rate=args.lr,
        bf16=not args.fp32,
        init=str(args.init or ""),
        lateral_rotation_samples=args.lateral_rotation_samples,
        symmetric_pedicles=args.symmetric_pedicles,
        real_set=str(args.real_set or ""),
        real_fraction=args.real_fraction,
        ct_samples=args.ct_samples,
        ct_fraction=args.ct_fraction,
        steps_per_epoch=args.steps_per_epoch,
        augment=args.augment,
        attention=args.attention,
    )
    if args.epochs < 1 or args.samples < args.batch or args.batch < 1 or args.size < 32:
        parser.error("need --epochs >= 1, --batch >= 1, --samples >= --batch and --size >= 32")
    try:
        metrics = train(args.out, recipe, max_steps=args.stop_after_steps, cache=args.cache)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"done: validation Dice {metrics.get('dice', float('nan')):.4f}, view accuracy "
        f"{metrics.get('view_accuracy', float('nan')):.3f}; checkpoint {args.out / 'last.pt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
