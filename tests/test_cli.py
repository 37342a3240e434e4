"""`edge-qc check` as a radiographer's tool: verdicts, JSON Lines that meet the schema, overlays,
directories, errors in our own words, exit codes; `edge-qc --version`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    documents = json_lines(proc.stdout)
    assert [d["file"] for d in documents] == [str(files["cut"]), str(files["mr"])]
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


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """JSON Lines: every line one JSON object, nothing else on stdout."""
    documents = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(d, dict) for d in documents)
    return documents


def test_json_is_one_line_per_file_also_for_a_single_file(files: dict[str, Path]) -> None:
    proc = edge_qc("check", files["mr"], "--json")
    assert proc.returncode == 1
    (document,) = json_lines(proc.stdout)
    assert document["file"] == str(files["mr"])
    verdict = document["verdict"]
    assert isinstance(verdict, dict) and verdict["verdict"] == "rejected"


def test_a_directory_is_every_file_in_it_sorted_and_recursive(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "study"
    (folder / "series-2").mkdir(parents=True)
    shutil.copy(files["mr"], folder / "b-mr.dcm")
    shutil.copy(files["cut"], folder / "series-2" / "a-cut.dcm")
    (folder / ".hidden.dcm").write_bytes(b"x")
    (folder / "DICOMDIR").write_bytes(b"x")
    proc = edge_qc("check", folder, "--json")
    assert proc.returncode == 1, proc.stderr
    documents = json_lines(proc.stdout)
    assert [d["file"] for d in documents] == [str(folder / "b-mr.dcm"), str(folder / "series-2" / "a-cut.dcm")]
    empty = tmp_path / "empty"
    empty.mkdir()
    none = edge_qc("check", empty)
    assert none.returncode == 2 and f"{empty}: no files in this directory" in none.stderr


def test_version_names_the_package_model_and_standard() -> None:
    from importlib.metadata import version

    proc = edge_qc("--version")
    assert proc.returncode == 0
    package = re.escape(version("edge-qc"))
    expected = rf"edge-qc {package} \(model lumbar-resunet \d+\.\d+\.\d+, standard .+ \d+\.\d+\.\d+\)\n"
    assert re.fullmatch(expected, proc.stdout), proc.stdout


def test_overlay_and_human_output(files: dict[str, Path], tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.png"
    proc = edge_qc("check", files["cut"], "--overlay", overlay, "--timings")
    assert proc.returncode == 1
    assert "FAIL (ap)" in proc.stdout and "Upper coverage (T12)" in proc.stdout and "timings: decode" in proc.stdout
    assert "upper_coverage" not in proc.stdout  # the standard's titles, never item ids
    image = Image.open(overlay)
    assert image.mode == "RGB" and image.height > 1024  # the banner strip above the 1024-px image
    # the banner is red for a failed image
    assert image.getpixel((2, 2)) == (190, 30, 30)


def test_errors_exit_2_with_a_clear_message(tmp_path: Path, files: dict[str, Path]) -> None:
    missing = edge_qc("check", tmp_path / "absent.dcm", "--json")
    assert missing.returncode == 2 and f"{tmp_path / 'absent.dcm'}: no such file or directory" in missing.stderr
    assert json_lines(missing.stdout) == [{"file": str(tmp_path / "absent.dcm"), "error": "no such file or directory"}]
    config = tmp_path / "site.toml"
    config.write_text("[qc.overrides.ap.centring]\nmax_ofset_fraction = 0.2\n")
    bad = edge_qc("check", files["cut"], "--config", config)
    assert bad.returncode == 2 and "qc.overrides.ap.centring.max_ofset_fraction" in bad.stderr
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("hello")
    proc = edge_qc("check", not_dicom)
    assert proc.returncode == 1 and "REJECTED" in proc.stdout and "Traceback" not in proc.stderr
    assert "not a DICOM file (no DICM preamble)" in proc.stdout


def test_library_words_never_reach_the_user(tmp_path: Path, files: dict[str, Path]) -> None:
    """pydicom's messages ("Use force=True to force reading", its warnings) stay out of what edge-qc
    prints: a file that is not DICOM, one cut short, one cut inside its header."""
    data = files["cut"].read_bytes()
    (tmp_path / "text.dcm").write_text("hello, not an image")
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 3])
    (tmp_path / "header-only.dcm").write_bytes(data[:1000])
    proc = edge_qc("check", tmp_path, "--json")
    assert proc.returncode == 1, proc.stderr
    reasons = {}
    for document in json_lines(proc.stdout):
        verdict = document["verdict"]
        assert isinstance(verdict, dict) and verdict["verdict"] == "rejected"
        reasons[Path(document["file"]).name] = verdict["reason"]
    assert reasons["text.dcm"] == "not a DICOM file (no DICM preamble)"
    for text in (proc.stdout, proc.stderr):
        for library in ("force=True", "pydicom", "UserWarning", "Traceback", "Expected explicit VR"):
            assert library not in text, (library, text)


def test_config_check_reports_every_error_and_the_defaults_a_site_must_change(tmp_path: Path) -> None:
    """The command as Ansible's validate step and an engineer run it: an empty file is valid (exit 0) and
    warns on each default a site must change; a file with three mistakes gets all three (exit 2)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    proc = edge_qc("config-check", "--config", empty)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith(f"warning: {empty}: '") for line in lines), lines
    for key in ("dicom.allowed_calling_aets", "mqtt.site", "mqtt.room", "mqtt.device"):
        assert sum(f"'{key}'" in line for line in lines) == 1, (key, lines)
    assert proc.stdout == f"{empty}: configuration valid (0 error(s), 4 warning(s))\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npath = "/nonexistent"\n[dicom]\nport = 0\n[metrics]\nbind = "0.0.0.0"\nprot = 1\n')
    proc = edge_qc("config-check", bad)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, proc.stderr
    for error, key in zip(errors, ("'model.path'", "'dicom.port'", "'metrics.prot'"), strict=True):
        assert error.startswith(f"error: {bad}: ") and key in error
    assert "/nonexistent" in errors[0]
    assert "warning: " in proc.stderr and "'metrics.bind' is 0.0.0.0 (every interface)" in proc.stderr
    assert proc.stdout.startswith(f"{bad}: configuration refused (3 error(s), ")
    assert "Traceback" not in proc.stderr


SIGNAL_TO_ANOTHER_THREAD = """
import os, signal, threading, time
from edge.cli import wait_for_signal

stop = threading.Event()
signal.signal(signal.SIGHUP, lambda *_: stop.set())
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # threads started now inherit the block...


def worker() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # ...but this one: the kernel picks it
    time.sleep(60)


threading.Thread(target=worker, daemon=True).start()
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGHUP)).start()
wait_for_signal(stop)
print("handled")
"""


def test_a_signal_the_kernel_gives_another_thread_still_wakes_the_daemon() -> None:
    """systemctl reload/stop signal the process, and the kernel may hand the signal to any thread that
    does not block it; the daemon's main thread must still run the handler (a plain Event.wait() slept
    through it: a reload came 30 s late in a live test, and the stop after it never came)."""
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_TO_ANOTHER_THREAD], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == "handled", done.stderr
