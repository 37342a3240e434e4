"""python -m tools.phantom: generate a lumbar-spine phantom set, or benchmark the generator."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge.qc.standard import load_standard
from tools.phantom.dataset import SetOptions, generate_set, parse_views, write_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.phantom",
        description="Synthetic lumbar-spine radiographs (DRR phantom) with exact ground truth and controlled faults.",
    )
    parser.add_argument("--out", type=Path, help="output folder (images/, masks/, manifest.json)")
    parser.add_argument("--count", type=int, default=12, help="number of images (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="set seed: same seed, same bytes (default 0)")
    parser.add_argument("--views", default="ap,lat,obl", help="views to cycle through (default ap,lat,obl)")
    parser.add_argument("--fault-rate", type=float, default=0.5, help="share of images with an injected fault")
    parser.add_argument("--size", type=int, default=2500, help="detector pixels per side over 43 cm (default 2500)")
    parser.add_argument(
        "--compression",
        default="none",
        help="transfer syntax: none (explicit VR LE), rle, jpegls, j2k, or mixed (default none)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    parser.add_argument("--preview", action="store_true", help="write preview.png, a contact sheet with overlays")
    parser.add_argument("--bench", action="store_true", help="print images per second instead of writing a set")
    args = parser.parse_args(argv)

    if args.bench:
        from tools.phantom.bench import run_bench

        return run_bench(args.workers)
    if args.out is None:
        parser.error("--out is required (or use --bench)")
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate must lie in [0, 1]")
    if not 64 <= args.size <= 4096:
        parser.error("--size must lie in [64, 4096]")
    try:
        views = parse_views(args.views)
    except ValueError as exc:
        parser.error(str(exc))
    options = SetOptions(
        seed=args.seed, views=views, fault_rate=args.fault_rate, size_px=args.size, compression=args.compression
    )
    standard = load_standard()
    start = time.perf_counter()
    entries = []
    try:
        for entry in generate_set(args.out, args.count, options, args.workers):
            entries.append(entry)
            qc = entry["qc"]
            print(
                f"{entry['file']}: {entry['projection']:3s} {qc['verdict']:4s} {','.join(qc['failed_items'])}",
                flush=True,
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = write_manifest(args.out, options, entries, standard)
    elapsed = time.perf_counter() - start
    failed = sum(e["qc"]["verdict"] == "fail" for e in entries)
    print(f"wrote {len(entries)} images ({failed} expected to fail QC) and {manifest} in {elapsed:.1f} s")
    if args.preview:
        from tools.phantom.preview import preview_from_set

        print(f"preview: {preview_from_set(args.out, entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
