"""The phone's own link going down and up (SPEC §10, issue 12: "it never re-registers").

`phoned run` in the lab; its link is `eth0` of the phone namespace, set down and up with
`ip link` there. SPEC §10: no crash, no burst of probes, and registered again on the
right server within one cycle after the link is back. Judged from the phone's packets
(tcpdump in its namespace, kernel timestamps), its log and `phoned status`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from conftest import StartPhone
from test_service import INTERVAL_S, SWITCH_TIMEOUT_S, kamailio_holds_contact, registered

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, poll_until
from phonelab.pcap import Packet
from phonelab.phone import RunningPhone, sip_from_phone

MakePbx = Callable[..., KamailioPbx]
LINK = "eth0"
#: SPEC §1: attempts of one server are 800 and 400 ms apart, never closer.
MIN_GAP_S = 0.35


def link(lab: Lab, state: str) -> float:
    """Set the phone's link `state` ("up"/"down"); the wall-clock time just before."""
    at = time.time()
    lab.run(lab.phone, ["ip", "link", "set", LINK, state])
    return at


def down_for_a_cycle(lab: Lab, phone: RunningPhone) -> float:
    """Take the link down until a whole cycle finds no server; then up. When it went up."""
    link(lab, "down")
    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    return link(lab, "up")


def registers(pbx: KamailioPbx) -> list[str]:
    """The REGISTERs `pbx` received from the phone (any connection)."""
    return [r for r in pbx.requests() if r.startswith(f"REGISTER from {PHONE_IP}:")]


def after(packets: list[Packet], since: float) -> list[Packet]:
    return [p for p in packets if p.ts >= since]


def assert_no_burst(packets: list[Packet], dst: str) -> None:
    """SPEC §10: never two OPTIONS to one server closer than SPEC §1's attempts are."""
    times = [p.ts for p in sip_from_phone(packets, dst, "OPTIONS")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= MIN_GAP_S for gap in gaps), [round(g, 3) for g in gaps]


def test_link_down_and_up_registers_again_on_the_primary_within_a_cycle(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    went_down = time.time()
    up_at = down_for_a_cycle(lab, phone)

    packets = capture_phone.wait_packets(
        lambda found: bool(sip_from_phone(after(found, up_at), PBX1_IP, "REGISTER")),
        timeout_s=INTERVAL_S + 1,
    )
    again = sip_from_phone(after(packets, up_at), PBX1_IP, "REGISTER")[0]
    print(f"link: REGISTER to the primary {again.ts - up_at:.3f} s after the link came up")
    assert again.ts - up_at <= INTERVAL_S  # SPEC §10: within one cycle
    phone.wait_status(
        lambda s: s["service"] == "ok" and s["servers"]["primary"]["registration"] == "registered",
        timeout_s=INTERVAL_S + 2,
    )
    packets = capture_phone.packets()

    assert phone.proc.poll() is None  # no crash
    assert phone.status()["active"] == "primary"
    assert kamailio_holds_contact(primary)
    assert sip_from_phone(after(packets, went_down), PBX2_IP, "REGISTER") == []  # right server
    assert_no_burst(after(packets, went_down), PBX1_IP)
    assert_no_burst(after(packets, went_down), PBX2_IP)
    assert phone.events("link")  # the log says why it registered again


def test_link_down_and_up_on_the_backup_registers_again_on_the_backup(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone()
    registered(phone, "primary")
    faults.blackhole(lab.pbx1)  # the primary dies: failover
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=3)
    went_down = time.time()
    up_at = down_for_a_cycle(lab, phone)

    packets = capture_phone.wait_packets(
        lambda found: bool(sip_from_phone(after(found, up_at), PBX2_IP, "REGISTER")),
        timeout_s=INTERVAL_S + 1,
    )
    again = sip_from_phone(after(packets, up_at), PBX2_IP, "REGISTER")[0]
    assert again.ts - up_at <= INTERVAL_S
    phone.wait_status(lambda s: s["service"] == "ok", timeout_s=INTERVAL_S + 2)
    packets = capture_phone.packets()

    assert phone.status()["active"] == "backup"
    assert kamailio_holds_contact(backup)
    assert sip_from_phone(after(packets, went_down), PBX1_IP, "REGISTER") == []  # still dead
    assert_no_burst(after(packets, went_down), PBX1_IP)
    assert_no_burst(after(packets, went_down), PBX2_IP)


def test_link_down_and_up_over_tcp_registers_again_within_a_cycle(
    lab: Lab, make_pbx: MakePbx, start_phone: StartPhone
) -> None:
    primary = make_pbx("pbx1", tcp=True)
    make_pbx("pbx2", tcp=True)
    tcp = {"server": {"transport": "tcp"}}
    phone = start_phone(settings=tcp)
    registered(phone, "primary")
    before = len(registers(primary))
    link(lab, "down")
    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    up_at = time.monotonic()
    link(lab, "up")

    poll_until(lambda: len(registers(primary)) > before, timeout_s=INTERVAL_S + 1)
    took_s = time.monotonic() - up_at  # an upper bound: Kamailio logged it by then
    print(f"link over tcp: REGISTER logged by the primary {took_s:.3f} s after the link came up")
    assert took_s <= INTERVAL_S
    phone.wait_status(
        lambda s: s["service"] == "ok" and s["servers"]["primary"]["registration"] == "registered",
        timeout_s=INTERVAL_S + 2,
    )
    assert kamailio_holds_contact(primary)
    assert phone.proc.poll() is None
