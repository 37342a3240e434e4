"""python -m tools.ctdrr: render DRRs of the real CTs with exact masks (training CTs unless asked)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.ctdrr import HELD_OUT_CTS, TRAINING_CTS
from tools.ctdrr.dataset import CtSetOptions, generate_set, parse_cts, parse_views, write_manifest, write_preview


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ctdrr",
        description="Digitally reconstructed lumbar radiographs of real CTs, with exact projected masks.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, masks/, manifest.json)")
    parser.add_argument("--count", type=int, default=12, help="number of images (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="set seed: same seed, same bytes (default 0)")
    parser.add_argument(
        "--cts",
        default=",".join(TRAINING_CTS),
        help=f"CTs to cycle through (default {','.join(TRAINING_CTS)}; {','.join(HELD_OUT_CTS)} is held out: "
        "measurement only)",
    )
    parser.add_argument("--views", default="ap,lat,obl", help="views to cycle through (default ap,lat,obl)")
    parser.add_argument("--size", type=int, default=512, help="detector pixels per side over 43 cm (default 512)")
    parser.add_argument("--preview", action="store_true", help="write preview.png, a contact sheet with outlines")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not 64 <= args.size <= 4096:
        parser.error("--size must lie in [64, 4096]")
    try:
        options = CtSetOptions(
            seed=args.seed, cts=parse_cts(args.cts), views=parse_views(args.views), size_px=args.size
        )
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    entries = []
    try:
        for entry in generate_set(args.out, args.count, options):
            entries.append(entry)
            print(
                f"{entry['file']}: {entry['ct']:8s} {entry['projection']:3s} {entry['facing'] or '':5s} "
                f"render {entry['render_seconds']:.2f} s",
                flush=True,
            )
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = write_manifest(args.out, options, entries)
    renders = sorted(e["render_seconds"] for e in entries)
    print(
        f"wrote {len(entries)} images and {manifest} in {time.perf_counter() - start:.1f} s "
        f"(render at {args.size} px: median {renders[len(renders) // 2]:.2f} s, max {renders[-1]:.2f} s, one core)"
    )
    if args.preview:
        print(f"preview: {write_preview(args.out, entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
