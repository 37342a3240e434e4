"""`edge-qc doctor`: is this device ready to judge radiographs? Each check says pass, fail or skip, and the fix.

Run on a device by a biomedical engineer (or by Ansible, on the exit status) after an install, an
upgrade or a complaint. The checks, in order: python, jetson, tensorrt, pycuda, gpu-device-nodes,
engine, disk, clock, broker, dicom-port, modality-aets. A skip is a check that does not apply here
(a workstation has no Jetson) and says why; a fail says what to do, in plain words. A check that
itself raises is a failure naming the exception, never a traceback.

Every file read under /proc, /sys, /dev and /etc is read under `--root` (default "/"), so the tests
judge a prepared Jetson file tree. Commands (timedatectl) go through an injectable runner. Nothing
here reads images: the output carries no patient data, and never a password.

    edge-qc doctor [--config SITE.toml] [--json] [--root /]

Exit status: 0 every check passed or was skipped, 1 some check failed, 2 the configuration cannot be
read (the message names the key).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import grp
import json
import os
import platform
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edge.config import Config, ConfigError, load_config
from edge.config_check import naming_warnings
from edge.engines.manifest import ManifestError, load_manifest
from edge.engines.store import sha256_of
from edge.inference.device import (
    DeviceFingerprint,
    incompatibilities,
    parse_l4t,
    read_fingerprint,
    split_compatible,
)

Status = Literal["pass", "fail", "skip"]
Runner = Callable[[Sequence[str]], tuple[int, str]]  # argv -> (exit status, output)
Which = Callable[[str], str | None]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
SERVICE_USER: Final = "edge-qc"
SITE_CONFIG: Final = Path("etc/edge-qc/site.toml")  # under --root
INSTALLED_UNIT: Final = Path("etc/systemd/system/edge-qc.service")  # under --root, where the role installs it
REPO_UNIT: Final = Path(__file__).resolve().parent.parent / "systemd" / "edge-qc.service"
# The GPU's nodes: Orin (JetPack 6) uses nvmap, nvgpu and nvhost; Thor (JetPack 7) and dGPUs the nvidia ones.
GPU_NODE_GLOBS: Final = ("nvmap", "nvgpu/igpu0/*", "nvhost-*gpu*", "nvidia[0-9]*", "nvidiactl", "nvidia-uvm")
# /proc/devices groups that are the GPU's, whatever their node is called ("17000000.gpu": Orin's GPU).
GPU_GROUP_GLOBS: Final = ("nvhost*", "nvgpu*", "*.gpu", "nvidia*", "nvmap")
SOCS: Final = {"tegra210": "Nano/TX1", "tegra186": "TX2", "tegra194": "Xavier", "tegra234": "Orin", "tegra264": "Thor"}
JETPACKS: Final = {"32": "JetPack 4", "35": "JetPack 5", "36": "JetPack 6", "38": "JetPack 7"}
BROKER_TIMEOUT_S: Final = 5.0
PORT_TIMEOUT_S: Final = 2.0

TENSORRT_FIX: Final = (
    "install TensorRT's Python bindings from JetPack (sudo apt-get install python3-libnvinfer) and let the venv"
    " see them: the Ansible role writes a .pth file in the venv's site-packages naming edge_qc_tensorrt_python_dir"
    " (JetPack 6: /usr/lib/python3.10/dist-packages) on TensorRT hosts; run the role again, or write that file"
)
PYCUDA_FIX: Final = (
    "build pycuda from source in the venv: sudo apt-get install build-essential python3-dev, then"
    " CUDA_ROOT=/usr/local/cuda PATH=/usr/local/cuda/bin:$PATH <venv>/bin/pip install pycuda"
    " (the role builds one wheel per JetPack and keeps it in the wheelhouse)"
)


@dataclass(frozen=True)
class Check:
    """One check's outcome: `fix` says what to do (for a pass or a skip, an optional hint)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """The default runner: the command's exit status and its output (stdout, else stderr), stripped."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout.strip() or done.stderr.strip())


@dataclass(frozen=True)
class Context:
    """Everything a check may look at; the I/O a test must control is injected here."""

    config: Config
    root: Path = Path("/")
    run: Runner = run_command
    which: Which = shutil.which
    unit: Path | None = None  # the systemd unit to compare DeviceAllow with; None: the installed one, else the repo's
    broker_timeout_s: float = BROKER_TIMEOUT_S
    fingerprint: Callable[[Path], DeviceFingerprint] = field(default=read_fingerprint)
    python: tuple[int, ...] = tuple(sys.version_info[:3])  # the interpreter's version (a test may pretend)

    def shown(self, path: Path) -> str:
        """`path` as the device names it (without the test root)."""
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            return str(path)


CheckFunction = Callable[[Context], Check]


# --- facts read under the root --------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


@dataclass(frozen=True)
class Jetson:
    """What the device tree and the L4T release file say about this machine."""

    release: str | None  # /etc/nv_tegra_release as read
    compatible: tuple[str, ...]  # /proc/device-tree/compatible, NUL-separated strings
    model: str | None  # /proc/device-tree/model (names the carrier board, not the module)

    @property
    def l4t(self) -> str | None:
        return parse_l4t(self.release)

    @property
    def soc(self) -> str | None:
        """'tegra234' from 'nvidia,tegra234'."""
        for entry in self.compatible:
            vendor, _, name = entry.partition(",")
            if vendor == "nvidia" and name.startswith("tegra"):
                return name
        return None

    @property
    def is_jetson(self) -> bool:
        return self.release is not None or self.soc is not None


def read_jetson(root: Path) -> Jetson:
    compatible = _read(root / "proc/device-tree/compatible")
    model = (_read(root / "proc/device-tree/model") or "").strip().strip("\x00").strip()
    return Jetson(
        release=_read(root / "etc/nv_tegra_release"),
        compatible=split_compatible(compatible),
        model=model or None,
    )


def char_device_groups(text: str) -> list[tuple[int, str]]:
    """(major, name) of each character device group in /proc/devices (a major may have several names)."""
    groups, character = [], True
    for line in text.splitlines():
        entry = line.strip()
        lowered = entry.lower()
        if lowered.startswith("character devices"):
            character = True
        elif lowered.startswith("block devices"):
            character = False
        elif character:
            major, _, name = entry.partition(" ")
            if major.isdigit() and name.strip():
                groups.append((int(major), name.strip()))
    return groups


@dataclass(frozen=True)
class DeviceRules:
    """The device sandbox a systemd unit sets: DevicePolicy and its DeviceAllow entries granting rw."""

    source: str
    policy: str
    allow: tuple[str, ...]  # "/dev/nvmap", "char-nvhost*", ... (entries that grant read and write)
    user: str
    lines: tuple[str, ...]  # the DeviceAllow values as written, for systemd-run

    @property
    def char_globs(self) -> tuple[str, ...]:
        return tuple(spec[len("char-") :] for spec in self.allow if spec.startswith("char-"))

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(spec for spec in self.allow if spec.startswith("/"))

    def allows_group(self, name: str) -> str | None:
        """The glob (as char-GLOB) that lets this /proc/devices group through, if any."""
        for pattern in self.char_globs:
            if fnmatch.fnmatchcase(name, pattern):
                return f"char-{pattern}"
        return None


def parse_unit(texts: Iterable[str], source: str) -> DeviceRules:
    """[Service] DevicePolicy, DeviceAllow and User of a unit and its drop-ins, in order; an empty
    DeviceAllow= resets the list, as systemd does. Access "" means rwm, as in systemd."""
    policy, user = "auto", ""
    allow: list[str] = []
    lines: list[str] = []
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            if section != "Service" or not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "DevicePolicy":
                policy = value or "auto"
            elif key == "User":
                user = value
            elif key == "DeviceAllow":
                if not value:
                    allow.clear()
                    lines.clear()
                    continue
                spec, _, access = value.partition(" ")
                lines.append(value)
                if not access.strip() or {"r", "w"} <= set(access.strip()):
                    allow.append(spec)
    return DeviceRules(source, policy, tuple(allow), user, tuple(lines))


def read_unit(ctx: Context) -> DeviceRules | None:
    """The unit the doctor compares with: `ctx.unit`, else the installed one (with its drop-ins), else
    the repository's; None when there is none."""
    candidates = [ctx.unit] if ctx.unit is not None else [ctx.root / INSTALLED_UNIT, REPO_UNIT]
    for unit in candidates:
        text = _read(unit)
        if text is None:
            continue
        dropins = sorted((unit.parent / f"{unit.name}.d").glob("*.conf"))
        texts = [text, *(t for t in map(_read, dropins) if t is not None)]
        return parse_unit(texts, ctx.shown(unit) if unit != REPO_UNIT else str(unit))
    return None


def gpu_nodes(root: Path) -> list[Path]:
    """The GPU's device nodes under root/dev, in a stable order."""
    dev = root / "dev"
    found: dict[str, Path] = {}
    for pattern in GPU_NODE_GLOBS:
        for path in sorted(dev.glob(pattern)):
            if not path.is_dir():
                found.setdefault(str(path), path)
    return list(found.values())


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _mib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


# --- the checks, in order -------------------------------------------------------------------------------------


def check_python(ctx: Context) -> Check:
    """JetPack 6 runs Python 3.10 on aarch64; what runs here is reported, and only < 3.10 fails."""
    version = ".".join(map(str, ctx.python))
    where = f"Python {version} ({platform.python_implementation()}) on {platform.machine()} {platform.system()}"
    detail = f"{where}, {sys.executable}; JetPack 6 runs Python 3.10 on aarch64"
    if ctx.python < (3, 10):
        return Check("python", "fail", detail, "edge-qc needs Python 3.10 or later: create the venv with python3.10")
    return Check("python", "pass", detail)


def check_jetson(ctx: Context) -> Check:
    """The module, SoC and L4T release: an engine is only loaded where all are known."""
    jetson = read_jetson(ctx.root)
    if not jetson.is_jetson:
        seen = f" (model: {jetson.model})" if jetson.model else ""
        return Check(
            "jetson",
            "skip",
            f"not a Jetson: no /etc/nv_tegra_release and no nvidia,tegra* in /proc/device-tree/compatible{seen}",
        )
    problems = []
    if jetson.l4t is None:
        what = "missing" if jetson.release is None else "not an L4T release line"
        problems.append(f"/etc/nv_tegra_release is {what}: the L4T release is unknown and every engine is refused")
    if jetson.soc is None:
        problems.append("/proc/device-tree/compatible names no nvidia,tegra SoC")
    soc = f"{SOCS.get(jetson.soc, 'unknown SoC')} ({jetson.soc})" if jetson.soc else "unknown SoC"
    l4t = jetson.l4t or "unknown"
    jetpack = JETPACKS.get(l4t.split(".")[0], "") if jetson.l4t else ""
    detail = f"{jetson.model or 'unnamed board'}: {soc}, L4T {l4t}{f' ({jetpack})' if jetpack else ''}"
    if problems:
        return Check(
            "jetson",
            "fail",
            f"{detail}; " + "; ".join(problems),
            "the release file and device tree come with JetPack's nvidia-l4t-core: reinstall it or reflash the"
            " module with JetPack 6 (Orin) or JetPack 7 (Thor)",
        )
    return Check("jetson", "pass", detail)


def _import_failure(name: str) -> tuple[Any, str]:
    """The module, or None and why it cannot be imported (a broken install raises more than ImportError)."""
    import importlib

    try:
        return importlib.import_module(name), ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def check_tensorrt(ctx: Context) -> Check:
    """TensorRT's bindings come from JetPack's apt packages: the venv must see them."""
    trt, why = _import_failure("tensorrt")
    if trt is not None:
        return Check("tensorrt", "pass", f"tensorrt {getattr(trt, '__version__', 'of unknown version')} importable")
    if ctx.config.model.backend != "tensorrt":
        return Check(
            "tensorrt",
            "skip",
            f"not importable ({why}); not needed: model.backend is {ctx.config.model.backend!r}",
        )
    return Check(
        "tensorrt",
        "fail",
        f"model.backend is \"tensorrt\" but tensorrt is not importable ({why}): the daemon would run on the CPU,"
        " degraded",
        TENSORRT_FIX,
    )


def check_pycuda(ctx: Context) -> Check:
    """pycuda drives the GPU for the TensorRT backend and tells the engine's compute capability."""
    needed = ctx.config.model.backend == "tensorrt"
    unused = f"; not needed: model.backend is {ctx.config.model.backend!r}"
    cuda, why = _import_failure("pycuda.driver")
    if cuda is None:
        if not needed:
            return Check("pycuda", "skip", f"not importable ({why}){unused}")
        return Check(
            "pycuda",
            "fail",
            f"model.backend is \"tensorrt\" but pycuda is not importable ({why}): the TensorRT backend cannot run",
            PYCUDA_FIX,
        )
    try:
        cuda.init()
        count = cuda.Device.count()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        name = str(device.name())
    except Exception as exc:
        detail = f"pycuda imports but CUDA does not start: {type(exc).__name__}: {exc}"
        if not needed:
            return Check("pycuda", "skip", detail + unused)
        return Check(
            "pycuda",
            "fail",
            detail,
            "the GPU driver is not reachable: see gpu-device-nodes (group membership of the service user, DeviceAllow),"
            " and that pycuda was built against this JetPack's CUDA",
        )
    return Check("pycuda", "pass", f"CUDA device 0 of {count}: {name}, compute capability {major}.{minor}")


def _systemd_run_command(rules: DeviceRules) -> str:
    """The one-liner that proves the unit's device sandbox lets CUDA start (run by hand on the device)."""
    argv = ["systemd-run", "--wait", "--pipe", "-p", "DevicePolicy=closed"]
    for line in rules.lines:
        argv += ["-p", f"DeviceAllow={line}"]
    if rules.user:
        argv += ["-p", f"User={rules.user}"]
    argv += [sys.executable, "-c", "import pycuda.autoinit"]
    return shlex.join(argv)


def check_gpu_device_nodes(ctx: Context) -> Check:
    """The GPU's nodes open read/write for this user, and the unit's DevicePolicy=closed lets every one
    of their /proc/devices groups through (else the daemon runs degraded, on the CPU, under systemd)."""
    jetson = read_jetson(ctx.root)
    dev = ctx.root / "dev"
    has_nvidia = any(dev.glob("nvidia*"))
    if not jetson.is_jetson and not has_nvidia:
        return Check("gpu-device-nodes", "skip", "not a Jetson and no /dev/nvidia*: no GPU to reach")
    nodes = gpu_nodes(ctx.root)
    if not nodes:
        return Check(
            "gpu-device-nodes",
            "fail",
            f"no GPU device node under /dev (looked for {', '.join('/dev/' + g for g in GPU_NODE_GLOBS)})",
            "the GPU driver is not loaded (nvgpu on Orin, nvidia on Thor): reboot, then check `lsmod` and"
            " `dmesg | grep -i gpu`; reflash JetPack if it stays absent",
        )
    problems, fixes, notes = [], [], []
    closed_groups: set[str] = set()
    majors: dict[str, int | None] = {}
    for node in nodes:
        name = ctx.shown(node)
        try:
            info = os.stat(node)
            majors[name] = os.major(info.st_rdev) if stat.S_ISCHR(info.st_mode) else None
            os.close(os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY))
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            try:
                group = _group_name(os.stat(node).st_gid)
            except OSError:
                group = "?"
            problems.append(f"{name} not openable ({code}, group {group})")
            if exc.errno in (errno.EACCES, errno.EPERM):
                closed_groups.add(group)
    who = f"uid {os.geteuid()}"
    notes.append(f"{len(nodes)} node(s) {', '.join(map(ctx.shown, nodes))}")
    if not problems:
        notes.append(f"all open read/write for {who}")
    if os.geteuid() == 0:
        as_service = f"sudo -u {SERVICE_USER} {sys.executable} -m edge.cli doctor"
        notes.append(f"checked as root: `{as_service}` tells what the service user can open")
    if closed_groups:
        groups = ",".join(sorted(closed_groups))
        fixes.append(
            f"add the service user to the group that owns them: sudo usermod -aG {groups} {SERVICE_USER},"
            " then restart edge-qc"
        )
    rules = read_unit(ctx)
    devices_text = _read(ctx.root / "proc/devices")
    if rules is None:
        notes.append("no edge-qc.service to compare DeviceAllow with (that half skipped)")
    elif devices_text is None:
        notes.append("no /proc/devices (the DeviceAllow half skipped)")
    elif rules.policy not in ("closed", "strict"):
        notes.append(f"{rules.source} sets DevicePolicy={rules.policy}: no device sandbox to check")
    else:
        blocked, allowed = _device_allow_problems(rules, char_device_groups(devices_text), majors)
        through = "lets through " + ", ".join(allowed) if allowed else "checked"
        notes.append(f"DeviceAllow in {rules.source} {through}")
        if blocked:
            problems.append(f"DevicePolicy={rules.policy} blocks " + ", ".join(blocked))
            fixes.append(
                f"add `DeviceAllow=char-GROUP rw` for each blocked group to a drop-in"
                f" (/etc/systemd/system/edge-qc.service.d/), keep DevicePolicy={rules.policy}, then"
                " systemctl daemon-reload && systemctl restart edge-qc"
            )
    if rules is not None and ctx.root == Path("/") and ctx.which("systemctl"):
        fixes.append(f"prove CUDA starts inside the unit's device sandbox: {_systemd_run_command(rules)}")
    detail = "; ".join(problems + notes)
    return Check("gpu-device-nodes", "fail" if problems else "pass", detail, "; ".join(fixes))


def _device_allow_problems(
    rules: DeviceRules, groups: list[tuple[int, str]], majors: dict[str, int | None]
) -> tuple[list[str], list[str]]:
    """What the unit's DeviceAllow blocks (nodes by major, GPU groups by name) and what it lets through."""
    blocked: list[str] = []
    allowed: dict[str, str] = {}
    for node, major in majors.items():
        if node in rules.paths:
            allowed[node] = f"{node} (by path)"
            continue
        if major is None:  # not a character device (a prepared tree): judged by the group names below
            continue
        names = [name for m, name in groups if m == major]
        matches = [(name, rules.allows_group(name)) for name in names]
        good = [f"group {name} ({glob})" for name, glob in matches if glob]
        if good:
            allowed.setdefault(good[0], good[0])
        else:
            blocked.append(f"{node} (major {major}, group {'/'.join(names) or 'not in /proc/devices'})")
    for _, name in groups:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in GPU_GROUP_GLOBS):
            continue
        glob = rules.allows_group(name)
        if glob:
            allowed.setdefault(f"group {name} ({glob})", f"group {name} ({glob})")
        else:
            blocked.append(f"group {name}")
    return list(dict.fromkeys(blocked)), list(allowed.values())


def check_engine(ctx: Context) -> Check:
    """The model folder loads and its ONNX file is intact; with TensorRT, the engine was built for this
    device from this model (else it is refused at load and the daemon runs degraded)."""
    model = ctx.config.model
    try:
        manifest = load_manifest(model.path)
    except ManifestError as exc:
        return Check(
            "engine",
            "fail",
            str(exc),
            "activate a model version: edge-qc engine list --root ENGINES_DIR, then edge-qc engine activate VERSION"
            " (model.path must be a model version folder with its manifest.json)",
        )
    problems, notes = [], [f"{manifest.label} in {model.path}"]
    actual = sha256_of(manifest.model_path)
    if actual != manifest.sha256:
        problems.append(
            f"{manifest.file}: sha256 {actual[:16]}... differs from the manifest's {manifest.sha256[:16]}..."
            " (incomplete or altered copy)"
        )
    else:
        notes.append(f"{manifest.file} matches its sha256")
    fix = "copy the model version again (the role's engine rollout) and activate it"
    if model.backend == "tensorrt":
        engine = model.engine
        if engine is None:
            problems.append("model.backend is \"tensorrt\" but model.engine is not set")
        else:
            problems += _engine_problems(engine, manifest.sha256, ctx.fingerprint(ctx.root))
            folder = engine.parent
            fix = (
                f"find an engine built for this device: edge-qc engine find {folder}; if none is, build one here:"
                f" edge-qc engine build {model.path} --out {folder}, validate it (edge-qc engine validate"
                f" {model.path}) and point model.engine at it"
            )
            if not problems:
                notes.append(f"{engine.name} built for this device from this model")
    validated = _validations(model.path / "manifest.json")
    if validated:
        notes.append(f"validation recorded: {validated}")
    if problems:
        return Check("engine", "fail", "; ".join(problems + notes), fix)
    return Check("engine", "pass", "; ".join(notes))


def _engine_problems(engine: Path, onnx_sha256: str, here: DeviceFingerprint) -> list[str]:
    """Why the TensorRT backend would refuse `engine` here (empty: it would load it)."""
    record_path = engine.with_suffix(".json")
    if not engine.is_file():
        return [f"model.engine {engine} does not exist"]
    try:
        record = json.loads(record_path.read_text("utf-8"))
    except FileNotFoundError:
        return [f"{record_path.name} is missing: an engine without its manifest is never loaded"]
    except (OSError, ValueError) as exc:
        return [f"{record_path.name} is unreadable: {exc}"]
    if not isinstance(record, dict):
        return [f"{record_path.name} is not a JSON object"]
    device = record.get("device", {})
    mismatches = incompatibilities(device if isinstance(device, dict) else {}, here)
    problems = ["built for another device: " + "; ".join(mismatches)] if mismatches else []
    if record.get("sha256") and record["sha256"] != sha256_of(engine):
        problems.append(f"{engine.name} does not match the sha256 in {record_path.name} (incomplete or altered copy)")
    if record.get("source_onnx_sha256") and record["source_onnx_sha256"] != onnx_sha256:
        problems.append(f"{engine.name} was built from another ONNX file than this model version's")
    return problems


def _validations(path: Path) -> str:
    """The engine validations the model's manifest records ("onnxruntime-fp16 passed", ...)."""
    try:
        recorded = json.loads(path.read_text("utf-8")).get("engine_validation", {})
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(recorded, dict):
        return ""
    return ", ".join(
        f"{name} {'passed' if isinstance(r, dict) and r.get('passed') else 'FAILED'}" for name, r in recorded.items()
    )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(ctx: Context) -> Check:
    """The spool and the outbox need room: below service.min_free_bytes the daemon says not ready."""
    service = ctx.config.service
    least = service.min_free_bytes
    problems: list[str] = []
    notes: list[str] = []
    for label, path in (("spool", service.spool_dir), ("outbox", service.outbox_path.parent)):
        where = _nearest_existing(path)
        free = shutil.disk_usage(where).free
        measured = f" (not there yet: measured at {where})" if where != path else ""
        line = f"{label} {path}{measured}: {_mib(free)} free"
        (problems if free < least else notes).append(line)
    if problems:
        return Check(
            "disk",
            "fail",
            "; ".join(problems + notes) + f" (service.min_free_bytes: {_mib(least)})",
            "free space on that filesystem (old logs: journalctl --vacuum-size=200M; old engine versions under"
            " the engines directory), or lower service.min_free_bytes only if the site agrees",
        )
    return Check("disk", "pass", "; ".join(notes) + f" (at least {_mib(least)} needed)")


def check_clock(ctx: Context) -> Check:
    """Verdict times are evidence: the clock must follow a time server."""
    if not ctx.which("timedatectl"):
        return Check("clock", "skip", "no timedatectl here: cannot tell whether the clock is synchronized")
    status, output = ctx.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    fix = "enable systemd-timesyncd or chrony with the site's time server (timedatectl set-ntp true)"
    if status == 0 and output == "yes":
        return Check("clock", "pass", "synchronized with a time server (NTPSynchronized=yes)")
    if status == 0 and output == "no":
        return Check("clock", "fail", "not synchronized with a time server (NTPSynchronized=no)", fix)
    answer = output.splitlines()[0] if output else f"exit status {status}"
    if not (ctx.root / "run/systemd/system").is_dir():
        return Check("clock", "skip", f"timedatectl could not answer ({answer}): this system was not booted by systemd")
    return Check("clock", "fail", f"timedatectl could not answer: {answer}", fix)


def check_broker(ctx: Context) -> Check:
    """Connect with the configured login and TLS as the daemon does (paho, v2 callbacks), under the
    doctor's own client id: the daemon's would take its session away from it."""
    from edge.publish.mqtt import client_for

    mqtt = ctx.config.mqtt
    where = f"{mqtt.host}:{mqtt.port}" + (" over TLS" if mqtt.ca_certs else "")
    login = f" as {mqtt.username!r}" if mqtt.username else " without a login"
    answered = threading.Event()
    reasons: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        reasons.append(str(reason) if getattr(reason, "is_failure", False) else "")
        answered.set()

    unreachable_fix = (
        "start the broker (systemctl start mosquitto) or correct mqtt.host and mqtt.port; check the network and the"
        " firewall between this device and the broker"
    )
    try:
        client = client_for(mqtt, f"edge-qc-doctor-{os.getpid()}")
        client.on_connect = on_connect
        client.connect(mqtt.host, mqtt.port, keepalive=10)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Check("broker", "fail", f"cannot reach the broker at {where}: {reason}", unreachable_fix)
    client.loop_start()
    try:
        answered.wait(ctx.broker_timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    if not reasons:
        return Check(
            "broker",
            "fail",
            f"no answer (CONNACK) from {where} within {ctx.broker_timeout_s:.0f} s",
            "is it an MQTT broker on that port, with TLS exactly when mqtt.ca_certs is set?",
        )
    if reasons[0]:
        no_password = (
            " (no password was found: the daemon gets it as the systemd credential mqtt.password; set"
            " EDGEQC_MQTT_PASSWORD for the doctor)"
            if mqtt.username and not mqtt.password
            else ""
        )
        return Check(
            "broker",
            "fail",
            f"the broker at {where} refused the connection{login}: {reasons[0]}{no_password}",
            "check mqtt.username and its password (site.toml, the credential mqtt.password or EDGEQC_MQTT_PASSWORD)"
            " against the broker's password file and ACL",
        )
    return Check("broker", "pass", f"connected to {where}{login}")


def check_dicom_port(ctx: Context) -> Check:
    """Modalities send to this port: something (the daemon) must be listening on it."""
    dicom = ctx.config.dicom
    host = "127.0.0.1" if dicom.bind in ("0.0.0.0", "") else "::1" if dicom.bind == "::" else dicom.bind
    where = f"{host}:{dicom.port}" + (f" (dicom.bind {dicom.bind})" if host != dicom.bind else "")
    try:
        socket.create_connection((host, dicom.port), timeout=PORT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return Check(
            "dicom-port",
            "fail",
            f"nothing listens on {where}: {reason}",
            "the daemon is not running: systemctl start edge-qc (journalctl -u edge-qc says why it stopped)",
        )
    return Check("dicom-port", "pass", f"listening on {where}")


def check_modality_aets(ctx: Context) -> Check:
    """A modality may only send when its AE title is allowed, and verdicts name site, room and device."""
    config = ctx.config
    found = list(naming_warnings(config))  # the rule config-check warns by
    if found:
        what = "; ".join(f"{key} {text.split(': ', 1)[0]}" for key, text in found)
        fixes = "; ".join(f"{key}: {text.split(': ', 1)[-1]}" for key, text in found)
        return Check("modality-aets", "fail", what, fixes)
    titles, mqtt = config.dicom.allowed_calling_aets, config.mqtt
    return Check(
        "modality-aets",
        "pass",
        f"allowed calling AE titles: {', '.join(titles)}; site {mqtt.site}, room {mqtt.room}, device {mqtt.device}",
    )


CHECKS: Final[tuple[tuple[str, CheckFunction], ...]] = (
    ("python", check_python),
    ("jetson", check_jetson),
    ("tensorrt", check_tensorrt),
    ("pycuda", check_pycuda),
    ("gpu-device-nodes", check_gpu_device_nodes),
    ("engine", check_engine),
    ("disk", check_disk),
    ("clock", check_clock),
    ("broker", check_broker),
    ("dicom-port", check_dicom_port),
    ("modality-aets", check_modality_aets),
)


# --- the runner and the output --------------------------------------------------------------------------------


def run_checks(ctx: Context, checks: Sequence[tuple[str, CheckFunction]] = CHECKS) -> list[Check]:
    """Every check in order; one that raises is a failure naming the exception, and the rest still run."""
    results = []
    for name, function in checks:
        try:
            results.append(function(ctx))
        except Exception as exc:
            results.append(
                Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}", "report this to edge-qc")
            )
    return results


def exit_status(checks: Sequence[Check]) -> int:
    return EXIT_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK


def as_json(checks: Sequence[Check], config_source: str) -> str:
    failed = sum(c.status == "fail" for c in checks)
    return json.dumps({"checks": [c.as_dict() for c in checks], "failed": failed, "config": config_source}, indent=1)


def as_text(checks: Sequence[Check], config_source: str) -> str:
    """One line per check, its fix under it (a hint for a pass or a skip), and the tally."""
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"edge-qc doctor (configuration: {config_source})"]
    for c in checks:
        lines.append(f"  {c.status.upper():4s}  {c.name:{width}s}  {c.detail}")
        if c.fix:
            lines.append(f"  {'':4s}  {'':{width}s}  {'fix' if c.status == 'fail' else 'hint'}: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['fail']} failed, {counts['pass']} passed, {counts['skip']} skipped")
    return "\n".join(lines)


def config_path(args: argparse.Namespace) -> Path | None:
    """--config, else the installed site.toml under --root when there is one, else None (the defaults)."""
    if args.config is not None:
        return Path(args.config)
    installed = Path(args.root) / SITE_CONFIG
    return installed if installed.is_file() else None


def main(args: argparse.Namespace, *, run: Runner = run_command, which: Which = shutil.which) -> int:
    """`edge-qc doctor`: load the configuration (exit 2 when it cannot be read), run the checks, report."""
    path = config_path(args)
    try:
        config = load_config(path)
    except ConfigError as exc:
        if args.json:
            failed = Check("configuration", "fail", str(exc), "correct the key named, then run edge-qc doctor again")
            print(as_json([failed], str(path)))
        print(f"edge-qc doctor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    checks = run_checks(Context(config, Path(args.root), run=run, which=which))
    source = str(path) if path is not None else "built-in defaults"
    print(as_json(checks, source) if args.json else as_text(checks, source))
    return exit_status(checks)

