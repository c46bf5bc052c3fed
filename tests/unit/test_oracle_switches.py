"""The wire oracle (phonelab.oracle) on captures built by hand, its switches: failover,
failback, both down, registrations and the bindings the servers hold; every SPEC §1 rule
shown once kept and once broken. Its reading of each cycle: `test_oracle_verdicts.py`."""

from __future__ import annotations

import pytest
from oracle_captures import INTERVAL, Capture, T, steady

from phonelab.oracle import OracleSettings, Verdict
from phonelab.oracle_fake import DOWN, PHONE, SERVERS
from phonelab.oracle_wire import Binding, bindings, extract, registered


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
