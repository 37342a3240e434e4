"""Radiograph pixels -> network input, and the exact transform back to image coordinates.

One function for training and for the appliance: aspect-preserving area resampling of the
display-ready image into a square of `size` pixels (centred, zero padding), then robust intensity
normalisation. Coordinates map both ways through `Transform`, so measurements made on the network's
masks land on the right image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

DEFAULT_SIZE: Final = 256
NORMALISE_PERCENTILES: Final = (1.0, 99.0)


@dataclass(frozen=True)
class Transform:
    """Network pixel = image pixel * scale + offset per axis (pixel centres at integers, x = column).

    The image covers out_rows x out_cols network pixels starting at (offset_y, offset_x); the two
    scales differ only by the rounding of those counts."""

    image_rows: int
    image_cols: int
    size: int
    out_rows: int
    out_cols: int
    offset_x: int
    offset_y: int

    @property
    def scale_x(self) -> float:
        return self.out_cols / self.image_cols

    @property
    def scale_y(self) -> float:
        return self.out_rows / self.image_rows

    def to_network(self, xy: F64) -> F64:
        pts = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] + 0.5) * self.scale_x + self.offset_x - 0.5
        out[..., 1] = (pts[..., 1] + 0.5) * self.scale_y + self.offset_y - 0.5
        return out

    def to_image(self, xy: F64) -> F64:
        pts = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] + 0.5 - self.offset_x) / self.scale_x - 0.5
        out[..., 1] = (pts[..., 1] + 0.5 - self.offset_y) / self.scale_y - 0.5
        return out

    def network_pixels(
        self, image_cols: NDArray[np.number[Any]], image_rows: NDArray[np.number[Any]]
    ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The network pixel (nearest, clipped to the square) under each image column and each image row:
        the lookup that maps a network-grid mask onto image pixels."""
        cols = np.clip(np.rint((np.asarray(image_cols) + 0.5) * self.scale_x + self.offset_x - 0.5), 0, self.size - 1)
        rows = np.clip(np.rint((np.asarray(image_rows) + 0.5) * self.scale_y + self.offset_y - 0.5), 0, self.size - 1)
        return cols.astype(np.intp), rows.astype(np.intp)

    @property
    def valid(self) -> tuple[slice, slice]:
        """The network rows and columns the image covers (the rest is padding)."""
        return (
            slice(self.offset_y, self.offset_y + self.out_rows),
            slice(self.offset_x, self.offset_x + self.out_cols),
        )


def make_transform(rows: int, cols: int, size: int = DEFAULT_SIZE) -> Transform:
    scale = size / max(rows, cols)
    out_rows, out_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    return Transform(rows, cols, size, out_rows, out_cols, (size - out_cols) // 2, (size - out_rows) // 2)


@lru_cache(maxsize=16)
def _area_weights(n_in: int, n_out: int) -> F32:
    """(n_out x n_in) matrix: output pixel j averages the input span [j, j+1) * n_in / n_out."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    i = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None)
    weights = np.asarray(overlap / overlap.sum(axis=1, keepdims=True), dtype=np.float32)
    weights.flags.writeable = False  # shared by the cache
    return weights


def area_average(image: F32, n_out: int, axis: int) -> F32:
    """The average of `_area_weights` along `axis` without the dense product: sums over whole pixels
    plus and minus the fractional pixels at the span ends. Exact to float rounding, single-threaded
    (numpy's BLAS threads spin after each product and starve ONNX Runtime). Along rows the whole-pixel
    sums are one reduction per output row over a contiguous block of image rows: numpy's `reduceat`
    along axis 0 walks the image column by column and is eight times slower on a 2,500 px image."""
    n_in = image.shape[axis]
    if n_in < 2 * n_out:  # mild shrinking or enlarging: spans may share pixels; the product is small
        weights = _area_weights(n_in, n_out)
        return np.asarray(weights @ image if axis == 0 else image @ weights.T, dtype=np.float32)
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    whole = np.floor(edges).astype(np.intp)
    fraction = (edges - whole).astype(np.float32)
    if axis == 0:  # pixels whole[j] .. whole[j + 1] - 1
        sums = np.empty((n_out, image.shape[1]), dtype=np.float32)
        for j in range(n_out):
            np.add.reduce(image[whole[j] : whole[j + 1]], axis=0, out=sums[j])
    else:
        sums = np.add.reduceat(image, whole[:-1], axis=1)
    ends = np.take(image, np.minimum(whole, n_in - 1), axis=axis)  # the pixel each edge falls in
    shape = [1, 1]
    shape[axis] = n_out + 1
    ends = ends * fraction.reshape(shape)  # the part of it left of the edge
    if axis == 0:
        sums += ends[1:] - ends[:-1]
    else:
        sums += ends[:, 1:] - ends[:, :-1]
    return np.asarray(sums * np.float32(n_out / n_in), dtype=np.float32)


def resample(image: NDArray[np.generic], transform: Transform) -> F32:
    """Area-resample an image-space array (pixels or a mask) into the padded network square."""
    valid_rows, valid_cols = transform.valid
    rows = area_average(np.asarray(image, dtype=np.float32), transform.out_rows, axis=0)  # ten times less to do next
    out = np.zeros((transform.size, transform.size), dtype=np.float32)
    out[valid_rows, valid_cols] = area_average(rows, transform.out_cols, axis=1)
    return out


def normalise(square: F32, transform: Transform) -> F32:
    """Robust contrast normalisation over the image area: 1st..99th percentile -> 0..1."""
    valid = square[transform.valid]
    lo, hi = np.percentile(valid, NORMALISE_PERCENTILES)
    out = np.zeros_like(square)
    out[transform.valid] = np.clip((valid - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return out


def preprocess(pixels: F32, size: int = DEFAULT_SIZE) -> tuple[F32, Transform]:
    """Display-ready pixels (rows x cols, 0..1) -> network input (1 x 1 x size x size) and transform."""
    if pixels.ndim != 2 or min(pixels.shape) < 16:
        raise ValueError(f"preprocess: expected a 2-D image of at least 16 x 16 pixels, got shape {pixels.shape}")
    transform = make_transform(pixels.shape[0], pixels.shape[1], size)
    square = normalise(resample(pixels, transform), transform)
    return square[None, None], transform
