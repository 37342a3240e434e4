"""sd_notify without libsystemd: READY, WATCHDOG, STOPPING, STATUS over $NOTIFY_SOCKET.

The watchdog ping comes from the inference worker's loop, not from a timer thread: if an inference
hangs, the pings stop and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send one notification; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec when the watchdog is enabled for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class Watchdog:
    """Pings at most once per interval, from whichever loop calls `ping`."""

    def __init__(self) -> None:
        self.interval = watchdog_interval_s()
        self._last = 0.0

    def ping(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            notify("WATCHDOG=1")
            self._last = now
