"""A decoded radiograph: display pixels and the facts the QC needs, with no DICOM types in it.

It sits below both `edge.dicom` (which makes one from a dataset) and `edge.qc` (which judges it), so
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
Bool = NDArray[np.bool_]


@dataclass(frozen=True)
class ExposureTags:
    """IEC 62494-1 exposure indices as the modality recorded them (None when absent)."""

    exposure_index: float | None
    target_exposure_index: float | None
    deviation_index: float | None


@dataclass(frozen=True)
class Radiograph:
    pixels: F32  # display values in [0, 1], 1 = white (bone on a radiograph); square pixels
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing of `pixels`; None when unknown
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing/magnification", "ImagerPixelSpacing", "unknown"
    stored: NDArray[np.integer]  # the stored values (read-only), on their own grid: see `clipped`
    stored_range: tuple[int, int]  # the values the detector can store (Bits Stored, signedness)
    view_position: str  # (0018,5101), e.g. "AP", "PA", "LATERAL", "LPO"
    view_from_tags: str | None  # "ap", "lateral" or "oblique" as the modality recorded it; None: not said
    oblique_side_from_tags: str | None  # "left"/"right" where an oblique's tags say which side it shows
    faces_left: bool  # a lateral with the patient's front on the image's left (Patient Orientation "P")
    modality: str
    body_part: str  # (0018,0015) Body Part Examined, upper case; "" when absent
    lumbar_examination: bool  # Body Part Examined is absent or one a lumbar spine may be filed under
    photometric: str
    exposure: ExposureTags
    transfer_syntax: str
    sop_instance_uid: str
    resampled_to_square: bool  # non-square pixels were resampled before anything else

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.pixels.shape
        return rows, cols

    def clipped(self, rows: slice, cols: slice) -> Bool:
        """Which pixels of `pixels[rows, cols]` the detector stored at either end of its range
        (saturated or starved). Asked for a region, not the whole image: a mask of millions of pixels
        would cost more than the measurements that read a small part of it. Where non-square pixels
        were resampled, each pixel takes the stored value nearest to it."""
        lo, hi = self.stored_range
        region = self.stored[rows, cols]
        if self.stored.shape != self.pixels.shape:
            ratio = np.divide(self.stored.shape, self.pixels.shape)
            r = (np.arange(self.pixels.shape[0])[rows] * ratio[0]).astype(np.intp)
            c = (np.arange(self.pixels.shape[1])[cols] * ratio[1]).astype(np.intp)
            region = self.stored[np.ix_(r, c)]
        return np.asarray((region <= lo) | (region >= hi))
