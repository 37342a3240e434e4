"""Generator throughput: images per second at the training size, seconds per full-size DICOM."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tools.phantom.dataset import SetOptions, generate_image, write_image

TRAIN_SIZE = 512
FULL_SIZE = 2500


def _train_image(index: int) -> float:
    start = time.perf_counter()
    generate_image(SetOptions(seed=1234, size_px=TRAIN_SIZE), index)
    return time.perf_counter() - start


def run_bench(workers: int | None = None, train_count: int = 60, full_count: int = 5) -> int:
    workers = workers or os.cpu_count() or 1
    print(f"phantom generator benchmark on {os.cpu_count()} cores, {workers} workers")
    _train_image(0)  # warm imports
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        per_image = list(pool.map(_train_image, range(train_count)))
    elapsed = time.perf_counter() - start
    print(
        f"training size {TRAIN_SIZE}x{TRAIN_SIZE}: {train_count / elapsed:.1f} images/s "
        f"({train_count} images in {elapsed:.1f} s; median {statistics.median(per_image) * 1000:.0f} ms per image "
        f"in one process)"
    )
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "images").mkdir()
        (out / "masks").mkdir()
        options = SetOptions(seed=1234, size_px=FULL_SIZE)
        for index in range(full_count + 1):
            start = time.perf_counter()
            image = generate_image(options, index)
            write_image(image, out, options)
            times.append(time.perf_counter() - start)
    first, warm = times[0], times[1:]
    print(
        f"full size {FULL_SIZE}x{FULL_SIZE} DICOM with masks and truth, one process: "
        f"median {statistics.median(warm):.2f} s, max {max(warm):.2f} s over {full_count} images "
        f"after the first ({first:.2f} s, cold allocator)"
    )
    return 0
