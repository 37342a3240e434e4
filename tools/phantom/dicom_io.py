"""Phantom images as a real modality would send them: DX For Presentation, uncompressed or lossless.

Identifiers are unmistakably synthetic (PHANTOM^...), UIDs are derived from the seed so that the same
seed gives the same bytes, and every tag the QC engine reads (pixel spacing, view, exposure index...)
is filled the way a DR system fills it, including the inconsistent-but-legal variants it must handle
(MONOCHROME1, 12-16 bits stored).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import edge
from tools.phantom.acquisition import SID_MM, Acquisition

Compression = Literal["none", "rle", "jpegls", "j2k"]
COMPRESSIONS: Final[dict[str, UID]] = {
    "none": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}
# DICOM View Position: defined terms AP, PA, LL, RL, ...; obliques as the modality's own terms
VIEW_POSITION: Final[dict[str, str]] = {
    "AP": "AP",
    "PA": "PA",
    "LAT": "LL",
    "LPO": "LPO",
    "RPO": "RPO",
    "LAO": "LAO",
    "RAO": "RAO",
}
PATIENT_ORIENTATION: Final[dict[str, list[str]]] = {
    "AP": ["L", "F"],
    "PA": ["L", "F"],
    "LAT": ["A", "F"],
    "LPO": ["L", "F"],
    "RPO": ["L", "F"],
    "LAO": ["L", "F"],
    "RAO": ["L", "F"],
}
# DICOM CID 4010 (DX View), SNOMED CT
VIEW_CODE: Final[dict[str, tuple[str, str]]] = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LAT": ("399173006", "left lateral"),
    "LPO": ("399006002", "left posterior oblique"),
    "RPO": ("399038007", "right posterior oblique"),
    "LAO": ("399135007", "left anterior oblique"),
    "RAO": ("399356000", "right anterior oblique"),
}
IMPLEMENTATION_VERSION: Final = "EDGEQC_PHANTOM"


@dataclass(frozen=True)
class ImageIdentity:
    """Synthetic identifiers of one phantom image, all derived from (seed, index)."""

    seed: int
    index: int

    def uid(self, kind: str) -> UID:
        """A 2.25 UID (ISO/IEC 9834-8) from a hash of (seed, index, kind): unique and reproducible."""
        digest = hashlib.sha256(f"edge-qc phantom/{self.seed}/{self.index}/{kind}".encode()).digest()
        return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")

    @property
    def patient_name(self) -> str:
        return f"PHANTOM^LUMBAR^S{self.seed}N{self.index:04d}"

    @property
    def patient_id(self) -> str:
        return f"PHANTOM-{self.seed}-{self.index:04d}"

    @property
    def when(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, 8, 0, 0) + dt.timedelta(days=self.seed % 300, minutes=7 * self.index)


@dataclass(frozen=True)
class SyntheticHeader:
    """Who and what a synthetic DX image claims to be: clearly synthetic, never a patient record."""

    uid: Callable[[str], UID]  # kind ("sop", "study", "series") -> a stable UID
    when: dt.datetime
    patient_name: str
    patient_id: str
    sex: str
    comments: str
    study_id: str
    study_description: str
    view_position: str
    model_name: str
    serial: str
    institution: str
    station: str


def synthetic_header(h: SyntheticHeader) -> Dataset:
    """Patient, study, series and equipment modules of a synthetic DX For Presentation image (the
    phantom's and the CT DRRs'); the image module is `add_image`'s."""
    date, time = h.when.strftime("%Y%m%d"), h.when.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = h.uid("sop")
    ds.PatientName = h.patient_name
    ds.PatientID = h.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = h.sex
    ds.PatientComments = h.comments
    ds.StudyInstanceUID = h.uid("study")
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = h.study_id
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = h.study_description
    ds.Modality = "DX"
    ds.SeriesInstanceUID = h.uid("series")
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"L-SPINE {h.view_position}"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "edge-qc"
    ds.ManufacturerModelName = h.model_name
    ds.SoftwareVersions = f"edge-qc {edge.__version__}"
    ds.DeviceSerialNumber = h.serial
    ds.InstitutionName = h.institution
    ds.StationName = h.station
    return ds


def build_dataset(
    stored: NDArray[np.uint16],
    acq: Acquisition,
    identity: ImageIdentity,
    pitch_mm: float,
    magnification: float,
    exposure_index: float,
    window_centre: float,
    window_width: float,
    sex: str,
    patient_thickness_mm: float,
) -> Dataset:
    when = identity.when
    ds = synthetic_header(
        SyntheticHeader(
            uid=identity.uid,
            when=when,
            patient_name=identity.patient_name,
            patient_id=identity.patient_id,
            sex=sex,
            comments="Synthetic phantom (edge-qc DRR), not a patient",
            study_id=f"P{identity.index:04d}",
            study_description="PHANTOM LUMBAR SPINE",
            view_position=VIEW_POSITION[acq.projection],
            model_name="Lumbar DRR phantom",
            serial="PHANTOM-0001",
            institution="Synthetic phantom",
            station="PHANTOM",
        )
    )
    # image
    add_image(
        ds,
        DxImage(
            stored=stored,
            photometric=acq.photometric,
            bits_stored=acq.bits_stored,
            window_centre=window_centre,
            window_width=window_width,
            pitch_mm=pitch_mm,
            magnification=magnification,
            kvp=acq.kvp,
            exposure_index=exposure_index,
            target_ei=acq.target_ei,
            view_position=VIEW_POSITION[acq.projection],
            view_code=VIEW_CODE[acq.projection],
            patient_orientation=PATIENT_ORIENTATION[acq.projection],
            image_type=("ORIGINAL", "PRIMARY"),
            detector_id="PHANTOM-CSI-43",
        ),
        when,
    )
    ds.BodyPartThickness = f"{patient_thickness_mm:.0f}"
    return ds


@dataclass(frozen=True)
class DxImage:
    """One exposure as a DX For Presentation image records it: shared by the phantom and the CT DRRs."""

    stored: NDArray[np.uint16]
    photometric: str
    bits_stored: int
    window_centre: float
    window_width: float
    pitch_mm: float
    magnification: float
    kvp: float
    exposure_index: float
    target_ei: float
    view_position: str
    view_code: tuple[str, str]
    patient_orientation: list[str]
    image_type: tuple[str, str]
    detector_id: str


def add_image(ds: Dataset, image: DxImage, when: dt.datetime) -> None:
    """The image, view, pixel, detector, geometry and exposure attributes of a lumbar-spine DX image."""
    stored, magnification, pitch_mm = image.stored, image.magnification, image.pitch_mm
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ImageType = list(image.image_type)
    ds.PatientOrientation = image.patient_orientation
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
    ds.ViewPosition = image.view_position
    view = Dataset()
    view.CodeValue, view.CodeMeaning = image.view_code
    view.CodingSchemeDesignator = "SCT"
    view.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view])
    ds.PositionerType = "COLUMN"
    ds.PatientPosition = ""
    ds.AcquisitionContextSequence = Sequence([])
    # pixels
    rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = image.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = image.bits_stored
    ds.HighBit = image.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if image.photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if image.photometric == "MONOCHROME2" else "INVERSE"
    ds.WindowCenter = f"{image.window_centre:.1f}"
    ds.WindowWidth = f"{image.window_width:.1f}"
    ds.WindowCenterWidthExplanation = "NORMAL"
    ds.AcquisitionDeviceProcessingDescription = "LOG, RANGE COMPRESSION, EDGE ENHANCEMENT"
    # detector and geometry
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = image.detector_id
    ds.ImagerPixelSpacing = [f"{pitch_mm:.6f}", f"{pitch_mm:.6f}"]
    spacing = pitch_mm / magnification
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Magnification at the spine plane from the acquisition geometry"
    ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.5f}"
    ds.DistanceSourceToDetector = f"{SID_MM:.1f}"
    ds.DistanceSourceToPatient = f"{SID_MM / magnification:.1f}"  # to the isocentre (the spine plane)
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [round(rows * pitch_mm), round(cols * pitch_mm)]
    ds.Grid = ["FOCUSED", "RECIPROCATING"]
    # exposure (IEC 62494-1): DI = 10 log10(EI / EI_T), kept consistent
    ds.KVP = f"{image.kvp:.0f}"
    ds.ExposureIndex = f"{image.exposure_index:.1f}"
    ds.TargetExposureIndex = f"{image.target_ei:.1f}"
    ds.DeviationIndex = f"{10 * np.log10(float(ds.ExposureIndex) / float(ds.TargetExposureIndex)):.2f}"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()


def write_dicom(ds: Dataset, path: Path, compression: Compression) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if compression != "none":
        arr = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns)
        ds.compress(COMPRESSIONS[compression], arr, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
