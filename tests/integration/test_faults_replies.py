"""SPEC §10 fault matrix, replies that come late, twice or out of order, judged through the
wire oracle (`phonelab.oracle`) against a real phoned; the backup is a real Kamailio.

- Delays: sipp (`make_sipp`) answers every OPTIONS to the primary after 300, 900 or
  1700 ms. 300: up on attempt 1. 900: attempt 2 at 800 ms, then the late reply to attempt
  1 counts. 1700: never counts, neither in its cycle nor in the next one, where the
  replies to attempts 2 and 3 land (at +500 and +900 ms of the next cycle): failover.
- Reordered and duplicated: `ScriptedResponder` plays the primary and answers each
  (cycle, attempt) as planned, so the replies to attempts 1 and 2 (or 3) cross on the
  wire, copies arrive, and a copy of a reply lands in the next cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from conftest import StartPhone

from phonelab.capture import Capture
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, Lab
from phonelab.oracle import OracleSettings, Report, Verdict
from phonelab.oracle_lab import judge_phone
from phonelab.phone import RunningPhone
from phonelab.responder import ScriptedResponder, Send

INTERVAL_S = 2
SETTINGS = OracleSettings(interval_s=INTERVAL_S)


def judge_after(phone: RunningPhone, capture: Capture, cycles: int) -> Report:
    """Wait until `cycles` cycles were judged by the phone, then judge the wire."""
    timeout_s = (cycles + 1) * INTERVAL_S + 3
    phone.wait_count("cycle", cycles, timeout_s, server="primary")
    return judge_phone(capture, phone, SETTINGS)


@pytest.mark.parametrize(
    ("delay_ms", "verdict", "attempts"),
    [(300, Verdict.UP, [1]), (900, Verdict.UP, [1, 2]), (1700, Verdict.DOWN, [1, 2, 3])],
)
def test_replies_delayed_count_only_until_1600_ms_of_their_own_cycle(
    delay_ms: int,
    verdict: Verdict,
    attempts: list[int],
    backup: KamailioPbx,
    make_sipp: Callable[..., Any],
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    make_sipp("pbx1", delay_ms=delay_ms)
    phone = start_phone(interval=INTERVAL_S)

    report = judge_after(phone, capture_phone, 3)

    assert report.discrepancies == []
    cells = [row.servers["primary"] for row in report.rows]
    assert [c.verdict for c in cells] == [verdict] * len(cells)
    assert all(list(c.attempts) == attempts for c in cells)
    if delay_ms == 1700:
        assert report.final_server == "backup"
        assert report.late_replies >= 3 * (len(cells) - 1)  # every reply; none counted
    else:
        assert report.switches == []


def reordered(cycle: int, attempt: int) -> Sequence[Send]:
    """Even cycles: attempt 1 answered at 1000 ms, attempt 2 at 850 (before it). Odd: 1 at
    1450, 2 with 503 at 810, 3 at 1300 (the 3rd's reply counts first)."""
    even = {1: [Send(1000)], 2: [Send(50)]}
    odd = {1: [Send(1450)], 2: [Send(10, 503)], 3: [Send(100)]}
    return (odd if cycle % 2 else even).get(attempt, [])


def test_replies_crossing_on_the_wire_count_by_arrival_whatever_attempt_they_answer(
    lab: Lab, backup: KamailioPbx, capture_phone: Capture, start_phone: StartPhone
) -> None:
    with ScriptedResponder(lab.pbx1, PBX1_IP, reordered) as responder:
        phone = start_phone(interval=INTERVAL_S)
        report = judge_after(phone, capture_phone, 4)

    assert report.discrepancies == []
    cells = [row.servers["primary"] for row in report.rows]
    assert [c.verdict for c in cells] == [Verdict.UP] * len(cells)
    # the phone's cycle 0 is the responder's cycle 0: attempt 2 (even) or 3 (odd) won
    assert [c.reply_attempt for c in cells] == [3 if n % 2 else 2 for n in range(len(cells))]
    assert report.switches == []
    assert len(responder.sent) >= 2 * len(cells)


def duplicated(cycle: int, attempt: int) -> Sequence[Send]:
    """Round of three cycles: (0) attempt 1 answered twice, plus a copy at 2300 ms that lands
    in the next cycle; (1) silent: only that stale copy arrives -> down, failover; (2) two
    copies at once -> up, failback."""
    if attempt != 1:
        return []
    return ([Send(20), Send(40), Send(2300)], [], [Send(5), Send(5)])[cycle % 3]


def test_duplicates_count_once_and_a_copy_landing_in_the_next_cycle_never_counts(
    lab: Lab, backup: KamailioPbx, capture_phone: Capture, start_phone: StartPhone
) -> None:
    with ScriptedResponder(lab.pbx1, PBX1_IP, duplicated):
        phone = start_phone(interval=INTERVAL_S)
        report = judge_after(phone, capture_phone, 6)

    assert report.discrepancies == []
    verdicts = report.verdicts("primary")
    assert len(verdicts) >= 5
    assert verdicts == ([Verdict.UP, Verdict.DOWN, Verdict.UP] * 3)[: len(verdicts)]
    assert [s.server for s in report.switches][:3] == ["backup", "primary", "backup"]
    assert report.late_replies >= 2  # the copies at 2300 ms
