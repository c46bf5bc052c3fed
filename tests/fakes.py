"""Fakes of phoned's ports, one per port, each recording what happened (STYLE §4).

Owns: test doubles only. Must not touch: real sockets, clocks, pins or processes.
Sections start with a `# --- <port>` line; append new fakes below the last one.
"""

from __future__ import annotations

# --- clocks


class FakeClock:
    """A `phoned.clock.Clock` that moves only when a test moves it (time travel)."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now_s = start_s
        #: every time `set()`/`advance()` moved the clock to, in order
        self.history: list[float] = [start_s]

    def now(self) -> float:
        """Return the time the test last set."""
        return self._now_s

    def set(self, when_s: float) -> float:
        """Jump to `when_s` (never backwards: a monotonic clock cannot)."""
        if when_s < self._now_s:
            raise ValueError(f"FakeClock cannot go back from {self._now_s} to {when_s}")
        self._now_s = when_s
        self.history.append(when_s)
        return when_s

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds`; return the new time."""
        return self.set(self._now_s + seconds)
