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
class AcquisitionTags:
    """When, where and with what technique the image was taken, as the modality recorded it (None when
    absent): what reject analysis groups by and dose monitors (OpenREM) read from DX headers. Never a
    patient's name, ID or birth date."""

    datetime: str | None = None  # ISO 8601, the modality's local time as recorded (an offset only where recorded)
    # "AcquisitionDateTime", "AcquisitionDate/AcquisitionTime" or "ContentDate/ContentTime"
    datetime_source: str | None = None
    station_name: str | None = None  # (0008,1010)
    kvp: float | None = None  # (0018,0060)
    exposure_mas: float | None = None  # the tube current-time product in mAs, from ...
    exposure_source: str | None = None  # ... "ExposureInuAs" (/1000), "ExposureInmAs" or "Exposure"

    def as_dict(self) -> dict[str, object]:
        return {
            "datetime": self.datetime,
            "datetime_source": self.datetime_source,
            "station_name": self.station_name,
            "kvp": None if self.kvp is None else round(self.kvp, 2),
            "exposure_mas": None if self.exposure_mas is None else round(self.exposure_mas, 4),
            "exposure_source": self.exposure_source,
        }


@dataclass(frozen=True)
class Shutter:
    """An electronic shutter on the stored grid: the open (unshuttered) rectangle, rows then columns
    as half-open ranges, and for circular or polygonal shutters the shuttered pixels themselves."""

    box: tuple[int, int, int, int]  # row0, row1, col0, col1
    mask: Bool | None = None  # True where shuttered (stored grid); None: the box says it all

    def shuttered(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> Bool:
        """Which of the stored pixels at rows x cols (index arrays) the shutter covers."""
        r0, r1, c0, c1 = self.box
        outside = ~(((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :])
        if self.mask is not None:
            outside |= self.mask[np.ix_(rows, cols)]
        return np.asarray(outside)

    def paint(self, pixels: F32, value: float) -> None:
        """Set the shuttered display pixels (same grid as the stored values) to `value`, in place."""
        r0, r1, c0, c1 = self.box
        pixels[:r0], pixels[r1:], pixels[:, :c0], pixels[:, c1:] = value, value, value, value
        if self.mask is not None:
            pixels[self.mask] = value


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
    shutter: Shutter | None = None  # an electronic shutter (tags or burnt in), shown as collimation
    # millimetres at the detector per millimetre of pixel_spacing_mm (the radiographic magnification where
    # the spacing is in the patient plane, 1 where it is the detector's pitch); None: not known
    to_detector: float | None = None
    acquisition: AcquisitionTags = AcquisitionTags()  # date/time, station, kVp, mAs as recorded

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.pixels.shape
        return rows, cols

    def clipped(self, rows: slice, cols: slice) -> Bool:
        """Which pixels of `pixels[rows, cols]` the detector stored at either end of its range
        (saturated or starved), shutters excluded. Asked for a region, not the whole image: a mask of
        millions of pixels would cost more than the measurements that read a small part of it. Where
        non-square pixels were resampled, each pixel takes the stored value nearest to it."""
        lo, hi = self.stored_range
        r = np.arange(self.pixels.shape[0])[rows]
        c = np.arange(self.pixels.shape[1])[cols]
        if self.stored.shape == self.pixels.shape:
            region = self.stored[rows, cols]
        else:
            r = (r * (self.stored.shape[0] / self.pixels.shape[0])).astype(np.intp)
            c = (c * (self.stored.shape[1] / self.pixels.shape[1])).astype(np.intp)
            region = self.stored[np.ix_(r, c)]
        clipped = (region <= lo) | (region >= hi)
        if self.shutter is not None:
            clipped &= ~self.shutter.shuttered(r, c)
        return np.asarray(clipped)
