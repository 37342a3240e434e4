"""Acceptance of the room display (issue 17, part 1): a headless Chromium shows /room of a real daemon
(tools.testbed); a failing image sent by DCMTK storescu appears within 2 s with its titles and
corrections (read from the DOM) and a red banner (read from a screenshot); a probe leaves the page as
it was; a stopped broker, a stopped daemon and a degraded one show on the page, and the page
reconnects by itself.
Needs chromium, mosquitto and DCMTK: without one it skips, naming the package."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

import edge.room
from tests.qc.conftest import fault_case, write_case
from tools.testbed import Broker, Browser, Daemon, VerdictSubscriber, site_config, store, wait_for

SHOWN_WITHIN_S = 2.0  # the figure, used as a timeout only
ACCESSION = "ACC-2026-0042"


def state_colours() -> dict[str, tuple[int, int, int]]:
    """The banner colours as room.css defines them (the one definition)."""
    css = (Path(edge.room.__file__).parent / "static" / "room.css").read_text()
    found = dict(re.findall(r"--(pass|fail|check|not-judged): #([0-9a-f]{6});", css))
    return {name: (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for name, h in found.items()}


def banner_colour(browser: Browser) -> tuple[int, int, int]:
    """The banner's colour in a screenshot: the median of a patch at its right end, clear of its text."""
    box = browser.evaluate("(({top, right, bottom}) => [top, right, bottom])"
                           "(document.getElementById('banner').getBoundingClientRect())")
    top, right, bottom = (round(v) for v in box)
    shot = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    patch = np.asarray(shot.crop((right - 40, top + 5, right - 5, bottom - 5))).reshape(-1, 3)
    r, g, b = (int(v) for v in np.median(patch, axis=0))
    return r, g, b


def nearest_state(colour: tuple[int, int, int]) -> tuple[str, float]:
    distances = {name: float(np.linalg.norm(np.subtract(colour, ref))) for name, ref in state_colours().items()}
    name = min(distances, key=lambda k: distances[k])
    return name, distances[name]


class Page:
    """The room page as the test reads it."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def data(self, name: str) -> str:
        value = self.browser.evaluate(f"document.body.dataset.{name} || ''")
        return str(value)

    def rendered(self) -> str:
        """Which verdict the page last painted, and when (the page's own clock)."""
        return self.data("renderedN") + "@" + self.data("renderedAt")

    def texts(self, selector: str) -> list[str]:
        value = self.browser.evaluate(f"[...document.querySelectorAll('{selector}')].map(e => e.textContent)")
        return [str(v) for v in value]

    def text(self) -> str:
        return str(self.browser.evaluate("document.body.innerText"))


@pytest.fixture()
def bed(tmp_path: Path) -> Iterator[dict[str, Any]]:
    browser = Browser(tmp_path / "chromium")  # first: a missing chromium skips before anything starts
    broker = Broker(tmp_path / "broker")
    broker.start()
    subscriber = VerdictSubscriber(broker.port, "edgeqc/#", client_id="room-test")
    bed: dict[str, Any] = {"browser": browser, "broker": broker, "subscriber": subscriber, "daemon": None}
    try:
        yield bed
    finally:
        if bed["daemon"] is not None:
            bed["daemon"].stop()
        browser.close()
        subscriber.close()
        broker.stop()


def verdicts(subscriber: VerdictSubscriber) -> list[dict[str, Any]]:
    return subscriber.payloads("/verdict")


def test_the_room_display_follows_the_appliance(bed: dict[str, Any], tmp_path: Path) -> None:
    browser, broker, subscriber = bed["browser"], bed["broker"], bed["subscriber"]
    folder = tmp_path / "studies"
    folder.mkdir()
    failing = write_case(fault_case("ap", "cut_top", 61), folder)
    second = write_case(fault_case("lateral", "tilt", 62), folder)
    ds = pydicom.dcmread(second)
    ds.AccessionNumber = ACCESSION
    ds.save_as(second)
    original = pydicom.dcmread(failing)

    config, port = site_config(tmp_path, broker.port)
    daemon = bed["daemon"] = Daemon.start(config)
    assert wait_for(lambda: subscriber.payloads("/status"), 10)  # the retained "online": subscribed
    page = Page(browser)
    browser.open(f"http://127.0.0.1:{daemon.port}/room")
    assert wait_for(lambda: page.data("state") == "waiting" and page.data("status") == "", 5)

    # a failing image: banner, titles and corrections within 2 s of the C-STORE
    store(port, failing)
    assert wait_for(lambda: page.data("renderedN") == "1", SHOWN_WITHIN_S), page.text()
    assert wait_for(lambda: len(verdicts(subscriber)) == 1, 10)
    verdict = verdicts(subscriber)[0]["verdict"]
    assert verdict["verdict"] == "fail" and verdict["corrections"]
    assert page.data("state") == "fail"
    assert browser.evaluate("document.getElementById('verdict').textContent") == "FAIL"
    assert page.texts("#corrections .text") == [c["text"] for c in verdict["corrections"]]
    assert page.texts("#corrections .titles") == [", ".join(c["items"]) for c in verdict["corrections"]]
    assert {f["title"] for f in verdict["failed"]} <= {t for c in verdict["corrections"] for t in c["items"]}
    assert browser.evaluate("document.getElementById('headline').textContent") == verdict["headline"]
    shown = page.text()
    for item in verdict["items"]:
        assert "_" not in item or item not in shown, item  # never an item id
    for private in (str(original.PatientName), str(original.PatientID), original.SOPInstanceUID):
        assert private not in shown and private not in browser.evaluate("document.documentElement.outerHTML")
    assert f"EI {round(verdict['exposure']['exposure_index'])}" in shown and "DI " in shown
    since = browser.evaluate("document.getElementById('since').textContent")
    assert re.fullmatch(r"exposure \d+ s ago", since)
    assert wait_for(lambda: browser.evaluate("document.getElementById('since').textContent") != since, 3)  # it ticks
    name, distance = nearest_state(banner_colour(browser))
    assert (name, distance < 12) == ("fail", True)
    overlay = "document.getElementById('overlay')"
    assert wait_for(
        lambda: browser.evaluate(f"{overlay}.complete && {overlay}.naturalWidth > 0 && {overlay}.src") or False, 10
    )
    assert browser.evaluate(f"{overlay}.src").endswith("/room/overlay/1.jpg")
    (tmp_path / "fail.png").write_bytes(browser.screenshot())

    # a probe: its verdict goes over MQTT (marked), the page stays as it was
    before, text_before = page.rendered(), page.texts("#corrections .text")
    store(port, second, calling="EDGEQC-PROBE")
    assert wait_for(lambda: len(verdicts(subscriber)) == 2, 10)
    assert verdicts(subscriber)[1]["probe"] is True
    assert not wait_for(lambda: page.rendered() != before, 1.0)
    assert page.texts("#corrections .text") == text_before and page.data("state") == "fail"
    assert ACCESSION not in page.text()

    # the broker stops: the page says so; it comes back: the page says nothing
    broker.stop()
    assert wait_for(lambda: page.data("status") == "broker", 5)
    assert "broker down" in page.text()
    broker.start()
    assert wait_for(lambda: page.data("status") == "", 40)

    # the daemon restarts, showing accession numbers and degraded (no TensorRT here: it falls back to
    # ONNX Runtime): the page goes offline, then comes back by itself and says "degraded"
    text = config.read_text().replace("[model]\n", '[model]\nbackend = "tensorrt"\nengine = "absent.plan"\n')
    config.write_text(text + "[room]\nshow_accession = true\n")
    assert daemon.stop() == 0
    bed["daemon"] = None
    assert wait_for(lambda: page.data("status") == "offline", 10)
    assert "display offline: appliance not reachable" in page.text()
    daemon = bed["daemon"] = Daemon.start(config)
    assert wait_for(lambda: page.data("status") == "degraded", 10)
    assert "degraded" in page.text() and "offline" not in page.text()
    before = page.rendered()
    store(port, second)
    assert wait_for(lambda: page.rendered() != before, SHOWN_WITHIN_S)
    assert wait_for(lambda: len(verdicts(subscriber)) == 3, 10)
    latest = verdicts(subscriber)[2]
    assert latest["probe"] is False and latest["verdict"]["degraded"] is True
    assert page.data("state") == latest["verdict"]["verdict"]
    assert page.texts("#corrections .text") == [c["text"] for c in latest["verdict"]["corrections"]]
    assert f"Accession {ACCESSION}" in page.text()
    assert all(ACCESSION.encode() not in payload for _, payload, _ in subscriber.messages)  # never in MQTT


def test_in_german_the_page_and_the_mqtt_verdict_speak_german(bed: dict[str, Any], tmp_path: Path) -> None:
    """The translation test (issue 17): with `qc.language = "de"` the verdict over MQTT and the page
    carry the German catalogue's titles, corrections, banner word and the page's own labels."""
    browser, broker, subscriber = bed["browser"], bed["broker"], bed["subscriber"]
    folder = tmp_path / "studies"
    folder.mkdir()
    failing = write_case(fault_case("ap", "cut_top", 61), folder)
    config, port = site_config(tmp_path, broker.port, extra='[qc]\nlanguage = "de"\n')
    daemon = bed["daemon"] = Daemon.start(config)
    assert wait_for(lambda: subscriber.payloads("/status"), 10)
    page = Page(browser)
    browser.open(f"http://127.0.0.1:{daemon.port}/room")
    assert wait_for(lambda: page.data("state") == "waiting" and page.data("status") == "", 5)
    assert browser.evaluate("document.getElementById('headline').textContent") == "warte auf das erste Bild"

    store(port, failing)
    assert wait_for(lambda: page.data("renderedN") == "1", SHOWN_WITHIN_S), page.text()
    assert wait_for(lambda: len(verdicts(subscriber)) == 1, 10)
    verdict = verdicts(subscriber)[0]["verdict"]
    assert verdict["language"] == "de"
    assert [f["title"] for f in verdict["failed"]] == ["Obere Begrenzung (T12)"]
    assert verdict["headline"].startswith("Wiederholung empfohlen")
    assert "Feld" in verdict["corrections"][0]["text"]  # German correction sentence
    assert browser.evaluate("document.getElementById('verdict').textContent") == "WIEDERHOLEN"
    assert page.texts("#corrections .text") == [c["text"] for c in verdict["corrections"]]
    assert page.texts("#corrections .titles") == ["Obere Begrenzung (T12)"]
    assert re.fullmatch(r"Aufnahme vor \d+ s", browser.evaluate("document.getElementById('since').textContent"))
    assert "exposure" not in page.text() and "Upper coverage" not in page.text()
