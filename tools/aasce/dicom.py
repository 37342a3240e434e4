"""A film crop as the DICOM dataset a modality would send, so that real films go through the
appliance's own pipeline (decode -> preprocess -> infer -> measure -> judge) unchanged.

The films carry no DICOM header: no pixel spacing (the pipeline then estimates millimetres from the
vertebral spacing and says so), no exposure index, and no patient data (none is invented).
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

_UID_ROOT = "2.25."


def _uid(text: str) -> UID:
    return UID(_UID_ROOT + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:15], "big")))


def film_dataset(pixels: NDArray[np.uint8], key: str, body_part: str = "LSPINE") -> Dataset:
    """8-bit display values (rows x cols) -> DX For Presentation, MONOCHROME2, AP, no spacing."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected 8-bit greyscale rows x cols, got {pixels.dtype} {pixels.shape}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = _uid(f"aasce-film:{key}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = _uid(f"aasce-study:{key}")
    ds.SeriesInstanceUID = _uid(f"aasce-series:{key}")
    ds.PatientName = ""
    ds.PatientID = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds
