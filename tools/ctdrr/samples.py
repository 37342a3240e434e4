"""Training and evaluation samples from CT DRRs, made exactly like tools/train/data.py makes phantom ones.

render -> DICOM dataset -> edge.dicom.decode.display_pixels -> edge.imaging.preprocess.preprocess,
masks area-resampled with the same transform; `defined` carries the per-channel `labelled` array
(unlabelled channels must stay unsupervised). Only TRAINING_CTS may be trained on: renders of the
held-out CT (`verse012`) are for measurement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.dicom.decode import display_pixels
from edge.imaging.preprocess import DEFAULT_SIZE, preprocess, resample
from edge.qc.structures import STRUCTURES, VIEW_CLASSES, View
from tools.ctdrr.dataset import CtSetOptions, generate
from tools.ctdrr.dicom import build_dataset
from tools.train.data import RENDER_PX, Sample, Samples, run_jobs


def make_ct_sample(
    seed: int,
    index: int,
    cts: tuple[str, ...],
    size: int = DEFAULT_SIZE,
    render_px: int = RENDER_PX,
    views: tuple[View, ...] = ("ap", "lateral", "oblique"),
) -> Sample:
    """(image uint8 size x size, masks uint8 C x size x size, labelled bool C, view class index)."""
    options = CtSetOptions(seed=seed, cts=cts, views=views, size_px=render_px)
    r = generate(options, index)
    ds = build_dataset(r, seed, index)
    net_input, transform = preprocess(display_pixels(ds, r.stored), size)
    masks = np.zeros((len(STRUCTURES), size, size), dtype=np.uint8)
    for c, name in enumerate(STRUCTURES):
        if r.labelled[c] and name in r.masks:
            masks[c] = np.rint(resample(r.masks[name], transform) * 255).astype(np.uint8)
    view = VIEW_CLASSES.index(r.pose.view_class)
    return np.rint(net_input[0, 0] * 255).astype(np.uint8), masks, r.labelled.copy(), view


def _job(args: tuple[int, int, tuple[str, ...], int, int]) -> Sample | str:
    seed, index, cts, size, render_px = args
    try:
        return make_ct_sample(seed, index, cts, size, render_px)
    except Exception as exc:  # reported and counted by build_ct_samples, never silently
        return f"seed {seed} image {index}: {type(exc).__name__}: {exc}"


def build_ct_samples(
    seed: int,
    count: int,
    cts: tuple[str, ...],
    size: int = DEFAULT_SIZE,
    workers: int | None = None,
    render_px: int = RENDER_PX,
    out: Path | None = None,
) -> Samples:
    """`count` samples in parallel (spawned workers, each loading its CTs once, one thread each);
    written memory-mapped into the folder `out` when given."""
    jobs = [(seed, i, cts, size, render_px) for i in range(count)]
    return run_jobs(_job, jobs, size, "CT DRR", workers, out)
