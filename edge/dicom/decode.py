"""DICOM dataset -> display-ready radiograph (bone bright), with its spacing and view tags.

Display-ready means what a reader sees: Modality LUT, then the VOI LUT or window, then
MONOCHROME1 shown inverted. Training and the appliance both start from here, so the network sees
the same pixels a radiographer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut


@dataclass(frozen=True)
class Radiograph:
    pixels: NDArray[np.float32]  # display values in [0, 1], 1 = white (bone on a radiograph)
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing; None when unknown
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or "unknown"
    view_position: str
    photometric: str


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return (row, col), keyword
    return None, "unknown"


def display_pixels(ds: Dataset, stored: NDArray[np.generic] | None = None) -> NDArray[np.float32]:
    """Stored pixel values -> display values in [0, 1] (Modality LUT, VOI LUT/window, MONOCHROME1)."""
    arr = ds.pixel_array if stored is None else stored
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        bits = int(ds.get("BitsStored", 16))
        lo, hi = 0.0, float(2**bits - 1)
        if "VOILUTSequence" in ds:
            lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = float(values.min()), float(values.max())
    out = np.clip((values - lo) / max(hi - lo, 1e-9), 0.0, 1.0).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        out = 1.0 - out
    return out


def decode(ds: Dataset) -> Radiograph:
    spacing, source = _spacing(ds)
    return Radiograph(
        pixels=display_pixels(ds),
        pixel_spacing_mm=spacing,
        spacing_source=source,
        view_position=str(ds.get("ViewPosition", "")),
        photometric=str(ds.get("PhotometricInterpretation", "")),
    )
