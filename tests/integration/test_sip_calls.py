"""Calls through the pjsua2 adapter against Kamailio PBXs and sipp peers (SPEC §1, §2, §4).

Loopback like `test_sip.py`: PBXs on 127.0.0.11/12 (digest auth, calls to extension 2000
routed to a sipp UAS, record-routed), sipp peers on 127.0.0.21-23, the phone on all
addresses. Null audio: the calls must set up with pjsua's SDP all the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sip import (
    MakePhone,
    Phone,
    lab_pbx,
    make_phone,
    pbx1,
    pbx2,
    poll_until,
    register,
    target_of,
    wait_for,
)

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.stack import CallChanged, CallDirection, CallInfo, CallState, RegState
from phonelab.calls import SippCaller, SippCallPeer
from phonelab.capture import Capture
from phonelab.kamailio import KamailioPbx, free_udp_port
from phonelab.pcap import sip_summary

__all__ = ["make_phone", "pbx1", "pbx2"]  # fixtures shared with test_sip.py

PEER_HOST = "127.0.0.21"
CALLER_HOST = "127.0.0.22"
STRANGER_HOST = "127.0.0.23"


def call_events(phone: Phone) -> list[CallInfo]:
    return [e.call for _, e in phone.recorder.events if isinstance(e, CallChanged)]


def states_of(phone: Phone, call_id: int) -> list[CallState]:
    return [c.state for c in call_events(phone) if c.call_id == call_id]


def state_now(phone: Phone, call_id: int) -> CallState | None:
    found = [c.state for c in phone.stack.calls() if c.call_id == call_id]
    return found[0] if found else None


def start_peer(tmp_path: Path, hangup_after_ms: int | None) -> SippCallPeer:
    port = free_udp_port(None, PEER_HOST)
    peer = SippCallPeer(
        "peer", PEER_HOST, port, netns=None, workdir=tmp_path, hangup_after_ms=hangup_after_ms
    )
    peer.start()
    return peer


def pbx_routing_to(
    name: str, host: str, tmp_path: Path, peer: SippCallPeer, **options: object
) -> KamailioPbx:
    """A PBX (start it with `with`) that routes calls to extension 2000 to `peer`."""
    return lab_pbx(name, host, tmp_path, routes={"2000": peer.uri}, **options)


@pytest.fixture
def waiting_peer(tmp_path: Path) -> Iterator[SippCallPeer]:
    """A UAS answering calls to extension 2000 and waiting for the phone's BYE."""
    peer = start_peer(tmp_path, hangup_after_ms=None)
    yield peer
    peer.stop()


def test_outgoing_call_authenticates_sets_up_and_hangs_up(
    make_phone: MakePhone, waiting_peer: SippCallPeer, tmp_path: Path
) -> None:
    with pbx_routing_to("calls-primary", "127.0.0.11", tmp_path, waiting_peer) as pbx:
        phone = make_phone()
        register(phone, Server.PRIMARY, pbx)

        call_id = phone.stack.call("2000")
        wait_for(lambda: state_now(phone, call_id) is CallState.CONFIRMED, phone.stack)

        info = phone.stack.calls()[0]
        assert (info.server, info.direction) == (Server.PRIMARY, CallDirection.OUTGOING)
        assert info.remote_uri.startswith("sip:2000@127.0.0.11")
        invites = [r for r in pbx.requests() if r.startswith("INVITE")]
        assert len(invites) == 2  # 407 challenge, then the authenticated INVITE
        assert poll_until(phone.stack, lambda: waiting_peer.calls_answered() == 1, 2.0)

        assert phone.stack.hangup() == 1
        wait_for(lambda: not phone.stack.calls(), phone.stack)

    assert states_of(phone, call_id)[0] is CallState.CALLING
    assert states_of(phone, call_id)[-1] is CallState.ENDED
    assert CallState.CONFIRMED in states_of(phone, call_id)
    assert poll_until(phone.stack, lambda: waiting_peer.byes_received() == 1, 2.0)


def test_call_needs_a_server_in_use(make_phone: MakePhone) -> None:
    phone = make_phone()
    with pytest.raises(SipError, match="no server in use"):
        phone.stack.call("2000")
    with pytest.raises(SipError, match="no call 7"):
        phone.stack.hangup(7)


def test_failover_keeps_the_call_up_until_the_peer_hangs_up(
    make_phone: MakePhone, pbx2: KamailioPbx, tmp_path: Path
) -> None:
    peer = start_peer(tmp_path, hangup_after_ms=2500)
    try:
        with pbx_routing_to("calls-primary", "127.0.0.11", tmp_path, peer) as pbx1:
            phone = make_phone()
            register(phone, Server.PRIMARY, pbx1)
            call_id = phone.stack.call("2000")
            wait_for(lambda: state_now(phone, call_id) is CallState.CONFIRMED, phone.stack)

            bpf = f"udp and host {pbx1.host} and port {pbx1.port}"
            with Capture(None, tmp_path / "primary.pcap", bpf=bpf) as capture:
                pbx1.freeze()  # the primary dies while the call is up
                try:
                    phone.stack.use_server(Server.BACKUP, target_of(pbx2))
                    wait_for(lambda: phone.stack.registration(Server.BACKUP)
                             is RegState.REGISTERED, phone.stack)  # fmt: skip
                    poll_until(phone.stack, lambda: False, 0.7)  # past pjsip's 1st retransmit
                    during = phone.stack.calls()
                finally:
                    pbx1.thaw()  # the call was record-routed: the peer's BYE passes here
                sent = [sip_summary(p.payload) for p in capture.packets()
                        if p.sport == phone.local_port]  # fmt: skip

            assert [(c.call_id, c.state, c.server) for c in during] == [
                (call_id, CallState.CONFIRMED, Server.PRIMARY)
            ]
            assert [s.kind for s in sent if s is not None and s.method == "REGISTER"] == []
            wait_for(lambda: not phone.stack.calls(), phone.stack, timeout_s=5.0)
            # the phone answered the peer's BYE with 200 (sipp logs it once the 200 is in;
            # ask before stopping sipp, which may not have logged it yet)
            assert poll_until(phone.stack, lambda: peer.byes_sent() == 1, 2.0)
    finally:
        peer.stop()

    assert states_of(phone, call_id)[-1] is CallState.ENDED
    assert phone.stack.registration(Server.BACKUP) is RegState.REGISTERED


def test_failback_keeps_the_call_on_the_backup_and_unregisters_it(
    make_phone: MakePhone, pbx1: KamailioPbx, waiting_peer: SippCallPeer, tmp_path: Path
) -> None:
    with pbx_routing_to("calls-backup", "127.0.0.12", tmp_path, waiting_peer) as pbx2:
        phone = make_phone()
        register(phone, Server.BACKUP, pbx2)
        call_id = phone.stack.call("2000")
        wait_for(lambda: state_now(phone, call_id) is CallState.CONFIRMED, phone.stack)

        phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
        wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.IDLE, phone.stack)

        assert pbx2.registrations() == []  # SPEC §2: no stale contact on the backup
        assert state_now(phone, call_id) is CallState.CONFIRMED
        assert phone.stack.calls()[0].server is Server.BACKUP

        new_call = phone.stack.call("2000")  # new calls go to the primary
        assert [c.server for c in phone.stack.calls() if c.call_id == new_call] == [Server.PRIMARY]
        phone.stack.hangup(call_id)
        wait_for(lambda: state_now(phone, call_id) is None, phone.stack)
        assert poll_until(phone.stack, lambda: waiting_peer.byes_received() == 1, 2.0)


def test_incoming_call_from_a_server_is_answered(make_phone: MakePhone, tmp_path: Path) -> None:
    with lab_pbx("calls-primary", "127.0.0.11", tmp_path, trusted=(CALLER_HOST,)) as pbx:
        phone = make_phone(auto_answer=True)
        register(phone, Server.PRIMARY, pbx)
        caller_port = free_udp_port(None, CALLER_HOST)
        with SippCaller("caller", CALLER_HOST, caller_port, target=f"sip:1001@{pbx.host}",
                        via=(pbx.host, pbx.port), netns=None, workdir=tmp_path,
                        hangup_after_ms=300) as caller:  # fmt: skip
            wait_for(lambda: bool(phone.stack.calls()), phone.stack)
            first = phone.stack.calls()[0]
            wait_for(lambda: not phone.stack.calls(), phone.stack, timeout_s=3.0)
            assert caller.wait(timeout_s=2.0) == 0

    assert (first.server, first.direction) == (Server.PRIMARY, CallDirection.INCOMING)
    states = states_of(phone, first.call_id)
    assert CallState.CONFIRMED in states
    assert states[-1] is CallState.ENDED
    assert caller.calls_answered() == 1


def test_incoming_call_from_a_stranger_gets_403(
    make_phone: MakePhone, pbx1: KamailioPbx, tmp_path: Path
) -> None:
    phone = make_phone(auto_answer=True)
    phone.stack.accept_calls_from({Server.PRIMARY: [pbx1.host], Server.BACKUP: ["127.0.0.12"]})
    register(phone, Server.PRIMARY, pbx1)
    port = free_udp_port(None, STRANGER_HOST)
    with SippCaller("stranger", STRANGER_HOST, port, target="sip:1001@127.0.0.1",
                    via=("127.0.0.1", phone.local_port), netns=None, workdir=tmp_path,
                    hangup_after_ms=300) as stranger:  # fmt: skip
        wait_for(lambda: any(c.state is CallState.ENDED for c in call_events(phone)),
                 phone.stack)  # fmt: skip
        poll_until(phone.stack, lambda: not stranger.running, 2.0)

    ended = [c for c in call_events(phone) if c.state is CallState.ENDED]
    assert [(c.code, c.direction) for c in ended] == [(403, CallDirection.INCOMING)]
    assert CallState.CONFIRMED not in [c.state for c in call_events(phone)]
    assert stranger.calls_answered() == 0
    assert phone.stack.calls() == []


def _methods_from(capture: Capture, port: int) -> list[str]:
    found = [sip_summary(p.payload) for p in capture.packets() if p.sport == port]
    return [s.method for s in found if s is not None and s.method]


def test_link_change_registers_the_backup_and_sends_a_dead_primarys_kept_call_nothing(
    make_phone: MakePhone, pbx2: KamailioPbx, waiting_peer: SippCallPeer, tmp_path: Path
) -> None:
    with pbx_routing_to("calls-primary", "127.0.0.11", tmp_path, waiting_peer) as pbx1:
        phone = make_phone()
        register(phone, Server.PRIMARY, pbx1)
        call_id = phone.stack.call("2000")
        wait_for(lambda: state_now(phone, call_id) is CallState.CONFIRMED, phone.stack)
        pbx1.freeze()  # the primary dies while the call is up: its account is kept, muted
        try:
            phone.stack.use_server(Server.BACKUP, target_of(pbx2))
            wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.REGISTERED,
                     phone.stack)  # fmt: skip
            with (
                Capture(None, tmp_path / "dead.pcap", bpf=f"udp and host {pbx1.host}") as dead,
                Capture(None, tmp_path / "live.pcap", bpf=f"udp and host {pbx2.host}") as live,
            ):
                phone.stack.link_changed("back after 3.0 s: test")  # SPEC §10
                poll_until(phone.stack, lambda: False, 0.7)  # past pjsip's first retransmission
                to_dead = _methods_from(dead, phone.local_port)
                to_live = _methods_from(live, phone.local_port)
        finally:
            pbx1.thaw()

    assert to_dead == []  # neither a REGISTER of the kept account nor a re-INVITE
    assert "REGISTER" in to_live  # the server in use: registered again at once
    assert phone.stack.registration(Server.BACKUP) is RegState.REGISTERED
    assert [c.server for c in phone.stack.calls()] == [Server.PRIMARY]  # the call goes on


def test_link_change_never_registers_a_live_backup_kept_for_a_call_again(
    make_phone: MakePhone, pbx1: KamailioPbx, waiting_peer: SippCallPeer, tmp_path: Path
) -> None:
    with pbx_routing_to("calls-backup", "127.0.0.12", tmp_path, waiting_peer) as pbx2:
        phone = make_phone()
        register(phone, Server.BACKUP, pbx2)
        call_id = phone.stack.call("2000")
        wait_for(lambda: state_now(phone, call_id) is CallState.CONFIRMED, phone.stack)
        phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
        wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.IDLE, phone.stack)

        with Capture(None, tmp_path / "backup.pcap", bpf=f"udp and host {pbx2.host}") as capture:
            phone.stack.link_changed("addresses now test")
            wait_for(lambda: len(pbx1.registrations()) == 1 and _registers(pbx1) > 2,
                     phone.stack)  # fmt: skip
            poll_until(phone.stack, lambda: False, 0.3)
            to_backup = _methods_from(capture, phone.local_port)
        assert pbx2.registrations() == []  # SPEC §2: still no contact on the backup
        assert state_now(phone, call_id) is CallState.CONFIRMED

    assert "REGISTER" not in to_backup  # the call may be refreshed (re-INVITE), nothing more
    assert phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED


def _registers(pbx: KamailioPbx) -> int:
    return len([r for r in pbx.requests() if r.startswith("REGISTER")])
