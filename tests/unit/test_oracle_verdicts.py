"""The wire oracle (phonelab.oracle) on captures built by hand, its reading of each
cycle: attempts 2 and 3, which replies count, each server's verdict, the cycle grid, fault
windows and the phone's logged verdicts; every SPEC §1 rule shown once kept and once
broken. Its switches: `test_oracle_switches.py`."""

from __future__ import annotations

import pytest
from oracle_captures import INTERVAL, Capture, T, steady

from phonelab.oracle import Verdict, Window, WindowKind, logged
from phonelab.oracle_fake import DOWN, OFFSETS_S


def test_steady_state_is_up_up_with_no_discrepancy_and_a_table() -> None:
    capture = Capture()
    steady(capture, 3)

    report = capture.judge(3)

    assert report.discrepancies == []
    assert [r.number for r in report.rows] == [0, 1, 2]
    assert report.verdicts("primary") == [Verdict.UP] * 3
    assert report.verdicts("backup") == [Verdict.UP] * 3
    assert report.final_server == "primary"
    assert report.final_service == "ok"
    assert "no discrepancy" in report.table()
    assert [r.number for r in capture.judge(2).rows] == [0, 1]  # cycle 2 not over yet


def test_a_late_reply_to_attempt_1_after_attempt_2_counts_and_no_3rd_is_due() -> None:
    capture = Capture()
    capture.register("primary", T - 0.5)
    capture.cycle(T, primary={1: 0.85, 2: None})

    report = capture.judge(1)

    assert report.discrepancies == []
    cell = report.rows[0].servers["primary"]
    assert (cell.verdict, cell.reply_attempt) == (Verdict.UP, 1)
    assert cell.summary() == "#1+0 #2+800 r=+850(#1) up"


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({1: 0.85, 2: None, 3: None}, "attempt 3 sent although a reply arrived at +850 ms"),
        ({1: 0.9}, "attempt 2 missing (no reply by 800 ms)"),
    ],
)
def test_attempts_go_out_exactly_when_no_reply_came_by_their_time(
    plan: dict[int, float | None], expected: str
) -> None:
    capture = Capture()
    capture.register("primary", T - 0.5)
    capture.cycle(T, primary=plan)

    assert capture.judge(1).discrepancies == [f"cycle 0: primary {expected}"]


def test_an_attempt_sent_off_its_due_time_is_a_discrepancy() -> None:
    capture = Capture()
    capture.register("primary", T - 0.5)
    capture.cycle(T, primary={1: None})
    capture.answer(capture.options("primary", T + 0.83), T + 1.3)  # attempt 2, 30 ms late
    capture.options("primary", T + 1.2)

    report = capture.judge(1)

    assert report.discrepancies == ["cycle 0: primary attempt 2 +30 ms off its due time"]


def test_a_reply_within_2_ms_of_1600_may_go_either_way() -> None:
    for register in (True, False):
        capture = Capture()
        steady(capture, 1)
        capture.cycle(T + INTERVAL, primary={1: 1.601, 2: None, 3: None})
        if register:
            capture.register("backup", T + INTERVAL + 1.61)

        report = capture.judge(2)

        assert report.discrepancies == [], register
        assert report.rows[1].servers["primary"].verdict is Verdict.EITHER


def test_a_reply_to_the_previous_cycle_never_counts() -> None:
    capture = Capture()
    steady(capture, 1)
    sent = capture.cycle(T + INTERVAL, primary={1: None, 2: None, 3: None})
    capture.answer(sent["primary"][2], T + 2 * INTERVAL + 0.3)  # lands in the next cycle
    capture.register("backup", T + INTERVAL + 1.61)
    capture.cycle(T + 2 * INTERVAL, primary=DOWN)

    report = capture.judge(3)

    assert report.discrepancies == []
    assert report.verdicts("primary")[2] is Verdict.DOWN
    assert report.late_replies == 1


def test_replies_from_the_wrong_port_or_branch_and_503_never_count() -> None:
    capture = Capture()
    steady(capture, 1)
    probe = capture.options("primary", T + INTERVAL)
    capture.answer(capture.options("backup", T + INTERVAL), T + INTERVAL + 0.001)
    capture.answer(probe, T + INTERVAL + 0.01, source=("192.0.2.11", 5070))
    capture.answer(probe, T + INTERVAL + 0.02, branch="z9hG4bKother")
    capture.answer(probe, T + INTERVAL + 0.03, status=503)
    for k in (2, 3):
        capture.options("primary", T + INTERVAL + OFFSETS_S[k - 1])
    capture.register("backup", T + INTERVAL + 1.65)

    report = capture.judge(2)

    assert report.discrepancies == []
    assert report.rows[1].servers["primary"].summary() == "#1+0 #2+800 #3+1200 r=- 503x1 DOWN"
    assert report.unmatched_replies == 2


def test_a_burst_after_a_stall_is_a_discrepancy_and_a_missing_cycle_too() -> None:
    capture = Capture()
    steady(capture, 1)
    capture.cycle(T + 3 * INTERVAL)  # cycles 1 and 2 missing
    capture.cycle(T + 3 * INTERVAL + 0.5)  # a burst, off the grid

    report = capture.judge(4)

    assert "cycle 1: primary not probed at all" in report.discrepancies
    assert "cycle 2: backup not probed at all" in report.discrepancies
    assert any("fits no attempt of any cycle" in d for d in report.discrepancies)


def test_a_cycle_started_late_after_a_stall_is_off_the_grid_and_too_close_to_the_next() -> None:
    capture = Capture()
    steady(capture, 1)
    capture.options("primary", T + INTERVAL)  # stopped just after attempt 1 ...
    capture.options("backup", T + INTERVAL)
    capture.cycle(T + 2 * INTERVAL + 0.5)  # ... resumed: cycle 2 started 500 ms late
    capture.cycle(T + 3 * INTERVAL)
    stall = Window(T + INTERVAL + 0.05, T + 2 * INTERVAL + 0.45, WindowKind.STALL)

    report = capture.judge(4, windows=[stall])

    assert report.discrepancies == [
        "cycle 2: starts +500 ms off the grid",
        "cycles 2 and 3: attempt 1 only 1500 ms apart",
    ]
    assert report.verdicts("primary") == [Verdict.UP, Verdict.VOID, Verdict.UP, Verdict.UP]


def test_a_stall_excuses_missing_cycles_but_not_attempts_replayed_late() -> None:
    capture = Capture()
    steady(capture, 1)
    capture.options("primary", T + INTERVAL)  # stopped 50 ms after attempt 1 ...
    capture.options("backup", T + INTERVAL)
    capture.cycle(T + 4 * INTERVAL)  # ... resumed 4.9 s later: cycles 2 and 3 skipped
    stall = Window(T + INTERVAL + 0.05, T + 3 * INTERVAL + 0.95, WindowKind.STALL)

    clean = capture.judge(5, windows=[stall])
    capture.options("primary", T + 3 * INTERVAL + 0.95)  # attempt 2 of cycle 3? late replay
    replayed = capture.judge(5, windows=[stall])

    assert clean.discrepancies == []
    assert clean.verdicts("primary") == [
        Verdict.UP,
        Verdict.VOID,
        Verdict.VOID,
        Verdict.VOID,
        Verdict.UP,
    ]
    assert replayed.discrepancies != []


def test_a_name_that_does_not_resolve_is_down_without_a_probe() -> None:
    capture = Capture()
    steady(capture, 1)
    capture.cycle(T + 3 * INTERVAL)
    silent = Window(T + INTERVAL - 1, T + 2 * INTERVAL + 1.6, WindowKind.NO_NAME)

    report = capture.judge(4, windows=[silent])

    assert report.discrepancies == []
    assert report.verdicts("primary") == [Verdict.UP, Verdict.DOWN, Verdict.DOWN, Verdict.UP]
    assert report.rows[1].service == "no_service"
    assert report.final_service == "ok"


def test_the_phones_logged_verdicts_are_checked_against_the_wire() -> None:
    capture = Capture()
    steady(capture, 2)
    records = [
        {"event": "cycle", "cycle": "0", "server": "primary", "up": "true"},
        {"event": "cycle", "cycle": "1", "server": "backup", "up": "false"},
    ]

    report = capture.judge(2, phone_verdicts=logged(records))

    assert report.discrepancies == [
        "cycle 1: the phone logged backup DOWN; the wire: #1+0 r=+1(#1) up"
    ]
