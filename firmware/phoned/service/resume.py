"""Where the phone was when it stopped: so a restart is back on the right server at once.

Owns: one small file, `resume`, beside the control socket (`/run/phoned/`: tmpfs, kept by
systemd across restarts with `RuntimeDirectoryPreserve=restart`, gone at reboot), that
says which server was in use, when (monotonic seconds, system-wide) and in which boot.
A watchdog restart or a crash then starts on that server with its first cycle at once,
instead of on the primary after a random offset (issue 12: back on the right server
within one cycle). Must not touch: decisions (the core starts where it is told and judges
from its first cycle), or any file but its own. Never raises: a file it cannot write or
read is logged once and the phone starts as after a boot.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from phoned.core.events import Server

log = logging.getLogger(__name__)

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: Beyond the interval, how stale a record may be and still be trusted: the systemd
#: watchdog's 30 s plus its restart delay and a margin.
_GRACE_S = 60.0


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


class ResumeFile:
    """The record of the server in use, refreshed at each switch and judged cycle."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._boot = _boot_id()
        self._failed = False
        self._last: tuple[Server, int] | None = None

    def save(self, server: Server, now: float) -> None:
        """Record `server` as in use at `now` (atomically: temp file, rename)."""
        record = (server, int(now))
        if record == self._last:  # at most one write a second
            return
        temp = self._path.with_name(self._path.name + ".tmp")
        try:
            temp.write_text(f"{server.value} {now:.3f} {self._boot}\n", encoding="ascii")
            os.replace(temp, self._path)
        except OSError as exc:
            if not self._failed:
                log.warning("resume: can't record the server in use in %s: %s", self._path,
                            exc.strerror or exc)  # fmt: skip
            self._failed = True
            return
        self._last = record

    def load(self, now: float, interval_s: float) -> tuple[Server, float] | None:
        """The server in use at the last record and its age, if this boot wrote it
        recently enough (within two intervals and a grace); None otherwise."""
        try:
            text = self._path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        fields = text.split()
        if len(fields) != 3 or fields[2] != self._boot or fields[0] not in ("primary", "backup"):
            return None
        try:
            age_s = now - float(fields[1])
        except ValueError:
            return None
        if not 0.0 <= age_s <= 2 * interval_s + _GRACE_S:
            return None
        return Server(fields[0]), age_s
