"""Force Update changes one thing on a running phone, live, judged on the wire (SPEC §7).

`phoned run` in the lab, its local file naming the endpoint manager (nginx in the prov
namespace); each test publishes a new `<mac>.toml` changing ONE thing and has the PBX
send the check-sync NOTIFY, then judges what the phone did from the packets captured in
its namespace, `phoned status --json` and its structured log: a new backup address (the
probes move from the next cycle), a new primary address (the registration moves at once),
a new password (a REGISTER with it, answered 200), a call that survives an apply, a new
`[sip] local_port` (a re-exec, after the call in progress), `check-sync;reboot=true`, and
`check_sync = false`. The second addresses of the pbx1/pbx2 hosts (192.0.2.21/22) hold
a second Kamailio where a test moves a server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import MakeCaller, MakeProv, StartPhone
from provisioning_helpers import (
    PHONE_FILE,
    RELOADING_USERS,
    answer,
    assert_no_secret,
    assert_probes_moved,
    assert_reregistered,
    check_sync_answered_at,
    cycle_started,
    digest_with,
    file_gets,
    force_update,
    from_phone,
    local_settings,
    never,
    on_primary_at,
    options_after,
    registers,
    requests_to,
    restarted,
    same_process,
    set_pbx_users,
    subscribed,
)
from test_service import INTERVAL_S, kamailio_holds_contact, registered
from test_service_pbx import confirmed_call

from phonelab.capture import Capture
from phonelab.kamailio import KamailioPbx
from phonelab.netns import (
    PBX1_IP,
    PBX2_IP,
    PEER_IP,
    PHONE_IP,
    PROXY1_IP,
    PROXY2_IP,
    poll_until,
)
from phonelab.pcap import Packet
from phonelab.phone import SettingsTables, TomlValue, render_toml

MakePbx = Callable[..., KamailioPbx]
NEW_PASSWORD = "lab-1001-new-pw"  # noqa: S105  # a test credential
NEW_PORT = 5070
#: The peer hangs up this long after the ACK: past the apply and two cycles of the new grid.
CALL_MS = 10000
#: A re-exec: SIP shut down (un-REGISTER answered), a new interpreter, a boot fetch.
RESTART_S = 15.0


# ------------------------------------------------------------------ 1. the backup's address


def test_a_new_backup_address_is_probed_from_the_next_cycle(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    moved_to = make_pbx("pbx2", host=PROXY2_IP, name="backup-22", users=pbx_users)
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"]))
    registered(phone, "primary")
    pid = phone.proc.pid

    in_flight = cycle_started(capture_phone, PBX2_IP, timeout_s=INTERVAL_S + 2)  # still there
    force_update(prov, primary, {"redundancy": {"backup_destination_address": PROXY2_IP}})
    applied = phone.wait_event("config", 5, result="applied")
    applied_at = time.time()  # the pcap's clock: after the apply, whatever the delays
    assert applied["keys"] == f'redundancy.backup_destination_address "{PBX2_IP}" -> "{PROXY2_IP}"'
    poll_until(
        lambda: len(requests_to(capture_phone.packets(), PROXY2_IP, "OPTIONS")) >= 3,
        timeout_s=4 * INTERVAL_S + 2,
    )

    packets = capture_phone.packets()
    span = (in_flight, applied_at)
    assert_probes_moved(packets, (PBX2_IP, PROXY2_IP), span, interval_s=INTERVAL_S)
    assert any(r.startswith(f"OPTIONS from {PHONE_IP}:") for r in moved_to.requests())
    # The registration stays on the primary: nothing registers anywhere else, or again.
    assert registers(packets, PBX2_IP) == registers(packets, PROXY2_IP) == []
    assert len([p for p in registers(packets, PBX1_IP) if answer(packets, p) == 200]) == 1
    on_primary_at(phone, PBX1_IP)
    backup = phone.status()["servers"]["backup"]
    assert (backup["address"], backup["last_cycle"]["up"]) == (PROXY2_IP, True)
    same_process(phone, pid, restarts=0)


# ------------------------------------------------------------------ 2. the primary's address


def test_a_new_primary_address_moves_the_registration_at_once(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users)
    moved_to = make_pbx("pbx1", host=PROXY1_IP, name="primary-21", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"]))
    registered(phone, "primary")
    pid = phone.proc.pid

    cycle_started(capture_phone, PBX1_IP, timeout_s=INTERVAL_S + 2)  # the next is 2 s away
    force_update(prov, primary, {"server": {"address": PROXY1_IP}})
    applied = phone.wait_event("config", 5, result="applied")
    assert applied["keys"] == f'server.address "{PBX1_IP}" -> "{PROXY1_IP}"'
    phone.wait_count("registration", 2, 5, server="primary", state="registered")
    poll_until(lambda: kamailio_holds_contact(moved_to), timeout_s=3)
    poll_until(lambda: not kamailio_holds_contact(primary), timeout_s=3)  # no stale contact
    poll_until(
        lambda: len(requests_to(capture_phone.packets(), PROXY1_IP, "OPTIONS")) >= 2,
        timeout_s=2 * INTERVAL_S + 2,
    )

    packets = capture_phone.packets()
    since = check_sync_answered_at(packets)[0]
    left, joined = assert_reregistered(packets, since, old=(PBX1_IP, 5060), new=(PROXY1_IP, 5060))
    assert abs(left.ts - joined.ts) < 0.2  # together (the REGISTER goes out first, by 2 ms)
    assert [p for p in registers(packets, PBX1_IP) if p.ts > since] == []
    first_new_probe = requests_to(packets, PROXY1_IP, "OPTIONS")[0].ts
    assert joined.ts < first_new_probe  # at once, not at the next cycle
    assert [p for p in requests_to(packets, PBX1_IP, "OPTIONS") if p.ts > first_new_probe] == []
    on_primary_at(phone, PROXY1_IP)
    same_process(phone, pid, restarts=0)


# ------------------------------------------------------------------ 3. the password


def test_a_new_password_registers_again_with_it_without_a_restart(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    old_password = pbx_users["1001"]
    primary = make_pbx("pbx1", users=pbx_users, extensions=RELOADING_USERS)
    make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=local_settings(prov, old_password))
    registered(phone, "primary")
    pid = phone.proc.pid
    first = registers(capture_phone.packets(), PBX1_IP)[-1]
    assert digest_with(first, old_password)
    assert answer(capture_phone.packets(), first) == 200

    set_pbx_users(primary, {**pbx_users, "1001": NEW_PASSWORD})  # the PBX's admin
    force_update(prov, primary, {"account": {"password": NEW_PASSWORD}})
    applied = phone.wait_event("config", 5, result="applied")
    assert applied["keys"] == "account.password *** -> ***"

    def answered_with_new() -> bool:
        packets = capture_phone.packets()
        signed = [p for p in registers(packets, PBX1_IP) if digest_with(p, NEW_PASSWORD)]
        return bool(signed) and answer(packets, signed[-1]) == 200

    poll_until(answered_with_new, timeout_s=5)
    packets = capture_phone.packets()
    since = check_sync_answered_at(packets)[0]
    later = [p for p in registers(packets, PBX1_IP) if p.ts > since]
    assert not any(digest_with(p, old_password) for p in later)  # the old one is gone
    assert all(answer(packets, p) in (200, 401) for p in later)  # never 403
    on_primary_at(phone, PBX1_IP)
    assert kamailio_holds_contact(primary)
    same_process(phone, pid, restarts=0)
    assert_no_secret(phone, (old_password, NEW_PASSWORD))


# ------------------------------------------------------------------ 4. a call in progress


def test_a_call_in_progress_survives_an_apply(
    make_pbx: MakePbx,
    make_caller: MakeCaller,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users, presence=True, trusted=[PEER_IP])
    make_pbx("pbx2", users=pbx_users)
    extra: dict[str, dict[str, TomlValue]] = {
        "sip": {"auto_answer": True},
        "blf": {"keys": ["1002"]},
    }
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"], **extra))
    registered(phone, "primary")
    poll_until(lambda: "1002" in subscribed(capture_phone.packets(), PBX1_IP), timeout_s=5)
    caller = make_caller("pbx1", "1001", hangup_after_ms=CALL_MS)
    call = confirmed_call(phone)

    new_file: SettingsTables = {
        "redundancy": {"sip_keep_alive_interval": 4},
        "blf": {"keys": ["1003"]},
    }
    force_update(prov, primary, new_file)
    applied = phone.wait_event("config", 5, result="applied")
    applied_at = time.time()
    changed = 'redundancy.sip_keep_alive_interval 2 -> 4, blf.keys ["1002"] -> ["1003"]'
    assert applied["keys"] == changed
    poll_until(lambda: "1003" in subscribed(capture_phone.packets(), PBX1_IP), timeout_s=3)
    poll_until(
        lambda: set(subscribed(capture_phone.packets(), PBX1_IP, expires_zero=True)) == {"1002"},
        timeout_s=3,
    )
    new_grid = options_after(capture_phone, PBX1_IP, applied_at, 2, timeout_s=2 * 4 + 3)
    assert abs(new_grid[1] - new_grid[0] - 4) < 0.05  # the new grid, the call still up
    status = phone.status()  # two cycles of the new grid later: the call is still up
    assert [(c["call_id"], c["state"]) for c in status["calls"]] == [(call["call_id"], "confirmed")]
    assert status["keepalive"]["interval_s"] == 4
    assert set(status["blf"]) == {"1003"}

    assert caller.wait(timeout_s=CALL_MS / 1000 + 5) == 0  # the caller hung up; 200 to its BYE
    assert (caller.calls_answered(), caller.byes_sent()) == (1, 1)
    assert from_phone(capture_phone.packets(), "BYE") == []  # the phone never hung up
    phone.wait_status(lambda s: s["calls"] == [], timeout_s=3)


# ------------------------------------------------------------------ 5. [sip] local_port


def assert_port_moved(packets: list[Packet]) -> Packet:
    """After the check-sync: un-REGISTERed from port 5060, then registered from the new
    port only. Returns the un-REGISTER answered 200."""
    since = check_sync_answered_at(packets)[0]
    old, new = (PBX1_IP, 5060), (PBX1_IP, NEW_PORT)
    left, joined = assert_reregistered(packets, since, old=old, new=new)
    assert left.ts < joined.ts
    assert [p for p in registers(packets, PBX1_IP, sport=5060) if p.ts > since] == []
    return left


def test_a_new_local_port_re_execs_the_service_in_place(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"]))
    registered(phone, "primary")
    pid = phone.proc.pid

    force_update(prov, primary, {"sip": {"local_port": NEW_PORT}})
    applied = phone.wait_event("config", 5, result="applied")
    assert applied["keys"] == f"sip.local_port 5060 -> {NEW_PORT}"
    restarted(phone, pid, "sip.local_port", RESTART_S)

    packets = capture_phone.packets()
    assert_port_moved(packets)
    contacts = [c.address for c in primary.contacts("1001")]
    assert len(contacts) == 1
    assert f"@{PHONE_IP}:{NEW_PORT}" in contacts[0]
    on_primary_at(phone, PBX1_IP)
    assert primary.send_check_sync("1001") == 200  # the new process answers on the new port
    phone.wait_event("check_sync", 3, result="fetch")


def test_a_new_local_port_waits_for_the_call_in_progress_to_end(
    make_pbx: MakePbx,
    make_caller: MakeCaller,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users, trusted=[PEER_IP])
    make_pbx("pbx2", users=pbx_users)
    answering = {"sip": {"auto_answer": True}}
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"], **answering))
    registered(phone, "primary")
    pid = phone.proc.pid
    caller = make_caller("pbx1", "1001", hangup_after_ms=5000)
    call = confirmed_call(phone)

    force_update(prov, primary, {"sip": {"local_port": NEW_PORT}})
    phone.wait_event("config", 5, result="applied")
    assert never(lambda: bool(phone.events("restart")), during_s=1.0)  # not while it is up
    assert [c["call_id"] for c in phone.status()["calls"]] == [call["call_id"]]
    restarted(phone, pid, "sip.local_port", RESTART_S)
    assert caller.wait(timeout_s=5) == 0
    assert (caller.calls_answered(), caller.byes_sent()) == (1, 1)

    packets = capture_phone.packets()
    unregister = assert_port_moved(packets)
    byes = [p for p in packets if p.dst == PHONE_IP and p.payload.startswith(b"BYE ")]
    assert byes
    assert byes[0].ts < unregister.ts  # the call ended first
    assert from_phone(packets, "BYE") == []  # and the phone did not end it


# ------------------------------------------------------------------ 6. check-sync options


def test_check_sync_reboot_restarts_in_place_without_a_fetch(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"]))
    registered(phone, "primary")
    pid = phone.proc.pid

    assert primary.send_check_sync("1001", reboot=True) == 200
    phone.wait_event("check_sync", 3, result="reboot")
    restarted(phone, pid, "check-sync reboot", RESTART_S)

    packets = capture_phone.packets()
    since = check_sync_answered_at(packets)[0]
    old = new = (PBX1_IP, 5060)
    left, joined = assert_reregistered(packets, since, old=old, new=new)
    assert left.ts < joined.ts  # un-REGISTERed (and answered) before the re-exec
    poll_until(lambda: kamailio_holds_contact(primary), timeout_s=3)
    on_primary_at(phone, PBX1_IP)
    assert phone.events("check_sync", result="fetch") == []
    assert file_gets(prov) == 2  # boot, and boot again after the re-exec: nothing more


def test_check_sync_off_answers_200_and_fetches_nothing(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    primary = make_pbx("pbx1", users=pbx_users)
    make_pbx("pbx2", users=pbx_users)
    off = {"provisioning": {"check_sync": False}}
    phone = start_phone(settings=local_settings(prov, pbx_users["1001"], **off))
    registered(phone, "primary")
    assert file_gets(prov) == 1  # the boot fetch (nothing published yet: 404)

    prov.publish(PHONE_FILE, render_toml({"redundancy": {"sip_keep_alive_interval": 3}}))
    assert primary.send_check_sync("1001") == 200
    ignored = phone.wait_event("check_sync", 3, result="ignored")
    assert ignored["source"] == f"{PBX1_IP}:5060"
    assert never(lambda: file_gets(prov) > 1, during_s=2.0)
    assert phone.events("config", result="applied") == []
    assert phone.status()["keepalive"]["interval_s"] == 2
    assert len(check_sync_answered_at(capture_phone.packets())) == 1

    resynced = phone.cli("resync")  # the control: the same file, asked for locally, applies
    assert resynced.returncode == 0, resynced.stderr
    assert file_gets(prov) == 2
    assert phone.status()["keepalive"]["interval_s"] == 3
