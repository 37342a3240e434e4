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
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

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


# Every integer key's accepted range, inclusive (None: no upper bound). `_typed_section` and the model
# section check against this one table; tests/test_config.py checks that every integer field is in it.
INT_RANGES: Final[dict[str, tuple[int, int | None]]] = {
    "model.threads": (1, 64),
    "dicom.port": (1, 65535),
    "dicom.max_associations": (1, 64),
    "dicom.max_associations_per_address": (1, 64),  # and at most dicom.max_associations
    "dicom.association_timeout_s": (1, 300),
    "dicom.max_pdu_bytes": (4096, 16777216),
    "dicom.pdu_timeout_s": (1, 300),
    "dicom.idle_timeout_s": (1, 3600),
    "dicom.max_association_s": (10, 86400),
    "dicom.max_dataset_bytes": (1048576, 4294967296),
    "mqtt.port": (1, 65535),
    "mqtt.ack_timeout_s": (1, 3600),
    "service.queue_size": (1, 1000),
    "service.decode_memory_bytes": (268435456, 17179869184),
    "service.decode_timeout_s": (1, 600),
    "service.max_attempts": (1, 100),
    "service.min_free_bytes": (0, None),
    "metrics.port": (1, 65535),
    "writeback.port": (1, 65535),
    "writeback.timeout_s": (1, 600),
    "writeback.retry_initial_s": (1, 3600),
    "writeback.retry_max_s": (1, 86400),  # and at least writeback.retry_initial_s
    "writeback.max_queue_rows": (1, 1000000),
    "writeback.max_queue_bytes": (1048576, None),
    "history.retention_days": (1, 3650),
    "history.max_rows": (1000, 100000000),
}
# Said after a range error where the range alone would puzzle.
_RANGE_NOTES: Final[dict[str, str]] = {
    "dicom.max_pdu_bytes": "0, which PS3.8 allows for 'unlimited', is refused: a peer's PDU length is capped by it",
}
# A title of the AE VR (PS3.5 6.2): 1-16 characters of the default repertoire (printable ASCII), no
# backslash; leading and trailing spaces are padding, not part of the title.
AE_TITLE_MAX: Final = 16
# MQTT topic names (MQTT 3.1.1 4.7): UTF-8 of at most 65535 bytes, no wildcards in a PUBLISH, no NUL.
TOPIC_MAX_BYTES: Final = 65535


class ConfigError(ValueError):
    """A configuration that cannot be used; each problem names the file and the key.

    Validation goes on past the first problem, so that `edge-qc config-check` lists them all: `problems`
    holds every one, and the message is all of them, one a line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


_T = TypeVar("_T")


class _Found:
    """The problems found so far: a check that fails adds its problems and gives its fallback (the
    default), so that the checks after it still run."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def attempt(self, fallback: _T, check: Callable[..., _T], *args: Any) -> _T:
        try:
            return check(*args)
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return fallback

    def table(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        """`data[key]`, a table; when it is not one, the problem and an empty table."""
        empty: dict[str, Any] = {}
        return self.attempt(empty, _table, data, key, where)


@dataclass(frozen=True)
class ModelConfig:
    path: Path = DEFAULT_MODEL
    backend: str = "onnxruntime"
    threads: int = 2
    engine: Path | None = None  # the TensorRT engine (.plan, with its .json) when backend = "tensorrt"
    fallback: bool = True  # a refused or failing engine falls back to ONNX Runtime, marked degraded


# The languages a verdict can be written in: English (the msgids) and those shipped in edge/locale.
LANGUAGES: Final = ("en", "de")


@dataclass(frozen=True)
class QcConfig:
    standard: Path | None = None
    target_exposure_index: Mapping[str, float] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Mapping[str, float | int | str]]] = field(default_factory=dict)
    language: str = "en"  # of every text in a verdict: titles, messages, corrections, headline, reasons
    catalogue: Path | None = None  # a site's compiled gettext catalogue (.mo): its entries override the shipped ones


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
    # Hostile or broken peers (edge.dicom.guard): one address may hold this many connections at once, so
    # a flood from one address never takes every slot of max_associations from the modality.
    max_associations_per_address: int = 2
    pdu_timeout_s: int = 10  # one PDU must arrive whole within this time of its first byte (slowloris)
    idle_timeout_s: int = 30  # an association with no PDU for this long is aborted (pynetdicom's network timeout)
    max_association_s: int = 900  # no association lasts longer, however busy
    max_dataset_bytes: int = 268435456  # a larger dataset (one C-STORE) is refused and its association aborted
    tls_certfile: str = ""  # DICOM TLS when set: this appliance's certificate (PEM), with tls_keyfile
    tls_keyfile: str = ""
    # a secret: better from $CREDENTIALS_DIRECTORY or the environment (SECRETS); never in a repr
    tls_keyfile_password: str = field(default="", repr=False)
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
    # a secret: better from $CREDENTIALS_DIRECTORY or the environment (SECRETS); never in a repr
    password: str = field(default="", repr=False)
    ca_certs: str = ""  # TLS when set
    certfile: str = ""
    keyfile: str = ""
    keyfile_password: str = field(default="", repr=False)  # a secret, as password
    send_uids: bool = False  # False: SOP Instance UIDs are hashed in payloads
    ack_timeout_s: int = 30  # /readyz says not ready when a sent verdict waits longer than this for the broker

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
    port: int = 8627  # /metrics, /healthz, /readyz, /room; outside Prometheus's 9100-9999 exporter range


@dataclass(frozen=True)
class WritebackConfig:
    """The verdict written back to the study as a DICOM Structured Report, by C-STORE to the site's PACS
    or the modality (edge.publish.writeback); off unless the site turns it on."""

    enabled: bool = False
    host: str = ""  # the destination's host name or address; required when enabled
    port: int = 104
    called_ae: str = ""  # the destination's AE title; required when enabled
    calling_ae: str = ""  # ours; empty: dicom.ae_title
    structured_report: bool = True  # one SR per judged image (the only write-back so far: must stay on)
    queue_path: Path | None = None  # SRs waiting for the destination; None: writeback.sqlite beside the outbox
    timeout_s: int = 30  # connection, association and C-STORE response
    retry_initial_s: int = 5  # after a failed send; doubled per failure in a row up to retry_max_s
    retry_max_s: int = 300
    max_queue_rows: int = 10000  # a full queue takes no more SRs (logged and counted; the MQTT path is unaffected)
    max_queue_bytes: int = 268435456


@dataclass(frozen=True)
class RoomConfig:
    """The room display at /room on the metrics HTTP server (edge.room)."""

    enabled: bool = True
    show_accession: bool = False  # the study's accession number on the page (never in MQTT); off: not shown


@dataclass(frozen=True)
class HistoryConfig:
    """The verdict history on the device (edge.history): one PHI-free row per committed verdict, for
    `edge-qc report`; bounded by age and by rows."""

    enabled: bool = True
    path: Path | None = None  # SQLite (WAL); None: history.sqlite beside service.outbox_path
    retention_days: int = 400  # a year of monthly reject analysis, plus a month
    max_rows: int = 1000000  # the oldest go first beyond this


@dataclass(frozen=True)
class ServiceConfig:
    spool_dir: Path = Path("/var/lib/edge-qc/spool")
    outbox_path: Path = Path("/var/lib/edge-qc/outbox.sqlite")
    queue_size: int = 8  # images waiting for inference before receivers are held back
    # Compressed and deflated datasets are decoded in a child process under these limits (edge.dicom.sandbox):
    # a decompression bomb ends as a rejected verdict, never as a dead daemon.
    decode_memory_bytes: int = 1610612736  # address space of the decoding process
    decode_timeout_s: int = 20
    max_attempts: int = 3  # an entry whose judging ended the daemon this often is quarantined (rejected verdict)
    min_free_bytes: int = 536870912  # /readyz says not ready when the spool's disk has less free than this


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    qc: QcConfig = field(default_factory=QcConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    writeback: WritebackConfig = field(default_factory=WritebackConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    source: str = "<defaults>"


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], prefix: str, where: str) -> None:
    unknown = [key for key in table if key not in allowed]
    if unknown:
        names = ", ".join(sorted(allowed))
        raise ConfigError(*(f"{where}: unknown key '{prefix}{key}' (allowed: {names})" for key in unknown))


def _number(value: object, key: str, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: '{key}' must be positive, got {value!r}")
    return float(value)


def _shown(dotted: str, value: object) -> str:
    """A value for an error message; a secret's is never shown (only its type)."""
    section, _, key = dotted.partition(".")
    if (section, key) in SECRETS:
        return f"a value of type {type(value).__name__} (not shown: '{dotted}' is a secret)"
    return repr(value)


def _integer(value: object, dotted: str, where: str) -> int:
    """An integer within its range in INT_RANGES (keys not there: at least 1)."""
    lo, hi = INT_RANGES.get(dotted, (1, None))
    span = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        note = f"; {_RANGE_NOTES[dotted]}" if dotted in _RANGE_NOTES else ""
        raise ConfigError(f"{where}: '{dotted}' must be an integer {span}, got {_shown(dotted, value)}{note}")
    return value


def _ae_title(value: str, dotted: str, where: str) -> str:
    """An AE title without its padding spaces, refused (naming `dotted`) unless PS3.5's AE VR allows it."""
    title = value.strip(" ")
    if not 1 <= len(title) <= AE_TITLE_MAX:
        raise ConfigError(
            f"{where}: '{dotted}' must be 1 to {AE_TITLE_MAX} characters (spaces around it not counted), got {value!r}"
        )
    if "\\" in title:
        raise ConfigError(f"{where}: '{dotted}' must not contain a backslash, got {value!r}")
    if not all(" " <= c <= "~" for c in title):
        raise ConfigError(
            f"{where}: '{dotted}' must be printable ASCII (the AE VR's default repertoire: no control or"
            f" non-ASCII characters), got {value!r}"
        )
    return title


def _ip_literal(value: str, dotted: str, where: str) -> str:
    """A bind address: an IPv4 or IPv6 literal (a host name would be resolved once, at start, to one
    address: the daemon's listening address must not depend on DNS)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(
            f"{where}: '{dotted}' must be an IPv4 or IPv6 address (0.0.0.0: every interface), got {value!r}"
        ) from None
    return value


def _topic(mqtt: MqttConfig, key: str, where: str) -> str:
    """`mqtt.<key>` with {site}, {room} and {device} filled in: a valid MQTT topic name to PUBLISH to."""
    dotted = f"mqtt.{key}"
    try:
        topic = mqtt._named(getattr(mqtt, key))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{where}: '{dotted}' may use {{site}}, {{room}} and {{device}} only ({exc})") from exc
    if not topic:
        raise ConfigError(f"{where}: '{dotted}' must not be empty")
    for wildcard in ("+", "#"):
        if wildcard in topic:
            raise ConfigError(
                f"{where}: '{dotted}' must not contain the MQTT wildcard '{wildcard}' (a PUBLISH topic), got {topic!r}"
            )
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic):
        raise ConfigError(f"{where}: '{dotted}' must not contain NUL or other control characters, got {topic!r}")
    if topic.startswith("$"):
        raise ConfigError(f"{where}: '{dotted}' must not start with '$' (topics the broker reserves), got {topic!r}")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: '{dotted}' is not valid UTF-8 text") from None
    if size > TOPIC_MAX_BYTES:
        raise ConfigError(f"{where}: '{dotted}' is {size} bytes of UTF-8; MQTT allows at most {TOPIC_MAX_BYTES}")
    return topic


def _typed_value(default: object, value: object, dotted: str, where: str, base: Path) -> Any:
    """One key's value checked against the type of its default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{dotted}' must be true or false, got {_shown(dotted, value)}")
    elif isinstance(default, int):
        value = _integer(value, dotted, where)
    elif isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            shown = _shown(dotted, value)
            raise ConfigError(f"{where}: '{dotted}' must be a list of non-empty strings, got {shown}")
        value = tuple(value)
    elif isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: '{dotted}' must be a non-empty path string, got {_shown(dotted, value)}")
        value = base / value
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: '{dotted}' must be a string, got {_shown(dotted, value)}")
    return value


def _typed_section(
    data: Mapping[str, Any], name: str, cls: type[Any], where: str, base: Path, found: _Found | None = None
) -> Any:
    """A flat table checked against a dataclass: unknown keys and wrong types name the key. Problems go
    to `found` (a refused key keeps its default), or without it are raised together."""
    mine = _Found() if found is None else found
    table = mine.table(data, name, where)
    defaults = cls()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(cls)}
    mine.attempt(None, _reject_unknown, table, set(fields), f"{name}.", where)
    values = {
        key: mine.attempt(fields[key], _typed_value, fields[key], value, f"{name}.{key}", where, base)
        for key, value in table.items()
        if key in fields
    }
    if found is None and mine.problems:
        raise ConfigError(*mine.problems)
    return dataclasses.replace(defaults, **values)


def _model_folder(value: object, where: str, base: Path) -> Path:
    """`model.path` as the file sets it: a model version folder with its manifest.json, checked here.

    Only a path the file names is checked, not the default: `Config()` and a file without `model.path`
    must load where the default folder is absent (an installed appliance before its first engine is
    activated, a test), and the daemon refuses a missing model itself when it loads it. A path the file
    names explicitly is checked at parse time, like the TLS files, so that `edge-qc config-check` (Ansible's
    `validate:`), `serve` and a SIGHUP reload all refuse a typo naming 'model.path', before anything starts.
    The Ansible role therefore activates a new device's first engine before it writes site.toml."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: 'model.path' must be a non-empty string")
    path = base / value
    if not (path / "manifest.json").is_file():
        what = "folder has no manifest.json" if path.is_dir() else "no such folder"
        raise ConfigError(f"{where}: 'model.path': {path} is not a model version folder ({what})")
    return path


def _dicom(dicom: DicomConfig, where: str, found: _Found) -> DicomConfig:
    """The checks of [dicom] beyond types and ranges: AE titles (without padding), bind, slot limits."""
    defaults = DicomConfig()

    def titles(key: str) -> tuple[str, ...]:
        values = enumerate(getattr(dicom, key))
        checked = (found.attempt("", _ae_title, v, f"dicom.{key}[{i}]", where) for i, v in values)
        return tuple(title for title in checked if title)

    ae_title = found.attempt(defaults.ae_title, _ae_title, dicom.ae_title, "dicom.ae_title", where)
    allowed, probes = titles("allowed_calling_aets"), titles("probe_calling_aets")
    bind = found.attempt(defaults.bind, _ip_literal, dicom.bind, "dicom.bind", where)
    if dicom.max_associations_per_address > dicom.max_associations:
        found.add(
            f"{where}: 'dicom.max_associations_per_address' ({dicom.max_associations_per_address}) must not be"
            f" more than 'dicom.max_associations' ({dicom.max_associations})"
        )
    return dataclasses.replace(
        dicom, ae_title=ae_title, bind=bind, allowed_calling_aets=allowed, probe_calling_aets=probes
    )


def _topics(mqtt: MqttConfig, where: str, found: _Found) -> MqttConfig:
    """The verdict and status topics: valid PUBLISH topic names, from topic parts without MQTT's
    separator or wildcards, and not the same topic. A refused part or topic keeps its default."""
    defaults, parts = MqttConfig(), {}
    for part in ("site", "room", "device"):
        value = getattr(mqtt, part)
        bad = [c for c in ("+", "#", "/") if c in value]
        if bad:
            refused = " or ".join(map(repr, bad))
            found.add(f"{where}: 'mqtt.{part}' is a topic level and must not contain {refused}, got {value!r}")
            parts[part] = getattr(defaults, part)
    mqtt = dataclasses.replace(mqtt, **parts)
    topic = found.attempt(None, _topic, mqtt, "topic", where)
    status = found.attempt(None, _topic, mqtt, "status_topic", where)
    if topic is not None and topic == status:
        found.add(
            f"{where}: 'mqtt.status_topic' must differ from 'mqtt.topic' (both are {mqtt.verdict_topic!r}):"
            " subscribers would take the retained online/offline status for a verdict"
        )
    return mqtt


def _files(section: Any, name: str, keys: tuple[str, ...], where: str, base: Path, found: _Found) -> Any:
    """Files a section names (TLS certificates and keys): resolved against the configuration's folder and
    present; a missing one is a problem naming its key, and left unset."""
    resolved: dict[str, Any] = {}
    for key in keys:
        value = getattr(section, key)
        if value:
            path = base / value
            if path.is_file():
                resolved[key] = str(path)
            else:
                found.add(f"{where}: '{name}.{key}': no such file {path}")
                resolved[key] = ""
    return dataclasses.replace(section, **resolved)


def _tls_files(dicom: DicomConfig, where: str, base: Path, found: _Found) -> DicomConfig:
    """DICOM TLS files: resolved against the configuration's folder, present, and complete."""
    if bool(dicom.tls_certfile) != bool(dicom.tls_keyfile):
        missing = "tls_keyfile" if dicom.tls_certfile else "tls_certfile"
        found.add(f"{where}: 'dicom.{missing}' is required: TLS needs a certificate and its key")
    if dicom.tls_ca_certs and not dicom.tls_certfile:
        found.add(f"{where}: 'dicom.tls_ca_certs' needs 'dicom.tls_certfile' and 'dicom.tls_keyfile'")
    checked: DicomConfig = _files(dicom, "dicom", ("tls_certfile", "tls_keyfile", "tls_ca_certs"), where, base, found)
    return checked


def _state_file(value: object, dotted: str, where: str, base: Path) -> Path | None:
    """A state file's path given as a string (its default, None, is beside the outbox), resolved
    against the configuration's folder like every path."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{dotted}' must be a non-empty path string, got {value!r}")
    return base / value


def _writeback(writeback: WritebackConfig, where: str, base: Path, found: _Found) -> WritebackConfig:
    """The checks of [writeback] beyond types and ranges: a destination when enabled, AE titles, the
    queue's path, a backoff that grows."""
    queue_path = found.attempt(None, _state_file, writeback.queue_path, "writeback.queue_path", where, base)
    if writeback.enabled:
        for key in ("host", "called_ae"):
            if not getattr(writeback, key).strip():
                found.add(f"{where}: 'writeback.{key}' is required when 'writeback.enabled' is true")
        if not writeback.structured_report:
            found.add(
                f"{where}: 'writeback.structured_report' is false and nothing else can be written back yet:"
                " set 'writeback.enabled' to false instead"
            )
    called, calling = (
        found.attempt("", _ae_title, value, f"writeback.{key}", where) if value else ""
        for key, value in (("called_ae", writeback.called_ae), ("calling_ae", writeback.calling_ae))
    )
    if writeback.retry_max_s < writeback.retry_initial_s:
        found.add(
            f"{where}: 'writeback.retry_max_s' ({writeback.retry_max_s}) must not be less than"
            f" 'writeback.retry_initial_s' ({writeback.retry_initial_s})"
        )
    return dataclasses.replace(
        writeback, host=writeback.host.strip(), called_ae=called, calling_ae=calling, queue_path=queue_path
    )


def _history(history: HistoryConfig, where: str, base: Path) -> HistoryConfig:
    """[history] with its path resolved."""
    return dataclasses.replace(history, path=_state_file(history.path, "history.path", where, base))


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
            except OSError as exc:
                raise ConfigError(
                    f"{where}: '{section}.{key}': cannot read the credential {path} ({exc.strerror})"
                ) from exc
            except UnicodeDecodeError:  # its message quotes the secret's bytes
                raise ConfigError(
                    f"{where}: '{section}.{key}': cannot read the credential {path} (not UTF-8 text)"
                ) from None
    return environ.get(SECRETS[(section, key)], "")


def _with_secrets(section: Any, name: str, environ: Mapping[str, str], where: str, found: _Found) -> Any:
    secrets = {
        key: found.attempt("", _secret, name, key, getattr(section, key), environ, where)
        for (sec, key) in SECRETS
        if sec == name
    }
    return dataclasses.replace(section, **secrets)


def _model(data: Mapping[str, Any], where: str, base: Path, found: _Found) -> ModelConfig:
    """[model]: a refused key keeps its default."""
    defaults = ModelConfig()
    model_t = found.table(data, "model", where)
    found.attempt(None, _reject_unknown, model_t, {"path", "backend", "threads", "engine", "fallback"}, "model.", where)
    path = defaults.path
    if "path" in model_t:
        path = found.attempt(defaults.path, _model_folder, model_t["path"], where, base)
    backend = model_t.get("backend", defaults.backend)
    if backend not in BACKENDS:
        found.add(f"{where}: 'model.backend' must be one of {', '.join(BACKENDS)}, got {backend!r}")
        backend = defaults.backend
    threads = model_t.get("threads", defaults.threads)
    threads = found.attempt(defaults.threads, _integer, threads, "model.threads", where)
    engine = None
    if "engine" in model_t:
        if not isinstance(model_t["engine"], str) or not model_t["engine"]:
            found.add(f"{where}: 'model.engine' must be a non-empty path string")
        else:
            engine = base / model_t["engine"]
    elif backend == "tensorrt":
        found.add(f"{where}: 'model.engine' is required when 'model.backend' is \"tensorrt\"")
    fallback = model_t.get("fallback", defaults.fallback)
    if not isinstance(fallback, bool):
        found.add(f"{where}: 'model.fallback' must be true or false, got {fallback!r}")
        fallback = defaults.fallback
    return ModelConfig(path=path, backend=backend, threads=threads, engine=engine, fallback=fallback)


def _qc(data: Mapping[str, Any], where: str, base: Path, found: _Found) -> QcConfig:
    """[qc] as data: view names, items and their keys are the QC standard's to check
    (edge.qc.standard.site_standard), the catalogue's contents edge.qc.words'."""
    qc_t = found.table(data, "qc", where)
    keys = {"standard", "target_exposure_index", "overrides", "language", "catalogue"}
    found.attempt(None, _reject_unknown, qc_t, keys, "qc.", where)
    language = qc_t.get("language", "en")
    if language not in LANGUAGES:
        found.add(f"{where}: 'qc.language' must be one of {', '.join(LANGUAGES)}, got {language!r}")
        language = "en"
    catalogue = None
    if qc_t.get("catalogue", ""):
        if not isinstance(qc_t["catalogue"], str) or not qc_t["catalogue"].endswith(".mo"):
            found.add(f"{where}: 'qc.catalogue' must be the path of a compiled catalogue (.mo)")
        else:
            catalogue = base / qc_t["catalogue"]
    standard = None
    if qc_t.get("standard"):
        if not isinstance(qc_t["standard"], str):
            found.add(f"{where}: 'qc.standard' must be a path string")
        else:
            standard = base / qc_t["standard"]
    targets: dict[str, float] = {}
    for view, value in found.table(qc_t, "target_exposure_index", where).items():
        target = found.attempt(None, _number, value, f"qc.target_exposure_index.{view}", where)
        if target is not None:
            targets[view] = target
    overrides: dict[str, dict[str, dict[str, float | int | str]]] = {}
    for view, items in found.table(qc_t, "overrides", where).items():
        if not isinstance(items, dict):
            found.add(f"{where}: 'qc.overrides.{view}' must be a table of items")
            continue
        for item, params in items.items():
            if not isinstance(params, dict):
                found.add(f"{where}: 'qc.overrides.{view}.{item}' must be a table")
                continue
            overrides.setdefault(view, {})[item] = dict(params)
    return QcConfig(standard, targets, overrides, language, catalogue)


def checked_config(
    data: Mapping[str, Any],
    where: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config, tuple[str, ...]]:
    """Every problem of parsed TOML, and the configuration with the default in place of each refused
    value (what `edge-qc config-check` judges the rest of the file by); secrets left empty in the TOML
    come from `environ` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    found = _Found()
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "source"}
    found.attempt(None, _reject_unknown, data, sections, "", where)
    base = base_dir or Path.cwd()
    model = _model(data, where, base, found)
    qc = _qc(data, where, base, found)
    dicom = _dicom(_typed_section(data, "dicom", DicomConfig, where, base, found), where, found)
    dicom = _with_secrets(_tls_files(dicom, where, base, found), "dicom", environ, where, found)
    mqtt = _with_secrets(_typed_section(data, "mqtt", MqttConfig, where, base, found), "mqtt", environ, where, found)
    mqtt = _topics(_files(mqtt, "mqtt", ("ca_certs", "certfile", "keyfile"), where, base, found), where, found)
    service = _typed_section(data, "service", ServiceConfig, where, base, found)
    metrics = _typed_section(data, "metrics", MetricsConfig, where, base, found)
    metrics_bind = found.attempt(MetricsConfig().bind, _ip_literal, metrics.bind, "metrics.bind", where)
    metrics = dataclasses.replace(metrics, bind=metrics_bind)
    room = _typed_section(data, "room", RoomConfig, where, base, found)
    writeback = _writeback(_typed_section(data, "writeback", WritebackConfig, where, base, found), where, base, found)
    history = found.attempt(
        HistoryConfig(), _history, _typed_section(data, "history", HistoryConfig, where, base, found), where, base
    )
    config = Config(
        model=model,
        qc=qc,
        dicom=dicom,
        mqtt=mqtt,
        service=service,
        metrics=metrics,
        room=room,
        writeback=writeback,
        history=history,
        source=where,
    )
    return config, tuple(found.problems)


def parse_config(
    data: Mapping[str, Any],
    where: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed TOML, raising one ConfigError with every problem; secrets left empty there come
    from `environ` (default: os.environ)."""
    config, problems = checked_config(data, where, base_dir, environ)
    if problems:
        raise ConfigError(*problems)
    return config


def read_config(path: Path) -> tuple[Config | None, tuple[str, ...]]:
    """A configuration file's `checked_config`; None and the one problem when the file cannot be read
    or is not TOML."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        return None, (f"{path}: cannot read the configuration: {exc.strerror}",)
    except UnicodeDecodeError:
        return None, (f"{path}: cannot read the configuration: not UTF-8 text",)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, (f"{path}: {exc}",)
    return checked_config(data, str(path), path.resolve().parent)


def load_config(path: Path | None) -> Config:
    """Read and validate a configuration file, raising one ConfigError with every problem; None gives
    the defaults."""
    if path is None:
        return Config()
    config, problems = read_config(path)
    if config is None or problems:
        raise ConfigError(*problems)
    return config


__all__ = [
    "Config",
    "ConfigError",
    "ModelConfig",
    "QcConfig",
    "checked_config",
    "load_config",
    "parse_config",
    "read_config",
]
