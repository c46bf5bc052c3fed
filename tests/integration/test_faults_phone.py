"""SPEC §10 fault matrix, faults on the phone's own side, judged through the wire oracle
(`phonelab.oracle`) with the fault's time as a window (`phonelab.oracle_lab.Windows`):

- its link down and up again (`ip link set dev eth0 down/up` in the phone namespace): no
  crash, no burst of probes, registered again on the right server within one cycle of
  the link coming back, and the SIP listeners pjsua re-creates still admit only the
  servers (`phoned.sip.listeners`);
- its DNS server going silent while both servers are given as names: each name is down
  while it does not resolve (so no service, and no move), the phone logs it once per
  server and probes again as soon as names resolve;
- the process stopped (SIGSTOP) just after an attempt 1, for longer than an interval, then
  resumed (SIGCONT): the cycle it was stopped in is void (no attempt replayed late, no
  verdict), missed cycles are skipped, the grid goes on with no two cycles closer than
  the interval. Stopped 1.25 intervals (resumed 0.5 s into the next cycle's slot) and 2.25
  (a whole cycle missed, resumed 0.5 s into the slot after it).
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import StartPhone

from phonelab.capture import Capture
from phonelab.dns import DnsServer
from phonelab.faults import Faults
from phonelab.flood import tcp_connects
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab
from phonelab.oracle import OracleSettings, WindowKind
from phonelab.oracle_lab import LAB_SERVERS, Windows, judge_phone
from phonelab.oracle_wire import extract, registered
from phonelab.pcap import Packet
from phonelab.phone import RunningPhone, sip_from_phone
from phonelab.responder import ScriptedResponder, Send

INTERVAL_S = 2
SETTINGS = OracleSettings(interval_s=INTERVAL_S)
#: A name lookup starts 1 s before its cycle and the lab resolver gives up after 1 s
#: (`options timeout:1 attempts:1`): a cycle may miss its name that long after DNS is back.
LOOKUP_TAIL_S = 2.0


def started_on_primary(start_phone: StartPhone, **overrides: object) -> RunningPhone:
    phone = start_phone(interval=INTERVAL_S, **overrides)
    phone.wait_event("registration", 10, server="primary", state="registered")
    phone.wait_more_cycles(1, INTERVAL_S)
    return phone


def no_crash(phone: RunningPhone) -> None:
    assert phone.proc.poll() is None, phone.tail()
    assert not any("Traceback" in line for line in phone.lines()), phone.tail()


def test_the_phones_link_down_and_up_no_burst_and_registered_again_within_a_cycle(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = started_on_primary(start_phone)
    windows = Windows()
    phone.wait_more_cycles(1, INTERVAL_S)  # just judged: the next cycle is almost an interval away
    try:
        with windows.during(WindowKind.STALL):
            lab.run(lab.phone, ["ip", "link", "set", "dev", "eth0", "down"])
            time.sleep(1.5 * INTERVAL_S)  # the fault's length, not a synchronisation
    finally:
        lab.run(lab.phone, ["ip", "link", "set", "dev", "eth0", "up"])
    link_back = time.time()
    phone.wait_more_cycles(3, INTERVAL_S)
    report = judge_phone(capture_phone, phone, SETTINGS, windows=windows.items)

    no_crash(phone)
    assert report.discrepancies == []
    wire = extract(capture_phone.packets(), phone=PHONE_IP, servers=LAB_SERVERS)
    again = registered(wire, LAB_SERVERS, "primary", link_back)
    assert again is not None, "no REGISTER answered 200 after the link came back"
    assert again - link_back <= INTERVAL_S + SETTINGS.down_s + SETTINGS.switch_late_s
    # pjsua made its TCP and TLS listeners anew: they admit the servers only, as before
    for port in (5060, 5061):
        assert tcp_connects(lab.pbx1, (PHONE_IP, port)), port
        assert not tcp_connects(lab.peer, (PHONE_IP, port), timeout_s=0.3), port


def test_the_dns_going_silent_makes_named_servers_down_logged_once_then_back(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    dns: DnsServer,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_a("pbx2.lab.test", PBX2_IP)
    phone = started_on_primary(start_phone, primary="pbx1.lab.test", backup="pbx2.lab.test")
    windows = Windows()
    with windows.during(WindowKind.NO_NAME, after_s=LOOKUP_TAIL_S):
        faults.blackhole(lab.dns, 53)
        phone.wait_event("service", 3 * INTERVAL_S + 3, service="no_service")
        phone.wait_more_cycles(1, INTERVAL_S)
        faults.unblackhole(lab.dns)
    phone.wait_count("service", 2, 3 * INTERVAL_S + 3, service="ok")
    phone.wait_more_cycles(1, INTERVAL_S)
    report = judge_phone(capture_phone, phone, SETTINGS, windows=windows.items)

    no_crash(phone)
    assert report.discrepancies == []
    assert report.switches == []
    assert report.final_service == "ok"
    for name in ("pbx1.lab.test", "pbx2.lab.test"):
        failures = [line for line in phone.lines() if f"{name} does not resolve" in line]
        assert len(failures) == 1, failures  # SPEC §10: logged once, with its reason


def attempt_1s(packets: list[Packet]) -> tuple[int, int]:
    """OPTIONS sent so far to the primary and to the backup."""
    return len(sip_from_phone(packets, PBX1_IP, "OPTIONS")), len(
        sip_from_phone(packets, PBX2_IP, "OPTIONS")
    )


@pytest.mark.parametrize("stopped_intervals", [1.25, 2.25])
def test_a_stopped_phone_resumes_on_the_grid_without_replaying_its_cycle(
    stopped_intervals: float,
    lab: Lab,
    backup: KamailioPbx,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    with ScriptedResponder(lab.pbx1, PBX1_IP, lambda _cycle, _attempt: [Send(300)]):
        phone = started_on_primary(start_phone)
        windows = Windows()
        sent = attempt_1s(capture_phone.packets())
        # both attempt 1s are out (the monitor sends one after the other): stop after them
        capture_phone.wait_packets(
            lambda p: all(now > before for now, before in zip(attempt_1s(p), sent, strict=True)),
            INTERVAL_S + 1,
        )
        with windows.during(WindowKind.STALL, after_s=0.05):  # its reply comes at +300 ms
            phone.proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(stopped_intervals * INTERVAL_S)  # the fault's length
            finally:
                phone.proc.send_signal(signal.SIGCONT)
        phone.wait_more_cycles(3, INTERVAL_S)
        report = judge_phone(capture_phone, phone, SETTINGS, windows=windows.items)

    no_crash(phone)
    assert report.discrepancies == []
    assert report.switches == []
    assert phone.status()["active"] == "primary"
