"""`edge-qc config-check`: every problem of a site configuration at once, and the defaults a site must change.

Errors (exit 2) are what the daemon would refuse: all that `load_config` refuses, the QC overrides and the
site catalogue (the qc package's to check), and a state path that cannot be made. Warnings (exit 0) are
what the daemon runs with although a hospital trips on it: an empty allow-list (every modality refused),
site/room/device left at "site"/"room"/"device", metrics open to the network, an AE title another device
of the Ansible inventory has, a write-back to this device itself, private keys every user can read, a
missing TensorRT engine or model, state outside the folder the systemd unit may write. A warning about a
key that already has an error is left out: the error comes first.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from edge.config import Config, ConfigError, DicomConfig, MqttConfig, read_config
from edge.qc.standard import site_standard
from edge.qc.words import site_words

# systemd/edge-qc.service: StateDirectory= and ReadWritePaths= (ProtectSystem=strict: nothing else is writable)
UNIT_WRITABLE: Final = Path("/var/lib/edge-qc")
# The Ansible role's variables for the called AE title and the device name (ansible/roles/edge_qc).
AE_TITLE_VARIABLE: Final = "edge_qc_dicom_ae_title"
DEVICE_VARIABLE: Final = "edge_qc_device"


@dataclass(frozen=True)
class Report:
    """What config-check found in one file: each line names the file and the dotted key."""

    file: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0


class InventoryError(ValueError):
    """An Ansible inventory config-check cannot read."""


# ---------------------------------------------------------------- warnings: (dotted key, what and the fix)


def naming_warnings(config: Config) -> Iterator[tuple[str, str]]:
    """The allow-list and the topic names, which the defaults leave unusable for a real room."""
    dicom, probes = config.dicom, set(config.dicom.probe_calling_aets)
    if not dicom.allowed_calling_aets:
        yield (
            "dicom.allowed_calling_aets",
            "is empty: every modality is refused; add the calling AE title of each modality that sends here",
        )
    elif set(dicom.allowed_calling_aets) <= probes:
        yield (
            "dicom.allowed_calling_aets",
            f"holds only the health probe's AE title ({', '.join(dicom.allowed_calling_aets)}): every modality is"
            " refused; add the calling AE title of each modality that sends here",
        )
    defaults = MqttConfig()
    for part in ("site", "room", "device"):
        value = getattr(config.mqtt, part)
        if value == getattr(defaults, part):
            yield (
                f"mqtt.{part}",
                f"is still {value!r}: verdict topics, dashboards and alerts are named after it; set this device's"
                f" real {part} name",
            )


def _exposure(config: Config) -> Iterator[tuple[str, str]]:
    """The HTTP server on the network, and a write-back that goes nowhere."""
    metrics = config.metrics
    address = ipaddress.ip_address(metrics.bind)  # checked by load: an IP literal
    if metrics.enabled and not address.is_loopback:
        where = f"{metrics.bind} (every interface)" if address.is_unspecified else metrics.bind
        pages = "/metrics, /healthz, /readyz" + (" and /room" if config.room.enabled else "")
        yield (
            "metrics.bind",
            f"is {where}: {pages} are then open to the network without TLS or a password; put a reverse proxy"
            " with TLS in front and bind to 127.0.0.1, or bind to loopback",
        )
    writeback = config.writeback
    if writeback.enabled and _is_local(writeback.host):
        yield (
            "writeback.host",
            f"is {writeback.host!r}, this device: the structured reports go to the site's PACS or the modality;"
            " set its host name or address",
        )


def _is_local(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_risks(config: Config) -> Iterator[tuple[str, str]]:
    """Secrets every user of the device can read, and a model or engine that is not there."""
    for key, value in (("dicom.tls_keyfile", config.dicom.tls_keyfile), ("mqtt.keyfile", config.mqtt.keyfile)):
        mode = _mode(Path(value)) if value else None
        if mode is not None and mode & stat.S_IROTH:
            yield key, f"{value} is readable by every user (mode {mode:04o}): chmod 0640, owner root, group edge-qc"
    source = Path(config.source)
    mode = _mode(source)
    if config.mqtt.password and mode is not None and mode & stat.S_IROTH:
        yield (
            "mqtt.password",
            f"is in {source}, which every user can read (mode {mode:04o}): chmod 0640, or leave it empty here and"
            " give it as the systemd credential mqtt.password",
        )
    model = config.model
    if not (model.path / "manifest.json").is_file():  # only the default reaches here: load checks a set path
        yield (
            "model.path",
            f"is not set, and the default {model.path} holds no model yet: the daemon refuses to start until an"
            " engine is activated (edge-qc engine activate VERSION, or the Ansible role's edge_qc_initial_model)",
        )
    if model.backend == "tensorrt" and model.engine is not None and not model.engine.is_file():
        then = (
            "judging falls back to ONNX Runtime on the CPU and every verdict says degraded"
            if model.fallback
            else "the daemon refuses to start (model.fallback is false)"
        )
        yield (
            "model.engine",
            f"{model.engine}: no such file: {then}; build it on this device (edge-qc engine build) or roll it out",
        )


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def site_warnings(config: Config) -> list[tuple[str, str]]:
    """The defaults a site must change and the settings it trips on: (dotted key, what and the fix)."""
    return [*naming_warnings(config), *_exposure(config), *_file_risks(config)]


# ---------------------------------------------------------------- state paths the daemon makes


def _state_paths(config: Config) -> Iterator[tuple[str, Path, bool]]:
    """(dotted key, path, is a folder) of every place the daemon writes: the Path keys outside [model]
    and [qc] (those name what it reads), the ones left unset (None) aside: they default beside the outbox."""
    for section in fields(config):
        if section.name in ("model", "qc", "source"):
            continue
        values = getattr(config, section.name)
        for key in fields(values):
            value = getattr(values, key.name)
            if isinstance(value, Path):
                yield f"{section.name}.{key.name}", value, key.name.endswith("_dir")


def state_path_findings(config: Config) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings) about the state paths: an error where one cannot be made (a file where a folder
    must be, or the other way round); a warning where one is outside the folder the systemd unit lets the
    daemon write. A missing folder under it is no problem: systemd makes /var/lib/edge-qc and the daemon
    the rest."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for key, path, folder in _state_paths(config):
        if path.exists():
            if folder and not path.is_dir():
                errors.append((key, f"{path} is not a folder"))
            elif not folder and path.is_dir():
                errors.append((key, f"{path} is a folder, not a file"))
        else:
            ancestor = path.parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                errors.append((key, f"{path} cannot be made: {ancestor} is not a folder"))
        if not path.is_relative_to(UNIT_WRITABLE):
            there = "" if path.exists() else " (not there yet)"
            warnings.append(
                (
                    key,
                    f"{path}{there} is outside {UNIT_WRITABLE}, the only folder systemd/edge-qc.service lets the daemon"
                    " write (ProtectSystem=strict): keep it there, or add it to ReadWritePaths= with a drop-in",
                )
            )
    return errors, warnings


# ---------------------------------------------------------------- the Ansible inventory


def _yaml(path: Path) -> Any:
    try:
        import yaml  # the workstation's (Ansible's) dependency, not the appliance's
    except ImportError as exc:
        raise InventoryError(
            "reading an Ansible inventory needs PyYAML: run config-check --inventory on the Ansible controller"
        ) from exc

    try:
        return yaml.safe_load(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read: {exc}") from exc


def _vars_files(folder: Path, name: str) -> dict[str, Any]:
    """group_vars/<name>.yml (or .yaml, or no suffix) and every YAML file in group_vars/<name>/, merged."""
    merged: dict[str, Any] = {}
    candidates = [folder / name, folder / f"{name}.yml", folder / f"{name}.yaml"]
    if (folder / name).is_dir():
        candidates = sorted(p for p in (folder / name).iterdir() if p.suffix in (".yml", ".yaml"))
    for path in candidates:
        if path.is_file():
            data = _yaml(path)
            if isinstance(data, dict):
                merged.update(data)
    return merged


@dataclass
class _Inventory:
    depth: dict[str, int]
    group_vars: dict[str, dict[str, Any]]
    host_vars: dict[str, dict[str, Any]]
    host_groups: dict[str, set[str]]


def _walk(inventory: _Inventory, name: str, body: object, depth: int, parents: tuple[str, ...]) -> None:
    """One group of a YAML inventory, its hosts and its children."""
    inventory.depth[name] = max(depth, inventory.depth.get(name, 0))
    if not isinstance(body, dict):
        return
    inventory.group_vars.setdefault(name, {}).update(body.get("vars") or {})
    groups = {name, *parents}
    for host, host_vars in (body.get("hosts") or {}).items():
        inventory.host_groups.setdefault(str(host), set()).update(groups)
        inventory.host_vars.setdefault(str(host), {}).update(host_vars or {})
    for child, child_body in (body.get("children") or {}).items():
        _walk(inventory, str(child), child_body, depth + 1, (*parents, name))


def _role_default(inventory: Path) -> str:
    """The role's default AE title (roles/edge_qc/defaults/main.yml beside the inventory's folders),
    else edge-qc's own."""
    for folder in list(inventory.resolve().parents)[:4]:
        defaults = folder / "roles" / "edge_qc" / "defaults" / "main.yml"
        if defaults.is_file():
            data = _yaml(defaults)
            value = data.get(AE_TITLE_VARIABLE) if isinstance(data, dict) else None
            if isinstance(value, str):
                return value
    return DicomConfig().ae_title


def inventory_devices(inventory: Path) -> dict[str, tuple[str, str | None]]:
    """host -> (device name, called AE title) from a YAML Ansible inventory (a hosts file, or a folder of
    them) with its group_vars/ and host_vars/, by Ansible's precedence: the role default, group vars in
    the hosts file, group_vars/all, group_vars/<group> (shallow groups first, then by name), host vars in
    the hosts file, host_vars/<host>. The device name is edge_qc_device (the role's default: the host
    name); a title Ansible would template ("{{ ... }}") other than the host name is None: not comparable."""
    if not inventory.exists():
        raise InventoryError(f"{inventory}: no such inventory")
    folder = inventory if inventory.is_dir() else inventory.parent
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml")) if inventory.is_dir() else [inventory]
    if not files:
        raise InventoryError(f"{inventory}: no YAML inventory (hosts.yml) in this folder")
    found = _Inventory({"all": 0}, {}, {}, {})
    for path in files:
        data = _yaml(path)
        if not isinstance(data, dict):
            raise InventoryError(f"{path}: not a YAML inventory (an INI one: convert it with ansible-inventory -y)")
        for name, body in data.items():
            if name == "all":
                _walk(found, "all", body, 0, ())
            else:
                _walk(found, str(name), body, 1, ("all",))
    group_files = {group: _vars_files(folder / "group_vars", group) for group in found.depth}
    default = _role_default(folder)
    devices: dict[str, tuple[str, str | None]] = {}
    for host, groups in found.host_groups.items():
        order = sorted(groups | {"all"}, key=lambda g: (found.depth[g], g))
        merged: dict[str, Any] = {AE_TITLE_VARIABLE: default}
        for layer in (found.group_vars, group_files):
            for group in order:
                merged.update(layer.get(group, {}))
        merged.update(found.host_vars.get(host, {}))
        merged.update(_vars_files(folder / "host_vars", host))
        device = _rendered(merged.get(DEVICE_VARIABLE, host), host) or host
        devices[host] = (device, _rendered(merged.get(AE_TITLE_VARIABLE), host))
    return devices


def _rendered(value: object, host: str) -> str | None:
    """A host variable's text as the role writes it into site.toml, where edge-qc can tell without Jinja."""
    if not isinstance(value, str | int):
        return None
    text = str(value).replace("{{ inventory_hostname }}", host).replace("{{inventory_hostname}}", host)
    return None if "{{" in text or "{%" in text else text.strip(" ")


def inventory_warnings(config: Config, inventory: Path) -> list[tuple[str, str]]:
    """This device's called AE title, where another device of the inventory has it too."""
    devices = inventory_devices(inventory)
    title = config.dicom.ae_title
    mine = sorted(host for host, (device, _) in devices.items() if device == config.mqtt.device)
    others = sorted(host for host, (_, other) in devices.items() if other == title and host not in mine)
    if not others:
        return []
    this = f"this device: {', '.join(mine)}" if mine else f"mqtt.device {config.mqtt.device!r} is not in it"
    return [
        (
            "dicom.ae_title",
            f"{title!r} is also the AE title of {', '.join(others)} in the inventory {inventory} ({this}): a modality"
            " or PACS that names its destination by AE title cannot tell them apart, and logs and audit trails mix"
            f" them up; give each device its own ({AE_TITLE_VARIABLE} in its host vars)",
        )
    ]


# ---------------------------------------------------------------- the check


def _named(problems: list[str], key: str) -> bool:
    """Whether an error already names this key (or its whole section)."""
    section = key.split(".", 1)[0]
    return any(f"'{key}" in problem or f"'{section}'" in problem for problem in problems)


def check_file(path: Path, inventory: Path | None = None) -> Report:
    """Every error and warning of one configuration file (and its AE title against an inventory)."""
    config, problems = read_config(path)
    errors = list(problems)
    if config is None:
        return Report(str(path), tuple(errors), ())
    for qc_check in (site_standard, site_words):
        try:
            qc_check(config.qc, config.source)
        except ConfigError as exc:
            errors.extend(exc.problems)
    path_errors, path_warnings = state_path_findings(config)
    errors.extend(f"{config.source}: '{key}': {text}" for key, text in path_errors)
    warnings = [*site_warnings(config), *path_warnings]
    if inventory is not None:
        try:
            warnings.extend(inventory_warnings(config, inventory))
        except InventoryError as exc:
            errors.append(f"{exc} (--inventory)")
    shown = tuple(f"{config.source}: '{key}' {text}" for key, text in warnings if not _named(errors, key))
    return Report(str(path), tuple(errors), shown)


def as_dict(report: Report) -> Mapping[str, object]:
    """The report as JSON (`--json`)."""
    return {
        "file": report.file,
        "valid": not report.errors,
        "errors": list(report.errors),
        "warnings": list(report.warnings),
    }


__all__ = [
    "InventoryError",
    "Report",
    "as_dict",
    "check_file",
    "inventory_devices",
    "inventory_warnings",
    "site_warnings",
    "state_path_findings",
]
