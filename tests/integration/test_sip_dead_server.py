"""A switch away from a dead server sends it nothing (SPEC §10, issue 12 item 7).

`phoned run` in the lab with BLF keys (so that subscriptions move too), judged from its
packets: once the phone has switched away from a server that went silent, the only
packets it still sends that server are the OPTIONS of the cycles (SPEC §1). No
un-REGISTER, no un-SUBSCRIBE, and so none of pjsip's retransmissions of them for 32 s.
Both directions: a failover away from a dead primary, and a failback away from a dead
backup, decided either at the primary's reply (`failback_cycles = 1`: the backup's
verdict comes 1.6 s later) or when the cycle is judged (`failback_cycles = 2`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import StartPhone
from test_service import INTERVAL_S, SWITCH_TIMEOUT_S, registered
from test_service_pbx import account, lamps

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, poll_until
from phonelab.pcap import Packet, sip_summary
from phonelab.phone import sip_from_phone

MakePbx = Callable[..., KamailioPbx]
KEYS = ["1002", "1003"]
IDLE = dict.fromkeys(KEYS, "idle")
#: pjsip retransmits a non-INVITE request at +0.5, +1.5, +3.5 s...: watch past the third.
RETRANSMIT_WATCH_S = 4.0


def requests_to(packets: list[Packet], dst: str, since: float, until: float) -> list[str]:
    """Methods of the SIP requests the phone sent to `dst` in [since, until)."""
    found = []
    for packet in packets:
        if packet.src != PHONE_IP or packet.dst != dst or not since <= packet.ts < until:
            continue
        summary = sip_summary(packet.payload)
        if summary is not None and summary.method:
            found.append(summary.method)
    return found


def first_after(packets: list[Packet], dst: str, method: str, since: float) -> float:
    """Capture time of the first `method` to `dst` at or after `since`."""
    return next(p.ts for p in sip_from_phone(packets, dst, method) if p.ts >= since)


def watched(capture: Capture, until: float) -> list[Packet] | None:
    """The packets once the capture runs past `until` (the probes keep it going)."""
    found = capture.packets()
    return found if found and found[-1].ts >= until else None


@pytest.mark.parametrize("failback_cycles", [1, 2])
def test_nothing_but_probes_reaches_a_server_left_because_it_died(
    lab: Lab,
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
    failback_cycles: int,
) -> None:
    make_pbx("pbx1", users=pbx_users, presence=True)
    make_pbx("pbx2", users=pbx_users, presence=True)
    settings = {**account(pbx_users), "blf": {"keys": KEYS}}
    phone = start_phone(failback_cycles=failback_cycles, settings=settings)
    registered(phone, "primary")
    lamps(phone, IDLE)

    faults.blackhole(lab.pbx1)  # the primary dies: silent, no ICMP
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=3)
    lamps(phone, IDLE)  # subscribed on the backup
    faults.blackhole(lab.pbx2)  # then the backup dies too: nowhere to go
    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    faults.unblackhole(lab.pbx1)  # the primary is back while the backup is dead

    phone.wait_count("use_server", 2, SWITCH_TIMEOUT_S, server="primary")
    phone.wait_count("registration", 2, 3, server="primary", state="registered")
    lamps(phone, IDLE, timeout_s=INTERVAL_S + 3)  # subscribed on the primary again
    packets = capture_phone.packets()
    failed_over = first_after(packets, PBX2_IP, "REGISTER", 0.0)
    failed_back = first_after(packets, PBX1_IP, "REGISTER", failed_over)
    packets = poll_until(
        lambda: watched(capture_phone, failed_back + RETRANSMIT_WATCH_S),
        timeout_s=RETRANSMIT_WATCH_S + INTERVAL_S + 2,
        interval_s=0.2,
    )
    status = phone.status()

    end = float("inf")
    # SPEC §10: after each switch, the server left behind gets the cycles' OPTIONS only.
    assert set(requests_to(packets, PBX1_IP, failed_over, failed_back)) == {"OPTIONS"}
    assert set(requests_to(packets, PBX2_IP, failed_back, end)) == {"OPTIONS"}
    # ... while the server in use got the registration and the subscriptions.
    assert {"REGISTER", "SUBSCRIBE"} <= set(requests_to(packets, PBX2_IP, failed_over, end))
    assert {"REGISTER", "SUBSCRIBE"} <= set(requests_to(packets, PBX1_IP, failed_back, end))
    assert status["active"] == "primary"
    assert status["servers"]["primary"]["registration"] == "registered"
    assert status["servers"]["backup"]["registration"] == "idle"
    assert status["servers"]["backup"]["last_cycle"]["up"] is False
