"""`edge-qc check` as a radiographer's tool: verdicts, JSON that meets the schema, overlays, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pydicom
import pytest
from PIL import Image

from edge.qc.verdict import schema
from tests.conftest import PYDICOM_FILES
from tests.qc.conftest import fault_case, write_case


def edge_qc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    cut = fault_case("ap", "cut_top", 61)
    assert cut.entry["qc"]["verdict"] == "fail" and not cut.entry["qc"]["borderline"]
    return {"cut": write_case(cut, folder), "mr": PYDICOM_FILES / "MR_small.dcm"}


def test_json_verdicts_meet_the_schema_and_carry_no_patient_data(files: dict[str, Path], tmp_path: Path) -> None:
    proc = edge_qc("check", files["cut"], files["mr"], "--json")
    assert proc.returncode == 1, proc.stderr  # a failed and a rejected image
    documents = json.loads(proc.stdout)
    assert [d["verdict"]["verdict"] for d in documents] == ["fail", "rejected"]
    for d in documents:
        jsonschema.validate(d["verdict"], schema())
    failed = documents[0]["verdict"]["failed"]
    assert "upper_coverage" in [f["item"] for f in failed]
    assert documents[1]["verdict"]["reason_code"] == "not_projection_radiograph"
    ds = pydicom.dcmread(files["cut"])
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)):
        if secret:
            assert secret not in proc.stdout


def test_overlay_and_human_output(files: dict[str, Path], tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.png"
    proc = edge_qc("check", files["cut"], "--overlay", overlay, "--timings")
    assert proc.returncode == 1
    assert "FAIL (ap)" in proc.stdout and "upper_coverage" in proc.stdout and "timings: decode" in proc.stdout
    image = Image.open(overlay)
    assert max(image.size) == 1024 and image.mode == "RGB"
    # the banner is red for a failed image
    assert image.getpixel((2, 2)) == (190, 30, 30)


def test_errors_exit_2_with_a_clear_message(tmp_path: Path, files: dict[str, Path]) -> None:
    missing = edge_qc("check", tmp_path / "absent.dcm")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    config = tmp_path / "site.toml"
    config.write_text("[qc.overrides.ap.centring]\nmax_ofset_fraction = 0.2\n")
    bad = edge_qc("check", files["cut"], "--config", config)
    assert bad.returncode == 2 and "qc.overrides.ap.centring.max_ofset_fraction" in bad.stderr
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("hello")
    proc = edge_qc("check", not_dicom)
    assert proc.returncode == 1 and "REJECTED" in proc.stdout and "Traceback" not in proc.stderr
