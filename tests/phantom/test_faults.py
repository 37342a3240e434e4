"""Every injected fault makes the QC item it targets fail, judged from the 3D truth."""

from __future__ import annotations

import pytest

from tests.conftest import TARGET
from tools.phantom.acquisition import FAULTS, sample_acquisition
from tools.phantom.dataset import SetOptions, generate_image, image_rng

CASES = [(view, fault) for view, faults in FAULTS.items() for fault in faults]


@pytest.mark.parametrize(("view", "fault"), CASES)
def test_injected_fault_fails_its_item(view: str, fault: str) -> None:
    item = TARGET[fault].get(view, TARGET[fault].get("*"))
    failures = 0
    for index in range(3):
        rng = image_rng(40 + index, 1)
        acq = sample_acquisition(rng, view, 0.0, force_faults=(fault,))  # type: ignore[arg-type]
        image = generate_image(SetOptions(seed=40 + index, size_px=160), 0, acquisition=acq)
        qc = image.entry["qc"]
        assert image.entry["faults"] == [fault]
        failures += item in qc["failed_items"]
        assert qc["verdict"] == ("fail" if item in qc["failed_items"] else qc["verdict"])
    assert failures == 3, f"{fault} on {view}: {item} failed in {failures} of 3 images"


def test_fault_that_does_not_apply_is_refused() -> None:
    with pytest.raises(ValueError, match="do not apply to lateral"):
        sample_acquisition(image_rng(1, 1), "lateral", 0.0, force_faults=("pelvis_rotation",))


def test_faultless_images_mostly_pass() -> None:
    verdicts = [
        generate_image(SetOptions(seed=5, size_px=160, fault_rate=0.0), i).entry["qc"]["verdict"] for i in range(24)
    ]
    assert verdicts.count("pass") >= 18, verdicts  # natural variation may still fail a few
