"""python -m tools.bench infer --model engines/<model>/<version> [--backend onnxruntime] [--runs N]
python -m tools.bench check [--runs N] [--size 2500]: the whole `edge-qc check` pipeline, stage by stage
python -m tools.bench e2e [--count N]: C-STORE to verdict over MQTT
python -m tools.bench room [--count N]: C-STORE to verdict painted on the room display (/room), beside MQTT
python -m tools.bench attack [--only NAME[,NAME]] [--duration S] [--json PATH]: hostile network and files

Latency of the model alone (p50/p95, throughput) with the model's FLOPs; and of the path from a
full-size DICOM to the network input (decode + preprocess), which the appliance pays on every image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# Dense FP16 peaks of the Jetson modules (docs/tensorrt-jetson.md, approximate), by
# a substring of /proc/device-tree/model; elsewhere the peak is unknown and no fraction is printed.
PEAK_FP16_FLOPS = {"AGX Orin": 42e12, "Orin NX": 15e12, "Orin Nano": 10e12}


def bench_infer(model_dir: Path, backend: str, runs: int, threads: int, engine: Path | None) -> int:
    """Latency of the model alone through the appliance's own backend interface."""
    from edge.engines.manifest import ManifestError, load_manifest
    from edge.inference.backend import BackendUnavailableError, open_backend
    from edge.inference.device import read_fingerprint
    from tools.train.data import make_sample

    try:
        manifest = load_manifest(model_dir)
        artifact = manifest.model_path if backend == "onnxruntime" else engine
        if artifact is None:
            print("error: --backend tensorrt needs --engine ENGINE.plan (edge-qc engine build)", file=sys.stderr)
            return 2
        runner = open_backend(backend, artifact, threads)
    except (ManifestError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    image, *_ = make_sample(910_000, 0, manifest.input_size)
    x = (image.astype(np.float32) / 255.0)[None, None]
    runner.warm_up(5)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(x)
        times.append(time.perf_counter() - start)
    p50 = statistics.median(times)
    flops = float(json.loads((model_dir / "manifest.json").read_text())["flops_per_image"])
    described = runner.describe()
    print(f"{manifest.label} on {described['name']} {described['precision']} ({described['device']}), {runs} runs:")
    print(
        f"  latency p50 {p50 * 1000:.1f} ms, p95 {percentile(times, 95) * 1000:.1f} ms, "
        f"throughput {1 / p50:.1f} images/s"
    )
    achieved = flops / p50
    line = f"  {flops / 1e9:.2f} GFLOPs per image -> {achieved / 1e9:.1f} GFLOP/s achieved"
    module = read_fingerprint().module or ""
    peak = next((v for k, v in PEAK_FP16_FLOPS.items() if k in module), None)
    if peak is not None and backend == "tensorrt":
        line += f", {100 * achieved / peak:.1f} % of the module's FP16 peak"
    print(line)
    runner.close()
    return 0


def bench_preprocess(runs: int) -> None:
    import tempfile

    import pydicom

    from edge.dicom.decode import decode
    from edge.imaging.preprocess import preprocess
    from tools.phantom.dataset import SetOptions, generate_image, write_image

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "images").mkdir()
        (out / "masks").mkdir()
        options = SetOptions(seed=910_000, size_px=2500)
        entry = write_image(generate_image(options, 0), out, options)
        path = out / entry["file"]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            preprocess(decode(pydicom.dcmread(path)).pixels)
            times.append(time.perf_counter() - start)
    print(
        f"  2500 x 2500 DICOM -> network input (read, decode, preprocess): p50 {statistics.median(times) * 1000:.0f} ms"
    )


def bench_check(runs: int, size: int, images: int) -> int:
    """Median wall time of every pipeline stage on full-size phantom DICOM files, after start-up
    (the first image of each file is not counted: it pays for page faults and allocator growth)."""
    import tempfile

    from edge.config import Config
    from edge.pipeline import Pipeline
    from tools.phantom.dataset import SetOptions, generate_image, write_image

    pipeline = Pipeline(Config())
    stages: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "images").mkdir()
        (out / "masks").mkdir()
        options = SetOptions(seed=910_001, size_px=size)
        paths = [out / write_image(generate_image(options, i), out, options)["file"] for i in range(images)]
        pipeline.process(paths[0])  # start-up: model warm, caches filled
        for _ in range(runs):
            for path in paths:
                for stage, ms in pipeline.process(path).verdict.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
    pipeline.close()
    n = len(stages.get("total", []))
    print(f"edge-qc check on {size} x {size} phantom DICOM ({images} images x {runs} runs = {n}), ONNX Runtime CPU:")
    for stage, values in stages.items():
        print(f"  {stage:10s} median {statistics.median(values):7.1f} ms   p90 {percentile(values, 90):7.1f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    infer = sub.add_parser("infer", help="model latency per backend")
    infer.add_argument("--model", type=Path, required=True)
    infer.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    infer.add_argument("--runs", type=int, default=50)
    infer.add_argument("--threads", type=int, default=2)
    infer.add_argument("--engine", type=Path, help="the TensorRT engine (.plan) for --backend tensorrt")
    check = sub.add_parser("check", help="edge-qc check stage timings on full-size DICOM files")
    check.add_argument("--runs", type=int, default=5)
    check.add_argument("--size", type=int, default=2500)
    check.add_argument("--images", type=int, default=3, help="one per view (default 3)")
    e2e = sub.add_parser("e2e", help="C-STORE to verdict over MQTT, with its floors")
    e2e.add_argument("--count", type=int, default=30)
    e2e.add_argument("--sustained-minutes", type=float, default=0.0, help="send 60 images per minute for this long")
    room = sub.add_parser("room", help="C-STORE to verdict painted on /room (headless Chromium), beside MQTT")
    room.add_argument("--count", type=int, default=20)
    attack = sub.add_parser("attack", help="hostile network and hostile files (issue 15) under the unit's limits")
    attack.add_argument("--only", default="", help="comma-separated attacks (default: all, in order)")
    attack.add_argument("--duration", type=float, default=30.0, help="seconds each attack runs, at least")
    attack.add_argument("--json", type=Path, help="write the rows here")
    attack.add_argument("--out", type=Path, help="keep the daemons' logs and files here (default: removed)")
    attack.add_argument("--connections", type=int, default=4, help="one-byte and drip connections")
    attack.add_argument("--associations", type=int, default=200, help="idle associations")
    attack.add_argument("--silent", type=int, default=200, help="silent TCP connections")
    attack.add_argument("--pdu-seconds", type=float, default=20.0, help="how long the PDU bomb streams")
    attack.add_argument("--pill-wait", type=float, default=120.0, help="seconds the good spooled images may take")
    attack.add_argument("--max-restarts", type=int, default=8, help="restarts per attack before giving up")
    args = parser.parse_args(argv)
    if args.command == "attack":
        from tools.bench.attack import ATTACKS, Options
        from tools.bench.attack import run as run_attack

        return run_attack(
            Options(
                only=tuple(n.strip() for n in args.only.split(",") if n.strip()) or ATTACKS,
                duration_s=args.duration,
                json_path=args.json,
                out=args.out,
                connections=args.connections,
                associations=args.associations,
                silent=args.silent,
                pdu_seconds=args.pdu_seconds,
                pill_wait_s=args.pill_wait,
                max_restarts=args.max_restarts,
            )
        )
    if args.command == "e2e":
        from tools.bench.e2e import run

        return run(args.count, args.sustained_minutes)
    if args.command == "room":
        from tools.bench.room import run as run_room

        return run_room(args.count)
    if args.command == "check":
        return bench_check(args.runs, args.size, args.images)
    code = bench_infer(args.model, args.backend, args.runs, args.threads, args.engine)
    if code == 0:
        bench_preprocess(max(3, args.runs // 10))
    return code


if __name__ == "__main__":
    sys.exit(main())
