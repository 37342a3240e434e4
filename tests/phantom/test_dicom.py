"""Phantom DICOM files as a modality sends them: valid, decodable, consistent tags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels.processing import apply_voi_lut

from tests.conftest import (
    DCIODVFY,
    DCMTK_DUMP,
    DCMTK_JPEGLS_TO_PNM,
    DCMTK_TO_PNM,
    ideal_acquisition,
    render_case,
    require_tool,
)
from tools.phantom.dataset import SetOptions, load_masks, write_image
from tools.phantom.dicom_io import COMPRESSIONS

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.phantom", *args], cwd=REPO, capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed")
    run_cli("--out", str(out), "--count", "8", "--seed", "11", "--size", "384", "--compression", "mixed")
    return out


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def test_set_has_files_masks_and_truth(mixed_set: Path) -> None:
    m = manifest(mixed_set)
    assert m["count"] == 8 and len(m["images"]) == 8
    assert "phantom" in m["note"].lower()
    for entry in m["images"]:
        ds = pydicom.dcmread(mixed_set / entry["file"])
        masks = load_masks(mixed_set / entry["masks"])
        assert masks["field"].shape == ds.pixel_array.shape
        assert entry["qc"]["verdict"] in ("pass", "fail")
        assert str(ds.file_meta.TransferSyntaxUID) == entry["transfer_syntax"]
        assert ds.PatientName.family_name == "PHANTOM"
        assert "phantom" in ds.PatientComments.lower()
    syntaxes = {e["transfer_syntax"] for e in m["images"]}
    assert syntaxes == {str(uid) for uid in COMPRESSIONS.values()}


@pytest.mark.dcmtk
def test_every_file_is_valid_for_dcmtk_and_dciodvfy(mixed_set: Path) -> None:
    dump, to_pnm, jpegls_to_pnm = (require_tool(p) for p in (DCMTK_DUMP, DCMTK_TO_PNM, DCMTK_JPEGLS_TO_PNM))
    verify = require_tool(DCIODVFY)
    for entry in manifest(mixed_set)["images"]:
        path = mixed_set / entry["file"]
        subprocess.run([dump, path], check=True, capture_output=True)
        result = subprocess.run([verify, path], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
        syntax = entry["transfer_syntax"]
        converter = {str(COMPRESSIONS["jpegls"]): jpegls_to_pnm, str(COMPRESSIONS["j2k"]): None}.get(syntax, to_pnm)
        if converter is not None:  # DCMTK has no JPEG 2000 decoder; pydicom decodes those (above)
            result = subprocess.run([converter, path, mixed_set / "out.pnm"], capture_output=True, text=True)
            assert result.returncode == 0 and "E:" not in result.stderr, result.stderr


def test_deviation_index_matches_exposure_indices(mixed_set: Path) -> None:
    for entry in manifest(mixed_set)["images"]:
        ds = pydicom.dcmread(mixed_set / entry["file"], stop_before_pixels=True)
        ei, target, di = float(ds.ExposureIndex), float(ds.TargetExposureIndex), float(ds.DeviationIndex)
        assert di == pytest.approx(10 * np.log10(ei / target), abs=0.01)
        assert di == pytest.approx(entry["exposure"]["deviation_index"], abs=0.02)
        assert float(ds.PixelSpacing[0]) == pytest.approx(entry["pixel_spacing_mm"], rel=1e-5)
        assert float(ds.ImagerPixelSpacing[0]) / float(ds.PixelSpacing[0]) == pytest.approx(
            float(ds.EstimatedRadiographicMagnificationFactor), rel=1e-4
        )


def test_monochrome1_inverts_to_the_same_display(tmp_path: Path) -> None:
    pictures = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = render_case(ideal_acquisition("ap", projection="AP", photometric=photometric), size_px=256)
        options = SetOptions(seed=3, size_px=256)
        (tmp_path / photometric / "images").mkdir(parents=True)
        (tmp_path / photometric / "masks").mkdir()
        entry = write_image(image, tmp_path / photometric, options)
        ds = pydicom.dcmread(tmp_path / photometric / entry["file"])
        assert ds.PresentationLUTShape == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")
        # display pipeline: VOI LUT (window) on stored values, then MONOCHROME1 shown inverted
        shown = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
        full_scale = float(2 ** int(ds.BitsStored) - 1)
        if photometric == "MONOCHROME1":
            shown = full_scale - shown
        pictures[photometric] = (shown / full_scale, ds)
    one, ds1 = pictures["MONOCHROME1"]
    two, ds2 = pictures["MONOCHROME2"]
    max_value = 2 ** int(ds1.BitsStored) - 1
    assert np.array_equal(ds1.pixel_array.astype(np.int64), max_value - ds2.pixel_array.astype(np.int64))
    assert float(ds1.WindowCenter) == pytest.approx(max_value - float(ds2.WindowCenter), abs=0.1)
    assert np.abs(one - two).max() < 1e-4  # identical up to the window's rounding in the tags
    assert two.std() > 0.1  # and a real picture, not a flat field


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_cli("--out", str(a), "--count", "60", "--seed", "7", "--size", "128", "--workers", "2")
    run_cli("--out", str(b), "--count", "60", "--seed", "7", "--size", "128", "--workers", "1")
    run_cli("--out", str(c), "--count", "60", "--seed", "8", "--size", "128")
    files = sorted(p.relative_to(a) for p in (a / "images").iterdir())
    assert len(files) == 60 and len(list((a / "masks").iterdir())) == 60
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    pixels_a = [pydicom.dcmread(a / f).PixelData for f in files]
    pixels_c = [pydicom.dcmread(p).PixelData for p in sorted((c / "images").iterdir())]
    assert all(pa != pc for pa, pc in zip(pixels_a, pixels_c, strict=True))


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    for args in (["--views", "ap,xray"], ["--fault-rate", "2"], ["--count", "0"], ["--size", "10"]):
        result = subprocess.run(
            [sys.executable, "-m", "tools.phantom", "--out", str(tmp_path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert "error" in result.stderr


@pytest.mark.slow
@pytest.mark.dcmtk
def test_full_size_files_from_the_default_command(tmp_path: Path) -> None:
    """The default size (2,500 px over 43 cm) as a modality sends it, checked by DCMTK and dciodvfy."""
    verify, to_pnm = require_tool(DCIODVFY), require_tool(DCMTK_TO_PNM)
    run_cli("--out", str(tmp_path), "--count", "3", "--seed", "7")
    for entry in manifest(tmp_path)["images"]:
        path = tmp_path / entry["file"]
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (2500, 2500)
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(0.172)
        result = subprocess.run([verify, path], capture_output=True, text=True)
        assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert subprocess.run([to_pnm, path, tmp_path / "x.pnm"], capture_output=True).returncode == 0
