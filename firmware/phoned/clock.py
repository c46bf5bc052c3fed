"""Where the shell reads the time: the `Clock` port and its real adapter.

Owns: the notion of "now" for the IO shell (monitor, prober, supervisor). Must not touch:
wall-clock time. phoned measures durations and deadlines only, on a monotonic clock (the
Pi has no RTC, so wall time can jump at boot). The failover core never reads a clock:
the shell reads one here and passes `now` in.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic source of seconds; only differences between readings mean anything."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic, arbitrary origin)."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic()`."""

    def now(self) -> float:
        """Return `time.monotonic()` in seconds."""
        return time.monotonic()
