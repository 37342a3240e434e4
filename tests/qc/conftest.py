"""QC fixtures: phantom cases written as DICOM files (the session's pipeline is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from edge.pipeline import Pipeline, Result
from tools.phantom.acquisition import Acquisition, sample_acquisition
from tools.phantom.dataset import PhantomImage, SetOptions, generate_image, image_dataset, image_rng
from tools.phantom.dicom_io import write_dicom


def write_case(image: PhantomImage, folder: Path, compression: str = "none") -> Path:
    path = folder / f"case-{image.acquisition.projection}-{image.index}.dcm"
    write_dicom(image_dataset(image, 3), path, compression)  # type: ignore[arg-type]
    return path


def judge_case(pipeline: Pipeline, image: PhantomImage, folder: Path) -> Result:
    return pipeline.process(write_case(image, folder))


def fault_case(view: str, fault: str, seed: int, size_px: int = 1024) -> PhantomImage:
    acq: Acquisition = sample_acquisition(image_rng(seed, 1), view, 0.0, force_faults=(fault,))  # type: ignore[arg-type]
    return generate_image(SetOptions(seed=seed, size_px=size_px), 0, acquisition=acq)
