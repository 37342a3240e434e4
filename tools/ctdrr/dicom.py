"""CT DRRs as a modality would send them: DX For Presentation, like the phantom's (tools/phantom/dicom_io.py).

Identifiers are unmistakably synthetic (CTDRR^...; no data of the CT's patient is carried), UIDs are
hashes of (seed, index) so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from tools.ctdrr.render import CtRendering
from tools.phantom.dicom_io import VIEW_CODE, DxImage, SyntheticHeader, add_image, synthetic_header

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
    ex, pose = r.exposure, r.pose
    ds = synthetic_header(
        SyntheticHeader(
            uid=lambda kind: uid(seed, index, kind),
            when=when,
            patient_name=f"CTDRR^{r.ct.upper()}^S{seed}N{index:04d}",
            patient_id=f"CTDRR-{seed}-{index:04d}",
            sex="O",
            comments=f"Synthetic radiograph (edge-qc DRR of the public CT '{r.ct}'), not a patient record",
            study_id=f"D{index:04d}",
            study_description="CTDRR LUMBAR SPINE",
            view_position=VIEW_POSITION[pose.projection],
            model_name="CT DRR",
            serial="CTDRR-0001",
            institution="Synthetic (CT DRR)",
            station="CTDRR",
        )
    )
    add_image(
        ds,
        DxImage(
            stored=r.stored,
            photometric=ex.photometric,
            bits_stored=ex.bits_stored,
            window_centre=r.window_centre,
            window_width=r.window_width,
            pitch_mm=r.detector.pitch_mm,
            magnification=pose.magnification,
            kvp=ex.kvp,
            exposure_index=r.exposure_index,
            target_ei=ex.target_ei,
            view_position=VIEW_POSITION[pose.projection],
            view_code=CODES[pose.projection],
            patient_orientation=pose.patient_orientation,
            image_type=("DERIVED", "PRIMARY"),
            detector_id="CTDRR-CSI-43",
        ),
        when,
    )
    return ds


def write_dicom(ds: Dataset, path: Path) -> None:
    """Explicit VR little endian Part 10 file."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
