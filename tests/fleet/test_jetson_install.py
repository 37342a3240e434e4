"""The edge_qc role's install path on a TensorRT device, for real (ansible-playbook, local connection, a
staging root, process mode), without a Jetson: the whole role cannot run here (its first engine is a
TensorRT build), so a small playbook runs the role's layout, directories and install tasks alone, with
edge_qc_backend = tensorrt and role defaults otherwise.

What stands in for the device (all under this module's tmp folder, never on any other test's path):
- a "system dist-packages" folder holding a trivial `tensorrt` package: it only proves that the venv
  sees the directory JetPack's python3-libnvinfer installs into (the role's .pth file);
- a trivial `pycuda` wheel (with `pycuda.driver`) in the controller's per-JetPack wheelhouse: it only
  proves the install-from-wheelhouse path (no compiler, no CUDA here); and a trivial pycuda "source"
  whose build backend writes such a wheel, with a "CUDA toolkit" of two empty files: it only proves the
  compile-once path (which device compiles, with which environment, where the wheel goes);
- a trivial onnxruntime-gpu wheel: the swap that keeps PyPI's onnxruntime and JetPack's from sharing a venv;
- /etc/nv_tegra_release in each staging root (the JetPack the wheel is keyed by), and a control script
  that only logs the restarts the role asks for.

The tests run in order and share the staging roots: install, install again, TensorRT missing, a JetPack
upgrade without a wheel or a CUDA toolkit to compile one, then with one for two devices."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet.environment import PLAYBOOK, RECAP, Run, ansible_environment, build_wheel, run_playbook

# With ansible-core (the fleet extra) come PyYAML and packaging; without it every test here skips.
yaml = pytest.importorskip("yaml", reason="ansible-core is not installed in this environment (the fleet extra)")
Requirement = pytest.importorskip("packaging.requirements").Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLE = ANSIBLE / "roles" / "edge_qc"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PYCUDA = DEFAULTS["edge_qc_pycuda_version"]
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
L4T_36_4_3 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025\n"
L4T_38_2_0 = "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Mon Aug 25 2025\n"

pytestmark = pytest.mark.slow

INSTALL_ONLY = """\
- name: The edge_qc role's install path alone (the whole role would build a TensorRT engine)
  hosts: edge_qc
  gather_facts: false
  tasks:
    - name: Layout, directories and install
      ansible.builtin.include_role:
        name: edge_qc
        tasks_from: "{{ tasks_file }}"
      loop: [layout.yml, directories.yml, install.yml]
      loop_control:
        loop_var: tasks_file
"""
# A build backend standing in for pycuda's sdist (stand_in_wheel below is pasted in front of it): no
# compiler, no requirements; it records the environment the role compiles in (CUDA_ROOT, PATH) in
# pycuda.driver and tags the wheel as a real build would.
STAND_IN_BACKEND = """
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    tag = "cp%d%d" % sys.version_info[:2]
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    built_with = {k: os.environ.get(k) for k in ("CUDA_ROOT", "PATH")}
    files = {"pycuda/__init__.py": "", "pycuda/driver.py": "BUILT_WITH = %r\\n" % built_with}
    return stand_in_wheel(Path(wheel_directory), "pycuda", VERSION, f"{tag}-{tag}-{platform}", files).name
"""



@dataclass
class Device:
    folder: Path
    root: Path
    venv: Path
    stand_in_dist_packages: Path
    pycuda_wheelhouse: Path
    env: dict[str, str]

    def playbook(self, *extra: str, inventory: str = "hosts.yml") -> Run:
        argv = ["-i", str(self.folder / inventory), "-e", f"@{self.folder / 'vars.json'}", *extra]
        argv.append(str(self.folder / "install-only.yml"))
        return run_playbook(argv, self.env, self.folder / "install-only.log", timeout=300)

    def python(self, code: str, root: Path | None = None) -> str:
        return subprocess.run(
            [str((root or self.root) / "opt/edge-qc/venv/bin/python"), "-c", code],
            cwd=self.folder,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout


def flat(text: str) -> str:
    """The callback's YAML output folds long messages: compare with single spaces."""
    return re.sub(r"\s+", " ", text)


def stand_in_wheel(folder: Path, distribution: str, version: str, tag: str, files: dict[str, str]) -> Path:
    """A minimal wheel with these files (a valid RECORD; pip installs it like any other)."""
    info = f"{distribution}-{version}.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution.replace('_', '-')}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests/fleet\nRoot-Is-Purelib: false\nTag: {tag}\n",
    }
    record = []
    for name, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{distribution}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in {**contents, f"{info}/RECORD": "\n".join(record) + "\n"}.items():
            archive.writestr(name, text)
    return wheel


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed in this environment (pip install -e '.[fleet]')")
    folder = tmp_path_factory.mktemp("jetson")
    root = folder / "room1"
    wheel = build_wheel(folder)
    # Stand-in for the system dist-packages of JetPack's python3-libnvinfer: for the path test only.
    dist_packages = folder / "stand-in-system-dist-packages"
    (dist_packages / "tensorrt").mkdir(parents=True)
    (dist_packages / "tensorrt" / "__init__.py").write_text(
        '"""Stand-in for TensorRT\'s bindings: proves only that the venv sees this directory."""\n'
        '__version__ = "0+stand-in"\n'
    )
    # Stand-in for the pycuda wheel the role compiles on the first device of a JetPack (L4T 36.4.3).
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    wheelhouse = folder / "controller-wheelhouse" / "pycuda"
    stand_in = '"""Stand-in: proves only the install from the per-JetPack wheelhouse."""\n'
    stand_in_wheel(
        wheelhouse / "l4t-r36.4.3",
        "pycuda",
        PYCUDA,
        f"{TAG}-{TAG}-{platform}",
        {"pycuda/__init__.py": stand_in, "pycuda/driver.py": stand_in + "STAND_IN = True\n"},
    )
    onnxruntime_gpu = stand_in_wheel(
        folder / "jetpack-wheels",
        "onnxruntime_gpu",
        "1.23.0",
        "py3-none-any",
        {"onnxruntime/__init__.py": '"""Stand-in for JetPack\'s onnxruntime-gpu."""\nSTAND_IN = "onnxruntime-gpu"\n'},
    )
    # The source of pycuda as the role compiles it, in an offline wheelhouse (edge_qc_wheelhouse).
    source = folder / "stand-in-pycuda-source"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "stand_in_backend"\nbackend-path = ["."]\n'
    )
    (source / "stand_in_backend.py").write_text(
        "from __future__ import annotations\nimport base64, hashlib, os, sys, sysconfig, zipfile\n"
        f"from pathlib import Path\n\nVERSION = {PYCUDA!r}\n\n\n{inspect.getsource(stand_in_wheel)}{STAND_IN_BACKEND}"
    )
    (folder / "offline-wheelhouse").mkdir()
    with tarfile.open(folder / "offline-wheelhouse" / f"pycuda-{PYCUDA}.tar.gz", "w:gz") as sdist:
        sdist.add(source, arcname=f"pycuda-{PYCUDA}")
    cuda = folder / "stand-in-cuda-toolkit"  # only the two files the role looks for
    for name in ("bin/nvcc", "include/cuda.h"):
        (cuda / name).parent.mkdir(parents=True, exist_ok=True)
        (cuda / name).write_text("")
    for room, release in (("room1", L4T_36_4_3), ("room2", L4T_38_2_0)):
        (folder / room / "etc").mkdir(parents=True)
        (folder / room / "etc/nv_tegra_release").write_text(release)
        control = folder / room / "opt/edge-qc/bin/edge-qc-ctl"  # process mode's restart: logged, nothing started
        control.parent.mkdir(parents=True)
        control.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/{room}-edge-qc-ctl.log"\n')
        control.chmod(0o755)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    rooms = {room: {**local, "edge_qc_root": str(folder / room)} for room in ("room1", "room2")}
    (folder / "hosts.yml").write_text(json.dumps({"edge_qc": {"hosts": {"room1": rooms["room1"]}}}))
    (folder / "hosts-two-rooms.yml").write_text(json.dumps({"edge_qc": {"hosts": rooms}}))
    (folder / "install-only.yml").write_text(INSTALL_ONLY)
    variables = {
        "edge_qc_service_manager": "process",
        "edge_qc_source_dir": str(REPO),
        "edge_qc_python": sys.executable,
        "edge_qc_wheel": wheel,
        "edge_qc_pip_no_deps": True,
        "edge_qc_backend": "tensorrt",
        "edge_qc_tensorrt_python_dir": str(dist_packages),
        "edge_qc_pycuda_wheelhouse": str(wheelhouse),
        "edge_qc_cuda_root": str(folder / "no-cuda-toolkit-here"),
        "edge_qc_onnxruntime_wheel": str(onnxruntime_gpu),
    }
    (folder / "vars.json").write_text(json.dumps(variables))
    env = ansible_environment(folder, ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"))
    yield Device(folder, root, root / "opt/edge-qc/venv", dist_packages, wheelhouse, env)


def test_the_jetson_extra_the_role_and_the_example_inventory_agree() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pycuda,) = (Requirement(r) for r in extras["jetson"])
    assert pycuda.name == "pycuda" and pycuda.specifier.contains(PYCUDA)
    # TensorRT through the .pth file, nothing else of the system Python; JetPack 6's directory
    assert DEFAULTS["edge_qc_venv_system_site_packages"] is False
    example = yaml.safe_load((ANSIBLE / "inventory/example/group_vars/edge_qc.yml").read_text())
    assert example["edge_qc_backend"] == "tensorrt" and example["edge_qc_venv_system_site_packages"] is False
    assert example["edge_qc_tensorrt_python_dir"] == "/usr/lib/python3.10/dist-packages"


def test_a_tensorrt_device_sees_tensorrt_and_installs_pycuda_from_the_wheelhouse(device: Device) -> None:
    run = device.playbook()
    assert run.rc == 0 and run.failed == 0 and run.changed > 0, run.output[-4000:]
    purelib = Path(device.python("import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    # the venv's own packages, then TensorRT's directory (and nothing else of the system Python)
    assert (purelib / "edge_qc_extra_site_dirs.pth").read_text() == f"{device.stand_in_dist_packages}\n"
    assert "include-system-site-packages = false" in (device.venv / "pyvenv.cfg").read_text()
    found = json.loads(
        device.python(
            "import json, importlib.metadata as m, sysconfig, tensorrt, pycuda.driver, onnxruntime\n"
            "print(json.dumps({'tensorrt': tensorrt.__file__, 'pycuda': pycuda.driver.__file__,\n"
            "    'pycuda_version': m.version('pycuda'), 'onnxruntime': onnxruntime.STAND_IN,\n"
            "    'distributions': sorted(d.metadata['Name'] for d in m.distributions(\n"
            "        path=[sysconfig.get_path('purelib')]))}))"
        )
    )
    assert found["tensorrt"] == str(device.stand_in_dist_packages / "tensorrt" / "__init__.py")
    assert found["pycuda"] == str(purelib / "pycuda" / "driver.py") and found["pycuda_version"] == PYCUDA
    assert found["onnxruntime"] == "onnxruntime-gpu"
    assert "onnxruntime-gpu" in found["distributions"] and "onnxruntime" not in found["distributions"]
    # from the controller's wheelhouse for L4T 36.4.3, not compiled
    assert re.search(r"TASK \[edge_qc : Compile pycuda into a wheel \(minutes\)\] \*+\nskipping", run.output)
    copied = list((device.root / "opt/edge-qc/wheels/pycuda").iterdir())
    assert [w.name for w in copied] == [w.name for w in (device.pycuda_wheelhouse / "l4t-r36.4.3").iterdir()]
    check = run.output.split("TASK [edge_qc : Check that the virtual environment imports tensorrt and pycuda.driver]")
    assert check[1].lstrip("* \n").startswith("ok: [room1]"), check[1][:500]
    assert (device.folder / "room1-edge-qc-ctl.log").read_text() == "restart\n"  # one handler run for all installs


def test_the_install_again_changes_nothing(device: Device) -> None:
    run = device.playbook()
    assert run.rc == 0 and run.failed == 0 and run.changed == 0, run.output[-4000:]
    assert (device.folder / "room1-edge-qc-ctl.log").read_text() == "restart\n"


def test_without_tensorrt_the_play_fails_naming_it(device: Device) -> None:
    empty = device.folder / "empty-dist-packages"
    empty.mkdir()
    run = device.playbook("-e", f"edge_qc_tensorrt_python_dir={empty}")
    assert run.rc != 0 and run.failed == 1, run.output[-4000:]
    message = flat(run.output.split("TASK [edge_qc : Check that the virtual environment imports tensorrt")[1])
    assert "cannot import tensorrt (ModuleNotFoundError: No module named 'tensorrt')" in message
    assert "python3-libnvinfer" in message and f"in {empty} (edge_qc_tensorrt_python_dir)" in message
    assert "pycuda.driver (" not in message  # pycuda is there


def test_a_jetpack_without_a_pycuda_wheel_or_a_toolkit_to_compile_one_fails_naming_both(device: Device) -> None:
    """After a JetPack upgrade (L4T 38.2) the wheel compiled for 36.4.3 is not reused; with no wheel for
    the new JetPack and no CUDA toolkit the host fails before anything imports pycuda."""
    (device.root / "etc/nv_tegra_release").write_text(L4T_38_2_0)
    run = device.playbook()
    assert run.rc != 0 and run.failed == 1, run.output[-4000:]
    cuda = device.folder / "no-cuda-toolkit-here"
    wheels = device.pycuda_wheelhouse / "l4t-r38.2.0"
    message = flat(run.output.split("TASK [edge_qc : Fail when the CUDA toolkit is missing]")[1])
    assert f"No pycuda {PYCUDA} wheel for l4t-r38.2.0 {TAG} in {wheels}/" in message
    assert f"room1 cannot compile one: {cuda}/bin/nvcc and {cuda}/include/cuda.h missing" in message
    assert "Install JetPack's CUDA toolkit" in message
    assert not wheels.exists() and "Try the imports" not in message


def test_the_first_device_of_a_jetpack_compiles_pycuda_once_for_the_fleet(device: Device) -> None:
    """Two devices on L4T 38.2 (room1 after its upgrade, room2 new), a CUDA toolkit and pycuda's source in
    the offline wheelhouse: room1 compiles (with CUDA_ROOT and nvcc on PATH), the controller keeps the
    wheel, room2 installs the same wheel without compiling."""
    cuda = device.folder / "stand-in-cuda-toolkit"
    offline = device.folder / "offline-wheelhouse"
    run = device.playbook(
        "-e", f"edge_qc_cuda_root={cuda}", "-e", f"edge_qc_wheelhouse={offline}", inventory="hosts-two-rooms.yml"
    )
    room2 = re.search(RECAP.format(host="room2"), run.output, re.MULTILINE)
    assert run.rc == 0 and run.failed == 0 and room2 is not None and room2.group(2) == "0", run.output[-4000:]
    compiled = run.output.split("TASK [edge_qc : Compile pycuda into a wheel (minutes)]")[1].split("TASK [")[0]
    assert "changed: [room1]" in compiled and "skipping: [room2]" in compiled, compiled
    kept = list((device.pycuda_wheelhouse / "l4t-r38.2.0").iterdir())
    assert [w.name for w in kept] == [next((device.root / "opt/edge-qc/wheels/pycuda-build").iterdir()).name]
    for root in (device.root, device.folder / "room2"):
        installed = next((root / "opt/edge-qc/wheels/pycuda").glob(f"pycuda-{PYCUDA}-{TAG}-*.whl"))
        assert installed.read_bytes() == kept[0].read_bytes()
        built_with = json.loads(device.python("import json, pycuda.driver as d; print(json.dumps(d.BUILT_WITH))", root))
        assert built_with["CUDA_ROOT"] == str(cuda) and f"{cuda}/bin" in built_with["PATH"].split(":")
    check = run.output.split("TASK [edge_qc : Check that the virtual environment imports tensorrt and pycuda.driver]")
    assert "ok: [room1]" in check[1].split("TASK [")[0] and "ok: [room2]" in check[1].split("TASK [")[0]
