"""edge-qc's verdict on phantom DICOM files, for every view and every fault type, against 3D truth."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import pydicom
import pytest

from edge.pipeline import Pipeline
from edge.qc.verdict import schema
from tests.conftest import TARGET
from tests.qc.conftest import fault_case, judge_case
from tools.phantom.acquisition import FAULTS
from tools.phantom.dataset import PhantomImage, SetOptions, generate_image, image_dataset
from tools.phantom.dicom_io import write_dicom

CASES = [(view, fault) for view, faults in FAULTS.items() for fault in faults]


def clear_case(view: str, fault: str) -> PhantomImage:
    """The first seed whose truth is not borderline, so that the expected verdict is unambiguous."""
    for seed in range(60, 90):
        image = fault_case(view, fault, seed)
        if not image.entry["qc"]["borderline"]:
            return image
    raise AssertionError(f"no clear {fault} case on {view} in 30 seeds")


@pytest.mark.slow
@pytest.mark.parametrize(("view", "fault"), CASES)
def test_fault_gives_the_true_verdict(pipeline: Pipeline, tmp_path: Path, view: str, fault: str) -> None:
    image = clear_case(view, fault)
    truth = image.entry["qc"]
    verdict = judge_case(pipeline, image, tmp_path).verdict
    jsonschema.validate(verdict.as_dict(), schema())
    assert verdict.verdict == truth["verdict"] == "fail", (truth["failed_items"], verdict.summary())
    item = TARGET[fault].get(view, TARGET[fault].get("*"))
    failed = [r.item for r in verdict.failed]
    assert item in failed, f"{item} should fail: {verdict.summary()}"
    for r in verdict.failed:
        assert r.message and r.correction  # every failure says what is wrong and what to do


@pytest.mark.slow
@pytest.mark.parametrize("view", ["ap", "lateral", "oblique"])
def test_faultless_images_pass(pipeline: Pipeline, tmp_path: Path, view: str) -> None:
    passed = 0
    for index in range(3):
        image = generate_image(SetOptions(seed=700, size_px=1024, fault_rate=0.0, views=(view,)), index)  # type: ignore[arg-type]
        if image.entry["qc"]["verdict"] != "pass" or image.entry["qc"]["borderline"]:
            continue
        verdict = judge_case(pipeline, image, tmp_path).verdict
        jsonschema.validate(verdict.as_dict(), schema())
        assert verdict.verdict == "pass", verdict.summary()
        passed += 1
    assert passed >= 2  # natural variation may fail one image in truth; at least two must be clean passes


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_real_radiographs_of_other_anatomy_are_not_judged(pipeline: Pipeline, name: str) -> None:
    """pydicom's CR chest and CR tibia: indeterminate, never a lumbar verdict, with or without the
    Body Part Examined tag (without it, the masks themselves show no lumbar spine)."""
    store = pytest.importorskip("data_store", reason="pydicom-data holds the CR files")
    ds = pydicom.dcmread(Path(store.__file__).parent / "data" / name)
    tagged = pipeline.process(ds).verdict
    assert tagged.verdict == "indeterminate" and tagged.reason_code == "not_lumbar_spine"
    del ds.BodyPartExamined
    untagged = pipeline.process(ds).verdict
    assert untagged.verdict == "indeterminate" and "not a lumbar spine" in untagged.reason
    jsonschema.validate(untagged.as_dict(), schema())


def test_a_lateral_facing_left_is_read_mirrored_and_measured_as_shown(pipeline: Pipeline, tmp_path: Path) -> None:
    """Patient Orientation "P" on the rows: the model reads the mirrored image (front on the right, as
    it knows best) and its masks come back mirrored, so they lie on the image as shown."""
    image = fault_case("lateral", "tilt", 11, size_px=512)
    facing_right = judge_case(pipeline, image, tmp_path)
    mirrored = image_dataset(image, 3)
    rows, cols = int(mirrored.Rows), int(mirrored.Columns)
    stored = np.frombuffer(mirrored.PixelData, dtype="<u2").reshape(rows, cols)[:, ::-1]
    mirrored.PixelData = np.ascontiguousarray(stored).tobytes()
    mirrored.PatientOrientation = ["P", "F"]
    write_dicom(mirrored, tmp_path / "facing-left.dcm", "none")
    facing_left = pipeline.process(tmp_path / "facing-left.dcm")
    assert facing_right.segmentation is not None and facing_left.segmentation is not None
    right = facing_right.segmentation.probabilities
    left = facing_left.segmentation.probabilities
    assert np.abs(left[..., ::-1] - right).max() < 1e-3  # the same reading, shown the other way round
    assert facing_left.verdict.verdict == facing_right.verdict.verdict
    assert facing_left.verdict.view is not None and facing_left.verdict.view.judged == "lateral"


def test_detector_millimetres_are_said_to_be_at_the_detector(pipeline: Pipeline, tmp_path: Path) -> None:
    """Pixel Spacing that only repeats Imager Pixel Spacing, no magnification factor: the verdict says
    its millimetres are at the detector (10-20 % larger than at the spine), in a note and in its facts."""
    from tests.conftest import ideal_acquisition, render_case
    from tests.qc.conftest import write_case

    ds = pydicom.dcmread(write_case(render_case(ideal_acquisition("ap", projection="AP"), size_px=512), tmp_path))
    ds.PixelSpacing = ds.ImagerPixelSpacing
    del ds.PixelSpacingCalibrationType, ds.EstimatedRadiographicMagnificationFactor
    verdict = pipeline.process(ds).verdict
    assert verdict.image["spacing_source"] == "ImagerPixelSpacing"
    assert any("millimetres are at the detector" in note for note in verdict.notes), verdict.notes
