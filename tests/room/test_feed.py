"""The room display without a browser: the event framing, what of a verdict reaches the page, the
feed's replay and bounds, the overlay thread, and the routes on the daemon's HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from PIL import Image

import edge.observability
import edge.room
from edge.dicom.decode import accession_number
from edge.observability import Metrics, MetricsServer
from edge.pipeline import Pipeline
from edge.qc.words import Words
from edge.room import (
    KEEPALIVE,
    OverlayRenderer,
    RoomFeed,
    Subscription,
    display_event,
    handle,
    sse,
)
from edge.service import room_labels
from tests.qc.conftest import fault_case, write_case
from tools.testbed import endpoint, wait_for


def parse(frame: bytes) -> tuple[str, str | None, dict[str, object]]:
    """An event frame as EventSource reads it: its name, id and JSON data."""
    assert frame.endswith(b"\n\n")
    fields: dict[str, str] = {}
    for line in frame.decode().rstrip("\n").split("\n"):
        name, _, value = line.partition(": ")
        assert name not in fields, f"{name} twice"
        fields[name] = value
    return fields["event"], fields.get("id"), json.loads(fields["data"])


def strings(value: object) -> Iterator[str]:
    """Every string value in a JSON document (not its keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def frames(client: Subscription) -> list[tuple[str, str | None, dict[str, object]]]:
    out = []
    while (frame := client.next(0.01)) not in (KEEPALIVE, None):
        assert frame is not None
        out.append(parse(frame))
    return out


def test_an_event_is_one_frame_whose_data_is_one_line_of_json() -> None:
    frame = sse("verdict", {"text": "line one\nline two", "n": 3}, event_id=3)
    event, event_id, data = parse(frame)
    assert (event, event_id, data) == ("verdict", "3", {"text": "line one\nline two", "n": 3})
    assert frame.count(b"\ndata: ") == 1 and frame.count(b"\n") == 4


@pytest.fixture(scope="module")
def failing(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("room")
    verdict = pipeline.process(write_case(fault_case("oblique", "under_rotated", 61), folder)).verdict
    assert verdict.verdict == "fail"
    return verdict.as_dict()


def test_the_page_gets_titles_and_unique_corrections_never_item_ids_or_uids(failing: dict[str, object]) -> None:
    event = display_event(failing, 1700000000.5)
    text = " | ".join(strings(event))  # what the page may show (keys are not shown)
    failed = failing["failed"]
    assert isinstance(failed, list) and failed
    items = failing["items"]
    assert isinstance(items, dict)
    for item in items:  # the ids are for machines: "facet_joints" never reaches the room
        assert "_" not in item or item not in text, item
    for finding in failed:
        assert finding["title"] in [f["title"] for f in event["findings"]]
    assert all(set(f) == {"title", "message", "outcome"} for f in event["findings"])
    assert event["corrections"] == failing["corrections"]  # the words module's unique sentences
    sentences = [c["text"] for c in event["corrections"]]
    assert len(sentences) == len(set(sentences))
    image = failing["image"]
    assert isinstance(image, dict) and image["sop_instance_uid"] not in text
    assert event["exposure"] == failing["exposure"] and event["headline"] == failing["headline"]
    assert (event["verdict"], event["view"], event["received_unix"], event["accession"]) == (
        "fail", "oblique", 1700000000.5, ""
    )


def test_the_page_gets_its_own_words_in_the_site_language_with_the_status() -> None:
    """The labels (banner words, status lines, "exposure N s ago") travel with every status event, in
    the catalogue's language; a reload that changes the language sends them to every page at once."""
    feed = RoomFeed(labels=room_labels(Words("de")))
    page = feed.subscribe()
    assert page is not None
    status = frames(page)[0][2]
    labels = status["labels"]
    assert isinstance(labels, dict) and set(labels) == set(edge.room.LABELS)
    shown = (labels["fail"], labels["indeterminate"], labels["seconds_ago"])
    assert shown == ("WIEDERHOLEN", "PRÜFEN", "Aufnahme vor {n} s")
    feed.relabel(room_labels(Words("en")))
    again = frames(page)
    assert [e for e, _, _ in again] == ["status"]
    relabelled = again[0][2]["labels"]
    assert isinstance(relabelled, dict) and relabelled == edge.room.LABELS
    js = (Path(edge.room.__file__).parent / "static" / "room.js").read_text()
    for key, english in edge.room.LABELS.items():  # the page's fallback is the same English
        assert f'{key}: "{english}"' in js, key


def test_a_new_page_gets_the_status_the_last_verdict_and_its_overlay() -> None:
    feed = RoomFeed()
    first = feed.verdict({"verdict": "pass"})
    second = feed.verdict({"verdict": "fail"})
    feed.overlay(first, b"old picture")  # drawn late: kept, but not announced for a verdict no longer shown
    feed.overlay(second, b"new picture")
    client = feed.subscribe()
    assert client is not None
    got = frames(client)
    assert [(event, event_id) for event, event_id, _ in got] == [("status", None), ("verdict", "2"), ("overlay", None)]
    assert got[1][2]["verdict"] == "fail" and got[1][2]["n"] == 2
    assert got[2][2]["url"] == "/room/overlay/2.jpg"
    assert all(isinstance(data["server_unix"], float) for _, _, data in got)  # the clock the page counts from
    assert feed.picture(1) == b"old picture" and feed.picture(2) == b"new picture"


def test_later_events_reach_every_page_and_status_only_when_it_changes() -> None:
    feed = RoomFeed()
    pages = [feed.subscribe(), feed.subscribe()]
    for page in pages:
        assert page is not None
        frames(page)
    assert feed.status(True, "") is False  # as it was: nothing sent
    assert feed.status(False, "") is True
    n = feed.verdict({"verdict": "indeterminate"})
    feed.overlay(n, b"jpeg")
    for page in pages:
        assert page is not None
        got = frames(page)
        assert [e for e, _, _ in got] == ["status", "verdict", "overlay"]
        assert got[0][2]["broker"] is False


def test_the_number_of_pages_is_bounded_and_a_page_that_stops_reading_is_dropped() -> None:
    feed = RoomFeed(max_clients=2)
    reader, stuck = feed.subscribe(), feed.subscribe()
    assert reader is not None and stuck is not None
    assert feed.subscribe() is None  # a third page is refused
    for i in range(edge.room.CLIENT_QUEUE + 1):
        feed.verdict({"verdict": "pass", "i": i})
        frames(reader)
    assert stuck.ended.is_set() and stuck.next(0.01) is None
    assert not reader.ended.is_set() and feed.clients == 1
    assert feed.subscribe() is not None  # its place is free again


def test_only_the_latest_overlays_are_kept() -> None:
    feed = RoomFeed(overlays_kept=2)
    for _ in range(3):
        feed.overlay(feed.verdict({"verdict": "pass"}), b"jpeg")
    assert [feed.picture(n) is not None for n in (1, 2, 3)] == [False, True, True]


def test_closing_the_feed_ends_every_stream() -> None:
    feed = RoomFeed()
    client = feed.subscribe()
    assert client is not None
    frames(client)
    feed.close()
    assert client.next(0.01) is None and feed.clients == 0


def test_overlays_are_drawn_off_the_caller_thread_newest_first() -> None:
    feed = RoomFeed()
    drawn: list[str] = []
    seconds: list[float] = []
    started, gate = threading.Event(), threading.Event()

    def draw(name: str, wait: bool = False) -> Image.Image:
        if wait:
            started.set()
            gate.wait(10)
        drawn.append(name)
        return Image.new("RGB", (64, 32), (200, 0, 0))

    renderer = OverlayRenderer(feed, seconds.append)
    try:
        renderer.submit(feed.verdict({}), lambda: draw("first", wait=True))
        assert started.wait(10)  # the thread is inside the first draw
        renderer.submit(feed.verdict({}), lambda: draw("superseded"))
        renderer.submit(feed.verdict({}), lambda: draw("broken"))
        renderer.submit(n := feed.verdict({}), lambda: draw("latest"))
        gate.set()
        assert wait_for(lambda: feed.picture(n) is not None, 10)
    finally:
        renderer.stop()
    assert drawn == ["first", "latest"]  # the two waiting behind the first were replaced by the latest
    picture = feed.picture(n)
    assert picture is not None and picture[:3] == b"\xff\xd8\xff"  # a JPEG
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_a_picture_that_cannot_be_drawn_does_not_stop_the_next() -> None:
    feed = RoomFeed()
    renderer = OverlayRenderer(feed)

    def broken() -> Image.Image:
        raise ValueError("cannot draw")

    try:
        renderer.submit(feed.verdict({}), broken)
        assert wait_for(lambda: renderer._job is None, 5)  # taken, and failed
        renderer.submit(n := feed.verdict({}), lambda: Image.new("RGB", (8, 8)))
        assert wait_for(lambda: feed.picture(n) is not None, 10)
    finally:
        renderer.stop()


def test_the_accession_number_is_read_from_the_received_file(tmp_path: Path) -> None:
    path = write_case(fault_case("ap", "cut_top", 61, size_px=256), tmp_path)
    assert accession_number(path) == ""  # the phantom's is empty
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = "ACC-2026-0042"
    ds.save_as(path)
    assert accession_number(path) == "ACC-2026-0042"
    assert accession_number(tmp_path / "gone.dcm") == ""


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RoomFeed, int]]:
    monkeypatch.setattr(edge.room, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(edge.observability._Handler, "timeout", 0.5)  # the HTTP idle timeout, shortened
    feed = RoomFeed(max_clients=2)
    http = MetricsServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ready"), lambda h: handle(feed, h))
    http.start()
    try:
        yield feed, http.port
    finally:
        feed.close()
        http.stop()


def open_stream(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /room/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    return s


def read_until(s: socket.socket, needle: bytes, seen: bytearray) -> bytes:
    while needle not in seen:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(bytes(seen))
        seen += chunk
    return bytes(seen)


def test_the_page_and_its_files_are_served(server: tuple[RoomFeed, int]) -> None:
    feed, port = server
    status, page = endpoint(port, "/room")
    assert status == 200 and "/room/static/room.js" in page and "/room/static/room.css" in page
    assert endpoint(port, "/room/static/room.js")[0] == 200
    assert endpoint(port, "/room/static/room.css")[0] == 200
    assert endpoint(port, "/room/static/../__init__.py")[0] == 404
    assert endpoint(port, "/room/overlay/1.jpg")[0] == 404
    assert endpoint(port, "/metrics")[0] == 200 and endpoint(port, "/nothing")[0] == 404
    feed.overlay(feed.verdict({"verdict": "pass"}), b"\xff\xd8\xffjpeg")
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/room/overlay/1.jpg", timeout=5) as response:
        assert response.headers["Content-Type"] == "image/jpeg" and response.read() == b"\xff\xd8\xffjpeg"


def test_the_event_stream_outlives_the_http_idle_timeout(server: tuple[RoomFeed, int]) -> None:
    feed, port = server
    s = open_stream(port)
    seen = bytearray()
    try:
        head = read_until(s, b"event: status", seen)
        assert b" 200 " in head.split(b"\r\n")[0] and b"Content-Type: text/event-stream" in head
        assert f"retry: {edge.room.RETRY_MS}\n\n".encode() in head
        time.sleep(1.5)  # three idle timeouts: keep-alive comments hold it
        feed.verdict({"verdict": "fail"})
        text = read_until(s, b"event: verdict", seen)
        assert text.count(KEEPALIVE) >= 3
    finally:
        s.close()


def test_a_page_over_the_limit_is_refused_not_queued(server: tuple[RoomFeed, int]) -> None:
    feed, port = server
    held = [open_stream(port) for _ in range(2)]
    try:
        for s in held:
            read_until(s, b"event: status", bytearray())
        assert feed.clients == 2
        status, body = endpoint(port, "/room/events")
        assert status == 503 and "room displays" in body
        held.pop().close()  # a page goes: its place frees within a keep-alive or two
        assert wait_for(lambda: feed.clients == 1, 5)
        extra = open_stream(port)
        held.append(extra)
        assert b"event: status" in read_until(extra, b"event: status", bytearray())
    finally:
        for s in held:
            s.close()
