"""What every verdict says about the acquisition (issue 18, part 5): date/time as recorded, station,
kVp and mAs from the header, and EI/DI; on a rejected verdict too, where the header can be read."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from edge.dicom.decode import acquisition_datetime, acquisition_tags, exposure_mas, iso_datetime, read_header
from edge.pipeline import Pipeline
from edge.qc.verdict import schema
from tests.qc.conftest import fault_case, write_case


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path_factory.mktemp("acquisition"))


@pytest.mark.parametrize(
    ("date", "time", "offset", "iso"),
    [
        ("20260305", "090702", "", "2026-03-05T09:07:02"),
        ("20260305", "090702.123456", "+0100", "2026-03-05T09:07:02.123456+01:00"),
        ("20260305", "09:07:02", "", "2026-03-05T09:07:02"),  # ACR-NEMA's colons
        ("20260305", "0907", "", "2026-03-05T09:07"),
        ("20260305", "", "", "2026-03-05"),
        ("202603", "", "", "2026-03"),
        ("20260230", "", "", None),  # no such day
        ("20260305", "250000", "", None),
        ("2026-03-05", "", "", None),
        ("", "090702", "", None),
    ],
)
def test_dicom_dates_and_times_as_iso_8601(date: str, time: str, offset: str, iso: str | None) -> None:
    assert iso_datetime(date, time, offset) == iso


def test_the_date_time_comes_from_the_first_tags_that_hold_one() -> None:
    ds = Dataset()
    ds.ContentDate, ds.ContentTime = "20260305", "100000"
    assert acquisition_datetime(ds) == ("2026-03-05T10:00:00", "ContentDate/ContentTime")
    ds.AcquisitionDate, ds.AcquisitionTime = "20260305", "095959"
    assert acquisition_datetime(ds) == ("2026-03-05T09:59:59", "AcquisitionDate/AcquisitionTime")
    ds.AcquisitionDateTime = "20260305095958.5-0500"
    assert acquisition_datetime(ds) == ("2026-03-05T09:59:58.5-05:00", "AcquisitionDateTime")
    with pytest.warns(UserWarning, match="Invalid value for VR DT"):  # pydicom's own check says so too
        ds.AcquisitionDateTime = "20261399"  # no such date: passed over, never reported as one
    assert acquisition_datetime(ds) == ("2026-03-05T09:59:59", "AcquisitionDate/AcquisitionTime")
    assert acquisition_datetime(Dataset()) == (None, None)


def test_the_exposure_in_mas_says_which_tag_it_came_from() -> None:
    ds = Dataset()
    assert exposure_mas(ds) == (None, None)
    ds.Exposure = 16
    assert exposure_mas(ds) == (16.0, "Exposure")
    ds.ExposureInmAs = 15.8
    assert exposure_mas(ds) == (15.8, "ExposureInmAs")
    ds.ExposureInuAs = 15750  # the most precise of the three wins
    assert exposure_mas(ds) == (15.75, "ExposureInuAs")
    ds.KVP, ds.StationName = "81", "XR2 "
    tags = acquisition_tags(ds)
    assert (tags.kvp, tags.station_name) == (81.0, "XR2")
    assert (tags.exposure_mas, tags.exposure_source) == (15.75, "ExposureInuAs")
    ds.KVP = "0"
    assert acquisition_tags(ds).kvp is None


def test_judged_verdicts_carry_the_acquisition(pipeline: Pipeline, phantom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(phantom)
    ds.ExposureInmAs = 22.5
    ds.save_as(tmp_path / "mas.dcm")
    verdict = pipeline.process(tmp_path / "mas.dcm").verdict.as_dict()
    jsonschema.validate(verdict, schema())
    recorded = str(ds.AcquisitionDateTime)
    assert verdict["acquisition"] == {
        "datetime": iso_datetime(recorded[:8], recorded[8:]),
        "datetime_source": "AcquisitionDateTime",
        "station_name": str(ds.StationName),
        "kvp": float(ds.KVP),
        "exposure_mas": 22.5,
        "exposure_source": "ExposureInmAs",
    }


def test_rejected_verdicts_carry_what_the_header_says(pipeline: Pipeline, phantom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(phantom)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # cut short: rejected, but the header reads
    ds.Exposure = 12
    ds.save_as(tmp_path / "cut.dcm")
    verdict = pipeline.process(tmp_path / "cut.dcm").verdict.as_dict()
    jsonschema.validate(verdict, schema())
    assert (verdict["verdict"], verdict["reason_code"]) == ("rejected", "undecodable")
    assert verdict["acquisition"]["exposure_mas"] == 12.0 and verdict["acquisition"]["kvp"] == float(ds.KVP)
    assert verdict["exposure"] == {
        "exposure_index": round(float(ds.ExposureIndex), 2),
        "target_exposure_index": round(float(ds.TargetExposureIndex), 2),
        "deviation_index": round(float(ds.DeviationIndex), 2),
    }
    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file" * 100)
    junk = pipeline.process(tmp_path / "junk.dcm").verdict.as_dict()
    jsonschema.validate(junk, schema())
    assert junk["verdict"] == "rejected" and junk["acquisition"] is None and junk["exposure"] is None


def test_a_deflated_header_is_not_inflated_here(phantom: Path, tmp_path: Path) -> None:
    """Inflating is the decode sandbox's job: a header read for a verdict never does it in the daemon."""
    ds = pydicom.dcmread(phantom)
    assert read_header(phantom) is not None and read_header(ds) is not None
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert read_header(tmp_path / "deflated.dcm") is None
    assert read_header(b"not DICOM") is None
