"""The installed service end to end (issue: the failover sequence): real Kamailio and sipp
peers in namespaces, the phone judged from its packets, its status and its log lines.

Timing tolerances here are loose enough for a busy 2-core CI machine (±30 ms on probe
offsets, +100 ms on the switch); `scripts/bench-failover` measures the SPEC §9 budgets.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, poll_until
from phonelab.pcap import Packet, sip_summary
from phonelab.phone import RunningPhone, sip_from_phone

OFFSET_TOLERANCE_S = 0.03
SWITCH_TOLERANCE_S = 0.1
INTERVAL_S = 2
#: Long enough for the random first-cycle offset, a whole cycle and the switch.
SWITCH_TIMEOUT_S = 2 * INTERVAL_S + 4

from conftest import StartPhone  # noqa: E402 - the fixture lives in conftest


def registered(phone: RunningPhone, server: str, timeout_s: float = 10.0) -> None:
    """Wait for the phone's log to say it is registered on `server`."""
    phone.wait_event("registration", timeout_s, server=server, state="registered")


def wait_cycles(phone: RunningPhone, server: str, count: int, timeout_s: float) -> list[Any]:
    """Wait until `count` cycles were judged for `server`; their log records."""
    return poll_until(
        lambda: (found := phone.events("cycle", server=server))[count - 1 :] and found,
        timeout_s=timeout_s,
        interval_s=0.05,
    )


def attempts_before(packets: list[Packet], dst: str, before: float) -> tuple[float, list[float]]:
    """The last cycle's first OPTIONS to `dst` sent before `before`, and every attempt's
    offset from it (attempts of one cycle lie within 1.3 s of its start)."""
    times = [p.ts for p in sip_from_phone(packets, dst, "OPTIONS") if p.ts < before]
    cycle = [t for t in times if t >= times[-1] - 1.3]
    return cycle[0], [t - cycle[0] for t in cycle]


def assert_offsets(offsets: list[float], expected: list[float]) -> None:
    assert len(offsets) == len(expected), offsets
    for got, want in zip(offsets, expected, strict=True):
        assert abs(got - want) <= OFFSET_TOLERANCE_S, offsets


def kamailio_holds_contact(pbx: KamailioPbx) -> bool:
    return any(PHONE_IP in contact for contact in pbx.registrations())


def test_steady_state_registers_on_primary_and_probes_both_every_cycle(
    primary: KamailioPbx, backup: KamailioPbx, capture_phone: Capture, start_phone: StartPhone
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    wait_cycles(phone, "backup", 3, timeout_s=4 * INTERVAL_S + 2)
    packets = capture_phone.packets()

    to_primary = sip_from_phone(packets, PBX1_IP, "OPTIONS")
    to_backup = sip_from_phone(packets, PBX2_IP, "OPTIONS")
    assert len(to_primary) >= 3
    for earlier, later in itertools.pairwise(to_primary):
        assert abs(later.ts - earlier.ts - INTERVAL_S) <= OFFSET_TOLERANCE_S  # one per cycle
    for probe in to_primary:  # the backup is probed at the same instant
        assert min(abs(probe.ts - other.ts) for other in to_backup) <= 0.01
    sent = [p for p in packets if p.src == PHONE_IP and (s := sip_summary(p.payload)) and s.method]
    kinds = {(p.dst, sip_summary(p.payload).method) for p in sent}  # type: ignore[union-attr]
    assert kinds == {(PBX1_IP, "OPTIONS"), (PBX1_IP, "REGISTER"), (PBX2_IP, "OPTIONS")}
    assert len(sip_from_phone(packets, PBX1_IP, "REGISTER")) == 1

    status = phone.status()
    assert status["active"] == "primary"
    assert status["service"] == "ok"
    assert status["servers"]["primary"]["registration"] == "registered"
    assert status["servers"]["backup"]["last_cycle"]["up"] is True
    assert status["display"]["top_line"] == "1001  primary"
    assert status["leds"]["status"] == {"color": "green", "blinking": False}
    assert kamailio_holds_contact(primary)
    assert not kamailio_holds_contact(backup)


def _kill(how: str, pbx: KamailioPbx, faults: Faults, lab: Lab) -> Callable[[], None]:
    """Make `pbx` die the way `how` says; return what brings it back."""
    if how == "blackhole":
        faults.blackhole(lab.pbx1)
        return lambda: faults.unblackhole(lab.pbx1)
    if how == "stop":
        faults.stop(pbx)
        return pbx.start
    faults.freeze(pbx)
    return lambda: faults.thaw(pbx)


@pytest.mark.parametrize("how", ["blackhole", "stop", "freeze"])
def test_primary_dies_fails_over_at_1600_ms_and_fails_back_when_it_returns(
    how: str,
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    restore = _kill(how, primary, faults, lab)

    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=2)
    packets = capture_phone.packets()
    first_register = sip_from_phone(packets, PBX2_IP, "REGISTER")[0].ts
    cycle_start, offsets = attempts_before(packets, PBX1_IP, first_register)
    assert_offsets(offsets, [0.0, 0.8, 1.2])
    assert 1.6 <= first_register - cycle_start <= 1.6 + SWITCH_TOLERANCE_S
    status = phone.status()
    assert status["active"] == "backup"
    assert status["servers"]["backup"]["registration"] == "registered"
    assert status["servers"]["primary"]["last_cycle"]["up"] is False
    assert status["display"]["top_line"] == "1001  BACKUP"
    assert kamailio_holds_contact(backup)

    restore()
    poll_until(
        lambda: len(phone.events("use_server", server="primary")) >= 2,
        timeout_s=SWITCH_TIMEOUT_S,
        interval_s=0.05,
    )
    poll_until(
        lambda: len(phone.events("registration", server="primary", state="registered")) >= 2,
        timeout_s=2,
        interval_s=0.05,
    )
    phone.wait_event("registration", 3, server="backup", state="idle")
    poll_until(lambda: not kamailio_holds_contact(backup), timeout_s=3, interval_s=0.05)
    assert phone.status()["active"] == "primary"


def test_primary_answering_at_850_ms_gets_a_second_probe_and_no_failover(
    backup: KamailioPbx,
    make_sipp: Callable[..., Any],
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    make_sipp("pbx1", delay_ms=850)
    phone = start_phone()
    verdicts = wait_cycles(phone, "primary", 2, timeout_s=4 * INTERVAL_S + 2)

    assert all(v["up"] == "true" and v["attempts"] == "2" for v in verdicts), verdicts
    packets = capture_phone.packets()
    probes = sip_from_phone(packets, PBX1_IP, "OPTIONS")
    _, offsets = attempts_before(packets, PBX1_IP, probes[0].ts + 1.5)
    assert_offsets(offsets, [0.0, 0.8])  # a 2nd probe at 800 ms, and no 3rd
    assert phone.events("use_server", server="backup") == []
    assert sip_from_phone(packets, PBX2_IP, "REGISTER") == []


def test_primary_answering_503_is_down_and_the_phone_fails_over(
    backup: KamailioPbx,
    make_sipp: Callable[..., Any],
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    make_sipp("pbx1", delay_ms=0, status=503)
    phone = start_phone()

    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=2)
    verdict = phone.events("cycle", server="primary")[-1]
    assert (verdict["up"], verdict["attempts"], verdict["status"]) == ("false", "3", "503")
    assert kamailio_holds_contact(backup)


def test_backup_down_as_well_means_no_failover_and_no_service(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    faults.blackhole(lab.pbx2)
    faults.blackhole(lab.pbx1)

    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    status = phone.status()
    assert status["active"] == "primary"
    assert status["service"] == "no_service"
    assert status["display"]["top_line"] == "NO SERVICE"
    assert status["leds"]["status"] == {"color": "red", "blinking": True}
    assert phone.events("use_server", server="backup") == []
    assert sip_from_phone(capture_phone.packets(), PBX2_IP, "REGISTER") == []


def test_backup_disabled_probes_only_the_primary_and_never_fails_over(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone(backup_enabled="false")
    registered(phone, "primary")
    faults.blackhole(lab.pbx1)

    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    packets = capture_phone.packets()
    assert [p for p in packets if p.dst == PBX2_IP] == []
    assert phone.events("use_server", server="backup") == []


def test_sigterm_unregisters_and_exits_0_within_2_s(
    primary: KamailioPbx, backup: KamailioPbx, start_phone: StartPhone
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    assert kamailio_holds_contact(primary)

    code, took_s = phone.stop()

    assert code == 0, phone.tail()
    assert took_s < 2.0
    assert not kamailio_holds_contact(primary)
    assert "Traceback" not in "\n".join(phone.lines())


def test_status_command_prints_the_state_for_a_person(
    primary: KamailioPbx, backup: KamailioPbx, start_phone: StartPhone
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    config = str(phone.workdir / "phoned.toml")

    text = _phoned("status", "--config", config)
    as_json = _phoned("status", "--json", "--config", config)

    assert "1001  primary" in text.stdout
    assert f"{PBX2_IP}:5060" in text.stdout
    assert '"active": "primary"' in as_json.stdout


def test_default_interval_of_15_s_probes_on_a_15_s_grid(
    primary: KamailioPbx, backup: KamailioPbx, capture_phone: Capture, start_phone: StartPhone
) -> None:
    start_phone(interval=15)
    packets = capture_phone.wait_packets(
        lambda found: len(sip_from_phone(found, PBX1_IP, "OPTIONS")) >= 2, timeout_s=33
    )
    first, second = sip_from_phone(packets, PBX1_IP, "OPTIONS")[:2]
    assert abs(second.ts - first.ts - 15) <= OFFSET_TOLERANCE_S


def _phoned(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phoned", *args], capture_output=True, text=True, check=True
    )
