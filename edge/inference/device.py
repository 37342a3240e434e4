"""What this device is, as far as a TensorRT engine cares, and whether an engine was built for it.

A serialized engine runs only on the TensorRT version and the GPU that built it; loading it anywhere
else fails in the field with "Version tag does not match" or worse. Every engine's manifest records
the device it was built on, and the backend compares before deserialising, refusing a mismatch with
a message that names what differs. Reading is plain files and optional imports: on a machine that is
not a Jetson the fields are simply unknown.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

FIELDS: Final = ("tensorrt", "cuda", "compute_capability", "module", "l4t")
_LABELS: Final = {
    "tensorrt": "TensorRT",
    "cuda": "CUDA",
    "compute_capability": "GPU compute capability",
    "module": "module",
    "l4t": "L4T release",
}


@dataclass(frozen=True)
class DeviceFingerprint:
    tensorrt: str | None = None  # e.g. "10.3.0"
    cuda: str | None = None  # e.g. "12.6"
    compute_capability: str | None = None  # e.g. "8.7" (Orin)
    # The module (not the carrier board), from /proc/device-tree/compatible: "nvidia,p3701-0005" is an
    # AGX Orin 64GB in any carrier; /proc/device-tree/model names the carrier kit only where no
    # compatible string says more.
    module: str | None = None
    l4t: str | None = None  # /etc/nv_tegra_release, e.g. "36.4.3"

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8", errors="replace").strip().strip("\x00") or None
    except OSError:
        return None


def _read_raw(path: Path) -> str | None:
    """A device-tree property as it is: NUL-separated strings."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace") or None
    except OSError:
        return None


def parse_l4t(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3'."""
    if not text:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _module_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    version = getattr(module, "__version__", None)
    return str(version) if version else None


def split_compatible(text: str | None) -> tuple[str, ...]:
    """The entries of a device tree's compatible property (NUL-separated strings)."""
    return tuple(entry.strip() for entry in (text or "").split("\x00") if entry.strip())


def module_of(compatible: str | None, model: str | None) -> str | None:
    """The module from the device tree's compatible list ("nvidia,p3737-0000+p3701-0005\0nvidia,p3701-
    0005\0nvidia,tegra234"): the first plain part-number entry, carrier boards ("a+b") passed over;
    the SoC entry ("nvidia,tegra234") where there is no part number; else the model text."""
    entries = split_compatible(compatible)
    for entry in entries:
        if "+" not in entry and re.fullmatch(r"nvidia,p\d{4}-\d{4}", entry):
            return entry
    for entry in entries:
        if re.fullmatch(r"nvidia,tegra\d+", entry):
            return entry
    return model


def _from_driver() -> tuple[str | None, str | None]:
    """The CUDA version the driver supports and GPU 0's compute capability, from the driver itself
    (not from a toolkit's files); (None, None) without pycuda, a driver or a GPU."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None, None
    try:
        cuda.init()
        version = int(cuda.get_driver_version())  # e.g. 12060
    except Exception:  # no driver: unknown here, not an error
        return None, None
    try:
        major, minor = cuda.Device(0).compute_capability()
    except Exception:  # a driver without a GPU
        return f"{version // 1000}.{version % 1000 // 10}", None
    return f"{version // 1000}.{version % 1000 // 10}", f"{major}.{minor}"


def _cuda_version(root: Path, driver: str | None) -> str | None:
    """The driver's CUDA version; the toolkit's version.json only where the driver cannot be asked."""
    if driver is not None:
        return driver
    text = _read(root / "usr/local/cuda/version.json")
    if text:
        try:
            full = str(json.loads(text)["cuda"]["version"])
            return ".".join(full.split(".")[:2])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def read_fingerprint(root: Path = Path("/")) -> DeviceFingerprint:
    """This device's fingerprint; `root` lets tests point at a prepared file tree."""
    driver_cuda, compute_capability = _from_driver()
    return DeviceFingerprint(
        tensorrt=_module_version("tensorrt"),
        cuda=_cuda_version(root, driver_cuda),
        compute_capability=compute_capability,
        module=module_of(_read_raw(root / "proc/device-tree/compatible"), _read(root / "proc/device-tree/model")),
        l4t=parse_l4t(_read(root / "etc/nv_tegra_release")),
    )


def incompatibilities(built_on: Mapping[str, object], here: DeviceFingerprint) -> list[str]:
    """Every way an engine built on `built_on` cannot run here, one message per field ([] = compatible).
    A field this device cannot tell (None) is a mismatch too: an engine is never loaded on a guess."""
    problems = []
    mine = here.as_dict()
    for name in FIELDS:
        want = built_on.get(name)
        have = mine[name]
        if want is None:
            problems.append(f"{_LABELS[name]}: the engine's manifest does not record it")
        elif have is None:
            problems.append(f"{_LABELS[name]}: engine built with {want}, this device's is unknown")
        elif str(want) != have:
            problems.append(f"{_LABELS[name]}: engine built with {want}, this device has {have}")
    return problems


def fitting_plan(folder: Path, here: DeviceFingerprint) -> tuple[Path | None, dict[str, list[str]]]:
    """Of the engines in `folder` (ENGINE.plan with ENGINE.json), the newest built for this device, and
    why each other one is not. A plan left from before a JetPack or TensorRT upgrade has the right
    name and the wrong device: it is never reused (the rollout builds a new one instead)."""
    refused: dict[str, list[str]] = {}
    fitting: list[Path] = []
    for plan in sorted(folder.glob("*.plan")):
        if plan.is_symlink():  # device.plan points at one of the others
            continue
        try:
            built_on = json.loads(plan.with_suffix(".json").read_text("utf-8")).get("device", {})
        except (OSError, ValueError, AttributeError) as exc:
            refused[plan.name] = [f"no readable manifest ({exc})"]
            continue
        problems = incompatibilities(built_on if isinstance(built_on, dict) else {}, here)
        if problems:
            refused[plan.name] = problems
        else:
            fitting.append(plan)
    newest = max(fitting, key=lambda p: p.stat().st_mtime, default=None)
    return newest, refused
