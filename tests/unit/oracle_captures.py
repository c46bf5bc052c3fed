"""Captures built by hand for the wire oracle's unit tests (`test_oracle_*.py`): the
shared builders and the times they use.

Owns: `Capture`, a `phonelab.oracle_fake.HandCapture` judged by `phonelab.oracle` as if
read just after a given cycle (its table printed for a failing test), `steady` (registered
on the primary, every reply in time) and the grid: cycle 0 at `T`, one every `INTERVAL`.
Must not touch: real captures, sockets, the phone; a test's own plans stay in its file.
"""

from __future__ import annotations

from phonelab.oracle import OracleSettings, Report, Window, judge
from phonelab.oracle_fake import PHONE, SERVERS, HandCapture

T = 1_000.0  #: cycle 0's start, epoch seconds
INTERVAL = 2.0


class Capture(HandCapture):
    """A hand-built capture, judged as read just after a given cycle."""

    def judge(
        self,
        cycles: int,
        *,
        settings: OracleSettings | None = None,
        windows: list[Window] | None = None,
        phone_verdicts: dict[tuple[int, str], bool] | None = None,
    ) -> Report:
        """Judge the first `cycles` cycles (the capture read just after the last one)."""
        report = judge(
            self.packets,
            phone=PHONE,
            servers=SERVERS,
            settings=settings or OracleSettings(interval_s=INTERVAL),
            windows=windows or [],
            end=T + (cycles - 1) * INTERVAL + 1.8,
            phone_verdicts=phone_verdicts,
        )
        print(report.table())
        return report


def steady(capture: Capture, cycles: int) -> None:
    capture.register("primary", T - 0.5)
    for n in range(cycles):
        capture.cycle(T + n * INTERVAL)
