"""The room display: one screen per X-ray room that shows the last verdict, live, across the room.

`RoomFeed` holds what the page shows (the last verdict, its overlay JPEG, the appliance's status)
and hands every change to the connected pages as server-sent events (`/room/events`): no page reload,
no polling. A page that connects gets the status and the last verdict at once; `retry:` makes the
browser's EventSource reconnect by itself after a restart. `handle` answers the page's routes for
the daemon's HTTP server (edge.observability), so the display costs no port of its own.

What reaches the page is a whitelist of the verdict (`display_event`): titles and corrections in
the radiographer's words, the view, EI and DI; never an item id, a UID or patient data (the
accession number only where the site turns it on). Probes never reach it (the service's choice).
The overlay is drawn after the verdict is committed, in a thread of its own at low priority
(`OverlayRenderer`): the verdict on the page and over MQTT never waits for a picture.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any, Final

from PIL import Image

log = logging.getLogger("edge.room")
MAX_CLIENTS: Final = 8  # open event streams; one more is refused (503) so no client can take every thread
KEEPALIVE_S: Final = 3.0  # a comment this often: proxies keep the stream, a gone page is noticed
RETRY_MS: Final = 2000  # EventSource waits this long before reconnecting (after a restart, say)
CLIENT_QUEUE: Final = 32  # events waiting for a page that does not read; beyond, its stream is ended
OVERLAYS_KEPT: Final = 4  # the latest overlay JPEGs served from memory
JPEG_QUALITY: Final = 85
RENDER_NICE: Final = 10  # the overlay thread yields the CPU to the next image's inference
STATIC: Final = {"room.js": "text/javascript; charset=utf-8", "room.css": "text/css; charset=utf-8"}
_OVERLAY_PATH: Final = re.compile(r"^/room/overlay/(\d{1,12})\.jpg$")


def N_(msgid: str) -> str:  # noqa: N802 (gettext's name: marks a msgid for tools.i18n, translated by the service)
    return msgid


# The page's own words, by key: English msgids of the catalogue (edge/locale). The service sends them
# translated into the site's language with the status (`RoomFeed(labels=...)`); room.js falls back to
# the same English where a key is missing. EI and DI are symbols, the same in every language.
LABELS: Final[dict[str, str]] = {
    "pass": N_("PASS"),
    "fail": N_("FAIL"),
    "indeterminate": N_("CHECK"),
    "rejected": N_("NOT JUDGED"),
    "ap": N_("AP"),
    "lateral": N_("Lateral"),
    "oblique": N_("Oblique"),
    "target": N_("target {ei}"),
    "seconds_ago": N_("exposure {n} s ago"),
    "minutes_ago": N_("exposure {n} min ago"),
    "hours_ago": N_("exposure {n} h ago"),
    "accession": N_("Accession {accession}"),
    "picture_follows": N_("picture follows"),
    "waiting": N_("waiting for the first image"),
    "offline": N_("display offline: appliance not reachable"),
    "broker": N_("broker down: verdicts are kept and sent when it is back"),
    "degraded": N_("degraded: judging on the fallback backend, slower"),
}


def sse(event: str, data: Mapping[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event (HTML Living Standard 9.2): its name, an id where given, JSON data on one
    `data:` line (JSON text never holds a raw newline)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode("utf-8")


KEEPALIVE: Final = b": keep-alive\n\n"  # a comment line: EventSource ignores it
PREAMBLE: Final = f"retry: {RETRY_MS}\n\n".encode()


def display_event(verdict: Mapping[str, Any], received_unix: float | None, accession: str = "") -> dict[str, Any]:
    """What the page shows of one verdict (`Verdict.as_dict()`), and nothing else: a whitelist, so a
    field added to the verdict never reaches the room unseen. `received_unix`: when the C-STORE
    began (the page counts the time since the exposure from it); `accession`: "" unless the site
    shows it."""
    findings = [
        {"title": str(f.get("title") or ""), "message": str(f.get("message") or ""), "outcome": outcome}
        for outcome, key in (("fail", "failed"), ("warn", "warnings"))
        for f in verdict.get(key) or []
    ]
    view = verdict.get("view") or {}
    return {
        "verdict": verdict.get("verdict"),
        "language": str(verdict.get("language") or "en"),
        "headline": str(verdict.get("headline") or ""),
        "reason": str(verdict.get("reason") or ""),
        "view": view.get("judged") if isinstance(view, Mapping) else None,
        "findings": findings,
        "corrections": [
            {"text": str(c["text"]), "items": [str(title) for title in c["items"]], "outcome": c["outcome"]}
            for c in verdict.get("corrections") or []
        ],
        "exposure": dict(verdict["exposure"]) if isinstance(verdict.get("exposure"), Mapping) else None,
        "degraded": bool(verdict.get("degraded")),
        "received_unix": received_unix,
        "accession": accession,
    }


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


@dataclass(eq=False)  # compared (and hashed) by identity: each page's stream is its own
class Subscription:
    """One page's event stream: frames waiting to be written, and whether the feed ended it."""

    frames: queue.Queue[tuple[str, dict[str, Any], int | None]] = field(
        default_factory=lambda: queue.Queue(maxsize=CLIENT_QUEUE)
    )
    ended: threading.Event = field(default_factory=threading.Event)

    def next(self, timeout: float) -> bytes | None:
        """The next frame, KEEPALIVE after `timeout` without one, None once the stream is ended. Each
        frame carries the server's clock as it leaves (`server_unix`): the page counts the time since
        the exposure from the server's two timestamps, whatever its own clock says."""
        if self.ended.is_set():
            return None
        try:
            event, data, event_id = self.frames.get(timeout=timeout)
        except queue.Empty:
            return None if self.ended.is_set() else KEEPALIVE
        return sse(event, {**data, "server_unix": time.time()}, event_id)


class RoomFeed:
    """The display's state and its subscribers; thread-safe (the worker, the overlay thread, the
    status watcher and the HTTP threads all call it)."""

    def __init__(
        self,
        max_clients: int = MAX_CLIENTS,
        overlays_kept: int = OVERLAYS_KEPT,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.max_clients = max_clients
        self._overlays_kept = overlays_kept
        self._lock = threading.Lock()
        self._clients: set[Subscription] = set()
        self._count = 0
        self._verdict: dict[str, Any] | None = None
        self._overlay: dict[str, Any] | None = None
        self._overlays: OrderedDict[int, bytes] = OrderedDict()
        self._status: dict[str, Any] = {"broker": True, "degraded": ""}
        self._labels: dict[str, str] = dict(LABELS if labels is None else labels)
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    def _broadcast(self, event: str, data: dict[str, Any], event_id: int | None = None) -> None:
        """Queue one event for every page; a page whose queue is full has stopped reading: its stream
        ends (its browser reconnects and gets the latest state)."""
        for client in list(self._clients):
            try:
                client.frames.put_nowait((event, data, event_id))
            except queue.Full:
                client.ended.set()
                self._clients.discard(client)

    def verdict(self, event: dict[str, Any]) -> int:
        """Show a verdict (a `display_event`); its number, which its overlay will carry."""
        with self._lock:
            self._count += 1
            self._verdict, self._overlay = {**event, "n": self._count}, None
            self._broadcast("verdict", self._verdict, self._count)
            return self._count

    def overlay(self, n: int, picture: bytes) -> None:
        """The overlay JPEG of verdict `n`; served while among the latest few, shown if still current."""
        with self._lock:
            self._overlays[n] = picture
            while len(self._overlays) > self._overlays_kept:
                self._overlays.popitem(last=False)
            if self._verdict is not None and self._verdict["n"] == n:
                self._overlay = {"n": n, "url": f"/room/overlay/{n}.jpg"}
                self._broadcast("overlay", self._overlay)

    def picture(self, n: int) -> bytes | None:
        with self._lock:
            return self._overlays.get(n)

    def status(self, broker: bool, degraded: str) -> bool:
        """The appliance's state as the page shows it: the broker connected, and why judging is
        degraded ("" when it is not); pushed to the pages only when it changed (True then)."""
        new = {"broker": broker, "degraded": degraded}
        with self._lock:
            if new == self._status:
                return False
            self._status = new
            self._broadcast("status", self._status_event())
            return True

    def relabel(self, labels: Mapping[str, str]) -> None:
        """The page's words in another language (a reload changed it): every page gets them at once."""
        with self._lock:
            self._labels = dict(labels)
            self._broadcast("status", self._status_event())

    def _status_event(self) -> dict[str, Any]:
        return {**self._status, "labels": self._labels}

    def watch(self, probe: Callable[[], tuple[bool, str]], interval_s: float = 0.5) -> None:
        """Follow the appliance's state in a thread of its own ("room-status"): `probe` every interval."""

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.status(*probe())

        self.status(*probe())
        self._watcher = threading.Thread(target=run, name="room-status", daemon=True)
        self._watcher.start()

    def subscribe(self) -> Subscription | None:
        """A new page's stream, primed with the current state (status, last verdict, its overlay);
        None when MAX_CLIENTS pages are connected already."""
        with self._lock:
            if len(self._clients) >= self.max_clients:
                return None
            client = Subscription()
            client.frames.put_nowait(("status", self._status_event(), None))
            if self._verdict is not None:
                client.frames.put_nowait(("verdict", self._verdict, self._verdict["n"]))
            if self._overlay is not None:
                client.frames.put_nowait(("overlay", self._overlay, None))
            self._clients.add(client)
            return client

    def unsubscribe(self, client: Subscription) -> None:
        with self._lock:
            self._clients.discard(client)
        client.ended.set()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        """End every stream and the status watcher (the daemon stops)."""
        self._stop.set()
        with self._lock:
            for client in self._clients:
                client.ended.set()
            self._clients.clear()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


class OverlayRenderer:
    """Draws and encodes overlays one at a time in a thread of its own ("room-overlay"), niced, after
    the verdict is out; the newest waiting overlay replaces an older one not yet drawn (the page
    shows the latest verdict only). `observe` gets the seconds each draw + encode took."""

    def __init__(self, feed: RoomFeed, observe: Callable[[float], None] | None = None) -> None:
        self.feed = feed
        self.observe = observe
        self._job: tuple[int, Callable[[], Image.Image]] | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="room-overlay", daemon=True)
        self._thread.start()

    def submit(self, n: int, draw: Callable[[], Image.Image]) -> None:
        with self._cv:
            self._job = (n, draw)
            self._cv.notify()

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RENDER_NICE)
        while True:
            with self._cv:
                while self._job is None and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                assert self._job is not None
                (n, draw), self._job = self._job, None
            start = time.perf_counter()
            try:
                picture = jpeg(draw())
            except Exception:  # a picture that cannot be drawn leaves the page without one, never the daemon
                log.exception("overlay of verdict %d could not be drawn", n)
                continue
            if self.observe is not None:
                self.observe(time.perf_counter() - start)
            self.feed.overlay(n, picture)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)


def _static(name: str) -> bytes:
    return resources.files("edge.room").joinpath("static", name).read_bytes()


def handle(feed: RoomFeed, handler: BaseHTTPRequestHandler) -> bool:
    """Answer a GET of the room's routes on the daemon's HTTP server; False for any other path."""
    path = handler.path.split("?", 1)[0]
    if path in ("/room", "/room/"):
        _send(handler, 200, _static("index.html"), "text/html; charset=utf-8")
    elif path.startswith("/room/static/") and path[len("/room/static/") :] in STATIC:
        name = path[len("/room/static/") :]
        _send(handler, 200, _static(name), STATIC[name])
    elif path == "/room/events":
        _stream(feed, handler)
    elif match := _OVERLAY_PATH.match(path):
        picture = feed.picture(int(match[1]))
        if picture is None:
            _send(handler, 404, b"overlay no longer kept\n", "text/plain")
        else:
            _send(handler, 200, picture, "image/jpeg")
    else:
        return False
    return True


def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")  # overlay numbers start again after a restart
    handler.end_headers()
    handler.wfile.write(body)


def _stream(feed: RoomFeed, handler: BaseHTTPRequestHandler) -> None:
    """/room/events until the page goes, the feed ends it, or a write stalls for the handler's idle
    timeout (the socket's timeout bounds writes only: the stream itself never idles, KEEPALIVE_S
    being shorter)."""
    client = feed.subscribe()
    if client is None:
        handler.send_response(503)
        handler.send_header("Retry-After", str(RETRY_MS // 1000))
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        handler.wfile.write(f"more than {feed.max_clients} room displays connected\n".encode())
        return
    handler.close_connection = True
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        handler.wfile.write(PREAMBLE)
        while (frame := client.next(KEEPALIVE_S)) is not None:
            handler.wfile.write(frame)
    except OSError:  # the page went away (closed, reloaded, unplugged) or stopped reading
        pass
    finally:
        feed.unsubscribe(client)
