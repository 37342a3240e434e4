"""Site configuration: strict, typed, every error names the file and the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import edge
from edge.config import Config, ConfigError, load_config
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
