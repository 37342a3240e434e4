"""Training samples: phantom images through the appliance's own decode and preprocess.

Each sample is rendered at a modest detector size, encoded as the DICOM dataset a modality would
send, decoded by edge.dicom.decode and preprocessed by edge.imaging.preprocess, exactly as the
appliance does; the masks are area-resampled with the same transform (soft targets).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edge.dicom.decode import display_pixels
from edge.imaging.preprocess import DEFAULT_SIZE, preprocess, resample
from edge.qc.structures import STRUCTURE_VIEWS, STRUCTURES, VIEW_CLASSES
from tools.phantom.acquisition import Acquisition, sample_acquisition
from tools.phantom.dataset import SetOptions, generate_image, image_dataset

RENDER_PX = 512  # detector matrix the samples are rendered at before preprocessing


@dataclass
class Samples:
    """A block of preprocessed samples, stored compactly (uint8 image, uint8 soft masks)."""

    images: NDArray[np.uint8]  # N x S x S, input scaled to 0..255
    masks: NDArray[np.uint8]  # N x C x S x S, area fraction scaled to 0..255
    defined: NDArray[np.bool_]  # N x C: the structure exists in this view
    views: NDArray[np.int64]  # N: index into VIEW_CLASSES

    def save(self, path: Path) -> None:
        """A folder of .npy files, written under a temporary name and renamed when complete."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in FIELDS:
            np.save(tmp / f"{name}.npy", getattr(self, name))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Samples:
        """Memory-mapped: a cache of 10 GB costs no memory until samples are read (and then page cache)."""
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in FIELDS}
        return cls(**arrays)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def concatenate(self, other: Samples) -> Samples:
        return Samples(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.masks, other.masks]),
            np.concatenate([self.defined, other.defined]),
            np.concatenate([self.views, other.views]),
        )


FIELDS: Final = ("images", "masks", "defined", "views")
Sample = tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.bool_], int]


def run_jobs(
    job: Callable[[Any], Sample | str],
    jobs: list[Any],
    size: int,
    what: str,
    workers: int | None = None,
    out: Path | None = None,
) -> Samples:
    """Run `job` over `jobs` in spawned workers (one BLAS thread each) and write each sample into arrays
    allocated once, on disk (`out`, memory-mapped) or in memory, as it arrives: a 10 GB cache never
    needs its size twice in memory. A job returns a sample or a message; up to 1 % failures are
    reported and left out, more stop the build."""
    count = len(jobs)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # the resampling products oversubscribe the cores otherwise (5x slower)
    channels = len(STRUCTURES)
    shapes = {"images": (count, size, size), "masks": (count, channels, size, size), "defined": (count, channels)}
    dtypes = {"images": np.uint8, "masks": np.uint8, "defined": np.bool_, "views": np.int64}
    shapes["views"] = (count,)
    tmp = None if out is None else out.with_name(out.name + ".tmp")
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    arrays = {
        name: np.empty(shapes[name], dtypes[name])
        if tmp is None
        else np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtypes[name], shape=shapes[name])
        for name in FIELDS
    }
    workers = workers or os.cpu_count() or 1
    kept: list[int] = []
    failures: list[str] = []

    def store(i: int, outcome: Sample | str) -> None:
        if isinstance(outcome, str):
            failures.append(outcome)
            return
        slot = len(kept)  # failed jobs leave no hole: later samples move up
        for name, value in zip(FIELDS, outcome, strict=True):
            arrays[name][slot] = value
        kept.append(i)

    if workers == 1:
        for i, args in enumerate(jobs):
            store(i, job(args))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for i, outcome in enumerate(pool.map(job, jobs, chunksize=4)):
                store(i, outcome)
    if len(failures) > max(1, count // 100):
        raise RuntimeError(f"{len(failures)} of {count} {what} samples failed, first: {failures[0]}")
    for failure in failures:
        print(f"warning: skipped a {what} sample that failed to render ({failure})", flush=True)
    n = len(kept)
    if tmp is None or out is None:
        return Samples(**{name: arrays[name][:n] for name in FIELDS})
    for array in arrays.values():
        array.flush()  # type: ignore[attr-defined]
    if n < count:  # rare: rewrite without the unused tail
        Samples(**{name: np.array(arrays[name][:n]) for name in FIELDS}).save(out)
        shutil.rmtree(tmp)
    else:
        tmp.replace(out)
    return Samples.load(out)


# Lateral views with axial rotation across the whole range QC must judge (the general mix has few):
# they teach the model to outline the left and right pedicles apart when rotation separates them.
LATERAL_ROTATION_RANGE_DEG = 15.0


def _lateral_rotation(seed: int, index: int) -> Acquisition:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    acq = sample_acquisition(rng, "lateral", 0.3)
    return replace(acq, rotation_deg=float(rng.uniform(-LATERAL_ROTATION_RANGE_DEG, LATERAL_ROTATION_RANGE_DEG)))


def make_sample(
    seed: int,
    index: int,
    size: int = DEFAULT_SIZE,
    render_px: int = RENDER_PX,
    fault_rate: float = 0.5,
    lateral_rotation: bool = False,
) -> Sample:
    if lateral_rotation:
        options = SetOptions(seed=seed, size_px=render_px, fault_rate=fault_rate, views=("lateral",))
        image = generate_image(options, index, acquisition=_lateral_rotation(seed, index))
    else:
        options = SetOptions(seed=seed, size_px=render_px, fault_rate=fault_rate)
        image = generate_image(options, index)
    r, acq = image.rendering, image.acquisition
    ds = image_dataset(image, seed)
    net_input, transform = preprocess(display_pixels(ds, r.stored), size)
    masks = np.zeros((len(STRUCTURES), size, size), dtype=np.uint8)
    defined = np.zeros(len(STRUCTURES), dtype=bool)
    for c, name in enumerate(STRUCTURES):
        defined[c] = acq.view in STRUCTURE_VIEWS[name]
        if name in r.masks:
            masks[c] = np.rint(resample(r.masks[name], transform) * 255).astype(np.uint8)
    view = VIEW_CLASSES.index(image.entry["view_class"])
    return np.rint(net_input[0, 0] * 255).astype(np.uint8), masks, defined, view


def _job(args: tuple[int, int, int, int, bool]) -> Sample | str:
    seed, index, size, render_px, lateral_rotation = args
    try:
        return make_sample(seed, index, size, render_px, lateral_rotation=lateral_rotation)
    except Exception as exc:  # reported and skipped by build_samples, never silently
        return f"seed {args[0]} image {args[1]}: {type(exc).__name__}: {exc}"


def build_samples(
    seed: int,
    count: int,
    size: int = DEFAULT_SIZE,
    render_px: int = RENDER_PX,
    workers: int | None = None,
    lateral_rotation: bool = False,
    out: Path | None = None,
) -> Samples:
    jobs = [(seed, i, size, render_px, lateral_rotation) for i in range(count)]
    return run_jobs(_job, jobs, size, "phantom", workers, out)
