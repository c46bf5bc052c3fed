"""The wire oracle (phonelab.oracle) on captures built by hand: every SPEC §1 rule it
checks, each shown once kept and once broken."""

from __future__ import annotations

import pytest

from phonelab.oracle import OracleSettings, Report, Verdict, Window, WindowKind, judge, logged
from phonelab.oracle_fake import DOWN, OFFSETS_S, PHONE, SERVERS, HandCapture
from phonelab.oracle_wire import Binding, bindings, extract, registered

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


def failing_primary(capture: Capture, register_after_s: float | None) -> None:
    steady(capture, 1)
    capture.cycle(T + INTERVAL, primary={1: 1.7, 2: None, 3: None})  # 1700 ms: too late
    if register_after_s is not None:
        capture.register("backup", T + INTERVAL + register_after_s)


def test_primary_down_backup_up_fails_over_at_1600_ms() -> None:
    capture = Capture()
    failing_primary(capture, 1.62)
    capture.cycle(T + 2 * INTERVAL, primary=DOWN)

    report = capture.judge(3)

    assert report.discrepancies == []
    assert report.verdicts("primary") == [Verdict.UP, Verdict.DOWN, Verdict.DOWN]
    assert report.late_replies == 1  # the 1700 ms reply
    assert report.final_server == "backup"
    assert report.rows[1].rule == "failover -> backup +1.600"


@pytest.mark.parametrize(
    ("register_after_s", "expected"),
    [
        (None, "the phone did nothing"),
        (1.8, "the phone did REGISTER to backup at 3.800"),
        (1.5, "the phone did REGISTER to backup at 3.500"),
    ],
)
def test_a_failover_missing_late_or_early_is_a_discrepancy(
    register_after_s: float | None, expected: str
) -> None:
    capture = Capture()
    failing_primary(capture, register_after_s)

    report = capture.judge(2)

    assert len(report.discrepancies) == 1, report.discrepancies
    assert report.discrepancies[0].startswith("cycle 1: expected failover to backup at 3.600")
    assert report.discrepancies[0].endswith(expected)


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


def on_backup(capture: Capture) -> None:
    """Cycle 0 fails over; the phone is on the backup from T + 1.6."""
    capture.cycle(T, primary=DOWN)
    capture.register("primary", T - 0.5)
    capture.register("backup", T + 1.61)


def test_failback_happens_when_the_primary_reply_arrives() -> None:
    capture = Capture()
    on_backup(capture)
    capture.cycle(T + INTERVAL, primary={1: 0.005}, backup={1: None, 2: 0.9})
    capture.register("primary", T + INTERVAL + 0.01)

    report = capture.judge(2)

    assert report.discrepancies == []
    assert report.rows[1].rule == "failback -> primary +0.005"


def test_failback_once_the_backup_is_judged_is_too_late() -> None:
    capture = Capture()
    on_backup(capture)
    capture.cycle(T + INTERVAL, primary={1: 0.005}, backup={1: None, 2: 0.9})
    capture.register("primary", T + INTERVAL + 0.905)

    report = capture.judge(2)

    assert report.discrepancies == [
        "cycle 1: expected failback to primary at 2.005; the phone did REGISTER to primary at 2.905"
    ]


def test_failback_cycles_2_waits_for_the_second_good_cycle() -> None:
    capture = Capture()
    on_backup(capture)
    capture.cycle(T + INTERVAL)
    capture.cycle(T + 2 * INTERVAL)
    capture.register("primary", T + 2 * INTERVAL + 0.01)

    report = capture.judge(3, settings=OracleSettings(interval_s=INTERVAL, failback_cycles=2))

    assert report.discrepancies == []
    assert [r.rule for r in report.rows] == [
        "failover -> backup +1.600",
        "stay",
        "failback -> primary +0.001",
    ]


def test_backup_down_while_on_it_with_the_primary_up_goes_back_at_once() -> None:
    capture = Capture()
    on_backup(capture)
    capture.cycle(T + INTERVAL, backup=DOWN)
    capture.register("primary", T + INTERVAL + 1.605)

    report = capture.judge(2, settings=OracleSettings(interval_s=INTERVAL, failback_cycles=3))

    assert report.discrepancies == []
    assert report.rows[1].rule == "backup down -> primary +1.600"


def test_both_down_stays_with_no_service_and_a_switch_then_is_a_discrepancy() -> None:
    capture = Capture()
    steady(capture, 1)
    capture.cycle(T + INTERVAL, primary=DOWN, backup=DOWN)

    quiet = capture.judge(2)
    capture.register("backup", T + INTERVAL + 1.61)
    moved = capture.judge(2)
    capture.register("backup", T + 0.3)  # and one in an all-up cycle
    twice = capture.judge(2)

    assert quiet.discrepancies == []
    assert quiet.final_service == "no_service"
    assert moved.discrepancies == [
        "cycle 1: expected no switch; the phone did REGISTER to backup at 3.610"
    ]
    assert twice.discrepancies[0] == (
        "cycle 0: expected no switch; the phone did REGISTER to primary at -0.500, "
        "REGISTER to backup at 0.300"
    )


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


def test_un_registers_and_retransmissions_are_no_switch_but_a_second_registration_is() -> None:
    capture = Capture()
    on_backup(capture)
    capture.cycle(T + INTERVAL)
    capture.register("primary", T + INTERVAL + 0.01, call_id="reg-primary-back")
    capture.register("backup", T + INTERVAL + 0.05, expires=0)
    quiet = capture.judge(2)
    capture.register("primary", T + INTERVAL + 0.5, call_id="reg-primary-again")
    twice = capture.judge(2)

    assert quiet.discrepancies == []
    assert [s.server for s in quiet.switches] == ["backup", "primary"]
    assert twice.discrepancies == ["2 registrations (Call-IDs) to primary in the stay from 2.010"]


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


def test_registered_and_bindings_come_from_the_2xx_to_a_register() -> None:
    capture = Capture()
    cseq = capture.register("backup", T + 1.0, call_id="reg-b")
    capture.registered("backup", T + 1.01, "reg-b", cseq)
    capture.register("backup", T + 5.0, call_id="reg-b", expires=0)
    wire = extract(capture.packets, phone=PHONE, servers=SERVERS)

    assert registered(wire, SERVERS, "backup", T + 0.5) == pytest.approx(T + 1.01)
    assert registered(wire, SERVERS, "backup", T + 1.005) is None
    assert registered(wire, SERVERS, "primary", T) is None
    assert bindings(wire, SERVERS) == [Binding("backup", T + 1.01, T + 5.0)]


def test_a_move_back_to_a_server_holding_the_binding_may_send_nothing() -> None:
    capture = Capture()
    steady(capture, 1)  # registered on the primary (CSeq 1), never given up
    capture.registered("primary", T - 0.49, "reg-primary", 1)
    capture.cycle(T + INTERVAL, primary=DOWN)
    capture.register("backup", T + INTERVAL + 1.61)
    capture.cycle(T + 2 * INTERVAL)  # the primary is back: failback, nothing sent

    kept = capture.judge(3)
    capture.packets = [p for p in capture.packets if p.src != SERVERS["primary"][0]
                       or b"REGISTER" not in p.payload]  # fmt: skip
    unbound = capture.judge(3)

    assert kept.discrepancies == []
    assert [(s.server, s.silent) for s in kept.switches] == [("backup", False), ("primary", True)]
    assert unbound.discrepancies == [
        "cycle 2: expected failback to primary at 4.001; the phone did nothing"
    ]


def test_a_registration_begun_before_a_stay_and_retransmitted_in_it_is_not_the_stays() -> None:
    """A REGISTER pending when the phone left (pjsip retransmits it) is not a second
    registration of the next stay there (SPEC §10: retransmissions are pjsip's own)."""
    capture = Capture()
    on_backup(capture)  # the first stay's registration: Call-ID reg-primary
    capture.cycle(T + INTERVAL, primary={1: 0.005}, backup={1: 0.006})
    capture.register("primary", T + INTERVAL + 0.01, call_id="reg-primary-back")
    capture.register("primary", T + INTERVAL + 0.3, call_id="reg-primary")  # pjsip's resend
    assert capture.judge(2).discrepancies == []
