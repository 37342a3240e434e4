"""Line integrals through voxel volumes along divergent rays: trilinear samples, evenly spaced.

Each ray is clipped to the volume's box and sampled at N evenly spaced points (N from the longest
chord of its chunk over the step), with torch's grid_sample doing the trilinear interpolation on one
CPU thread. Used for the attenuation channels and, at the detector's full resolution, for every
label's occupancy (a mask pixel is one whose ray crosses more than MASK_MIN_CHORD_MM of label).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray

from tools.ctdrr.volumes import Grid

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

MASK_MIN_CHORD_MM: Final = 0.5
CHUNK_SAMPLES: Final = 2_000_000  # samples per grid_sample call (memory ~ 24 bytes each)


def as_tensor(channels: F32) -> torch.Tensor:
    """(C, x, y, z) or (x, y, z) float32 -> the (1, C, z, y, x) layout grid_sample reads."""
    arr = channels if channels.ndim == 4 else channels[None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 2, 1)))[None]


def line_integrals(volume: torch.Tensor, grid: Grid, start: F64, d: F64, step_mm: float) -> F32:
    """Integral (value x mm) of each channel along each ray S + t D, t in [0, 1]: (N rays x C)."""
    n_rays = len(d)
    channels = int(volume.shape[1])
    out = np.zeros((n_rays, channels), dtype=np.float32)
    if n_rays == 0:
        return out
    lo, hi = grid.lo, grid.hi
    t0 = np.zeros(n_rays)
    t1 = np.ones(n_rays)
    for k in range(3):
        dk = np.where(np.abs(d[:, k]) < 1e-9, 1e-9, d[:, k])
        a = (lo[k] - start[k]) / dk
        b = (hi[k] - start[k]) / dk
        t0 = np.maximum(t0, np.minimum(a, b))
        t1 = np.minimum(t1, np.maximum(a, b))
    length = np.linalg.norm(d, axis=1)
    chord = np.maximum(t1 - t0, 0.0) * length
    hit = np.flatnonzero(chord > 0)
    if hit.size == 0:
        return out
    # order by chord so that a chunk's rays need similar sample counts
    hit = hit[np.argsort(chord[hit])]
    scale = 2.0 / np.maximum(np.array(grid.shape) - 1, 1) / grid.spacing  # mm -> normalised, per axis
    offset = -1.0 - lo * scale
    i = 0
    with torch.no_grad():
        while i < hit.size:
            n_steps = max(1, int(np.ceil(chord[hit[min(i + 255, hit.size - 1)]] / step_mm)))
            # the chunk: as many rays as fit, all needing at most n_steps samples
            size = max(1, min(CHUNK_SAMPLES // n_steps, hit.size - i))
            idx = hit[i : i + size]
            n_steps = max(1, int(np.ceil(chord[idx].max() / step_mm)))
            frac = (np.arange(n_steps) + 0.5) / n_steps
            tt = t0[idx, None] + frac[None, :] * (t1[idx] - t0[idx])[:, None]  # rays x steps
            pts = start[None, None, :] + tt[:, :, None] * d[idx, None, :]
            norm = (pts * scale + offset).astype(np.float32)
            g = torch.from_numpy(norm).view(1, len(idx), n_steps, 1, 3)
            sampled = torch.nn.functional.grid_sample(
                volume, g, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            sums = sampled[0, :, :, :, 0].sum(dim=2).numpy()  # C x rays
            out[idx] = (sums * (chord[idx] / n_steps)[None, :]).T
            i += size
    return out


def single_thread() -> int:
    """Set torch to one thread (the renderer's budget) and return the previous count to restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous
