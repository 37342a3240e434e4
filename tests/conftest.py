"""Shared fixtures: phantom images with chosen acquisition variables, external DICOM tools."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from edge.config import Config
from edge.history import HistoryRow
from edge.pipeline import Pipeline
from tools.phantom.acquisition import Acquisition, sample_acquisition
from tools.phantom.anatomy import PatientParams, sample_patient
from tools.phantom.dataset import PhantomImage, SetOptions, generate_image, image_rng
from tools.testbed import Broker, ToolMissingError

DCMTK_DUMP = Path("/usr/bin/dcmdump")
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # pydicom's own test files
# The QC item each phantom fault is meant to fail, per view ("*": every view that has the fault).
TARGET = {
    "rotation": {"ap": "rotation_spinous", "lateral": "rotation_double_margins"},
    "tilt": {"ap": "axis_tilt", "lateral": "tilt_double_endplates"},
    "pelvis_rotation": {"ap": "pelvis_rotation"},
    "tube_angle": {"ap": "disc_spaces"},
    "cut_top": {"*": "upper_coverage"},
    "cut_bottom": {"*": "lower_coverage"},
    "cut_lateral": {"ap": "lateral_coverage", "lateral": "front_back_coverage"},
    "off_centre": {"*": "centring"},
    "over_collimation": {"*": "collimation"},
    "over_exposure": {"*": "exposure_index"},
    "under_exposure": {"*": "exposure_index"},
    "saturation": {"*": "clipping"},
    "under_rotated": {"*": "obliquity"},
    "over_rotated": {"*": "obliquity"},
}

DCMTK_TO_PNM = Path("/usr/bin/dcmj2pnm")
DCMTK_JPEGLS_TO_PNM = Path("/usr/bin/dcml2pnm")
DCIODVFY = Path("/usr/bin/dciodvfy")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A program the test bed needs but this machine lacks (tools.testbed.ToolMissingError) skips the test,
    naming the package to install, as require_tool does."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if call.excinfo is not None and call.excinfo.errisinstance(ToolMissingError):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")


@pytest.fixture(scope="session")
def pipeline() -> Iterator[Pipeline]:
    """One pipeline with the default model for the whole session (loading it costs a second)."""
    p = Pipeline(Config())
    yield p
    p.close()


def require_tool(path: Path, package: str = "dcmtk dicom3tools") -> Path:
    """The tool at `path` (or on PATH); skip with the Debian package to install when it is absent."""
    if not path.exists() and shutil.which(path.name) is None:
        pytest.skip(f"{path} not installed (apt-get install {package})")
    return path if path.exists() else Path(shutil.which(path.name) or path)


def straight_patient(seed: int = 3) -> PatientParams:
    """A sampled patient without scoliosis, so that symmetry is exact."""
    return replace(sample_patient(image_rng(seed, 0)), scoliosis_deg=0.0)


def ideal_acquisition(view: str, **changes: object) -> Acquisition:
    """A faultless acquisition of `view`, then `changes` (e.g. projection, rotation_deg)."""
    base = sample_acquisition(image_rng(3, 1), view, 0.0)  # type: ignore[arg-type]
    ideal = replace(
        base,
        rotation_deg=0.0,
        tilt_deg=0.0,
        pelvis_rotation_deg=0.0,
        tube_angle_deg=0.0,
        centring_x_mm=0.0,
        centring_y_mm=0.0,
        deviation_index=0.0,
        faults=(),
        fault_values={},
    )
    return replace(ideal, **changes)  # type: ignore[arg-type]


def render_case(
    acq: Acquisition, size_px: int = 1024, patient: PatientParams | None = None, seed: int = 3
) -> PhantomImage:
    options = SetOptions(seed=seed, size_px=size_px, fault_rate=0.0)
    return generate_image(options, 0, patient=patient or straight_patient(seed), acquisition=acq)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, stopped after the test."""
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


OPENSSL = Path("/usr/bin/openssl")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    openssl = str(require_tool(OPENSSL, package="openssl"))
    folder = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edge-qc test CA")  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=edge-qc test {name}")  # fmt: skip
        (folder / f"{name}.ext").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return folder


def history_row(message_id: str, committed_unix: float, **changes: object) -> HistoryRow:
    """A history row of device jetson7 in room xr2 of site h1: an AP pass with nothing recorded beyond
    the verdict, then `changes` (any HistoryRow field)."""
    base = HistoryRow(
        message_id=message_id,
        committed_unix=committed_unix,
        received_unix=None,
        acquired=None,
        station="XR2",
        view="ap",
        verdict="pass",
        reason_code="",
        failed=(),
        warned=(),
        ei=None,
        ei_target=None,
        di=None,
        kvp=None,
        mas=None,
        degraded=False,
        probe=False,
        model="lumbar-resunet 0.2.0",
        standard="lumbar 1.0",
        site="h1",
        room="xr2",
        device="jetson7",
    )
    return replace(base, **changes)  # type: ignore[arg-type]
