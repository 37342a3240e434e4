"""CT DRRs as a modality would send them: DX For Presentation, like the phantom's (tools/phantom/dicom_io.py).

Identifiers are unmistakably synthetic (CTDRR^...; no data of the CT's patient is carried), UIDs are
hashes of (seed, index) so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Final

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

import edge
from tools.ctdrr.render import CtRendering
from tools.phantom.acquisition import SID_MM
from tools.phantom.dicom_io import VIEW_CODE

VIEW_POSITION: Final[dict[str, str]] = {"AP": "AP", "LL": "LL", "RL": "RL", "LPO": "LPO", "RPO": "RPO"}
# DICOM CID 4010 (DX View), SNOMED CT
CODES: Final[dict[str, tuple[str, str]]] = {
    "AP": VIEW_CODE["AP"],
    "LL": VIEW_CODE["LAT"],
    "RL": ("399198007", "right lateral"),
    "LPO": VIEW_CODE["LPO"],
    "RPO": VIEW_CODE["RPO"],
}
IMPLEMENTATION_VERSION: Final = "EDGEQC_CTDRR"


def uid(seed: int, index: int, kind: str) -> UID:
    digest = hashlib.sha256(f"edge-qc ctdrr/{seed}/{index}/{kind}".encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def build_dataset(r: CtRendering, seed: int, index: int) -> Dataset:
    """The DICOM dataset of one rendering (uncompressed, no file meta)."""
    when = dt.datetime(2026, 1, 1, 9, 0, 0) + dt.timedelta(days=seed % 300, minutes=7 * index)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ex, pose = r.exposure, r.pose
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uid(seed, index, "sop")
    ds.PatientName = f"CTDRR^{r.ct.upper()}^S{seed}N{index:04d}"
    ds.PatientID = f"CTDRR-{seed}-{index:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientComments = f"Synthetic radiograph (edge-qc DRR of the public CT '{r.ct}'), not a patient record"
    ds.StudyInstanceUID = uid(seed, index, "study")
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = f"D{index:04d}"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CTDRR LUMBAR SPINE"
    ds.Modality = "DX"
    ds.SeriesInstanceUID = uid(seed, index, "series")
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"L-SPINE {VIEW_POSITION[pose.projection]}"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "edge-qc"
    ds.ManufacturerModelName = "CT DRR"
    ds.SoftwareVersions = f"edge-qc {edge.__version__}"
    ds.DeviceSerialNumber = "CTDRR-0001"
    ds.InstitutionName = "Synthetic (CT DRR)"
    ds.StationName = "CTDRR"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = pose.patient_orientation
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.QualityControlImage = "NO"
    ds.BodyPartExamined = "LSPINE"
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = "122496007"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Lumbar spine"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.ViewPosition = VIEW_POSITION[pose.projection]
    view = Dataset()
    view.CodeValue, view.CodeMeaning = CODES[pose.projection]
    view.CodingSchemeDesignator = "SCT"
    view.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view])
    ds.PositionerType = "COLUMN"
    ds.PatientPosition = ""
    ds.AcquisitionContextSequence = Sequence([])
    rows, cols = r.stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = ex.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = ex.bits_stored
    ds.HighBit = ex.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if ex.photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if ex.photometric == "MONOCHROME2" else "INVERSE"
    ds.WindowCenter = f"{r.window_centre:.1f}"
    ds.WindowWidth = f"{r.window_width:.1f}"
    ds.WindowCenterWidthExplanation = "NORMAL"
    ds.AcquisitionDeviceProcessingDescription = "LOG, RANGE COMPRESSION, EDGE ENHANCEMENT"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.ImagerPixelSpacing = [f"{r.detector.pitch_mm:.6f}", f"{r.detector.pitch_mm:.6f}"]
    ds.PixelSpacing = [f"{r.pixel_spacing_mm:.6f}", f"{r.pixel_spacing_mm:.6f}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Magnification at the spine plane from the acquisition geometry"
    ds.EstimatedRadiographicMagnificationFactor = f"{pose.magnification:.5f}"
    ds.DistanceSourceToDetector = f"{SID_MM:.1f}"
    ds.DistanceSourceToPatient = f"{SID_MM / pose.magnification:.1f}"
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [round(rows * r.detector.pitch_mm), round(cols * r.detector.pitch_mm)]
    ds.Grid = ["FOCUSED", "RECIPROCATING"]
    ds.KVP = f"{ex.kvp:.0f}"
    ds.ExposureIndex = f"{r.exposure_index:.1f}"
    ds.TargetExposureIndex = f"{ex.target_ei:.1f}"
    ds.DeviationIndex = f"{10 * np.log10(float(ds.ExposureIndex) / float(ds.TargetExposureIndex)):.2f}"
    ds.PixelData = np.ascontiguousarray(r.stored, dtype="<u2").tobytes()
    return ds


def write_dicom(ds: Dataset, path: Path) -> None:
    """Explicit VR little endian Part 10 file."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
