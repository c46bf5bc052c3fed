"""SPEC §10 fault matrix, servers dying and coming back in awkward orders, each judged
through the wire oracle (`phonelab.oracle`) on a real Kamailio pair and the real phoned.

- Both down (no service, no move), then the backup back first: failover to it.
- The backup dying while in use. With the primary up again (failback held back by
  failback_cycles = 5): back to the primary at once, in that cycle. With the primary
  still down: no service, and no move.
A server "dies" by silence (an nftables drop of everything sent to its 5060).
"""

from __future__ import annotations

from conftest import StartPhone

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import Lab
from phonelab.oracle import OracleSettings, Report
from phonelab.oracle_lab import judge_phone
from phonelab.phone import RunningPhone

INTERVAL_S = 2


class Cycles:
    """Counts the phone's judged cycles (its `event=cycle` lines for the primary)."""

    def __init__(self, phone: RunningPhone) -> None:
        self.phone = phone

    def wait(self, count: int) -> None:
        """Wait until `count` more cycles are judged."""
        self.phone.wait_more_cycles(count, INTERVAL_S)


def on_primary(start_phone: StartPhone, failback_cycles: int = 1) -> tuple[RunningPhone, Cycles]:
    phone = start_phone(interval=INTERVAL_S, failback_cycles=failback_cycles)
    phone.wait_event("registration", 10, server="primary", state="registered")
    cycles = Cycles(phone)
    cycles.wait(1)
    return phone, cycles


def on_backup(phone: RunningPhone, lab: Lab, faults: Faults) -> None:
    """Silence the primary and wait until the phone is registered on the backup."""
    faults.blackhole(lab.pbx1)
    phone.wait_event("registration", 2 * INTERVAL_S + 4, server="backup", state="registered")


def judged(capture: Capture, phone: RunningPhone, failback_cycles: int = 1) -> Report:
    settings = OracleSettings(interval_s=INTERVAL_S, failback_cycles=failback_cycles)
    return judge_phone(capture, phone, settings)


def test_both_down_is_no_service_in_place_then_the_backup_back_first_takes_over(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone, cycles = on_primary(start_phone)
    faults.blackhole(lab.pbx1)
    faults.blackhole(lab.pbx2)
    phone.wait_event("service", 2 * INTERVAL_S + 3, service="no_service")
    cycles.wait(1)
    both_down = judged(capture_phone, phone)

    faults.unblackhole(lab.pbx2)
    phone.wait_event("registration", 2 * INTERVAL_S + 4, server="backup", state="registered")
    cycles.wait(1)
    report = judged(capture_phone, phone)

    assert both_down.discrepancies == []
    assert both_down.final_service == "no_service"
    assert both_down.switches == []
    assert report.discrepancies == []
    assert [s.server for s in report.switches] == ["backup"]
    assert phone.status()["active"] == "backup"


def test_the_backup_dying_in_use_with_the_primary_up_goes_back_at_once(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone, cycles = on_primary(start_phone, failback_cycles=5)
    on_backup(phone, lab, faults)
    faults.unblackhole(lab.pbx1)
    cycles.wait(1)  # the primary up for a cycle: 1 of 5, no failback yet
    faults.blackhole(lab.pbx2)
    phone.wait_count("use_server", 2, 2 * INTERVAL_S + 3, server="primary")  # start + back
    cycles.wait(1)
    report = judged(capture_phone, phone, failback_cycles=5)

    assert report.discrepancies == []
    assert [s.server for s in report.switches] == ["backup", "primary"]
    assert any(row.rule.startswith("backup down -> primary") for row in report.rows)
    assert phone.status()["active"] == "primary"


def test_the_backup_dying_in_use_with_the_primary_down_is_no_service_in_place(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone, cycles = on_primary(start_phone)
    on_backup(phone, lab, faults)
    faults.blackhole(lab.pbx2)
    phone.wait_event("service", 2 * INTERVAL_S + 3, service="no_service")
    cycles.wait(1)
    report = judged(capture_phone, phone)

    assert report.discrepancies == []
    assert [s.server for s in report.switches] == ["backup"]
    assert report.final_service == "no_service"
    status = phone.status()
    assert (status["active"], status["service"]) == ("backup", "no_service")
