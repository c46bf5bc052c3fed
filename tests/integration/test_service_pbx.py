"""The installed service against PBXs configured like real ones (issue 3), end to end.

`phoned run` in the phone namespace, judged as a black box: the packets it puts on the
wire (captured in its namespace), what the lab's Kamailio PBXs, proxies and sipp peers
received, `phoned status --json` and its structured log. One test (or two) per bullet
of the issue: digest auth, outbound proxies, BLF, calls, keep-alive disabled. TCP/TLS
and DNS are covered elsewhere (the lead wires them into the service).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import StartPhone
from test_service import (
    INTERVAL_S,
    SWITCH_TIMEOUT_S,
    kamailio_holds_contact,
    registered,
    wait_cycles,
)

from phonelab.calls import SippCallPeer
from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import ConfigExtensions, KamailioPbx
from phonelab.netns import (
    PBX1_IP,
    PBX2_IP,
    PEER_IP,
    PHONE_IP,
    PROXY1_IP,
    PROXY2_IP,
    Lab,
    poll_until,
)
from phonelab.pcap import Packet, sip_summary
from phonelab.phone import RunningPhone, SettingsTables, sip_from_phone

MakePbx = Callable[..., KamailioPbx]
KEYS = ["1002", "1003"]
WRONG_PASSWORD = "not-the-password"  # noqa: S105  # a test credential
#: A call is set up, answered and confirmed well within this (measured: ~50 ms).
CALL_SETUP_S = 5.0


def account(users: dict[str, str], password: str | None = None) -> SettingsTables:
    """Settings: the lab account 1001 with its password on the PBXs (or `password`)."""
    return {"account": {"password": password if password is not None else users["1001"]}}


def never(condition: Callable[[], bool], during_s: float) -> bool:
    """True when `condition` stayed false for the whole `during_s` (polled)."""
    try:
        poll_until(condition, timeout_s=during_s, interval_s=0.1)
    except TimeoutError:
        return True
    return False


def from_phone(pbx: KamailioPbx, method: str) -> list[str]:
    """The `method` requests `pbx` received straight from the phone."""
    return [r for r in pbx.requests() if r.startswith(f"{method} from {PHONE_IP}:")]


def unsubscribes(packets: list[Packet], dst: str) -> list[str]:
    """The watched extensions (To users) of the SUBSCRIBEs with `Expires: 0` sent to `dst`."""
    found = []
    for packet in sip_from_phone(packets, dst, "SUBSCRIBE"):
        headers = _headers(packet.payload)
        if headers.get("expires") == "0":
            found.append(headers.get("to", "").split("sip:", 1)[-1].split("@")[0])
    return found


def _headers(message: bytes) -> dict[str, str]:
    lines = message.decode(errors="replace").split("\r\n\r\n")[0].split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def sent_methods(packets: list[Packet], dst: str) -> set[str]:
    """Methods of the requests the phone sent to `dst`."""
    kinds = (sip_summary(p.payload) for p in packets if p.src == PHONE_IP and p.dst == dst)
    return {s.method for s in kinds if s is not None and s.method is not None}


def fail_over(phone: RunningPhone) -> None:
    """Wait for the switch to the backup and the registration there."""
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=3)


def fail_back(phone: RunningPhone) -> None:
    """Wait for the second switch to the primary and the registration there."""
    phone.wait_count("use_server", 2, SWITCH_TIMEOUT_S, server="primary")
    phone.wait_count("registration", 2, 3, server="primary", state="registered")


# ------------------------------------------------------------------ 1. digest auth


def test_auth_registers_with_the_password_and_fails_over_with_it(
    lab: Lab,
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    primary = make_pbx("pbx1", users=pbx_users)
    backup = make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=account(pbx_users))

    registered(phone, "primary")
    assert kamailio_holds_contact(primary)
    assert len(from_phone(primary, "REGISTER")) == 2  # 401 challenge, then the answer
    faults.blackhole(lab.pbx1)

    fail_over(phone)
    assert kamailio_holds_contact(backup)
    assert len(from_phone(backup, "REGISTER")) == 2
    status = phone.status()
    assert status["active"] == "backup"
    assert status["servers"]["backup"]["registration"] == "registered"
    assert pbx_users["1001"] not in "\n".join(phone.lines())  # never logged


def test_wrong_password_is_reported_and_not_retried(
    make_pbx: MakePbx, pbx_users: dict[str, str], capture_phone: Capture, start_phone: StartPhone
) -> None:
    primary = make_pbx("pbx1", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=account(pbx_users, password=WRONG_PASSWORD))

    phone.wait_event("registration", 10, server="primary", state="failed", code="403")
    status = phone.status()["servers"]["primary"]
    assert status["registration"] == "failed"
    assert status["registration_detail"].startswith("primary rejected credentials for 1001")

    def storm() -> bool:
        return len(sip_from_phone(capture_phone.packets(), PBX1_IP, "REGISTER")) > 2

    assert never(storm, during_s=10.0)
    assert len(from_phone(primary, "REGISTER")) == 2  # challenged, then 403: nothing more
    assert not kamailio_holds_contact(primary)
    assert phone.events("use_server", server="backup") == []  # the primary is up: no failover
    assert WRONG_PASSWORD not in "\n".join(phone.lines())


# ------------------------------------------------------------------ 2. outbound proxies


def test_register_goes_through_each_servers_proxy_and_probes_to_the_servers(
    lab: Lab,
    make_pbx: MakePbx,
    make_proxy: Callable[..., KamailioPbx],
    pbx_users: dict[str, str],
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    primary = make_pbx("pbx1", users=pbx_users)
    backup = make_pbx("pbx2", users=pbx_users)
    proxy1, proxy2 = make_proxy("pbx1"), make_proxy("pbx2")
    proxies = {"outbound_proxy": PROXY1_IP, "backup_outbound_proxy": PROXY2_IP}
    phone = start_phone(settings={**account(pbx_users), "redundancy": proxies})

    registered(phone, "primary")
    wait_cycles(phone, "backup", 1, timeout_s=INTERVAL_S + 3)
    assert len(from_phone(proxy1, "REGISTER")) == 2
    assert [r.split()[:3] for r in primary.requests() if r.startswith("REGISTER")] == [
        ["REGISTER", "from", f"{PROXY1_IP}:5060"]
    ] * 2
    assert kamailio_holds_contact(primary)
    faults.blackhole(lab.pbx1, host=PBX1_IP)  # the PBX goes silent, its proxy lives on

    fail_over(phone)
    assert len(from_phone(proxy2, "REGISTER")) == 2
    assert from_phone(backup, "REGISTER") == []  # only through the proxy
    assert kamailio_holds_contact(backup)
    packets = capture_phone.packets()
    assert sent_methods(packets, PBX1_IP) == {"OPTIONS"}  # probes go to the servers
    assert sent_methods(packets, PBX2_IP) == {"OPTIONS"}
    assert sent_methods(packets, PROXY1_IP) == {"REGISTER"}  # never probed
    assert sent_methods(packets, PROXY2_IP) == {"REGISTER"}


# ------------------------------------------------------------------ 3. BLF


def lamps(phone: RunningPhone, expected: dict[str, str], timeout_s: float = 5.0) -> None:
    phone.wait_status(lambda s: s["blf"] == expected, timeout_s=timeout_s)


def test_blf_lamps_follow_the_active_server_through_failover_and_failback(
    lab: Lab,
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    primary = make_pbx("pbx1", users=pbx_users, presence=True)
    backup = make_pbx("pbx2", users=pbx_users, presence=True)
    phone = start_phone(settings={**account(pbx_users), "blf": {"keys": KEYS}})

    lamps(phone, {"1002": "idle", "1003": "idle"})
    primary.publish_dialog("1002", "busy")
    phone.wait_event("blf", 3, ext="1002", state="busy")
    lamps(phone, {"1002": "busy", "1003": "idle"}, timeout_s=1)
    assert from_phone(backup, "SUBSCRIBE") == []
    faults.blackhole(lab.pbx1)

    fail_over(phone)
    poll_until(lambda: len(from_phone(backup, "SUBSCRIBE")) >= 4, timeout_s=3)  # 407 + auth
    lamps(phone, {"1002": "idle", "1003": "idle"})  # the backup's states now
    backup.publish_dialog("1003", "ringing")
    lamps(phone, {"1002": "idle", "1003": "ringing"})
    before_failback = len(from_phone(primary, "SUBSCRIBE"))
    faults.unblackhole(lab.pbx1)

    fail_back(phone)
    poll_until(lambda: len(from_phone(primary, "SUBSCRIBE")) > before_failback, timeout_s=3)
    lamps(phone, {"1002": "busy", "1003": "idle"})  # the primary's states again
    unsubscribed = poll_until(
        lambda: sorted(unsubscribes(capture_phone.packets(), PBX2_IP)) == KEYS,
        timeout_s=3,
        interval_s=0.05,
    )
    assert unsubscribed
    assert phone.status()["active"] == "primary"


# ------------------------------------------------------------------ 4. calls


def call_pbxs(
    make_pbx: MakePbx, users: dict[str, str], peer: SippCallPeer
) -> tuple[KamailioPbx, KamailioPbx]:
    """Both PBXs route extension 2000 to `peer` and record-route the call.

    sipp sends its in-dialog requests to where the INVITE came from, whatever the
    Request-URI: the peer's BYE always goes to the PBX that relayed the call.
    """
    found = [
        make_pbx(role, users=users, trusted=[PEER_IP], routes={"2000": peer.uri})
        for role in ("pbx1", "pbx2")
    ]
    return found[0], found[1]


def confirmed_call(phone: RunningPhone, timeout_s: float = CALL_SETUP_S) -> dict[str, Any]:
    """Wait for exactly one confirmed call in the status; return it."""
    phone.wait_status(
        lambda s: [c["state"] for c in s["calls"]] == ["confirmed"], timeout_s=timeout_s
    )
    call: dict[str, Any] = phone.status()["calls"][0]
    return call


def place_call(phone: RunningPhone, server: str) -> dict[str, Any]:
    """`phoned call 2000`; the confirmed call from the status."""
    placed = phone.cli("call", "2000")
    assert placed.returncode == 0, placed.stderr
    assert f"through the {server}" in placed.stdout
    return confirmed_call(phone)


def test_call_stays_up_across_failover_until_the_peer_hangs_up(
    make_pbx: MakePbx,
    make_call_peer: Callable[..., SippCallPeer],
    pbx_users: dict[str, str],
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    # The peer hangs up once the failover below is over (at most SWITCH_TIMEOUT_S).
    peer = make_call_peer(hangup_after_ms=int(SWITCH_TIMEOUT_S * 1000) + 3000)
    primary, _ = call_pbxs(make_pbx, pbx_users, peer)
    phone = start_phone(settings=account(pbx_users))
    registered(phone, "primary")

    call = place_call(phone, "primary")
    assert (call["direction"], call["server"]) == ("outgoing", "primary")
    assert call["remote"].startswith(f"sip:2000@{PBX1_IP}")
    assert peer.calls_answered() == 1
    faults.freeze(primary)  # dead: silent, but it still holds the call's route set

    fail_over(phone)
    assert confirmed_call(phone, timeout_s=0.5)["call_id"] == call["call_id"]  # kept up
    assert phone.status()["active"] == "backup"
    assert peer.byes_sent() == peer.byes_received() == 0
    faults.thaw(primary)  # back in time to relay the peer's BYE

    phone.wait_status(lambda s: s["calls"] == [], timeout_s=10)
    poll_until(peer.byes_sent, timeout_s=2)  # the phone answered the peer's BYE with 200
    ended = phone.events("call", call_id=str(call["call_id"]), state="ended")
    assert [e["server"] for e in ended] == ["primary"]
    assert peer.byes_received() == 0


def test_new_calls_go_through_the_backup_after_failover(
    lab: Lab,
    make_pbx: MakePbx,
    make_call_peer: Callable[..., SippCallPeer],
    pbx_users: dict[str, str],
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    peer = make_call_peer(hangup_after_ms=None)
    primary, backup = call_pbxs(make_pbx, pbx_users, peer)
    phone = start_phone(settings=account(pbx_users))
    registered(phone, "primary")
    faults.blackhole(lab.pbx1)
    fail_over(phone)

    call = place_call(phone, "backup")

    assert (call["direction"], call["server"]) == ("outgoing", "backup")
    assert call["remote"].startswith(f"sip:2000@{PBX2_IP}")
    assert len(from_phone(backup, "INVITE")) == 2  # 407 challenge, then the answer
    assert from_phone(primary, "INVITE") == []
    assert phone.cli("hangup").returncode == 0
    poll_until(peer.byes_received, timeout_s=3)


def test_hangup_ends_a_call_placed_by_the_cli(
    make_pbx: MakePbx,
    make_call_peer: Callable[..., SippCallPeer],
    pbx_users: dict[str, str],
    start_phone: StartPhone,
) -> None:
    peer = make_call_peer(hangup_after_ms=None)  # waits for the phone's BYE
    call_pbxs(make_pbx, pbx_users, peer)
    phone = start_phone(settings=account(pbx_users))
    registered(phone, "primary")
    place_call(phone, "primary")

    hung_up = phone.cli("hangup")

    assert hung_up.returncode == 0, hung_up.stderr
    assert "ended 1 call(s)" in hung_up.stdout
    poll_until(peer.byes_received, timeout_s=3)
    phone.wait_status(lambda s: s["calls"] == [], timeout_s=3)
    assert peer.calls_answered() == 1


def test_incoming_call_through_the_backup_is_answered_while_on_the_primary(
    make_pbx: MakePbx,
    make_caller: Callable[..., Any],
    pbx_users: dict[str, str],
    start_phone: StartPhone,
) -> None:
    make_pbx("pbx1", users=pbx_users)
    # The phone is not registered on the backup: the backup routes 1001 to it statically.
    to_phone = {"1001": f"sip:1001@{PHONE_IP}:5060"}
    backup = make_pbx("pbx2", users=pbx_users, trusted=[PEER_IP], routes=to_phone)
    phone = start_phone(settings={**account(pbx_users), "sip": {"auto_answer": True}})
    registered(phone, "primary")

    caller = make_caller("pbx2", "1001", hangup_after_ms=1500)
    call = confirmed_call(phone)

    assert (call["direction"], call["server"]) == ("incoming", "backup")
    assert phone.status()["active"] == "primary"
    assert caller.wait(timeout_s=5) == 0
    assert (caller.calls_answered(), caller.byes_sent()) == (1, 1)
    phone.wait_status(lambda s: s["calls"] == [], timeout_s=3)
    from_caller = [r.split()[0] for r in backup.requests() if f"from {PEER_IP}:" in r]
    assert from_caller == ["INVITE", "ACK", "BYE"]  # the call went through the backup


# ------------------------------------------------------------------ 5. keep-alive off

#: The lab registrar grants at most 10 s, so pjsip refreshes every 5 s (10 s minus
#: pjsua's 5 s refresh margin) and a dead primary is noticed within about 5 s + 4 s.
SHORT_REGISTRATIONS = ConfigExtensions(
    modparams=(
        'modparam("registrar", "min_expires", 5)',
        'modparam("registrar", "max_expires", 10)',
    )
)
ANSWER_503 = ConfigExtensions(
    method_routes={"REGISTER": 'sl_send_reply("503", "Service Unavailable");'}
)


@pytest.mark.parametrize("death", ["503", "blackhole"])
def test_keepalive_off_sends_no_options_and_a_failed_refresh_fails_over(
    death: str,
    lab: Lab,
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    primary = make_pbx("pbx1", users=pbx_users, extensions=SHORT_REGISTRATIONS)
    backup = make_pbx("pbx2", users=pbx_users)
    keepalive_off = {"sip_keep_alive_mode": False}
    phone = start_phone(settings={**account(pbx_users), "redundancy": keepalive_off})
    registered(phone, "primary")

    def probed() -> bool:
        packets = capture_phone.packets()
        return bool(
            sip_from_phone(packets, PBX1_IP, "OPTIONS")
            + sip_from_phone(packets, PBX2_IP, "OPTIONS")
        )

    assert never(probed, during_s=2 * INTERVAL_S)
    assert phone.status()["keepalive"]["enabled"] is False
    if death == "503":  # the primary comes back as a PBX that cannot serve
        primary.stop()
        make_pbx("pbx1", name="primary-503", extensions=ANSWER_503)
    else:
        faults.blackhole(lab.pbx1)

    phone.wait_event("use_server", 12, server="backup")
    registered(phone, "backup", timeout_s=3)
    code = "503" if death == "503" else "408"
    assert phone.events("registration", server="primary", state="failed", code=code)
    assert kamailio_holds_contact(backup)
    assert not probed()
