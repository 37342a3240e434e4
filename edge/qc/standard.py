"""The QC standard: a versioned data file of per-view items, thresholds and messages.

Thresholds are data, not code, so a site can tune them and every verdict can name the standard's
version. Loading validates everything and names the offending key, because a silently ignored typo in
a threshold is a QC failure nobody sees.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from edge.config import ConfigError, QcConfig
from edge.qc.items import ITEMS
from edge.qc.rules import ItemRule, ParamValue, Severity, Standard, StandardError
from edge.qc.structures import STRUCTURES, VIEWS, View

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 (Ubuntu 22.04) ships Python 3.10
    import tomli as tomllib

# Every item the judge knows, with the parameters it needs (the registry's): unknown items or keys are errors.
ITEM_PARAMS: Final[dict[str, frozenset[str]]] = {name: spec.required for name, spec in ITEMS.items()}
_COMMON_KEYS: Final = frozenset({"severity", "title", "message"})
_OPTIONAL_PARAMS: Final[dict[str, frozenset[str]]] = {name: spec.optional for name, spec in ITEMS.items()}

DEFAULT_STANDARD: Final = "lumbar-1.0.toml"

# Thresholds a site may set below zero, because what they bound is signed and a negative bound changes
# the judgement: the exposure deviation index (IEC 62494-1; the lower bands are negative in the shipped
# standard) and the disc gap (negative where two bodies overlap; edge.qc.items.ap.disc_spaces). Every
# other threshold bounds a count, a fraction, a ratio, an eye position, an angle's size or a length, and
# a negative override is refused. A coverage margin is signed too, but a structure nearer the field's edge
# than the edge tolerance is "cut" and fails whatever min_margin_mm says: a negative minimum would be a
# no-op that looks like a tolerance, so it is refused as well.
SIGNED_PARAMS: Final = frozenset({"fail_below", "fail_above", "warn_below", "warn_above", "min_gap_mm"})


def allowed_keys(item: str) -> frozenset[str]:
    """The keys an item's table may hold: its parameters, optional ones, severity, title and message (the one
    rule, for the standard file and a site's overrides alike)."""
    return ITEM_PARAMS[item] | _COMMON_KEYS | _OPTIONAL_PARAMS.get(item, frozenset())


def _check_item(where: str, view: View, item: str, table: object) -> ItemRule:
    if item not in ITEM_PARAMS:
        raise StandardError(f"{where}: unknown item '{view}.{item}' (known: {', '.join(sorted(ITEM_PARAMS))})")
    if not isinstance(table, dict):
        raise StandardError(f"{where}: '{view}.{item}' must be a table")
    required = ITEM_PARAMS[item]
    allowed = allowed_keys(item)
    for key in table:
        if key not in allowed:
            raise StandardError(f"{where}: unknown key '{view}.{item}.{key}' (allowed: {', '.join(sorted(allowed))})")
    for key in sorted(required | _COMMON_KEYS):
        if key not in table:
            raise StandardError(f"{where}: missing key '{view}.{item}.{key}'")
    severity = table["severity"]
    if severity not in ("fail", "warn"):
        raise StandardError(f"{where}: '{view}.{item}.severity' must be 'fail' or 'warn', got {severity!r}")
    params: dict[str, ParamValue] = {}
    for key, value in table.items():
        if key in _COMMON_KEYS:
            continue
        if key == "structure":
            if value not in STRUCTURES:
                raise StandardError(f"{where}: '{view}.{item}.structure' names unknown structure {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise StandardError(f"{where}: '{view}.{item}.{key}' must be a number, got {value!r}")
        params[key] = value
    return ItemRule(
        view=view, item=item, severity=severity, title=str(table["title"]), message=str(table["message"]), params=params
    )


def parse_standard(data: Mapping[str, object], where: str = "<standard>") -> Standard:
    """Validate a parsed standard document; `where` names its source in every error."""
    for key in data:
        if key != "standard" and key not in VIEWS:
            raise StandardError(f"{where}: unknown top-level key '{key}' (expected 'standard' or a view {VIEWS})")
    header = data.get("standard")
    if not isinstance(header, dict) or not {"name", "version"} <= header.keys():
        raise StandardError(f"{where}: missing [standard] table with 'name' and 'version'")
    items: dict[View, dict[str, ItemRule]] = {}
    for view in VIEWS:
        table = data.get(view)
        if not isinstance(table, dict):
            raise StandardError(f"{where}: missing view table [{view}.*]")
        items[view] = {name: _check_item(where, view, name, body) for name, body in table.items()}
    return Standard(name=str(header["name"]), version=str(header["version"]), items=items)


def _read(path: Path | None) -> tuple[str, str]:
    if path is None:
        text = resources.files("edge.qc").joinpath("standards", DEFAULT_STANDARD).read_text("utf-8")
        return text, f"edge/qc/standards/{DEFAULT_STANDARD}"
    try:
        return path.read_text("utf-8"), str(path)
    except OSError as exc:
        raise StandardError(f"{path}: cannot read the QC standard: {exc.strerror}") from exc


def standard_data(path: Path | None = None) -> dict[str, Any]:
    """The parsed TOML of a standard file (before validation), for applying site overrides."""
    text, where = _read(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StandardError(f"{where}: {exc}") from exc


def load_standard(path: Path | None = None) -> Standard:
    """Load a standard file, or the one shipped with edge-qc when `path` is None."""
    _, where = _read(path)
    return parse_standard(standard_data(path), where)


def _override_problems(
    source: str, view: str, item: str, params: Mapping[str, object], base: Mapping[str, Any]
) -> list[str]:
    """What is wrong with one item's overrides (nothing: the empty list)."""
    if item not in ITEM_PARAMS:
        return [f"{source}: unknown QC item 'qc.overrides.{view}.{item}'"]
    if base.get(view, {}).get(item) is None:
        return [f"{source}: qc.overrides.{view}.{item}: the standard has no item '{item}' for {view}"]
    problems = []
    for key, value in params.items():
        if key not in allowed_keys(item):
            allowed = ", ".join(sorted(allowed_keys(item)))
            problems.append(f"{source}: qc.overrides.{view}.{item}.{key}: unknown key ({allowed})")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0 and key not in SIGNED_PARAMS:
            problems.append(
                f"{source}: qc.overrides.{view}.{item}.{key}: must not be negative, got {value!r}"
                f" (only {', '.join(sorted(SIGNED_PARAMS & allowed_keys(item))) or 'none'} of this item may be)"
            )
    return problems


def site_standard(qc: QcConfig, source: str) -> Standard:
    """The standard a site judges by: its standard file (or the shipped one) with the configuration's
    overrides applied and validated. Errors are one ConfigError with every problem, each naming the
    configuration's file and key."""
    problems = [
        f"{source}: unknown key 'qc.target_exposure_index.{view}' (views: {', '.join(VIEWS)})"
        for view in qc.target_exposure_index
        if view not in VIEWS
    ]
    try:
        base = standard_data(qc.standard)
    except StandardError as exc:
        raise ConfigError(*problems, f"{source}: qc.standard: {exc}") from exc
    for view, items in qc.overrides.items():
        if view not in VIEWS:
            problems.append(f"{source}: unknown key 'qc.overrides.{view}' (views: {', '.join(VIEWS)})")
            continue
        for item, params in items.items():
            found = _override_problems(source, view, item, params, base)
            problems.extend(found)
            if not found:
                base[view][item].update(params)
    if problems:
        raise ConfigError(*problems)
    where = str(qc.standard or f"edge/qc/standards/{DEFAULT_STANDARD}")
    try:
        return parse_standard(base, f"{where} with overrides from {source}")
    except StandardError as exc:
        raise ConfigError(str(exc)) from exc


__all__ = [
    "DEFAULT_STANDARD",
    "ITEM_PARAMS",
    "ItemRule",
    "ParamValue",
    "Severity",
    "Standard",
    "StandardError",
    "allowed_keys",
    "load_standard",
    "parse_standard",
    "site_standard",
    "standard_data",
]
