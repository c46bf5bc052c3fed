"""The phone as `phoned demo` sees it (SPEC §8): its log lines as a timeline, its display.

Owns: `phoned run` as a child process, its log lines (stderr) read off a queue and the ones
the story needs printed as a timeline (`+  6.143 s  failover: ...`) while the demo waits for
one, and `phoned status` over the control socket with the display's last frame drawn in the
terminal. Must not touch: the service's internals; it reads only what an installer would:
the service's log lines and `phoned status`.

Offsets between probes (`OPTIONS #2 to primary at +800 ms`, a cycle's `4.000 s after the
last cycle's`) come from the log lines' own timestamps, taken by the phone as it sent them,
so a demo process that reads a line late does not skew them.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from phoned.device.display import to_ansi
from phoned.logfmt import parse
from phoned.service import control_client
from phoned.service.status import render_text
from phonelab.errors import LabError

#: A log line's fields -> whether it is what the demo waits for.
LogMatch = Callable[[dict[str, str]], bool]

_SHOWN = {
    "use_server", "registration", "service", "probe_failed", "blf", "started", "config",
    "check_sync",
}  # fmt: skip
#: The log format's `%H:%M:%S.mmm` at the start of each line (phoned.logfmt.setup_logging).
_STAMP = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) ")
_DAY_S = 86400.0


class Timeline:
    """The phone's log lines, printed as the demo's timeline while it waits for one.

    Args:
        lines: the log lines, as they come (a reader thread fills it).
    """

    def __init__(self, lines: queue.Queue[str]) -> None:
        self.lines = lines
        self.t0 = time.monotonic()
        #: the server each of whose cycles the timeline shows (its first OPTIONS); None: none
        self.grid_server: str | None = None
        self._attempt_1: dict[tuple[str, str], float] = {}  # (server, cycle) -> logged at
        self._cycles: dict[str, tuple[float | None, float]] = {}  # server -> last 2 starts

    def wait_for(self, what: LogMatch, timeout_s: float) -> dict[str, str]:
        """Print the timeline until a log line matches `what`; that line's fields.

        Raises:
            LabError: no such line within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                fields = self._take(self.lines.get(timeout=left))
            except queue.Empty:
                break
            if what(fields):
                return fields
        raise LabError(f"the phone did not get there within {timeout_s:.0f} s")

    def catch_up(self) -> None:
        """Print what the phone has logged so far (before the story's next step)."""
        while True:
            try:
                self._take(self.lines.get_nowait())
            except queue.Empty:
                return

    def gap_s(self, server: str) -> float | None:
        """Seconds between the first OPTIONS of `server`'s last two cycles; None before two."""
        previous, last = self._cycles.get(server, (None, 0.0))
        return None if previous is None else (last - previous) % _DAY_S

    def _take(self, line: str) -> dict[str, str]:
        """One log line: printed on the timeline if the story shows it; its fields."""
        fields = parse(line)
        shown = self._shown(fields, _logged_at(line))
        if shown is not None:
            print(f"  +{time.monotonic() - self.t0:7.3f} s  {shown or _message(line)}")
        return fields

    def _shown(self, fields: dict[str, str], at: float) -> str | None:
        """What the timeline says of a log line: None to skip it, "" for its message."""
        event = fields.get("event")
        if event == "probe_sent":
            return self._probe(fields, at)
        if event == "cycle":
            return "" if fields.get("up") == "false" else None
        return "" if event in _SHOWN else None

    def _probe(self, fields: dict[str, str], at: float) -> str | None:
        server, cycle = fields.get("server", ""), fields.get("cycle", "")
        if fields.get("attempt") != "1":
            offset_ms = (at - self._attempt_1.get((server, cycle), at)) % _DAY_S * 1000
            return f"probe: OPTIONS #{fields.get('attempt')} to {server} at +{offset_ms:.0f} ms"
        self._attempt_1[(server, cycle)] = at
        self._cycles[server] = (self._cycles.get(server, (None, None))[1], at)
        gap = self.gap_s(server)
        if server != self.grid_server or gap is None:
            return None
        return f"probe: OPTIONS #1 to {server} (cycle {cycle}), {gap:.3f} s after the last cycle's"


class PhoneProcess(Timeline):
    """`phoned run` as a child process whose log lines arrive on the timeline's queue."""

    def __init__(self, config: Path) -> None:
        argv = [sys.executable, "-m", "phoned", "run", "--config", str(config)]
        argv += ["--log-level", "debug"]  # every probe sent, for the offsets
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        super().__init__(queue.Queue())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr or ():
            self.lines.put(line.rstrip("\n"))

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class PhoneStatus:
    """`phoned status` of the running phone, over its control socket.

    Args:
        sock: the control socket's path (`[service] control_socket`).
    """

    def __init__(self, sock: str) -> None:
        self.sock = sock

    def get(self) -> dict[str, Any]:
        """The status snapshot (`phoned status --json`)."""
        return control_client.request(self.sock, "status")

    def show(self, title: str) -> dict[str, Any]:
        """Print the phone's display as it is now (its last PNG frame, drawn in the
        terminal) and what `phoned status` says; returns that status."""
        status = self.get()
        print(f"\n  --- {title} ---")
        frame = status.get("device", {}).get("last_frame")
        if frame and sys.stdout.isatty():
            with Image.open(frame) as image:
                print(to_ansi(image.convert("RGB")))
        elif frame:
            print(f"    (display frame: {frame})")
        print(indent(render_text(status)))
        return status


def registered(server: str) -> LogMatch:
    """Matches the phone's `registered` line for `server` (primary or backup)."""
    return lambda f: (
        f.get("event") == "registration"
        and f.get("state") == "registered"
        and (f.get("server") == server)
    )


def indent(text: str) -> str:
    """`text` indented under a stage's title."""
    return "\n".join("    " + line for line in text.splitlines())


def _message(line: str) -> str:
    text = line.split(": ", 1)[-1] if " phoned" in line else line
    return text.split(" event=", 1)[0]


def _logged_at(line: str) -> float:
    """When the phone logged `line`, in seconds of its day; now when the line has no stamp."""
    match = _STAMP.match(line)
    if match is None:
        now = time.time()
        local = time.localtime(now)
        return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + now % 1
    hours, minutes, seconds, millis = map(int, match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000
