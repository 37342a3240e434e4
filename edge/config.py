"""The one configuration of an edge-qc appliance: a TOML file, typed and validated on load.

Unknown keys are errors, never ignored: a misspelt threshold override that silently does nothing is
a QC failure nobody sees. Every error names the file and the dotted key. This module is a leaf (it
imports nothing from edge-qc): QC overrides stay data here, and `edge.qc.standard.site_standard`, the one
place that knows the items and their keys, applies and checks them (`edge-qc config-check` runs both).

    [model]
    path = "/opt/edge-qc/engines/lumbar-resunet/current"   # folder with manifest.json
    backend = "onnxruntime"            # or "tensorrt" with engine = "....plan"
    threads = 2
    fallback = true                    # a refused engine falls back to ONNX Runtime, marked degraded

    [qc]
    standard = ""                      # a standard file; empty: the one shipped with edge-qc
    [qc.target_exposure_index]         # site targets per view (default: the image's own tags)
    ap = 300.0
    [qc.overrides.ap.centring]         # any threshold of the standard, per view and item
    max_offset_fraction = 0.12
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 (Ubuntu 22.04) ships Python 3.10
    import tomli as tomllib

# Where the appliance's engine store keeps the active version (Ansible's edge_qc_engines_dir/current).
APPLIANCE_MODEL: Final = Path("/var/lib/edge-qc/engines/lumbar-resunet/current")
# A source checkout's shipped default model version; an installed wheel holds no models.
CHECKOUT_MODEL: Final = Path(__file__).resolve().parent.parent / "engines" / "lumbar-resunet" / "0.2.0"


def _default_model() -> Path:
    """The checkout's default model when running from a checkout (development, CI, the demo), else the
    engine store's active version, which is what an installed appliance runs."""
    return CHECKOUT_MODEL if CHECKOUT_MODEL.is_dir() else APPLIANCE_MODEL


DEFAULT_MODEL: Final = _default_model()
BACKENDS: Final = ("onnxruntime", "tensorrt")


# Secrets need not sit in the TOML (which Ansible renders and a backup copies): when a key is empty
# there, it is read from the systemd credential of the same dotted name ($CREDENTIALS_DIRECTORY/mqtt.password,
# from LoadCredential= or SetCredentialEncrypted=), else from the environment variable named here.
SECRETS: Final[dict[tuple[str, str], str]] = {
    ("mqtt", "password"): "EDGEQC_MQTT_PASSWORD",
    ("mqtt", "keyfile_password"): "EDGEQC_MQTT_KEYFILE_PASSWORD",
    ("dicom", "tls_keyfile_password"): "EDGEQC_DICOM_TLS_KEYFILE_PASSWORD",
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ModelConfig:
    path: Path = DEFAULT_MODEL
    backend: str = "onnxruntime"
    threads: int = 2
    engine: Path | None = None  # the TensorRT engine (.plan, with its .json) when backend = "tensorrt"
    fallback: bool = True  # a refused or failing engine falls back to ONNX Runtime, marked degraded


@dataclass(frozen=True)
class QcConfig:
    standard: Path | None = None
    target_exposure_index: Mapping[str, float] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Mapping[str, float | int | str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str = "EDGEQC"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty: nobody may store (unknown senders refused)
    allowed_addresses: tuple[str, ...] = ()  # empty: any address (the calling AE title still has to match)
    # Calling AE titles of health probes (`edge-qc probe`): their verdicts are marked "probe" and kept out
    # of the clinical counts. They must also be on allowed_calling_aets to be let in at all.
    probe_calling_aets: tuple[str, ...] = ("EDGEQC-PROBE",)
    max_associations: int = 4
    # A connection that sends no association request within this time is dropped (the ARTIM timer).
    # Until then it holds one of max_associations: a port scan must not keep the modality out for long.
    association_timeout_s: int = 10
    max_pdu_bytes: int = 262144  # larger PDUs cut the receive time of a 12 MB image (fewer, bigger reads)
    tls_certfile: str = ""  # DICOM TLS when set: this appliance's certificate (PEM), with tls_keyfile
    tls_keyfile: str = ""
    tls_keyfile_password: str = ""  # a secret: better from $CREDENTIALS_DIRECTORY or the environment (SECRETS)
    tls_ca_certs: str = ""  # when set, senders must present a certificate this CA signed (mutual TLS)


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    site: str = "site"
    room: str = "room"
    device: str = "device"
    topic: str = "edgeqc/{site}/{room}/{device}/verdict"
    status_topic: str = "edgeqc/{site}/{room}/{device}/status"
    client_id: str = ""  # empty: edge-qc-<device>
    username: str = ""
    password: str = ""  # a secret: better from $CREDENTIALS_DIRECTORY or the environment (SECRETS)
    ca_certs: str = ""  # TLS when set
    certfile: str = ""
    keyfile: str = ""
    keyfile_password: str = ""  # a secret, as password
    send_uids: bool = False  # False: SOP Instance UIDs are hashed in payloads

    def _named(self, template: str) -> str:
        return template.format(site=self.site, room=self.room, device=self.device)

    @property
    def verdict_topic(self) -> str:
        return self._named(self.topic)

    @property
    def status_topic_name(self) -> str:
        return self._named(self.status_topic)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 9108  # /metrics, /healthz, /readyz


@dataclass(frozen=True)
class ServiceConfig:
    spool_dir: Path = Path("/var/lib/edge-qc/spool")
    outbox_path: Path = Path("/var/lib/edge-qc/outbox.sqlite")
    queue_size: int = 8  # images waiting for inference before receivers are held back


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    qc: QcConfig = field(default_factory=QcConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "<defaults>"


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], prefix: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}' (allowed: {', '.join(sorted(allowed))})")


def _number(value: object, key: str, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: '{key}' must be positive, got {value!r}")
    return float(value)


def _typed_section(data: Mapping[str, Any], name: str, cls: type[Any], where: str, base: Path) -> Any:
    """A flat table checked against a dataclass: unknown keys and wrong types name the key."""
    table = _table(data, name, where)
    defaults = cls()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(cls)}
    _reject_unknown(table, set(fields), f"{name}.", where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        default, dotted = fields[key], f"{name}.{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: '{dotted}' must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}: '{dotted}' must be a positive integer, got {value!r}")
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: '{dotted}' must be a list of non-empty strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, Path):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: '{dotted}' must be a non-empty path string, got {value!r}")
            value = base / value
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: '{dotted}' must be a string, got {value!r}")
        values[key] = value
    return dataclasses.replace(defaults, **values)


def _tls_files(dicom: DicomConfig, where: str, base: Path) -> DicomConfig:
    """DICOM TLS files: resolved against the configuration's folder, present, and complete."""
    if bool(dicom.tls_certfile) != bool(dicom.tls_keyfile):
        missing = "tls_keyfile" if dicom.tls_certfile else "tls_certfile"
        raise ConfigError(f"{where}: 'dicom.{missing}' is required: TLS needs a certificate and its key")
    if dicom.tls_ca_certs and not dicom.tls_certfile:
        raise ConfigError(f"{where}: 'dicom.tls_ca_certs' needs 'dicom.tls_certfile' and 'dicom.tls_keyfile'")
    resolved: dict[str, Any] = {}
    for key in ("tls_certfile", "tls_keyfile", "tls_ca_certs"):
        value = getattr(dicom, key)
        if value:
            path = base / value
            if not path.is_file():
                raise ConfigError(f"{where}: 'dicom.{key}': no such file {path}")
            resolved[key] = str(path)
    return dataclasses.replace(dicom, **resolved)


def _secret(section: str, key: str, value: str, environ: Mapping[str, str], where: str) -> str:
    """The TOML's value, else the systemd credential `section.key`, else the environment variable."""
    if value:
        return value
    credentials = environ.get("CREDENTIALS_DIRECTORY", "")
    if credentials:
        path = Path(credentials) / f"{section}.{key}"
        if path.is_file():
            try:
                return path.read_text("utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: '{section}.{key}': cannot read the credential {path} ({exc})") from exc
    return environ.get(SECRETS[(section, key)], "")


def _with_secrets(section: Any, name: str, environ: Mapping[str, str], where: str) -> Any:
    found = {key: _secret(name, key, getattr(section, key), environ, where) for (sec, key) in SECRETS if sec == name}
    return dataclasses.replace(section, **found)


def parse_config(
    data: Mapping[str, Any],
    where: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed TOML; secrets left empty there come from `environ` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    _reject_unknown(data, {"model", "qc", "dicom", "mqtt", "service", "metrics"}, "", where)
    model_t = _table(data, "model", where)
    _reject_unknown(model_t, {"path", "backend", "threads", "engine", "fallback"}, "model.", where)
    base = base_dir or Path.cwd()
    model = ModelConfig()
    if "path" in model_t:
        if not isinstance(model_t["path"], str) or not model_t["path"]:
            raise ConfigError(f"{where}: 'model.path' must be a non-empty string")
        model = ModelConfig(path=base / model_t["path"], backend=model.backend, threads=model.threads)
    backend = model_t.get("backend", model.backend)
    if backend not in BACKENDS:
        raise ConfigError(f"{where}: 'model.backend' must be one of {', '.join(BACKENDS)}, got {backend!r}")
    threads = model_t.get("threads", model.threads)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise ConfigError(f"{where}: 'model.threads' must be an integer 1..64, got {threads!r}")
    engine = None
    if "engine" in model_t:
        if not isinstance(model_t["engine"], str) or not model_t["engine"]:
            raise ConfigError(f"{where}: 'model.engine' must be a non-empty path string")
        engine = base / model_t["engine"]
    if backend == "tensorrt" and engine is None:
        raise ConfigError(f"{where}: 'model.engine' is required when 'model.backend' is \"tensorrt\"")
    fallback = model_t.get("fallback", True)
    if not isinstance(fallback, bool):
        raise ConfigError(f"{where}: 'model.fallback' must be true or false, got {fallback!r}")
    model = ModelConfig(path=model.path, backend=backend, threads=threads, engine=engine, fallback=fallback)

    qc_t = _table(data, "qc", where)
    _reject_unknown(qc_t, {"standard", "target_exposure_index", "overrides"}, "qc.", where)
    standard = None
    if qc_t.get("standard"):
        if not isinstance(qc_t["standard"], str):
            raise ConfigError(f"{where}: 'qc.standard' must be a path string")
        standard = base / qc_t["standard"]
    # View names, items and their keys are the QC standard's to check (edge.qc.standard.site_standard)
    targets_t = _table(qc_t, "target_exposure_index", where)
    targets = {view: _number(v, f"qc.target_exposure_index.{view}", where) for view, v in targets_t.items()}
    overrides_t = _table(qc_t, "overrides", where)
    overrides: dict[str, dict[str, dict[str, float | int | str]]] = {}
    for view, items in overrides_t.items():
        if not isinstance(items, dict):
            raise ConfigError(f"{where}: 'qc.overrides.{view}' must be a table of items")
        for item, params in items.items():
            if not isinstance(params, dict):
                raise ConfigError(f"{where}: 'qc.overrides.{view}.{item}' must be a table")
            overrides.setdefault(view, {})[item] = dict(params)
    dicom = _typed_section(data, "dicom", DicomConfig, where, base)
    if not 1 <= len(dicom.ae_title) <= 16:
        raise ConfigError(f"{where}: 'dicom.ae_title' must be 1 to 16 characters, got {dicom.ae_title!r}")
    if dicom.port > 65535:
        raise ConfigError(f"{where}: 'dicom.port' must be a TCP port (1..65535), got {dicom.port}")
    dicom = _with_secrets(_tls_files(dicom, where, base), "dicom", environ, where)
    mqtt = _with_secrets(_typed_section(data, "mqtt", MqttConfig, where, base), "mqtt", environ, where)
    if mqtt.port > 65535:
        raise ConfigError(f"{where}: 'mqtt.port' must be a TCP port (1..65535), got {mqtt.port}")
    for key in ("topic", "status_topic"):
        try:
            mqtt._named(getattr(mqtt, key))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{where}: 'mqtt.{key}' may use {{site}}, {{room}} and {{device}} only ({exc})") from exc
    service = _typed_section(data, "service", ServiceConfig, where, base)
    metrics = _typed_section(data, "metrics", MetricsConfig, where, base)
    if metrics.port > 65535:
        raise ConfigError(f"{where}: 'metrics.port' must be a TCP port (1..65535), got {metrics.port}")
    return Config(
        model=model,
        qc=QcConfig(standard, targets, overrides),
        dicom=dicom,
        mqtt=mqtt,
        service=service,
        metrics=metrics,
        source=where,
    )


def load_config(path: Path | None) -> Config:
    """Read and validate a configuration file; None gives the defaults."""
    if path is None:
        return Config()
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_config(data, str(path), path.resolve().parent)


__all__ = ["Config", "ConfigError", "ModelConfig", "QcConfig", "load_config", "parse_config"]
