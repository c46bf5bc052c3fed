"""Provisioning at boot and under faults (SPEC §7 "Boot", "Last good", "check-sync", §10).

`phoned run` in the lab with `[provisioning] url` naming the endpoint manager (nginx in the
prov namespace, 192.0.2.40). Each test breaks the server a different way (down, silent,
404, a bad, oversized or truncated file, the wrong CA, the wrong password, a check-sync
from a stranger, a power cut) and judges the phone from its packets, `phoned status`, the
server's access log and the phone's structured log lines. No PBX runs: the phone probes
into ICMP port unreachable, which changes nothing here, and check-syncs are raw datagrams
from the primary's address (port 5099) or from the peer, a stranger.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeProv, StartPhone
from provisioning_boot_helpers import (
    LOCAL_INTERVAL_S,
    LOCAL_UA,
    MAX_FILE_BYTES,
    CutShortServer,
    NotifySocket,
    Phones,
    booted,
    event_line,
    first_cycle_delay_s,
    first_options,
    last_good,
    last_good_file,
    local,
    log_time,
    notify_socket,
    nth_config,
    password_file,
    phone_gets,
    process_started_at,
    provisioned,
    truncated_answer,
    user_agent,
)
from provisioning_helpers import PHONE_FILE

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.netns import PBX1_IP, PEER_IP, PROV_IP, Lab, poll_until
from phonelab.nginx import NginxServer
from phonelab.phone import RunningPhone
from phonelab.tls import CertAuthority


@pytest.fixture
def phones(lab: Lab) -> Iterator[Phones]:
    """Phones restarted on an earlier phone's workdir; all stopped after the test."""
    made = Phones(lab)
    yield made
    made.stop_all()


def seeded(start_phone: StartPhone, prov: NginxServer) -> RunningPhone:
    """A phone that fetched a good file at boot (interval 3), then stopped: its workdir
    holds the last good file."""
    prov.publish(PHONE_FILE, provisioned(interval=3))
    first = start_phone(settings=local(prov.url()))
    first.wait_status(lambda s: s["config"]["source"] == "local + provisioned", timeout_s=10)
    first.stop()
    last_good(first)
    return first


# ------------------------------------------------------------------ boot with the server down

#: The reason the phone gives for each fault (SPEC §7 "Boot").
REASONS = {
    "refused": "unreachable (connection refused)",
    "blackholed": "timed out after 4.",  # 5 s from the start, Python's start-up spent
    "404": "404 Not Found",
    "bad file": f"{PHONE_FILE}:2: redundancy.sip_keep_alive_interval must be 1..3600, got 0",
}
#: The fetch's deadline counts from the interpreter's start, a little after the fork that
#: `process_started_at` sees; then the machine's scheduling (2 busy cores).
FETCH_SLACK_S = 0.3
#: By when the prober starts (process start to the first OPTIONS less the random first-
#: cycle offset): 5.5 s with a silent server, with room for a busy machine otherwise.
PROBING_BY_S = {"refused": 2.0, "blackholed": 5.5, "404": 2.0, "bad file": 2.0}


def break_server(fault: str, lab: Lab, prov: NginxServer, faults: Faults) -> None:
    """Make the provisioning server fail the way `fault` says."""
    if fault == "refused":
        prov.stop()  # nothing listens on 192.0.2.40:80 any more: RST to the SYN
    elif fault == "blackholed":
        faults.blackhole(lab.prov, 80, proto="tcp")  # SYNs dropped: connect() hangs
    elif fault == "404":
        prov.remove(PHONE_FILE)
    else:
        prov.publish(PHONE_FILE, "[redundancy]\nsip_keep_alive_interval = 0\n")


@pytest.mark.parametrize("with_last_good", [True, False], ids=["last-good", "no-last-good"])
@pytest.mark.parametrize("fault", list(REASONS))
def test_boot_with_the_server_down_runs_on_the_last_good_file_or_the_local_one(
    fault: str,
    with_last_good: bool,
    lab: Lab,
    make_prov: MakeProv,
    start_phone: StartPhone,
    phones: Phones,
    faults: Faults,
    capture_phone: Capture,
) -> None:
    prov = make_prov()
    first = seeded(start_phone, prov) if with_last_good else None
    kept = last_good_file(first).read_bytes() if first else None
    break_server(fault, lab, prov, faults)
    gets_before = phone_gets(prov)
    phone = phones.restart(first) if first else start_phone(settings=local(prov.url()))
    started = process_started_at(phone.proc.pid)

    result = "rejected" if fault == "bad file" else "unreachable"
    phone.wait_event("config", 8, result=result)
    phone.wait_event("started", 5)
    interval = 3 if with_last_good else LOCAL_INTERVAL_S
    probe = first_options(capture_phone, started, timeout_s=interval + 1)
    gave_up = log_time(event_line(phone, "config", result=result), started) - started
    # SPEC §7: at most 5 s for the fetch, counted from the start, then probing starts; a
    # blackholed server costs the whole 5 s, any other fault far less. SPEC §1: the first
    # cycle starts at a random offset (logged) after that.
    low, high = (5.0, 5.0 + FETCH_SLACK_S) if fault == "blackholed" else (0.0, 1.0)
    assert low <= gave_up <= high, (gave_up, low, high)
    probing = probe.ts - first_cycle_delay_s(phone) - started
    assert gave_up <= probing <= PROBING_BY_S[fault], (gave_up, probing)

    status = phone.status()
    assert status["config"]["source"] == ("local + last good" if with_last_good else "local")
    assert status["config"]["last_result"] == result
    assert REASONS[fault] in status["config"]["detail"]
    assert status["keepalive"]["interval_s"] == interval
    assert user_agent(probe) == ("phoned-provisioned" if with_last_good else LOCAL_UA)
    if kept is None:
        assert not last_good_file(phone).exists()
    else:
        assert last_good_file(phone).read_bytes() == kept  # SPEC §7: never replaced
    new_gets = phone_gets(prov)[len(gets_before) :]
    assert new_gets == {"refused": [], "blackholed": [], "404": [404], "bad file": [200]}[fault]


def test_boot_with_the_same_file_on_the_server_gets_304_and_runs_on_the_kept_one(
    make_prov: MakeProv, start_phone: StartPhone, phones: Phones
) -> None:
    prov = make_prov()
    first = seeded(start_phone, prov)
    etag = last_good(first).etag
    phone = phones.restart(first)
    status = booted(phone, "local + provisioned")
    assert (status["config"]["etag"], status["config"]["last_result"]) == (etag, "not modified")
    assert status["config"]["url"] == f"{prov.url()}/{PHONE_FILE}"
    assert status["keepalive"]["interval_s"] == 3
    assert [(h.status, h.if_none_match) for h in prov.hits()] == [(200, None), (304, etag)]


# ------------------------------------------------------------------ HTTPS and basic auth


def test_https_with_the_lab_ca_fetches_and_another_ca_is_refused(
    make_prov: MakeProv,
    start_phone: StartPhone,
    lab_ca: CertAuthority,
    capture_phone: Capture,
    tmp_path: Path,
) -> None:
    prov = make_prov(tls=lab_ca.issue("prov", [PROV_IP]))
    prov.publish(PHONE_FILE, provisioned())
    trusted = start_phone(settings=local(prov.url("https"), tls_ca_file=str(lab_ca.cert)))
    status = booted(trusted, "local + provisioned")
    assert status["config"]["url"] == f"https://{PROV_IP}/{PHONE_FILE}"
    assert status["keepalive"]["interval_s"] == 3
    assert prov.requests() == [f"GET /{PHONE_FILE} 200 https inm=no"]
    trusted.stop()

    other = CertAuthority.create(tmp_path / "other-ca", "other-ca")
    stranger = start_phone(settings=local(prov.url("https"), tls_ca_file=str(other.cert)))
    refused = stranger.wait_event("config", 8, result="unreachable")
    assert "certificate not trusted" in refused["reason"], refused
    status = booted(stranger, "local")
    assert status["config"]["detail"] == refused["reason"]
    assert status["keepalive"]["interval_s"] == LOCAL_INTERVAL_S
    started = process_started_at(stranger.proc.pid)
    assert user_agent(first_options(capture_phone, started, 4)) == LOCAL_UA
    assert len(prov.hits()) == 1  # the handshake failed: no request reached nginx


@pytest.mark.parametrize("right", [True, False], ids=["right-password", "wrong-password"])
def test_basic_auth_fetches_with_the_password_and_says_why_without_showing_it(
    right: bool, make_prov: MakeProv, start_phone: StartPhone, tmp_path: Path
) -> None:
    prov = make_prov(users={"phone": "prov-Secret-7391"})
    prov.publish(PHONE_FILE, provisioned())
    sent = "prov-Secret-7391" if right else "wrong-Secret-4402"
    secret = str(password_file(tmp_path, sent))
    phone = start_phone(settings=local(prov.url(), username="phone", password_file=secret))
    if right:
        status = booted(phone, "local + provisioned")
        assert status["keepalive"]["interval_s"] == 3
        assert [(h.status, h.user) for h in prov.hits()] == [(401, None), (200, "phone")]
    else:
        refused = phone.wait_event("config", 8, result="unreachable")
        assert refused["reason"] == (
            f"provisioning: {prov.url()}/{PHONE_FILE}: "
            '401 Unauthorized: credentials refused (user "phone")'
        )
        status = booted(phone, "local")
        assert status["config"]["detail"] == refused["reason"]
        assert [(h.status, h.user) for h in prov.hits()] == [(401, None), (401, "phone")]
    # SPEC §10: neither password in the status nor in any file the service wrote (its
    # log, the last good file...); the password file lives outside the workdir
    shown = json.dumps(phone.status()) + phone.cli("status", "--json").stdout
    assert "Secret" not in shown
    written = [path for path in phone.workdir.rglob("*") if path.is_file()]
    assert phone.log_path in written
    assert not [path for path in written if b"Secret" in path.read_bytes()]


# ------------------------------------------------------------------ oversized, truncated


def test_an_oversized_or_truncated_file_is_refused_and_the_last_good_one_kept(
    lab: Lab, make_prov: MakeProv, start_phone: StartPhone, phones: Phones
) -> None:
    prov = make_prov()
    prov.publish(PHONE_FILE, provisioned(interval=3))
    phone = start_phone(settings=local(prov.url()))
    booted(phone, "local + provisioned")
    kept = last_good_file(phone).read_bytes()
    big = provisioned(interval=4).encode()  # valid TOML that would change the interval,
    big += b"#" * (MAX_FILE_BYTES - len(big)) + b"\n"  # one byte over the limit
    prov.publish(PHONE_FILE, big)

    with notify_socket(lab.pbx1, PBX1_IP, 5099) as pbx:
        assert pbx.exchange(pbx.notify()) == 200
        reason = nth_config(phone, "unreachable", 1)["reason"]
        assert reason.endswith(f": larger than {MAX_FILE_BYTES} bytes"), reason
        assert phone_gets(prov) == [200, 200]  # served whole: the phone refused it
        assert last_good_file(phone).read_bytes() == kept
        assert phone.status()["keepalive"]["interval_s"] == 3

        prov.stop()
        body = provisioned(interval=5).encode()  # what arrives is a valid file by itself
        with CutShortServer(lab.prov, PROV_IP, 80, truncated_answer(body, len(body) + 100)) as cut:
            assert pbx.exchange(pbx.notify()) == 200
            reason = nth_config(phone, "unreachable", 2)["reason"]
            cut_after = f"{len(body)} of {len(body) + 100} bytes"
            assert reason.endswith(f": truncated: the connection closed after {cut_after}")
            assert len(cut.requests) == 1
            assert last_good_file(phone).read_bytes() == kept
            status = phone.status()
            assert (status["keepalive"]["interval_s"], status["config"]["detail"]) == (3, reason)
            assert status["config"]["last_result"] == "unreachable"

            phone = phones.restart(phone)  # and at boot: refused again, the last good one used
            status = booted(phone, "local + last good")
            assert (status["keepalive"]["interval_s"], status["config"]["detail"]) == (3, reason)
            assert len(cut.requests) == 2
    assert last_good_file(phone).read_bytes() == kept


# ------------------------------------------------------------------ check-sync sources


def test_check_sync_from_a_stranger_gets_403_and_a_retransmission_fetches_once(
    lab: Lab, make_prov: MakeProv, start_phone: StartPhone
) -> None:
    prov = make_prov()
    prov.publish(PHONE_FILE, provisioned(interval=3))
    phone = start_phone(settings=local(prov.url()))
    booted(phone, "local + provisioned")
    with (
        notify_socket(lab.peer, PEER_IP, 5099) as stranger,
        notify_socket(lab.pbx1, PBX1_IP, 5099) as pbx,  # Kamailio's port 5060 left alone
    ):
        # A stranger: 403. Then a check-sync from the PBX as a marker: the service takes
        # NOTIFYs in order, so a fetch for the stranger's would have come before it.
        assert stranger.exchange(stranger.notify()) == 403
        assert pbx.exchange(pbx.notify()) == 200
        nth_config(phone, "not modified", 1)
        refusal = f"check-sync from {PEER_IP}:5099 refused (not a configured server) -> 403"
        assert sum(refusal in line for line in phone.lines()) == 1
        assert len(phone.events("check_sync")) == 1
        assert phone_gets(prov) == [200, 304]  # boot, the PBX's check-sync: none for 403

        # The same datagram twice (a retransmission): one fetch. Then a marker again.
        prov.publish(PHONE_FILE, provisioned(interval=4))
        notify = pbx.notify()
        assert pbx.exchange(notify) == 200
        nth_config(phone, "applied", 1)
        assert pbx.exchange(notify) == 200  # answered again, the same way
        assert pbx.exchange(pbx.notify()) == 200
        nth_config(phone, "not modified", 2)
    assert [r["source"] for r in phone.events("check_sync")] == [f"{PBX1_IP}:5099"] * 3
    assert phone_gets(prov) == [200, 304, 200, 304]
    assert phone.status()["keepalive"]["interval_s"] == 4


# ------------------------------------------------------------------ phoned resync


def test_resync_applies_a_changed_file_and_says_when_the_server_is_unreachable(
    make_prov: MakeProv, start_phone: StartPhone
) -> None:
    prov = make_prov()
    prov.publish(PHONE_FILE, provisioned(interval=3))
    phone = start_phone(settings=local(prov.url()))
    booted(phone, "local + provisioned")
    prov.publish(PHONE_FILE, provisioned(interval=4))

    changed = phone.cli("resync")
    assert (changed.returncode, changed.stderr) == (0, "")
    assert changed.stdout == (
        f"{prov.url()}/{PHONE_FILE}: applied (redundancy)\n"
        "  redundancy.sip_keep_alive_interval 3 -> 4\n"
    )
    assert nth_config(phone, "applied", 1)["keys"] == "redundancy.sip_keep_alive_interval 3 -> 4"
    assert phone.status()["keepalive"]["interval_s"] == 4
    same = phone.cli("resync")
    assert (same.returncode, same.stderr) == (0, "")
    assert "nothing changed" in same.stdout
    assert [(h.status, h.if_none_match is not None) for h in prov.hits()] == [
        (200, False), (200, True), (304, True),
    ]  # fmt: skip

    prov.stop()
    down = phone.cli("resync")
    reason = f"provisioning: {prov.url()}/{PHONE_FILE}: unreachable (connection refused)"
    assert down.returncode == 1
    assert down.stderr == f"phoned: provisioning file not fetched: {reason}\n"
    assert nth_config(phone, "unreachable", 1)["reason"] == reason
    status = phone.status()
    assert status["config"]["source"] == "local + last good"
    assert (status["config"]["last_result"], status["config"]["detail"]) == ("unreachable", reason)
    assert status["keepalive"]["interval_s"] == 4


# ------------------------------------------------------------------ power loss

#: SPEC §7: at least this many power cuts during applies.
POWER_CUTS = 10
#: More rounds when the cuts have not yet fallen both before and after a write.
MAX_ROUNDS = 30


def apply_time_s(phone: RunningPhone, prov: NginxServer, pbx: NotifySocket, new: bytes) -> float:
    """How long a check-sync takes, from the NOTIFY to `new` kept on disk (no power cut)."""
    prov.publish(PHONE_FILE, new)
    sent = time.monotonic()
    pbx.send(pbx.notify())
    poll_until(lambda: last_good(phone).body == new, timeout_s=5, interval_s=0.001)
    return time.monotonic() - sent


def test_power_lost_at_any_instant_of_an_apply_leaves_the_old_or_the_new_file(
    lab: Lab, make_prov: MakeProv, start_phone: StartPhone, phones: Phones
) -> None:
    prov = make_prov()
    versions = (provisioned(interval=3).encode(), provisioned(interval=4).encode())
    prov.publish(PHONE_FILE, versions[0])
    phone = start_phone(settings=local(prov.url()))
    got_new: list[bool] = []
    with notify_socket(lab.pbx1, PBX1_IP, 5099) as pbx:
        booted(phone, "local + provisioned")
        # cuts fall at random within twice the time an apply takes on this machine now
        window_s = 2 * apply_time_s(phone, prov, pbx, versions[1])
        for cut in range(MAX_ROUNDS):
            old, new = versions[(cut + 1) % 2], versions[cut % 2]
            booted(phone, "local + provisioned")  # the last boot fetched `old` (or 304)
            assert last_good(phone).body == old
            prov.publish(PHONE_FILE, new)
            at_s = random.uniform(0, window_s)  # noqa: S311 - not a secret
            power = threading.Timer(at_s, phone.proc.kill)
            power.start()
            pbx.send(pbx.notify())
            assert phone.proc.wait(timeout=5) == -9
            power.join()

            kept = last_good(phone)  # load_last_good raises for a broken file
            assert kept.body in (old, new), (cut, at_s)
            assert len(list(phone.workdir.glob("provisioned.toml.*.tmp"))) <= 1
            got_new.append(kept.body == new)
            phone = phones.restart(phone)
            if len(got_new) >= POWER_CUTS and len(set(got_new)) == 2:
                break
    assert set(got_new) == {True, False}, (got_new, window_s)  # before and after a write
    booted(phone, "local + provisioned")
    assert last_good(phone).body == versions[(len(got_new) - 1) % 2]
