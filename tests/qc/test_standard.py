"""The QC standard file: shipped one loads; mistakes are named by key."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.qc.standard import ITEM_PARAMS, StandardError, load_standard, parse_standard
from edge.qc.structures import STRUCTURES, VIEWS


def shipped() -> dict[str, Any]:
    """The shipped standard as plain data, to break on purpose."""
    path = resources.files("edge.qc").joinpath("standards", "lumbar-1.0.toml")
    with resources.as_file(path) as real:
        standard = load_standard(real)
    return {
        "standard": {"name": standard.name, "version": standard.version},
        **{
            view: {
                item: {"severity": r.severity, "title": r.title, "message": r.message, **r.params}
                for item, r in rules.items()
            }
            for view, rules in standard.items.items()
        },
    }


def test_shipped_standard_covers_every_view() -> None:
    standard = load_standard()
    assert standard.version == "1.0.0"
    assert set(standard.items) == set(VIEWS)
    assert standard.rule("ap", "rotation_spinous").number("max_offset_ratio") == pytest.approx(0.10)
    assert standard.rule("oblique", "obliquity").number("min_angle_deg") == 30.0
    for view in VIEWS:
        for item, rule in standard.items[view].items():
            assert item in ITEM_PARAMS and rule.message and rule.title
            if "structure" in rule.params:
                assert rule.text("structure") in STRUCTURES


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["ap"]["rotation_spinous"].update(max_offset_ratoi=0.1),
            "unknown key 'ap.rotation_spinous.max_offset_ratoi'",
        ),
        (
            lambda d: d["ap"]["rotation_spinous"].pop("max_offset_ratio"),
            "missing key 'ap.rotation_spinous.max_offset_ratio'",
        ),
        (lambda d: d["lateral"].update(rotaton={}), "unknown item 'lateral.rotaton'"),
        (
            lambda d: d["ap"]["centring"].update(max_offset_fraction="ten"),
            "'ap.centring.max_offset_fraction' must be a number",
        ),
        (lambda d: d["ap"]["centring"].update(severity="maybe"), "'ap.centring.severity'"),
        (lambda d: d["ap"]["upper_coverage"].update(structure="body_T13"), "unknown structure 'body_T13'"),
        (lambda d: d.pop("oblique"), "missing view table [oblique.*]"),
        (lambda d: d.update(cervical={}), "unknown top-level key 'cervical'"),
    ],
)
def test_errors_name_the_bad_key(mutate: Callable[[dict[str, Any]], object], message: str) -> None:
    data = shipped()
    mutate(data)
    with pytest.raises(StandardError) as info:
        parse_standard(data, "site.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("site.toml:")


def test_unparsable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ap.centring\nseverity = 'fail'\n")
    with pytest.raises(StandardError, match=r"bad\.toml"):
        load_standard(bad)


def test_the_registry_the_standard_and_the_phantom_truth_name_the_same_items() -> None:
    """One definition per QC item: the registry (edge.qc.items), the shipped standard file and the
    phantom's truth know exactly the same items, and every table is derived from the registry."""
    from edge.qc.items import ITEMS
    from tools.phantom.truth import BORDERLINE, ITEM_TRUTHS

    standard = load_standard()
    in_standard = {item for rules in standard.items.values() for item in rules}
    assert set(ITEMS) == in_standard == set(ITEM_TRUTHS) == set(ITEM_PARAMS)
    assert set(BORDERLINE) <= set(ITEMS) and len(BORDERLINE) == 15
    for name, spec in ITEMS.items():
        assert spec.name == name and set(spec.limits) <= spec.required
        assert set(spec.structures) <= set(STRUCTURES), name
        for view in VIEWS:
            if name in standard.items[view]:
                assert spec.required <= set(standard.items[view][name].params), (view, name)
