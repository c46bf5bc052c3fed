"""The wire oracle on a running lab phone: its capture, its settings, its logged verdicts.

Owns: `judge_phone()`, which reads the phone namespace's capture and the phone's own
`event=cycle` log records, judges them with `phonelab.oracle` for the lab's addresses
(pbx1 = primary, pbx2 = backup, on 5060) and prints the verdict table; `Windows`, the
fault windows of what a test does to the phone's side (SIGSTOP, its link down, its DNS
silent), timed by the wall clock the capture's timestamps also use. Must not touch: the
phone or the capture beyond reading them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from phonelab.capture import Capture
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP
from phonelab.oracle import OracleSettings, Report, Window, WindowKind, judge, logged
from phonelab.oracle_wire import Servers
from phonelab.phone import RunningPhone

LAB_SERVERS: Servers = {"primary": (PBX1_IP, 5060), "backup": (PBX2_IP, 5060)}


def judge_phone(
    capture: Capture,
    phone: RunningPhone,
    settings: OracleSettings,
    *,
    windows: Sequence[Window] = (),
    servers: Servers = LAB_SERVERS,
) -> Report:
    """Judge everything `capture` holds of `phone` so far, and print the verdict table.

    Cycles whose 1600 ms (and switch) are not over yet are left out.
    """
    end = time.time()
    report = judge(
        capture.packets(),
        phone=PHONE_IP,
        servers=servers,
        settings=settings,
        windows=windows,
        end=end,
        phone_verdicts=logged(phone.events("cycle")),
    )
    print(report.table())  # the verdict table is the test's evidence (pytest -s)
    return report


@dataclass
class Windows:
    """The fault windows of one test, collected as it inflicts them."""

    items: list[Window] = field(default_factory=list)

    @contextmanager
    def during(self, kind: WindowKind, *, after_s: float = 0.0) -> Iterator[None]:
        """Record a window around the body; it lasts `after_s` beyond the body's end
        (e.g. a name lookup started during it may fail that long after)."""
        start = time.time()
        try:
            yield
        finally:
            self.items.append(Window(start, time.time() + after_s, kind))
