"""Training samples: phantom images through the appliance's own decode and preprocess.

Each sample is rendered at a modest detector size, encoded as the DICOM dataset a modality would
send, decoded by edge.dicom.decode and preprocessed by edge.imaging.preprocess, exactly as the
appliance does; the masks are area-resampled with the same transform (soft targets).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

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
        np.savez(path, images=self.images, masks=self.masks, defined=self.defined, views=self.views)

    @classmethod
    def load(cls, path: Path) -> Samples:
        with np.load(path) as data:
            return cls(data["images"], data["masks"], data["defined"], data["views"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def concatenate(self, other: Samples) -> Samples:
        return Samples(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.masks, other.masks]),
            np.concatenate([self.defined, other.defined]),
            np.concatenate([self.views, other.views]),
        )


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
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.bool_], int]:
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


def _job(
    args: tuple[int, int, int, int, bool],
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.bool_], int] | str:
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
) -> Samples:
    jobs = [(seed, i, size, render_px, lateral_rotation) for i in range(count)]
    # one BLAS thread per worker: the resampling matmuls oversubscribe the cores otherwise (5x slower)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context) as pool:
        outcomes = list(pool.map(_job, jobs, chunksize=8))
    failures = [o for o in outcomes if isinstance(o, str)]
    if len(failures) > max(1, count // 100):
        raise RuntimeError(f"{len(failures)} of {count} phantom samples failed, first: {failures[0]}")
    for failure in failures:
        print(f"warning: skipped a phantom sample that failed to render ({failure})", flush=True)
    results = [o for o in outcomes if not isinstance(o, str)]
    return Samples(
        images=np.stack([r[0] for r in results]),
        masks=np.stack([r[1] for r in results]),
        defined=np.stack([r[2] for r in results]),
        views=np.array([r[3] for r in results], dtype=np.int64),
    )
