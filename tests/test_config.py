"""Site configuration: strict, typed, every error names the file and the key."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.config import INT_RANGES, Config, ConfigError, load_config, parse_config
from edge.qc.standard import site_standard

GOOD = """
[model]
backend = "onnxruntime"
threads = 1

[qc.target_exposure_index]
ap = 250.0
lateral = 400

[qc.overrides.ap.centring]
max_offset_fraction = 0.12
[qc.overrides.oblique.obliquity]
severity = "warn"
"""


def test_overrides_and_targets_apply(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(GOOD)
    config = load_config(path)
    standard = site_standard(config.qc, config.source)
    assert standard.rule("ap", "centring").number("max_offset_fraction") == 0.12
    assert standard.rule("lateral", "centring").number("max_offset_fraction") == 0.10  # untouched
    assert standard.rule("oblique", "obliquity").severity == "warn"
    assert config.qc.target_exposure_index == {"ap": 250.0, "lateral": 400.0}
    assert config.model.threads == 1


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[modle]\npath = 'x'", "'modle'"),
        ("[model]\nbackend = 'tvm'", "model.backend"),
        ("[model]\nthreads = 0", "model.threads"),
        ("[qc.target_exposure_index]\napp = 300", "qc.target_exposure_index.app"),
        ("[qc.target_exposure_index]\nap = -1", "qc.target_exposure_index.ap"),
        ("[qc.overrides.ap.centring]\nmax_offset = 0.2", "qc.overrides.ap.centring.max_offset"),
        ("[qc.overrides.ap.obliquity]\nmin_angle_deg = 20", "qc.overrides.ap.obliquity"),
        ("[qc.overrides.ap.centring]\nmax_offset_fraction = 'wide'", "ap.centring.max_offset_fraction"),
        ("[qc.overrides.ap.centring]\nseverity = 'maybe'", "ap.centring.severity"),
        ("[qc\nbroken", "site.toml"),
        ("[model]\nbackend = 'tensorrt'", "'model.engine' is required"),
        ("[model]\nfallback = 'yes'", "model.fallback"),
        ("[room]\nshow_accession = 'yes'", "room.show_accession"),
        ("[qc]\nlanguage = 'fr'", "qc.language"),
        ("[qc]\ncatalogue = 'site.po'", "qc.catalogue"),
        ("[room]\nshow_patient = true", "room.show_patient"),
        ("[writeback]\nenabled = true\ncalled_ae = 'PACS'", "'writeback.host' is required"),
        ("[writeback]\nenabled = true\nhost = 'pacs'", "'writeback.called_ae' is required"),
        ("[writeback]\nenabled = true\nhost = 'h'\ncalled_ae = 'P'\nstructured_report = false", "structured_report"),
        ("[writeback]\ncalled_ae = 'A\\\\B'", "'writeback.called_ae'"),
        ("[writeback]\nport = 0", "'writeback.port'"),
        ("[writeback]\nretry_initial_s = 60\nretry_max_s = 30", "'writeback.retry_max_s'"),
        ("[writeback]\nmax_queue_bytes = 1024", "'writeback.max_queue_bytes'"),
        ("[writeback]\nqueue_path = ''", "'writeback.queue_path'"),
        ("[writeback]\ndestination = 'pacs'", "writeback.destination"),
        ("[history]\nretention_days = 0", "'history.retention_days'"),
        ("[history]\npath = ''", "'history.path'"),
        ("[history]\nenabled = 'yes'", "'history.enabled'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config = load_config(path)
        site_standard(config.qc, config.source)
    assert names in str(info.value) and "site.toml" in str(info.value)


def test_a_site_may_override_every_key_the_shipped_standard_sets(tmp_path: Path) -> None:
    """The allowed-keys rule is the standard's, one rule: oblique lower coverage names its structure in
    the shipped file, so a site may change it (once refused as an unknown key)."""
    path = tmp_path / "site.toml"
    path.write_text('[qc.overrides.oblique.lower_coverage]\nstructure = "body_L4"\n')
    config = load_config(path)
    standard = site_standard(config.qc, config.source)
    assert standard.rule("oblique", "lower_coverage").text("structure") == "body_L4"
    assert standard.rule("ap", "lower_coverage").params.get("structure") is None


def test_configuration_is_a_leaf() -> None:
    """edge.config imports nothing from edge-qc, so every package may read it without an import loop."""
    import ast

    tree = ast.parse((Path(edge.__file__).parent / "config.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [name for name in imported if name == "edge" or name.startswith("edge.")]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.toml")


def test_the_documented_example_is_every_default() -> None:
    """edge/site.example.toml documents every key with its default: it must parse to the defaults and
    name every field of every section (so a new key cannot go undocumented)."""
    example = Path(edge.__file__).parent / "site.example.toml"
    config = load_config(example)
    assert dataclasses.replace(config, source=Config().source) == Config()
    text = example.read_text()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        for key in dataclasses.fields(getattr(Config(), section.name)):
            documented = rf"^(#? ?{key.name} = |\[{section.name}\.{key.name}\])"  # a key, or a table of its own
            assert re.search(documented, text, re.MULTILINE), f"{section.name}.{key.name} undocumented"


def test_secrets_come_from_systemd_credentials_or_the_environment(tmp_path: Path) -> None:
    """A password left out of the TOML is read from $CREDENTIALS_DIRECTORY/<section>.<key> first, then
    from the environment; one written in the TOML wins."""
    from edge.config import parse_config

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt.password").write_text("from-credential\n")
    environ = {
        "CREDENTIALS_DIRECTORY": str(credentials),
        "EDGEQC_MQTT_PASSWORD": "from-environment",
        "EDGEQC_MQTT_KEYFILE_PASSWORD": "key-from-environment",
    }
    config = parse_config({}, environ=environ)
    assert config.mqtt.password == "from-credential"
    assert config.mqtt.keyfile_password == "key-from-environment"
    assert config.dicom.tls_keyfile_password == ""
    assert parse_config({}, environ={"EDGEQC_MQTT_PASSWORD": "e"}).mqtt.password == "e"
    assert parse_config({"mqtt": {"password": "toml"}}, environ=environ).mqtt.password == "toml"
    assert parse_config({}, environ={}).mqtt.password == ""
    (credentials / "mqtt.keyfile_password").write_bytes(b"\xff\xfe not text")
    with pytest.raises(ConfigError, match=r"site.toml: 'mqtt.keyfile_password': cannot read the credential"):
        parse_config({}, "site.toml", environ=environ)


# ---------------------------------------------------------------- validation of every value (issue 15)

SHIPPED_MODEL = Path(edge.__file__).resolve().parent.parent / "engines" / "lumbar-resunet" / "0.2.0"

# The ranges the daemon documents, written out here (not read from edge.config.INT_RANGES) so that a
# changed table fails a test: dotted key -> (lowest accepted, highest accepted or None).
RANGES: dict[str, tuple[int, int | None]] = {
    "model.threads": (1, 64),
    "dicom.port": (1, 65535),
    "dicom.max_pdu_bytes": (4096, 16777216),
    "dicom.max_associations": (1, 64),
    "dicom.max_associations_per_address": (1, 64),
    "dicom.association_timeout_s": (1, 300),
    "dicom.pdu_timeout_s": (1, 300),
    "dicom.idle_timeout_s": (1, 3600),
    "dicom.max_association_s": (10, 86400),
    "dicom.max_dataset_bytes": (1048576, 4294967296),
    "service.queue_size": (1, 1000),
    "service.decode_memory_bytes": (268435456, 17179869184),
    "service.decode_timeout_s": (1, 600),
    "service.max_attempts": (1, 100),
    "service.min_free_bytes": (0, None),
    "mqtt.port": (1, 65535),
    "mqtt.ack_timeout_s": (1, 3600),
    "metrics.port": (1, 65535),
    "writeback.port": (1, 65535),
    "writeback.timeout_s": (1, 600),
    "writeback.retry_initial_s": (1, 3600),
    "writeback.retry_max_s": (1, 86400),
    "writeback.max_queue_rows": (1, 1000000),
    "writeback.max_queue_bytes": (1048576, None),
    "history.retention_days": (1, 3650),
    "history.max_rows": (1000, 100000000),
}


def _with(dotted: str, value: object, **more: object) -> dict[str, Any]:
    """A parsed TOML document setting `dotted` (and `more`, as dotted=value pairs with '__' for '.')."""
    data: dict[str, Any] = {}
    for key, v in [(dotted, value), *((k.replace("__", "."), v) for k, v in more.items())]:
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = v
    # each limit alone, not the check that max_associations_per_address <= max_associations
    if dotted == "dicom.max_associations_per_address":
        data["dicom"].setdefault("max_associations", 64)
    if dotted == "dicom.max_associations":
        data["dicom"].setdefault("max_associations_per_address", 1)
    if dotted == "writeback.retry_initial_s":  # nor that retry_max_s >= retry_initial_s
        data["writeback"].setdefault("retry_max_s", 86400)
    if dotted == "writeback.retry_max_s":
        data["writeback"].setdefault("retry_initial_s", 1)
    return data


def _refused(data: Mapping[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config = parse_config(data, "site.toml", environ={})
        site_standard(config.qc, config.source)
    message = str(info.value)
    assert "site.toml" in message
    return message


def test_defaults_and_an_empty_file_parse() -> None:
    assert dataclasses.replace(parse_config({}, environ={}), source=Config().source) == Config()
    assert Config().metrics.bind == "127.0.0.1"


def test_every_integer_key_has_its_range_in_the_one_table() -> None:
    integers = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        if section.name != "source"
        for f in dataclasses.fields(getattr(Config(), section.name))
        if type(getattr(getattr(Config(), section.name), f.name)) is int
    }
    assert integers == set(RANGES) == set(INT_RANGES)
    assert INT_RANGES == RANGES


@pytest.mark.parametrize("dotted", sorted(RANGES))
def test_integer_ranges_refuse_below_and_above_naming_the_key_and_the_range(dotted: str) -> None:
    lo, hi = RANGES[dotted]
    span = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
    outside = [lo - 1, "8", True, 1.5] + ([hi + 1] if hi is not None else [])
    for value in outside:
        message = _refused(_with(dotted, value))
        assert f"'{dotted}'" in message and span in message, message


@pytest.mark.parametrize("dotted", sorted(RANGES))
def test_integer_ranges_accept_their_ends(dotted: str) -> None:
    lo, hi = RANGES[dotted]
    section, key = dotted.split(".")
    for value in [lo] + ([hi] if hi is not None else [lo + 10**12]):
        config = parse_config(_with(dotted, value), "site.toml", environ={})
        assert getattr(getattr(config, section), key) == value


def test_accepted_edge_values() -> None:
    config = parse_config(
        _with("dicom.port", 65535, mqtt__port=65535, metrics__port=1, service__min_free_bytes=0), environ={}
    )
    assert (config.dicom.port, config.mqtt.port, config.metrics.port) == (65535, 65535, 1)
    assert config.service.min_free_bytes == 0


def test_unlimited_pdu_length_is_refused_and_said_why() -> None:
    message = _refused(_with("dicom.max_pdu_bytes", 0))
    assert "'dicom.max_pdu_bytes'" in message and "unlimited" in message


def test_per_address_limit_may_not_exceed_the_association_limit() -> None:
    data = {"dicom": {"max_associations": 4, "max_associations_per_address": 5}}
    message = _refused(data)
    assert "'dicom.max_associations_per_address'" in message and "'dicom.max_associations'" in message
    config = parse_config({"dicom": {"max_associations": 4, "max_associations_per_address": 4}}, environ={})
    assert config.dicom.max_associations_per_address == 4


@pytest.mark.parametrize(
    ("dicom", "names"),
    [
        ({"ae_title": "A" * 17}, "'dicom.ae_title'"),
        ({"ae_title": "EDGE\\QC"}, "'dicom.ae_title'"),
        ({"ae_title": "EDGE\x01QC"}, "'dicom.ae_title'"),
        ({"ae_title": "EDGE\nQC"}, "'dicom.ae_title'"),
        ({"ae_title": "ÉDGEQC"}, "'dicom.ae_title'"),
        ({"ae_title": "   "}, "'dicom.ae_title'"),
        ({"ae_title": ""}, "'dicom.ae_title'"),
        ({"allowed_calling_aets": ["MODALITY", "B" * 17]}, "'dicom.allowed_calling_aets[1]'"),
        ({"allowed_calling_aets": ["CR\\1"]}, "'dicom.allowed_calling_aets[0]'"),
        ({"allowed_calling_aets": ["  "]}, "'dicom.allowed_calling_aets[0]'"),
        ({"probe_calling_aets": ["EDGEQC-PROBE-LONGER"]}, "'dicom.probe_calling_aets[0]'"),
        ({"probe_calling_aets": ["PROBE\x00"]}, "'dicom.probe_calling_aets[0]'"),
        ({"bind": "999.1.1.1"}, "'dicom.bind'"),
        ({"bind": "localhost"}, "'dicom.bind'"),
        ({"bind": ""}, "'dicom.bind'"),
    ],
)
def test_ae_titles_and_bind_addresses_are_checked(dicom: dict[str, Any], names: str) -> None:
    assert names in _refused({"dicom": dicom})


def test_metrics_bind_must_be_an_address() -> None:
    for value in ("999.1.1.1", "metrics.example", "127.0.0.1:9108"):
        assert "'metrics.bind'" in _refused({"metrics": {"bind": value}})


def test_good_ae_titles_and_addresses_pass_with_their_padding_removed() -> None:
    config = parse_config(
        {
            "dicom": {
                "ae_title": " " + "E" * 16 + "  ",
                "allowed_calling_aets": [" MODALITY ", "CR-1 ROOM"],
                "probe_calling_aets": ["EDGEQC-PROBE "],
                "bind": "::",
            },
            "metrics": {"bind": "::1"},
        },
        environ={},
    )
    assert config.dicom.ae_title == "E" * 16
    assert config.dicom.allowed_calling_aets == ("MODALITY", "CR-1 ROOM")
    assert config.dicom.probe_calling_aets == ("EDGEQC-PROBE",)
    assert (config.dicom.bind, config.metrics.bind) == ("::", "::1")


@pytest.mark.parametrize(
    ("mqtt", "names"),
    [
        ({"topic": "edgeqc/+/verdict"}, "'mqtt.topic'"),
        ({"topic": "edgeqc/{site}/#"}, "'mqtt.topic'"),
        ({"topic": "edgeqc/a\x00b"}, "'mqtt.topic'"),
        ({"topic": ""}, "'mqtt.topic'"),
        ({"topic": "$SYS/edgeqc"}, "'mqtt.topic'"),
        ({"topic": "t/" + "é" * 32767}, "'mqtt.topic'"),  # 65536 bytes of UTF-8
        ({"topic": "edgeqc/{sight}"}, "'mqtt.topic'"),
        ({"status_topic": "edgeqc/{device}/+"}, "'mqtt.status_topic'"),
        ({"status_topic": "#"}, "'mqtt.status_topic'"),
        ({"site": "north+"}, "'mqtt.site'"),
        ({"room": "xr#1"}, "'mqtt.room'"),
        ({"device": "jetson/7"}, "'mqtt.device'"),
        ({"status_topic": "edgeqc/{site}/{room}/{device}/verdict"}, "'mqtt.status_topic' must differ"),
        ({"topic": "edgeqc/{site}/out", "status_topic": "edgeqc/site/out"}, "'mqtt.status_topic' must differ"),
    ],
)
def test_topics_are_publishable_and_distinct(mqtt: dict[str, Any], names: str) -> None:
    assert names in _refused({"mqtt": mqtt})


def test_the_longest_topic_mqtt_allows_passes() -> None:
    topic = "t/" + "a" * 65533
    assert parse_config({"mqtt": {"topic": topic}}, environ={}).mqtt.verdict_topic == topic


def test_model_path_must_be_a_model_folder(tmp_path: Path) -> None:
    message = _refused({"model": {"path": "/nonexistent"}})
    assert "'model.path'" in message and "/nonexistent" in message
    (tmp_path / "empty").mkdir()
    message = _refused({"model": {"path": str(tmp_path / "empty")}})
    assert "'model.path'" in message and "manifest.json" in message
    assert parse_config({"model": {"path": str(SHIPPED_MODEL)}}, environ={}).model.path == SHIPPED_MODEL
    relative = parse_config({"model": {"path": "0.2.0"}}, "site.toml", SHIPPED_MODEL.parent, environ={})
    assert relative.model.path == SHIPPED_MODEL


def test_config_check_refuses_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    path = tmp_path / "site.toml"
    path.write_text('[model]\npath = "/nonexistent"\n')
    assert main(["config-check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'model.path'" in err and "/nonexistent" in err
    path.write_text(f'[model]\npath = "{SHIPPED_MODEL}"\n')
    assert main(["config-check", str(path)]) == 0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("[qc.overrides.ap.centring]\nmax_offset_fraction = -0.1", "qc.overrides.ap.centring.max_offset_fraction"),
        ("[qc.overrides.ap.axis_tilt]\nmax_tilt_deg = -5", "qc.overrides.ap.axis_tilt.max_tilt_deg"),
        ("[qc.overrides.ap.disc_spaces]\nmin_visible_levels = -1", "qc.overrides.ap.disc_spaces.min_visible_levels"),
        ("[qc.overrides.ap.collimation]\nmargin_mm = -15.0", "qc.overrides.ap.collimation.margin_mm"),
        ("[qc.overrides.ap.upper_coverage]\nmin_margin_mm = -2.0", "qc.overrides.ap.upper_coverage.min_margin_mm"),
        ("[qc.overrides.oblique.obliquity]\nmin_angle_deg = -30.0", "qc.overrides.oblique.obliquity.min_angle_deg"),
        ("[qc.overrides.lateral.foramina]\nmin_overlap = -0.5", "qc.overrides.lateral.foramina.min_overlap"),
    ],
)
def test_negative_thresholds_are_refused(tmp_path: Path, override: str, names: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(override)
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        site_standard(config.qc, config.source)
    assert names in str(info.value) and "negative" in str(info.value) and "site.toml" in str(info.value)


def test_signed_thresholds_may_be_negative(tmp_path: Path) -> None:
    """The deviation index bands and the disc gap bound signed values: below zero is a real setting."""
    path = tmp_path / "site.toml"
    path.write_text(
        "[qc.overrides.ap.exposure_index]\nfail_below = -2.5\nwarn_below = -0.5\nwarn_above = -0.1\n"
        "[qc.overrides.lateral.disc_spaces]\nmin_gap_mm = -0.5\n"
    )
    config = load_config(path)
    standard = site_standard(config.qc, config.source)
    assert standard.rule("ap", "exposure_index").number("fail_below") == -2.5
    assert standard.rule("ap", "exposure_index").number("warn_above") == -0.1
    assert standard.rule("lateral", "disc_spaces").number("min_gap_mm") == -0.5


@pytest.mark.parametrize("dotted", ["mqtt.password", "mqtt.keyfile_password", "dicom.tls_keyfile_password"])
@pytest.mark.parametrize("value", [987654321, ["s3cret-in-a-list"], True, 12.75])
def test_an_error_about_a_secret_never_shows_it(dotted: str, value: object) -> None:
    message = _refused(_with(dotted, value))
    assert f"'{dotted}'" in message
    for shown in ("987654321", "s3cret", "True", "12.75"):
        assert shown not in message, message


def test_secrets_are_not_in_a_repr() -> None:
    config = parse_config(
        {"mqtt": {"password": "hunter2-mqtt", "keyfile_password": "hunter2-key"}},
        environ={"EDGEQC_DICOM_TLS_KEYFILE_PASSWORD": "hunter2-tls"},
    )
    assert config.mqtt.password == "hunter2-mqtt" and config.dicom.tls_keyfile_password == "hunter2-tls"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.mqtt)


def test_an_unreadable_credential_is_not_quoted(tmp_path: Path) -> None:
    (tmp_path / "mqtt.password").write_bytes(b"hunter\xe9two")
    with pytest.raises(ConfigError) as info:
        parse_config({}, "site.toml", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    message = str(info.value)
    assert "'mqtt.password'" in message and "not UTF-8" in message
    assert "xe9" not in message and "hunter" not in message


def test_the_ansible_role_binds_metrics_to_loopback_and_sets_every_new_key() -> None:
    role = Path(edge.__file__).resolve().parent.parent / "ansible" / "roles" / "edge_qc"
    defaults = (role / "defaults" / "main.yml").read_text()
    assert re.search(r"^edge_qc_metrics_bind: 127\.0\.0\.1$", defaults, re.MULTILINE)
    template = (role / "templates" / "site.toml.j2").read_text()
    new_keys = {
        "dicom": ["max_associations_per_address", "pdu_timeout_s", "idle_timeout_s", "max_association_s",
                  "max_dataset_bytes"],
        "service": ["decode_memory_bytes", "decode_timeout_s", "max_attempts", "min_free_bytes"],
        "mqtt": ["ack_timeout_s"],
    }  # fmt: skip
    for section, keys in new_keys.items():
        body = template.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key in keys:
            variable = re.search(rf"^{key} = {{{{ (edge_qc_\w+) \| int }}}}$", body, re.MULTILINE)
            assert variable, f"{section}.{key} not in site.toml.j2"
            assert re.search(rf"^{variable[1]}: \d+", defaults, re.MULTILINE), f"{variable[1]} has no default"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[mqtt]\ntopic = "edgeqc/+/verdict"\n', "'mqtt.topic'"),
        ('[mqtt]\nstatus_topic = "edgeqc/{site}/{room}/{device}/verdict"\n', "'mqtt.status_topic'"),
        ('[mqtt]\npassword = 1234\n', "'mqtt.password'"),
        ('[dicom]\nallowed_calling_aets = ["A\\\\B"]\n', "'dicom.allowed_calling_aets[0]'"),
        ('[dicom]\nae_title = "SEVENTEEN_CHARS_X"\n', "'dicom.ae_title'"),
        ('[dicom]\nbind = "999.1.1.1"\n', "'dicom.bind'"),
        ("[dicom]\nmax_pdu_bytes = 1\n", "'dicom.max_pdu_bytes'"),
        ("[dicom]\nmax_associations = 100000\n", "'dicom.max_associations'"),
        ("[dicom]\npdu_timeout_s = 0\n", "'dicom.pdu_timeout_s'"),
        ("[service]\nqueue_size = 1000000000\n", "'service.queue_size'"),
        ("[service]\nmax_attempts = 0\n", "'service.max_attempts'"),
        ("[qc.overrides.ap.centring]\nmax_offset_fraction = -0.1\n", "max_offset_fraction"),
    ],
)
def test_config_check_refuses_what_a_hostile_or_careless_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, key: str
) -> None:
    """`edge-qc config-check` (Ansible's validate step) exits 2 naming the key, never showing a secret."""
    from edge.cli import main

    path = tmp_path / "site.toml"
    path.write_text(toml)
    assert main(["config-check", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err, err
    assert "1234" not in err


# ---------------------------------------------------------------- config-check: every problem, and the defaults


def test_every_problem_is_found_and_raised_together() -> None:
    """Validation goes on past the first problem: three mistakes in three sections (and a second in
    one of them) are all in the one ConfigError, each naming the file and its key."""
    data = {
        "model": {"threads": 0},
        "dicom": {"port": 0, "ae_title": "EDGE\\QC"},
        "mqtt": {"topic": "edgeqc/+/verdict"},
        "metrcs": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, "site.toml", environ={})
    problems = info.value.problems
    keys = ["'metrcs'", "'model.threads'", "'dicom.port'", "'dicom.ae_title'", "'mqtt.topic'"]
    assert len(problems) == len(keys), problems
    for key, problem in zip(keys, problems, strict=True):
        assert problem.startswith("site.toml: ") and key in problem, (key, problem)
    assert str(info.value).splitlines() == list(problems)


def test_load_config_raises_every_problem_in_its_message(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[model]\npath = "/nonexistent"\n[dicom]\nport = 0\n[metrics]\nprot = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for key in ("'model.path'", "'dicom.port'", "'metrics.prot'"):
        assert key in message, message
    assert len(info.value.problems) == 3


def test_the_qc_overrides_are_checked_all_at_once() -> None:
    qc = parse_config(
        {
            "qc": {
                "target_exposure_index": {"app": 300.0},
                "overrides": {
                    "ap": {"centring": {"max_offset": 0.2, "max_offset_fraction": -0.1}},
                    "obleek": {"obliquity": {"min_angle_deg": 20}},
                },
            }
        },
        "site.toml",
        environ={},
    ).qc
    with pytest.raises(ConfigError) as info:
        site_standard(qc, "site.toml")
    found = "\n".join(info.value.problems)
    for key in ("qc.target_exposure_index.app", "ap.centring.max_offset ", "ap.centring.max_offset_fraction", "obleek"):
        assert key.strip() in found, found
    assert len(info.value.problems) == 4


def test_mqtt_tls_files_must_exist_and_are_resolved_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("a CA")
    config = parse_config({"mqtt": {"ca_certs": "ca.crt"}}, "site.toml", tmp_path, environ={})
    assert config.mqtt.ca_certs == str(tmp_path / "ca.crt")
    message = _refused({"mqtt": {"ca_certs": str(tmp_path / "absent.crt"), "keyfile": str(tmp_path / "k.key")}})
    assert "'mqtt.ca_certs': no such file" in message and "'mqtt.keyfile': no such file" in message


def _check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, *extra: str
) -> tuple[int, list[str], list[str]]:
    """`edge-qc config-check` on a file: (exit code, error lines, warning lines)."""
    from edge.cli import main

    path = tmp_path / "site.toml"
    path.write_text(toml)
    code = main(["config-check", str(path), *extra])
    lines = capsys.readouterr().err.splitlines()
    return code, [s for s in lines if s.startswith("error: ")], [s for s in lines if s.startswith("warning: ")]


def _keys(lines: list[str]) -> list[str]:
    """The dotted key each line names first ('error: FILE: 'key' ...')."""
    return [re.findall(r"'([a-z_]+\.[a-z_]+)", line)[0] for line in lines]


NAMED = '[mqtt]\nsite = "north"\nroom = "xray-1"\ndevice = "north-xr1"\n[dicom]\nallowed_calling_aets = ["NORTH_DR1"]\n'


def test_config_check_warns_on_a_shared_ae_title_with_a_device_of_the_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Group vars, host vars in the hosts file and host_vars/ files, by Ansible's precedence: this device
    (north-xr1) and north-xr2 share a title; north-xr3's host_vars file gives it its own."""
    pytest.importorskip("yaml", reason="the inventory is read on the Ansible controller, which has PyYAML")
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    (inventory / "hosts.yml").write_text(
        "edge_qc:\n  children:\n    site_north:\n      hosts:\n"
        "        north-xr1:\n        north-xr2:\n        north-xr3:\n"
        "        south-xr1:\n          edge_qc_dicom_ae_title: QC_SOUTH\n"
    )
    (inventory / "group_vars" / "site_north.yml").write_text("edge_qc_dicom_ae_title: QC_NORTH\n")
    (inventory / "host_vars" / "north-xr3.yml").write_text("edge_qc_dicom_ae_title: QC_NORTH_3\n")
    from edge.config_check import inventory_devices

    assert inventory_devices(inventory) == {
        "north-xr1": ("north-xr1", "QC_NORTH"),
        "north-xr2": ("north-xr2", "QC_NORTH"),
        "north-xr3": ("north-xr3", "QC_NORTH_3"),
        "south-xr1": ("south-xr1", "QC_SOUTH"),
    }
    code, errors, warnings = _check(tmp_path, capsys, NAMED + 'ae_title = "QC_NORTH"\n', "--inventory", str(inventory))
    assert (code, errors) == (0, [])
    (clash,) = warnings
    assert "'dicom.ae_title' 'QC_NORTH' is also the AE title of north-xr2 in the inventory" in clash
    assert "this device: north-xr1" in clash and "north-xr3" not in clash and "south" not in clash
    own = NAMED + 'ae_title = "QC_NORTH_1"\n'
    assert _check(tmp_path, capsys, own, "--inventory", str(inventory)) == (0, [], [])
    code, errors, _ = _check(tmp_path, capsys, NAMED, "--inventory", str(tmp_path / "absent"))
    assert code == 2 and "no such inventory" in errors[0]


def _layered_inventory(folder: Path) -> Path:
    """An inventory setting the AE title at every layer Ansible knows, to compare precedence with it."""
    (folder / "group_vars" / "edge_qc").mkdir(parents=True)
    (folder / "host_vars").mkdir()
    (folder / "hosts.yml").write_text(
        "all:\n  vars: {edge_qc_dicom_ae_title: ALL_INLINE}\n  children:\n"
        "    edge_qc:\n      vars: {edge_qc_dicom_ae_title: EDGE_QC_INLINE}\n      children:\n"
        "        site_a:\n          hosts:\n            a1:\n            a2: {edge_qc_dicom_ae_title: A2_INLINE}\n"
        "            a3:\n            a4:\n"
        "        site_b:\n          hosts:\n            b1:\n"
        "        site_c:\n          hosts:\n            c1:\n"
        "    other:\n      hosts:\n        a3:\n        b1:\n"
    )
    (folder / "group_vars" / "all.yml").write_text("edge_qc_dicom_ae_title: ALL_FILE\nedge_qc_site: x\n")
    (folder / "group_vars" / "site_a.yml").write_text("edge_qc_dicom_ae_title: SITE_A_FILE\n")
    (folder / "group_vars" / "other.yml").write_text("edge_qc_dicom_ae_title: OTHER_FILE\n")
    (folder / "group_vars" / "edge_qc" / "main.yml").write_text("edge_qc_dicom_ae_title: EDGE_QC_FILE\n")
    (folder / "host_vars" / "a4.yml").write_text("edge_qc_dicom_ae_title: A4_FILE\n")
    return folder


@pytest.mark.parametrize("which", ["example", "layered"])
def test_the_inventory_reader_agrees_with_ansible(tmp_path: Path, which: str) -> None:
    """Every AE title the reader finds is the one ansible-inventory resolves, through group vars inline
    and in group_vars/ (a file, a folder), group depth and name order, host vars inline and in host_vars/.
    The example inventory gives every device its own title."""
    from edge.config_check import inventory_devices
    from tests.fleet.test_lint import ANSIBLE, tool

    inventory = ANSIBLE / "inventory" / "example" if which == "example" else _layered_inventory(tmp_path / "inv")
    proc = tool("ansible-inventory", "-i", str(inventory), "--list", folder=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["_meta"]["hostvars"]
    devices = inventory_devices(inventory)
    assert set(devices) == set(listed)
    titles = {host: title for host, (_, title) in devices.items()}
    assert titles == {host: listed[host].get("edge_qc_dicom_ae_title", "EDGEQC") for host in listed}
    assert all(device == host for host, (device, _) in devices.items())
    if which == "example":
        assert len(set(titles.values())) == len(devices)
    else:  # each layer wins somewhere: the test can tell a wrong order
        assert titles == {"a1": "SITE_A_FILE", "a2": "A2_INLINE", "a3": "SITE_A_FILE", "a4": "A4_FILE",
                          "b1": "OTHER_FILE", "c1": "EDGE_QC_FILE"}  # fmt: skip


def test_an_empty_file_warns_on_every_default_a_site_must_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, errors, warnings = _check(tmp_path, capsys, "")
    assert (code, errors) == (0, [])
    assert _keys(warnings) == ["dicom.allowed_calling_aets", "mqtt.site", "mqtt.room", "mqtt.device"]
    assert "every modality is refused" in warnings[0] and "is still 'site'" in warnings[1]
    assert all(line.startswith(f"warning: {tmp_path / 'site.toml'}: ") for line in warnings)
    code, errors, warnings = _check(tmp_path, capsys, NAMED)
    assert (code, errors, warnings) == (0, [], [])
    probes_only = NAMED.replace('["NORTH_DR1"]', '["EDGEQC-PROBE"]')
    assert _keys(_check(tmp_path, capsys, probes_only)[2]) == ["dicom.allowed_calling_aets"]


@pytest.mark.parametrize(
    ("bind", "warned"), [("0.0.0.0", "every interface"), ("::", "every interface"), ("10.1.2.3", "10.1.2.3"),
                         ("127.0.0.1", None), ("::1", None)]
)  # fmt: skip
def test_metrics_on_the_network_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bind: str, warned: str | None
) -> None:
    code, errors, warnings = _check(tmp_path, capsys, NAMED + f'[metrics]\nbind = "{bind}"\n')
    assert (code, errors) == (0, [])
    if warned is None:
        assert warnings == []
        return
    (warning,) = warnings
    assert "'metrics.bind'" in warning and warned in warning
    assert "/metrics, /healthz, /readyz and /room are then open to the network" in warning
    assert "reverse proxy with TLS" in warning and "bind to loopback" in warning
    disabled = _check(tmp_path, capsys, NAMED + f'[metrics]\nenabled = false\nbind = "{bind}"\n')
    assert disabled == (0, [], [])


def test_three_errors_are_all_reported_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors first, each with its key; a warning about a key that has an error is left out (mqtt.site is
    refused, so no 'still site' warning for it), the others stay."""
    toml = '[model]\npath = "/nonexistent"\n[dicom]\nport = 0\n[mqtt]\nsite = "north/1"\n'
    code, errors, warnings = _check(tmp_path, capsys, toml)
    assert code == 2
    assert _keys(errors) == ["model.path", "dicom.port", "mqtt.site"]
    assert "/nonexistent is not a model version folder" in errors[0]
    assert _keys(warnings) == ["dicom.allowed_calling_aets", "mqtt.room", "mqtt.device"]


def test_state_paths_that_cannot_be_made_are_errors_outside_the_unit_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.config_check import UNIT_WRITABLE

    (tmp_path / "a-file").write_text("")
    a_file = tmp_path / "a-file"
    toml = NAMED + f'[service]\nspool_dir = "{a_file}"\noutbox_path = "{a_file / "o.sqlite"}"\n'
    code, errors, warnings = _check(tmp_path, capsys, toml)
    assert code == 2 and _keys(errors) == ["service.spool_dir", "service.outbox_path"]
    assert "is not a folder" in errors[0] and "cannot be made" in errors[1]
    toml = NAMED + f'[service]\nspool_dir = "{tmp_path / "spool"}"\n'
    code, errors, warnings = _check(tmp_path, capsys, toml)
    assert (code, errors, _keys(warnings)) == (0, [], ["service.spool_dir"])
    assert f"outside {UNIT_WRITABLE}" in warnings[0] and "ReadWritePaths=" in warnings[0]
    unit = (Path(edge.__file__).resolve().parent.parent / "systemd" / "edge-qc.service").read_text()
    assert f"ReadWritePaths={UNIT_WRITABLE}\n" in unit and "StateDirectory=edge-qc\n" in unit


def test_what_else_a_hospital_trips_on_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A private key every user can read, a write-back to this device, a TensorRT engine not built yet, a
    password in a file every user can read."""
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_text("PEM")
    (tmp_path / "server.key").chmod(0o644)
    toml = (
        NAMED.replace("[dicom]\n", '[dicom]\ntls_certfile = "server.crt"\ntls_keyfile = "server.key"\n')
        + '[writeback]\nenabled = true\nhost = "localhost"\ncalled_ae = "PACS"\n'
        + '[model]\nbackend = "tensorrt"\nengine = "device.plan"\n'
    )
    code, errors, warnings = _check(tmp_path, capsys, toml)
    assert (code, errors) == (0, [])
    assert _keys(warnings) == ["writeback.host", "dicom.tls_keyfile", "model.engine"]
    assert "mode 0644" in warnings[1] and "degraded" in warnings[2]
    (tmp_path / "server.key").chmod(0o600)
    toml = toml.replace('"localhost"', '"pacs.hospital.example"').replace("engine =", "fallback = false\nengine =")
    code, errors, warnings = _check(tmp_path, capsys, toml)
    assert (code, errors, _keys(warnings)) == (0, [], ["model.engine"])
    assert "refuses to start" in warnings[0]
    path = tmp_path / "site.toml"
    path.chmod(0o644)
    from edge.config_check import check_file

    path.write_text(NAMED.replace("[mqtt]\n", '[mqtt]\npassword = "hunter2"\n'))
    (warning,) = check_file(path).warnings
    assert "'mqtt.password' is in" in warning and "hunter2" not in warning
    path.chmod(0o640)
    assert check_file(path).warnings == ()


def test_config_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    path = tmp_path / "site.toml"
    path.write_text("[dicom]\nport = 0\n")
    assert main(["config-check", "--config", str(path), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(path) and report["valid"] is False
    assert len(report["errors"]) == 1 and "'dicom.port'" in report["errors"][0]
    assert len(report["warnings"]) == 4
