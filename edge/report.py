"""`edge-qc report`: reject and exposure analysis from the device's verdict history (edge.history).

Pure functions from history rows to tables (`build`), and the tables as CSV (`to_csv`, one long
layout, documented in README.md) or as one self-contained HTML page (`to_html`: no script, no external
asset, the exposure trend drawn by hand as inline SVG, since the Jetson has no plotting library). Health
probes are left out of every count (and their number said); degraded verdicts are counted and flagged.

Periods are calendar days in this device's local time, by when the verdict was committed (the clock
the Prometheus counters count by), not by the modality's acquisition time, which a wrong modality
clock would move.

Reject categories: each failed QC item is mapped to a broad category after the reject-reason schema
that AAPM Task Group 305 proposes (Little et al. 2023, J Appl Clin Med Phys 24(5):e13938). The mapping
(ITEM_CATEGORIES, and the exposure index split by the sign of DI) is edge-qc's own: check the category
names against the report's table of reject reasons before a site relies on them. A "fail" is a repeat
edge-qc advises, not an image the radiographer rejected at the console.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import html
import io
import math
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.config import Config, ConfigError, load_config
from edge.history import HistoryRow, history_path, open_for_reading, read_rows

VIEWS: Final = ("ap", "lateral", "oblique", "unknown")  # "unknown": view not judged, and every rejected image
ALL: Final = "all"
VERDICTS: Final = ("pass", "fail", "indeterminate", "rejected")

# Reject categories after AAPM TG-305's proposed schema. OUR mapping and OUR wording of the names: check
# them against the report's table of reject reasons before a site relies on them.
POSITIONING: Final = "Positioning"
CLIPPED_ANATOMY: Final = "Clipped anatomy"
COLLIMATION: Final = "Collimation"
OVEREXPOSURE: Final = "Overexposure"
UNDEREXPOSURE: Final = "Underexposure"
OTHER: Final = "Other"
NOT_JUDGED: Final = "Not judged by edge-qc"  # indeterminate and rejected images: a person judges them
CATEGORIES: Final = (POSITIONING, CLIPPED_ANATOMY, COLLIMATION, OVEREXPOSURE, UNDEREXPOSURE, OTHER, NOT_JUDGED)
EXPOSURE_ITEM: Final = "exposure_index"  # over- or under-exposure by the sign of its DI
EXPOSURE_CATEGORY: Final = f"{OVEREXPOSURE} (DI > 0) / {UNDEREXPOSURE} (DI < 0)"
ITEM_CATEGORIES: Final[Mapping[str, str]] = {
    "upper_coverage": CLIPPED_ANATOMY,
    "lower_coverage": CLIPPED_ANATOMY,
    "lateral_coverage": CLIPPED_ANATOMY,
    "front_back_coverage": CLIPPED_ANATOMY,
    "centring": POSITIONING,
    "axis_tilt": POSITIONING,
    "rotation_spinous": POSITIONING,
    "rotation_pedicles": POSITIONING,
    "pelvis_rotation": POSITIONING,
    "disc_spaces": POSITIONING,  # the tube angle to the disc spaces
    "foramina": POSITIONING,
    "rotation_double_margins": POSITIONING,
    "tilt_double_endplates": POSITIONING,
    "obliquity": POSITIONING,
    "facet_joints": POSITIONING,
    "collimation": COLLIMATION,
    "clipping": OVEREXPOSURE,  # detector saturation inside the anatomy
    EXPOSURE_ITEM: EXPOSURE_CATEGORY,
}
MAPPING_NOTE: Final = (
    "Reject categories: edge-qc's own mapping of its QC items to the broad reject reasons of the schema AAPM"
    " Task Group 305 proposes (Little et al. 2023, J Appl Clin Med Phys 24(5):e13938); check the category names"
    " against the report's table before a site relies on them. A fail is a repeat edge-qc advises, not an image"
    " rejected at the console; 'Not judged by edge-qc' counts the indeterminate and rejected images."
)
# The installed appliance's configuration (Ansible's), read for its history.path when --config is not given.
INSTALLED_CONFIG: Final = Path("/etc/edge-qc/site.toml")
CSV_COLUMNS: Final = ("section", "view", "day", "key", "category", "count", "denominator", "rate", "value")


def item_category(item: str, di: float | None = None) -> str:
    """The reject category of one failed item (the exposure index by the sign of the image's DI)."""
    if item == EXPOSURE_ITEM:
        if di is not None and di > 0:
            return OVEREXPOSURE
        if di is not None and di < 0:
            return UNDEREXPOSURE
        return OTHER
    return ITEM_CATEGORIES.get(item, OTHER)


def rate(count: int, of: int) -> float | None:
    return count / of if of else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics (Hyndman and Fan's type 7,
    numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


@dataclass(frozen=True)
class ViewCounts:
    view: str  # a view, or "all"
    images: int
    passed: int
    failed: int
    indeterminate: int
    rejected: int
    degraded: int  # judged by the fallback backend (also in the counts above)

    def count(self, verdict: str) -> int:
        return {"pass": self.passed, "fail": self.failed, "indeterminate": self.indeterminate}.get(
            verdict, self.rejected
        )


@dataclass(frozen=True)
class ItemCount:
    view: str
    item: str
    category: str
    failed: int
    warned: int
    images: int  # of the view: the rates' denominator


@dataclass(frozen=True)
class CategoryCount:
    view: str
    category: str
    images: int  # images with at least one failed item in the category (or not judged)
    of: int  # images of the view


@dataclass(frozen=True)
class Spread:
    """Exposure of the images with a DI, for a view (or all) over the period or one day."""

    view: str
    day: dt.date | None  # None: the whole period
    n: int
    di_median: float | None
    di_p10: float | None
    di_p90: float | None
    ei_median: float | None
    kvp_median: float | None
    mas_median: float | None


@dataclass(frozen=True)
class ReasonCount:
    view: str
    verdict: str  # indeterminate or rejected
    reason: str  # the reason code (as in edgeqc_images_indeterminate_total and edgeqc_images_rejected_total)
    count: int


@dataclass(frozen=True)
class Report:
    start: dt.date
    end: dt.date  # inclusive
    room: str | None  # the filters asked for
    view: str | None
    views: tuple[ViewCounts, ...]  # each view with images, then "all"
    items: tuple[ItemCount, ...]
    categories: tuple[CategoryCount, ...]
    exposure: tuple[Spread, ...]  # per view with a DI, then "all"
    trend: tuple[Spread, ...]  # per view per day
    reasons: tuple[ReasonCount, ...]
    probes: int  # health-probe verdicts left out
    places: tuple[str, ...]  # site/room/device seen
    stations: tuple[str, ...]
    models: tuple[str, ...]


def day_of(unix: float) -> dt.date:
    """The local calendar day of a moment."""
    return dt.datetime.fromtimestamp(unix).date()


def bounds(start: dt.date, end: dt.date) -> tuple[float, float]:
    """[start 00:00, the day after end 00:00) in local time, as Unix seconds."""
    first = dt.datetime.combine(start, dt.time.min).timestamp()
    return first, dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min).timestamp()


def _ordered_views(rows: Iterable[HistoryRow]) -> list[str]:
    seen = {row.view for row in rows}
    return [v for v in VIEWS if v in seen] + sorted(seen - set(VIEWS))


def _counts(view: str, rows: Sequence[HistoryRow]) -> ViewCounts:
    n = Counter(row.verdict for row in rows)
    degraded = sum(row.degraded for row in rows)
    return ViewCounts(view, len(rows), n["pass"], n["fail"], n["indeterminate"], n["rejected"], degraded)


def _categories(view: str, rows: Sequence[HistoryRow]) -> list[CategoryCount]:
    found: Counter[str] = Counter()
    for row in rows:
        if row.verdict in ("indeterminate", "rejected"):
            found[NOT_JUDGED] += 1
        for category in {item_category(item, row.di) for item in row.failed}:
            found[category] += 1
    return [CategoryCount(view, c, found[c], len(rows)) for c in CATEGORIES if found[c] or c != OTHER]


def _median(values: Sequence[float]) -> float | None:
    return quantile(values, 0.5)


def _spread(view: str, day: dt.date | None, rows: Sequence[HistoryRow]) -> Spread:
    di = [row.di for row in rows if row.di is not None]
    ei = [row.ei for row in rows if row.ei is not None]
    kvp = [row.kvp for row in rows if row.kvp is not None]
    mas = [row.mas for row in rows if row.mas is not None]
    return Spread(
        view, day, len(di), _median(di), quantile(di, 0.1), quantile(di, 0.9), _median(ei), _median(kvp), _median(mas)
    )


def build(
    rows: Iterable[HistoryRow], start: dt.date, end: dt.date, room: str | None = None, view: str | None = None
) -> Report:
    """The report over [start, end] (local days, by commit time), for one room and one view when asked."""
    since, until = bounds(start, end)
    chosen = [
        row
        for row in rows
        if since <= row.committed_unix < until
        and (room is None or row.room == room)
        and (view is None or row.view == view)
    ]
    probes = sum(row.probe for row in chosen)
    clinical = [row for row in chosen if not row.probe]
    by_view = {v: [row for row in clinical if row.view == v] for v in _ordered_views(clinical)}
    groups = [*by_view.items(), (ALL, clinical)]
    items: list[ItemCount] = []
    for v, group in by_view.items():
        failed = Counter(item for row in group for item in row.failed)
        warned = Counter(item for row in group for item in row.warned)
        for item in sorted(set(failed) | set(warned), key=lambda i: (-failed[i], i)):
            category = ITEM_CATEGORIES.get(item, OTHER)
            items.append(ItemCount(v, item, category, failed[item], warned[item], len(group)))
    reasons = Counter(
        (row.view, row.verdict, row.reason_code or "unknown")
        for row in clinical
        if row.verdict in ("indeterminate", "rejected")
    )
    trend: list[Spread] = []
    for v, group in by_view.items():
        days: dict[dt.date, list[HistoryRow]] = {}
        for row in group:
            if row.di is not None:
                days.setdefault(day_of(row.committed_unix), []).append(row)
        trend.extend(_spread(v, day, days[day]) for day in sorted(days))
    return Report(
        start=start,
        end=end,
        room=room,
        view=view,
        views=tuple(_counts(v, group) for v, group in groups if group or v == ALL),
        items=tuple(items),
        categories=tuple(c for v, group in groups for c in _categories(v, group)),
        exposure=tuple(_spread(v, None, group) for v, group in groups if any(r.di is not None for r in group)),
        trend=tuple(trend),
        reasons=tuple(ReasonCount(v, verdict, reason, n) for (v, verdict, reason), n in sorted(reasons.items())),
        probes=probes,
        places=tuple(sorted({f"{row.site}/{row.room}/{row.device}" for row in clinical})),
        stations=tuple(sorted({row.station for row in clinical if row.station})),
        models=tuple(sorted({row.model for row in clinical if row.model})),
    )


# ------------------------------------------------------------------------------------------------ CSV


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def csv_rows(report: Report) -> list[tuple[str, ...]]:
    """The report as rows of CSV_COLUMNS (README.md, "History and reports", documents each section)."""
    out: list[tuple[str, ...]] = [
        ("report", "", "", "from", "", "", "", "", report.start.isoformat()),
        ("report", "", "", "to", "", "", "", "", report.end.isoformat()),
        ("report", "", "", "room", "", "", "", "", report.room or ""),
        ("report", "", "", "view", "", "", "", "", report.view or ""),
        ("probes", "", "", "probes", "", str(report.probes), "", "", ""),
    ]

    def counted(section: str, view: str, key: str, count: int, of: int, category: str = "") -> tuple[str, ...]:
        return (section, view, "", key, category, str(count), str(of), _number(rate(count, of), 4), "")

    for c in report.views:
        out.append(counted("images", c.view, "images", c.images, c.images))
        for verdict in VERDICTS:
            out.append(counted("images", c.view, verdict, c.count(verdict), c.images))
        out.append(counted("images", c.view, "degraded", c.degraded, c.images))
    out.extend(counted("category", c.view, c.category, c.images, c.of) for c in report.categories)
    out.extend(counted("item_failed", i.view, i.item, i.failed, i.images, i.category) for i in report.items)
    out.extend(counted("item_warned", i.view, i.item, i.warned, i.images, i.category) for i in report.items)
    for r in report.reasons:
        out.append((r.verdict, r.view, "", r.reason, "", str(r.count), "", "", ""))
    for s in (*report.exposure, *report.trend):
        section, day = ("exposure", "") if s.day is None else ("exposure_day", s.day.isoformat())
        out.append((section, s.view, day, "n", "", str(s.n), "", "", ""))
        values = {
            "di_median": s.di_median,
            "di_p10": s.di_p10,
            "di_p90": s.di_p90,
            "ei_median": s.ei_median,
            "kvp_median": s.kvp_median,
            "mas_median": s.mas_median,
        }
        out.extend((section, s.view, day, key, "", "", "", "", _number(v)) for key, v in values.items())
    return out


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(report))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ SVG

VIEW_COLOURS: Final[Mapping[str, str]] = {
    "ap": "#1f5fbf",
    "lateral": "#c0392b",
    "oblique": "#1e8449",
    "unknown": "#7f7f7f",
}
PLOT_SIZE: Final = (760, 320)
_MARGIN: Final = (60, 24, 34, 40)  # left, right, top (the legend), bottom
DODGE_PX: Final = 5.0  # views side by side on a day, so that equal medians do not hide each other


def _ticks(start: dt.date, end: dt.date, most: int = 8) -> list[dt.date]:
    days = (end - start).days
    step = max(1, math.ceil((days + 1) / most))
    return [start + dt.timedelta(days=d) for d in range(0, days + 1, step)]


def trend_svg(report: Report) -> str:
    """The daily median DI per view over the period (with each day's p10-p90 as a bar, the target band
    DI -1..+1 shaded), as inline SVG drawn by hand: one <path class="median" data-view=...> and its
    points per view."""
    width, height = PLOT_SIZE
    left, right, top, bottom = _MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in report.trend for v in (s.di_p10, s.di_p90) if v is not None]
    lo = max(-10.0, min(-3.0, math.floor(min(values, default=0.0))))
    hi = min(10.0, max(3.0, math.ceil(max(values, default=0.0))))
    slots = (report.end - report.start).days + 1

    def x(day: dt.date) -> float:  # the middle of the day's slot: nothing on the frame
        return left + plot_w * ((day - report.start).days + 0.5) / slots

    def y(value: float) -> float:
        return top + plot_h * (hi - min(max(value, lo), hi)) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="di-trend" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="Deviation index per view and day">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#999999"/>',
        f'<rect class="target" x="{left}" y="{y(1.0):.1f}" width="{plot_w}" height="{y(-1.0) - y(1.0):.1f}"'
        ' fill="#e3f2e3"/>',
    ]
    for level in range(int(lo), int(hi) + 1):
        stroke = "#555555" if level == 0 else "#dddddd"
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(level):.1f}" y2="{y(level):.1f}" stroke="{stroke}"/>'
            f'<text x="{left - 6}" y="{y(level) + 4:.1f}" text-anchor="end" font-size="11">{level:+d}</text>'
        )
    for day in _ticks(report.start, report.end):
        parts.append(
            f'<text x="{x(day):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">'
            f"{day.isoformat()}</text>"
        )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="12" transform="rotate(-90 14 {top + plot_h / 2:.1f})"'
        ' text-anchor="middle">DI (daily median, p10-p90)</text>'
    )
    views = [v for v in VIEWS if any(s.view == v for s in report.trend)]
    views += sorted({s.view for s in report.trend} - set(views))
    for n, view in enumerate(views):
        colour = VIEW_COLOURS.get(view, "#000000")
        dodge = (n - (len(views) - 1) / 2) * DODGE_PX
        days = [s for s in report.trend if s.view == view and s.di_median is not None]
        points = [(x(s.day) + dodge, y(s.di_median)) for s in days if s.day is not None and s.di_median is not None]
        group = [f'<g class="view" data-view="{html.escape(view)}">']
        for s in days:
            if s.day is not None and s.di_p10 is not None and s.di_p90 is not None:
                px = x(s.day) + dodge
                group.append(
                    f'<line class="spread" x1="{px:.1f}" x2="{px:.1f}" y1="{y(s.di_p10):.1f}"'
                    f' y2="{y(s.di_p90):.1f}" stroke="{colour}" stroke-width="3" stroke-opacity="0.35"/>'
                )
        path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(points))
        group.append(
            f'<path class="median" data-view="{html.escape(view)}" d="{path}" fill="none" stroke="{colour}"'
            ' stroke-width="2"/>'
        )
        group.extend(
            f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"/>' for px, py in points
        )
        legend_x = left + 90 * n  # above the plot, clear of the data
        group.append(
            f'<rect x="{legend_x}" y="{top - 21}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{top - 12}" font-size="12">{html.escape(view)}</text></g>'
        )
        parts.extend(group)
    if not views:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" font-size="14">'
            "no deviation index recorded in this period</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- HTML

_STYLE: Final = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; }
th { background: #f0f0f0; }
tr.degraded td { background: #fff4d6; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""


_NUMERIC: Final = re.compile(r"^[+-]?[0-9]")


def _pct(count: int, of: int) -> str:
    share = rate(count, of)
    return f"{count}" if share is None else f"{count} ({100 * share:.1f} %)"


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] = ()) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if head else ""]
    for n, row in enumerate(rows):
        css = f' class="{classes[n]}"' if n < len(classes) and classes[n] else ""
        cells = (f'<td{" class=n" if _NUMERIC.match(c) else ""}>{html.escape(c)}</td>' for c in row)
        out.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def to_html(report: Report, titles: Mapping[tuple[str, str], str] | None = None, generated: str = "") -> str:
    """One self-contained page (inline style and SVG, no script, no external asset) with no patient
    data: the history holds none. `titles`: (view, item) -> the standard's title for the item tables."""
    titles = titles or {}
    period = f"{report.start.isoformat()} to {report.end.isoformat()}"
    filters = ", ".join(
        f"{name} {value}" for name, value in (("room", report.room), ("view", report.view)) if value
    )
    meta = [
        ("Period", f"{period} (local days, by the time each verdict was committed)"),
        ("Filters", filters or "none"),
        ("Site/room/device", ", ".join(report.places) or "none"),
        ("Stations", ", ".join(report.stations) or "none recorded"),
        ("Models", ", ".join(report.models) or "none"),
        ("Health probes left out", str(report.probes)),
    ]
    if generated:
        meta.append(("Generated", generated))
    degraded = sum(c.degraded for c in report.views if c.view == ALL)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edge-qc report {html.escape(period)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>edge-qc reject and exposure report</h1>",
        _table((), meta),
        "<h2>Images per view</h2>",
        _table(
            ("View", "Images", "Pass", "Fail", "Indeterminate", "Rejected", "Degraded"),
            (
                (c.view, str(c.images), *(_pct(c.count(v), c.images) for v in VERDICTS), _pct(c.degraded, c.images))
                for c in report.views
            ),
            ["degraded" if c.degraded else "" for c in report.views],
        ),
    ]
    if degraded:
        parts.append(
            f'<p class="note"><strong>{degraded} image(s) judged by the fallback backend (degraded)</strong>: their'
            " verdicts count above; the rows with any are marked.</p>"
        )
    views = [c.view for c in report.views]
    cells = {(c.view, c.category): c for c in report.categories}
    parts += [
        "<h2>Reject categories</h2>",
        _table(
            ("Category", *views),
            (
                (
                    category,
                    *(_pct(c.images, c.of) if c else "" for c in (cells.get((v, category)) for v in views)),
                )
                for category in CATEGORIES
                if any(c.category == category for c in report.categories)
            ),
        ),
        f'<p class="note">{html.escape(MAPPING_NOTE)}</p>',
        "<h2>Failed items</h2>",
        _table(
            ("View", "Item", "Category", "Failed", "Warned"),
            (
                (
                    i.view,
                    titles.get((i.view, i.item), i.item),
                    i.category,
                    _pct(i.failed, i.images),
                    _pct(i.warned, i.images),
                )
                for i in report.items
            ),
        )
        if report.items
        else "<p>No item failed or warned.</p>",
        "<h2>Exposure</h2>",
        _table(
            ("View", "Images with DI", "DI median", "DI p10", "DI p90", "EI median", "kVp median", "mAs median"),
            (
                (
                    s.view,
                    str(s.n),
                    _cell(s.di_median),
                    _cell(s.di_p10),
                    _cell(s.di_p90),
                    _cell(s.ei_median, 0),
                    _cell(s.kvp_median, 0),
                    _cell(s.mas_median),
                )
                for s in report.exposure
            ),
        ),
        '<figure id="trend">',
        trend_svg(report),
        "<figcaption>Deviation index per view and day: the line joins the daily medians, the bars span the"
        " 10th to 90th percentiles, the shaded band is DI -1 to +1.</figcaption></figure>",
        "<details><summary>Deviation index per view and day</summary>",
        _table(
            ("View", "Day", "Images with DI", "DI median", "DI p10", "DI p90"),
            (
                (
                    s.view,
                    s.day.isoformat() if s.day else "",
                    str(s.n),
                    _cell(s.di_median),
                    _cell(s.di_p10),
                    _cell(s.di_p90),
                )
                for s in report.trend
            ),
        ),
        "</details>",
        "<h2>Not judged: indeterminate and rejected images by reason</h2>",
        _table(
            ("View", "Verdict", "Reason", "Images"),
            ((r.view, r.verdict, r.reason, str(r.count)) for r in report.reasons),
        )
        if report.reasons
        else "<p>None.</p>",
        '<p class="note">Rates are of the images of the view (health probes left out). "unknown": the view was not'
        " judged, and every rejected image. DI quantiles interpolate linearly between order statistics.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ CLI


def item_titles(config: Config) -> dict[tuple[str, str], str]:
    """(view, item) -> the site standard's title ({} where the standard cannot be read)."""
    from edge.qc.rules import StandardError
    from edge.qc.standard import site_standard

    try:
        standard = site_standard(config.qc, config.source)
    except (ConfigError, StandardError, OSError):
        return {}
    return {(view, item): rule.title for view, rules in standard.items.items() for item, rule in rules.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", type=dt.date.fromisoformat, metavar="DATE",
                        help="first day, YYYY-MM-DD (default: 29 days before --to)")  # fmt: skip
    parser.add_argument("--to", dest="end", type=dt.date.fromisoformat, metavar="DATE",
                        help="last day, included, YYYY-MM-DD (default: today)")  # fmt: skip
    parser.add_argument("--room", help="only this room (mqtt.room of the device that judged)")
    parser.add_argument("--view", choices=VIEWS, help="only this view")
    parser.add_argument("--format", choices=("csv", "html"), default="csv", help="default: %(default)s")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--history", type=Path, metavar="PATH", help="the history file (SQLite)")
    where.add_argument("--config", type=Path, metavar="FILE",
                       help=f"site configuration: its history.path (default: {INSTALLED_CONFIG} if present,"
                       " else the built-in defaults)")  # fmt: skip
    parser.add_argument("--out", type=Path, metavar="FILE", help="write here (default: standard output)")


def main(args: argparse.Namespace) -> int:
    """The `edge-qc report` subcommand: 0 written, 2 when it cannot be (bad arguments, no history)."""
    installed = INSTALLED_CONFIG if args.history is None and INSTALLED_CONFIG.is_file() else None
    try:
        config = load_config(args.config or installed)  # None: the defaults
    except ConfigError as exc:
        print(f"edge-qc: {exc}", file=sys.stderr)
        return 2
    end = args.end or dt.date.today()
    start = args.start or end - dt.timedelta(days=29)
    if start > end:
        print(f"edge-qc: --from {start} is after --to {end}", file=sys.stderr)
        return 2
    path = args.history or history_path(config)
    try:
        db = open_for_reading(path)
        try:
            rows = read_rows(db, *bounds(start, end))
        finally:
            db.close()
    except FileNotFoundError:
        print(f"edge-qc: no history at {path} (history.enabled, history.path)", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # a file that is not a history
        print(f"edge-qc: cannot read the history {path}: {exc}", file=sys.stderr)
        return 2
    report = build(rows, start, end, args.room, args.view)
    if args.format == "csv":
        text = to_csv(report)
    else:
        generated = dt.datetime.now().replace(microsecond=0).isoformat()
        text = to_html(report, item_titles(config), generated)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, "utf-8")
    except OSError as exc:
        print(f"edge-qc: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
