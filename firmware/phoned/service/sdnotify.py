"""systemd notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`) without libsystemd.

Owns: the datagram to `$NOTIFY_SOCKET`. Must not touch: anything else. Does nothing when
the service does not run under systemd (no `NOTIFY_SOCKET`).
"""

from __future__ import annotations

import os
import socket
import time

_last_watchdog = 0.0


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog() -> bool:
    """Ping the watchdog at half of `$WATCHDOG_USEC`; the caller pings only when healthy.

    Returns whether a ping went out (False: not under a watchdog, or not due yet).
    """
    global _last_watchdog  # noqa: PLW0603 - one process, one watchdog
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return False
    now = time.monotonic()
    if now - _last_watchdog < int(usec) / 2e6:
        return False
    _last_watchdog = now
    return notify("WATCHDOG=1")
