"""Acceptance of the verdict history and `edge-qc report` (issue 18, part 5), with real components
(tools.testbed): a known mix of phantom studies (a pass and a fail per view, an over-exposed image, an
indeterminate one, a rejected one, and a health probe) sent by DCMTK storescu to a running daemon;
`edge-qc report --format csv` then counts exactly what the daemon's Prometheus counters count; the HTML
report opens in headless Chromium with the exposure plot drawn; the history survives a restart and
loses, at the next start, the rows older than `history.retention_days`.
Needs mosquitto, DCMTK and chromium: without one it skips, naming the package."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from edge.report import VIEW_COLOURS
from tests.qc.conftest import fault_case, write_case
from tools.phantom.dataset import SetOptions, generate_image
from tools.testbed import Broker, Browser, Daemon, VerdictSubscriber, site_config, store, wait_for

RETENTION_DAYS = 30
Key = tuple[str, ...]


def studies(folder: Path) -> tuple[list[Path], Path]:
    """The clinical mix and a probe's image: a pass and a fail per view, an over-exposed AP (exposure
    fails, DI > 0), a 'CHEST' that is judged indeterminate, a DX cut short that is rejected."""
    def own_folder(name: str) -> Path:  # write_case names a file by view and index: one folder each
        (folder / name).mkdir(parents=True)
        return folder / name

    faultless = {
        view: SetOptions(seed=700, size_px=1024, fault_rate=0.0, views=(view,)) for view in ("ap", "lateral", "oblique")
    }
    passes = [write_case(generate_image(options, 0), own_folder(view)) for view, options in faultless.items()]
    fails = [
        write_case(fault_case(view, fault, seed), own_folder(fault))
        for view, fault, seed in (
            ("ap", "cut_top", 61),
            ("lateral", "tilt", 62),
            ("oblique", "under_rotated", 61),
            ("ap", "over_exposure", 61),
        )
    ]

    def variant(source: Path, name: str, **tags: object) -> Path:
        ds = pydicom.dcmread(source)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / name)
        return folder / name

    pixels = pydicom.dcmread(passes[1]).PixelData
    chest = variant(passes[0], "chest.dcm", BodyPartExamined="CHEST", ExposureInuAs=12500)
    cut_short = variant(passes[1], "cut-short.dcm", PixelData=pixels[: len(pixels) // 3], Exposure=20)
    probe = variant(passes[2], "probe-image.dcm")
    return [*passes, *fails, chest, cut_short], probe


def counters(text: str) -> dict[Key, int]:
    """The daemon's verdict counters, as the report's CSV keys them (zero series left out)."""
    found: Counter[Key] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edgeqc_images_judged_total":
                found["images", s.labels["view"], s.labels["verdict"]] += int(s.value)
            elif s.name == "edgeqc_images_rejected_total":
                found["rejected", s.labels["reason"]] += int(s.value)
            elif s.name == "edgeqc_item_failures_total":
                found["item", s.labels["view"], s.labels["item"]] += int(s.value)
    return {key: n for key, n in found.items() if n}


def report_counts(text: str) -> dict[Key, int]:
    """The same counts from `edge-qc report --format csv` (README.md, "History and reports")."""
    import csv

    found: Counter[Key] = Counter()
    for r in csv.DictReader(io.StringIO(text)):
        count = int(r["count"]) if r["count"] else 0
        if r["section"] == "images" and r["view"] != "all" and r["key"] in ("pass", "fail", "indeterminate"):
            found["images", r["view"], r["key"]] += count
        elif r["section"] == "rejected":
            found["rejected", r["key"]] += count
        elif r["section"] == "item_failed":
            found["item", r["view"], r["key"]] += count
    return {key: n for key, n in found.items() if n}


def report(config: Path, *more: str) -> str:
    """`edge-qc report` as a site runs it: the daemon's configuration names the history."""
    today = dt.date.today()  # a day either side: a verdict committed just before midnight still counts
    period = ["--from", (today - dt.timedelta(days=1)).isoformat(), "--to", (today + dt.timedelta(days=1)).isoformat()]
    command = [sys.executable, "-m", "edge.cli", "report", "--config", str(config), *period, *more]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def plot_is_drawn(browser: Browser, page: Path, views: set[str], shot: Path) -> None:
    """The SVG has a size, a median path with points for every view, and its colours on the screen."""
    browser.open(page.as_uri())
    browser.evaluate("document.getElementById('di-trend').scrollIntoView()")
    left, top, width, height = browser.evaluate(
        "(({left, top, width, height}) => [left, top, width, height])"
        "(document.getElementById('di-trend').getBoundingClientRect())"
    )
    assert width > 300 and height > 150
    drawn = browser.evaluate(
        "[...document.querySelectorAll('#di-trend path.median')].map(p => [p.dataset.view,"
        " p.getTotalLength(), p.parentNode.querySelectorAll('circle.point').length])"
    )
    assert {view for view, _, _ in drawn} == views
    assert all(points >= 1 for _, _, points in drawn)
    png = browser.screenshot()
    shot.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    plot = np.asarray(image.crop((round(left), round(top), round(left + width), round(top + height)))).astype(int)
    assert plot.std() > 10  # not a blank area
    for view in views:
        colour = np.array([int(VIEW_COLOURS[view][i : i + 2], 16) for i in (1, 3, 5)])
        near = np.count_nonzero(np.abs(plot - colour).sum(axis=2) < 40)
        assert near >= 30, (view, near)  # its points and line are on the screen


def test_the_report_counts_what_the_daemon_counted_and_survives_restarts(tmp_path: Path) -> None:
    browser = Browser(tmp_path / "chromium")  # first: a missing chromium skips before anything starts
    broker = Broker(tmp_path / "broker")
    broker.start()
    subscriber = VerdictSubscriber(broker.port, "edgeqc/+/+/+/verdict", client_id="history-test")
    daemon: Daemon | None = None
    try:
        clinical, probe = studies(tmp_path / "studies")
        config, port = site_config(tmp_path, broker.port, extra=f"[history]\nretention_days = {RETENTION_DAYS}\n")
        daemon = Daemon.start(config)
        store(port, *clinical)
        store(port, probe, calling="EDGEQC-PROBE")
        total = len(clinical)
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == total + 1, 120)

        # every verdict carries the acquisition; EI/DI too, the rejected one's from its header
        messages = subscriber.payloads("verdict")
        verdicts = Counter(m["verdict"]["verdict"] for m in messages if not m["probe"])
        assert verdicts == {"pass": 3, "fail": 4, "indeterminate": 1, "rejected": 1}
        for m in messages:
            acquisition = m["verdict"]["acquisition"]
            assert acquisition["station_name"] == "PHANTOM" and acquisition["kvp"] > 0, m["verdict"]["verdict"]
            assert acquisition["datetime"] and acquisition["datetime_source"] == "AcquisitionDateTime"
            assert m["verdict"]["exposure"]["deviation_index"] is not None
        by_outcome = {m["verdict"]["verdict"]: m["verdict"] for m in messages if not m["probe"]}
        assert by_outcome["rejected"]["acquisition"]["exposure_mas"] == 20.0
        assert by_outcome["rejected"]["acquisition"]["exposure_source"] == "Exposure"
        assert by_outcome["indeterminate"]["acquisition"]["exposure_mas"] == 12.5
        assert by_outcome["indeterminate"]["acquisition"]["exposure_source"] == "ExposureInuAs"

        # the CSV report counts exactly what the counters count (probes in neither)
        def counted() -> dict[Key, int]:
            return counters(daemon.scrape()) if daemon is not None else {}

        assert wait_for(lambda: sum(n for k, n in counted().items() if k[0] in ("images", "rejected")) == total, 20)
        before = counted()
        assert before[("rejected", "undecodable")] == 1
        assert before[("item", "ap", "exposure_index")] == 1 and before[("item", "ap", "upper_coverage")] == 1
        csv_text = report(config, "--format", "csv")
        assert report_counts(csv_text) == before
        assert daemon is not None and "edgeqc_history_write_failures_total 0.0" in daemon.scrape()
        assert "Overexposure" in csv_text and "Not judged by edge-qc" in csv_text
        assert "probes,,,probes,,1," in csv_text  # the probe: said, and in no count

        # the HTML report, opened from the file, with the plot drawn for every view with a DI
        page = tmp_path / "report.html"
        assert report(config, "--format", "html", "--out", str(page)) == ""
        text = page.read_text()
        original = pydicom.dcmread(clinical[0])
        for private in (str(original.PatientName), str(original.PatientID), original.SOPInstanceUID):
            assert private not in text
        views = {(m["verdict"]["view"] or {}).get("judged") or "unknown" for m in messages if not m["probe"]}
        assert views == {"ap", "lateral", "oblique", "unknown"}  # unknown: the rejected image (its header's DI)
        plot_is_drawn(browser, page, views, tmp_path / "report.png")

        # a restart: the counters start again from nothing, the history still has every image
        assert daemon.stop() == 0
        daemon = Daemon.start(config)
        assert counted() == {}
        assert report_counts(report(config, "--format", "csv")) == before
        assert daemon.stop() == 0
        daemon = None

        # retention: rows older than retention_days (inserted as an older daemon left them) go at the next start
        history = tmp_path / "history.sqlite"
        now = time.time()
        with sqlite3.connect(history) as db:
            for name, age_days in (("expired", RETENTION_DAYS + 5), ("kept", RETENTION_DAYS - 5)):
                db.execute(
                    "INSERT INTO verdicts (message_id, committed_unix, view, verdict, reason_code, failed, warned,"
                    " degraded, probe, model, standard, site, room, device) VALUES"
                    " (?, ?, 'ap', 'fail', '', '[\"collimation\"]', '[]', 0, 0, 'm', 's', 'h1', 'xr2', 'jetson7')",
                    (name, now - age_days * 86400),
                )
        daemon = Daemon.start(config)
        with sqlite3.connect(history) as db:
            left = {row[0] for row in db.execute("SELECT message_id FROM verdicts")}
        assert "expired" not in left and "kept" in left
        assert len(left) == total + 1 + 1  # the images, the probe, the row within retention
    finally:
        if daemon is not None:
            daemon.stop()
        browser.close()
        subscriber.close()
        broker.stop()
