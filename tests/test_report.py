"""`edge-qc report` (edge.report): known history rows give exact counts, rates, reject categories and DI
quantiles, as CSV and as a self-contained HTML page with the exposure plot."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path

import pytest

from edge.cli import main
from edge.history import History, HistoryRow
from edge.qc.items import ITEMS
from edge.report import (
    CATEGORIES,
    CLIPPED_ANATOMY,
    COLLIMATION,
    ITEM_CATEGORIES,
    NOT_JUDGED,
    OTHER,
    OVEREXPOSURE,
    POSITIONING,
    UNDEREXPOSURE,
    build,
    item_category,
    quantile,
    to_csv,
    to_html,
    trend_svg,
)
from tests.conftest import history_row

START, END = dt.date(2026, 3, 2), dt.date(2026, 3, 4)


def at(day: int, hour: int = 10) -> float:
    """A moment of March 2026 in local time (the report's days are local days)."""
    return dt.datetime(2026, 3, day, hour).timestamp()


def row(n: int, when: float, view: str, verdict: str, **changes: object) -> HistoryRow:
    return history_row(f"jetson7-{n}", when, view=view, verdict=verdict, **changes)


# ap: 3 pass, 2 fail; lateral: 1 pass, 1 fail, 1 indeterminate; unknown: 1 indeterminate, 1 rejected.
# Left out: a probe, a row of another room (only with --room), a row the day before the period.
ROWS = (
    row(1, at(2), "ap", "pass", di=0.0, ei=300.0, kvp=80.0, mas=10.0),
    row(2, at(2, 11), "ap", "pass", di=0.5, ei=336.6, kvp=85.0, mas=12.0, warned=("centring",)),
    row(3, at(3), "ap", "pass", di=-0.5, ei=267.4, degraded=True),
    row(4, at(3, 11), "ap", "fail", di=1.0, failed=("upper_coverage", "centring", "lateral_coverage")),
    row(5, at(4), "ap", "fail", di=2.5, failed=("exposure_index", "collimation")),
    row(6, at(2), "lateral", "pass", di=-1.0),
    row(7, at(3), "lateral", "fail", di=-2.2, failed=("exposure_index", "tilt_double_endplates")),
    row(8, at(4), "lateral", "indeterminate", reason_code="unreadable", di=-1.5),
    row(9, at(4), "unknown", "indeterminate", reason_code="not_lumbar_spine"),
    row(10, at(4), "unknown", "rejected", reason_code="undecodable", di=0.3),
    row(11, at(3), "ap", "fail", probe=True, failed=("upper_coverage",), di=3.0),
    row(12, at(3), "ap", "fail", room="xr3", failed=("collimation",)),
    row(13, at(1), "ap", "fail", failed=("collimation",)),
)


def csv_table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def cell(table: list[dict[str, str]], section: str, view: str, key: str, column: str = "count", day: str = "") -> str:
    found = [r for r in table if (r["section"], r["view"], r["key"], r["day"]) == (section, view, key, day)]
    assert len(found) == 1, (section, view, key, day, found)
    return found[0][column]


def test_every_item_has_a_reject_category_and_the_exposure_index_goes_by_the_sign_of_di() -> None:
    assert set(ITEM_CATEGORIES) == set(ITEMS)
    assert all(category != OTHER for category in ITEM_CATEGORIES.values())
    assert item_category("upper_coverage") == CLIPPED_ANATOMY and item_category("obliquity") == POSITIONING
    assert item_category("collimation") == COLLIMATION and item_category("clipping") == OVEREXPOSURE
    assert item_category("exposure_index", 1.2) == OVEREXPOSURE
    assert item_category("exposure_index", -0.9) == UNDEREXPOSURE
    assert item_category("exposure_index", None) == OTHER


def test_quantiles_interpolate_between_order_statistics() -> None:
    assert quantile([], 0.5) is None
    assert quantile([2.0], 0.9) == 2.0
    assert quantile([0.0, 0.5, -0.5, 1.0, 2.5], 0.5) == 0.5
    assert quantile([0.0, 0.5, -0.5, 1.0, 2.5], 0.1) == pytest.approx(-0.3)
    assert quantile([0.0, 0.5, -0.5, 1.0, 2.5], 0.9) == pytest.approx(1.9)


def test_counts_rates_categories_and_exposure_from_known_rows() -> None:
    report = build(ROWS, START, END, room="xr2")
    counts = {c.view: (c.images, c.passed, c.failed, c.indeterminate, c.rejected, c.degraded) for c in report.views}
    assert counts == {
        "ap": (5, 3, 2, 0, 0, 1),
        "lateral": (3, 1, 1, 1, 0, 0),
        "unknown": (2, 0, 0, 1, 1, 0),
        "all": (10, 4, 3, 2, 1, 1),
    }
    assert report.probes == 1
    items = {(i.view, i.item): (i.failed, i.warned, i.images, i.category) for i in report.items}
    assert items == {
        ("ap", "upper_coverage"): (1, 0, 5, CLIPPED_ANATOMY),
        ("ap", "centring"): (1, 1, 5, POSITIONING),
        ("ap", "lateral_coverage"): (1, 0, 5, CLIPPED_ANATOMY),
        ("ap", "exposure_index"): (1, 0, 5, ITEM_CATEGORIES["exposure_index"]),
        ("ap", "collimation"): (1, 0, 5, COLLIMATION),
        ("lateral", "exposure_index"): (1, 0, 3, ITEM_CATEGORIES["exposure_index"]),
        ("lateral", "tilt_double_endplates"): (1, 0, 3, POSITIONING),
    }
    categories = {(c.view, c.category): (c.images, c.of) for c in report.categories if c.images}
    assert categories == {
        ("ap", POSITIONING): (1, 5),
        ("ap", CLIPPED_ANATOMY): (1, 5),  # two coverage items failed on one image: one image
        ("ap", COLLIMATION): (1, 5),
        ("ap", OVEREXPOSURE): (1, 5),  # DI +2.5
        ("lateral", POSITIONING): (1, 3),
        ("lateral", UNDEREXPOSURE): (1, 3),  # DI -2.2
        ("lateral", NOT_JUDGED): (1, 3),
        ("unknown", NOT_JUDGED): (2, 2),
        ("all", POSITIONING): (2, 10),
        ("all", CLIPPED_ANATOMY): (1, 10),
        ("all", COLLIMATION): (1, 10),
        ("all", OVEREXPOSURE): (1, 10),
        ("all", UNDEREXPOSURE): (1, 10),
        ("all", NOT_JUDGED): (3, 10),
    }
    reasons = {(r.view, r.verdict, r.reason): r.count for r in report.reasons}
    assert reasons == {
        ("lateral", "indeterminate", "unreadable"): 1,
        ("unknown", "indeterminate", "not_lumbar_spine"): 1,
        ("unknown", "rejected", "undecodable"): 1,
    }
    exposure = {s.view: [s.n, s.di_median, s.di_p10, s.di_p90] for s in report.exposure}
    assert exposure["ap"] == pytest.approx([5, 0.5, -0.3, 1.9])
    assert exposure["lateral"] == pytest.approx([3, -1.5, -2.06, -1.1])
    assert exposure["unknown"] == pytest.approx([1, 0.3, 0.3, 0.3])
    assert exposure["all"][:2] == [9, 0.0]  # -2.2 -1.5 -1 -0.5 0 0.3 0.5 1 2.5
    ap = next(s for s in report.exposure if s.view == "ap")
    assert [ap.ei_median, ap.kvp_median, ap.mas_median] == pytest.approx([300.0, 82.5, 11.0])
    trend = {(s.view, s.day): (s.n, s.di_median) for s in report.trend}
    assert trend == {
        ("ap", dt.date(2026, 3, 2)): (2, 0.25),
        ("ap", dt.date(2026, 3, 3)): (2, 0.25),
        ("ap", dt.date(2026, 3, 4)): (1, 2.5),
        ("lateral", dt.date(2026, 3, 2)): (1, -1.0),
        ("lateral", dt.date(2026, 3, 3)): (1, -2.2),
        ("lateral", dt.date(2026, 3, 4)): (1, -1.5),
        ("unknown", dt.date(2026, 3, 4)): (1, 0.3),
    }


def test_filters_by_room_and_view() -> None:
    every_room = build(ROWS, START, END)
    assert next(c for c in every_room.views if c.view == "ap").images == 6
    assert every_room.places == ("h1/xr2/jetson7", "h1/xr3/jetson7")
    lateral = build(ROWS, START, END, room="xr2", view="lateral")
    assert [(c.view, c.images) for c in lateral.views] == [("lateral", 3), ("all", 3)]
    assert build(ROWS, dt.date(2026, 3, 1), dt.date(2026, 3, 1)).views[-1].images == 1


def test_csv_is_one_long_table_with_exact_counts_and_rates() -> None:
    table = csv_table(to_csv(build(ROWS, START, END, room="xr2")))
    assert list(table[0]) == ["section", "view", "day", "key", "category", "count", "denominator", "rate", "value"]
    assert cell(table, "images", "ap", "fail") == "2" and cell(table, "images", "ap", "fail", "rate") == "0.4000"
    assert cell(table, "images", "all", "images") == "10" and cell(table, "images", "all", "degraded") == "1"
    assert cell(table, "images", "lateral", "indeterminate", "rate") == "0.3333"
    assert cell(table, "item_failed", "ap", "centring") == "1" and cell(table, "item_warned", "ap", "centring") == "1"
    assert cell(table, "item_failed", "lateral", "exposure_index", "denominator") == "3"
    assert cell(table, "category", "all", NOT_JUDGED) == "3"
    assert cell(table, "category", "all", NOT_JUDGED, "rate") == "0.3000"
    assert cell(table, "category", "lateral", UNDEREXPOSURE) == "1"
    assert cell(table, "rejected", "unknown", "undecodable") == "1"
    assert cell(table, "indeterminate", "lateral", "unreadable") == "1"
    assert cell(table, "exposure", "ap", "di_p90", "value") == "1.900"
    assert cell(table, "exposure_day", "ap", "di_median", "value", day="2026-03-02") == "0.250"
    assert cell(table, "probes", "", "probes") == "1"
    assert {r["section"] for r in table} == {
        "report", "probes", "images", "category", "item_failed", "item_warned", "indeterminate", "rejected",
        "exposure", "exposure_day",
    }  # fmt: skip


def test_html_is_self_contained_with_a_plot_per_view() -> None:
    report = build(ROWS, START, END, room="xr2")
    page = to_html(report, {("ap", "upper_coverage"): "Upper coverage (T12)"})
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    assert not re.search(r"<script|<link|<img|\bsrc=|\bhref=|url\(", page)  # nothing fetched, nothing run
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    assert "Upper coverage (T12)" in page and "Task Group 305" in page and "J Appl Clin Med Phys" in page
    svg = trend_svg(report)
    for view in ("ap", "lateral", "unknown"):
        path = re.search(rf'<path class="median" data-view="{view}" d="([^"]+)"', svg)
        assert path is not None, view
        assert len(re.findall(r"[ML][0-9.]+,[0-9.]+", path.group(1))) == {"ap": 3, "lateral": 3, "unknown": 1}[view]
    assert 'data-view="oblique"' not in svg
    assert 'class="degraded"' in page and "fallback backend" in page
    empty = trend_svg(build((), START, END))
    assert "no deviation index recorded" in empty and "<path" not in empty


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = History(tmp_path / "history.sqlite", 3650, 1000)
    for r in ROWS:
        history.record(r)
    history.close()
    args = ["report", "--history", str(tmp_path / "history.sqlite"), "--from", "2026-03-02", "--to", "2026-03-04"]
    assert main([*args, "--room", "xr2"]) == 0
    table = csv_table(capsys.readouterr().out)
    assert cell(table, "images", "all", "images") == "10"
    assert main([*args, "--view", "lateral", "--format", "html", "--out", str(tmp_path / "r.html")]) == 0
    assert 'data-view="lateral"' in (tmp_path / "r.html").read_text()
    assert main(["report", "--history", str(tmp_path / "absent.sqlite")]) == 2
    assert "no history at" in capsys.readouterr().err
    assert main([*args[:3], "--from", "2026-03-05", "--to", "2026-03-04"]) == 2
    (tmp_path / "not.sqlite").write_text("not a database at all, long enough to be read as one" * 20)
    assert main(["report", "--history", str(tmp_path / "not.sqlite")]) == 2
    assert "cannot read the history" in capsys.readouterr().err


def test_categories_are_listed_in_a_fixed_order() -> None:
    report = build(ROWS, START, END, room="xr2")
    order = [c.category for c in report.categories if c.view == "all"]
    assert order == [c for c in CATEGORIES if c in order]
