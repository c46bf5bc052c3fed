"""The lab itself: peers answer from their namespaces, and each fault does what it says."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from phonelab.capture import Capture
from phonelab.errors import LabError
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx, free_udp_port, options_request
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, cleanup_stale, list_netns
from phonelab.pcap import Packet, sip_summary
from phonelab.sipp import SippResponder

PhoneUdp = Callable[[str, int], socket.socket]
MakeSipp = Callable[..., SippResponder]

SILENCE_S = 0.3  #: how long a silent server must stay silent in these tests


def ask(sock: socket.socket, timeout_s: float = 1.0, call_id: str = "") -> bytes | None:
    """Send one OPTIONS on a connected socket; the first reply, or None on silence.

    Raises:
        ConnectionRefusedError: an ICMP port unreachable came back.
    """
    host, port = sock.getpeername()
    call_id = call_id or f"t-{uuid.uuid4().hex}"
    sock.send(options_request(host, port, sock.getsockname(), call_id))
    sock.settimeout(timeout_s)
    try:
        return sock.recv(65535)
    except TimeoutError:
        return None


def dead_pid() -> int:
    """A PID that no process has right now."""
    for pid in range(999_999, 0, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid")


def status_of(reply: bytes | None) -> int | None:
    summary = sip_summary(reply) if reply is not None else None
    return summary.status if summary is not None else None


def test_both_pbxs_answer_options_from_the_phone_namespace(
    primary: KamailioPbx, backup: KamailioPbx, phone_udp: PhoneUdp
) -> None:
    for pbx, host in ((primary, PBX1_IP), (backup, PBX2_IP)):
        sock = phone_udp(host, 5060)
        reply = ask(sock, call_id=f"both-{pbx.name}")

        assert status_of(reply) == 200
        port = sock.getsockname()[1]
        assert pbx.requests() == [f"OPTIONS from {PHONE_IP}:{port} both-{pbx.name}"]
        assert pbx.start_time_ms is not None
        assert pbx.start_time_ms < 2000


def test_a_second_pbx_on_a_taken_address_is_refused(
    lab: Lab, primary: KamailioPbx, tmp_path: Path
) -> None:
    twin = KamailioPbx("twin", PBX1_IP, workdir=tmp_path, netns=lab.pbx1)

    with pytest.raises(LabError, match="already in use"):
        twin.start()
    assert not twin.running


def test_blackhole_silences_and_unblackhole_restores(
    lab: Lab, primary: KamailioPbx, faults: Faults, phone_udp: PhoneUdp
) -> None:
    sock = phone_udp(PBX1_IP, 5060)
    faults.blackhole(lab.pbx1)

    assert ask(sock, SILENCE_S, call_id="during-blackhole") is None
    faults.unblackhole(lab.pbx1)

    assert status_of(ask(sock)) == 200
    assert not any("during-blackhole" in r for r in primary.requests())


def test_faults_are_undone_at_teardown(lab: Lab, primary: KamailioPbx, phone_udp: PhoneUdp) -> None:
    with Faults() as faults:
        faults.blackhole(lab.pbx1)
        faults.freeze(primary)

    assert status_of(ask(phone_udp(PBX1_IP, 5060))) == 200
    tables = lab.run(lab.pbx1, ["nft", "list", "tables"]).stdout
    assert "phoned_lab" not in tables


def test_a_stopped_pbx_gives_icmp_unreachable_to_a_connected_socket(
    primary: KamailioPbx, phone_udp: PhoneUdp
) -> None:
    sock = phone_udp(PBX1_IP, 5060)
    assert status_of(ask(sock)) == 200

    assert primary.stop() == 0
    sent_at = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        ask(sock, timeout_s=1.0)
    assert time.monotonic() - sent_at < 0.1


def test_freeze_silences_and_thaw_answers_again(
    primary: KamailioPbx, faults: Faults, phone_udp: PhoneUdp
) -> None:
    sock = phone_udp(PBX1_IP, 5060)
    faults.freeze(primary)

    assert ask(sock, SILENCE_S, call_id="while-frozen") is None  # no ICMP: still bound
    faults.thaw(primary)

    # The OPTIONS queued while frozen is answered late, then a fresh one at once.
    sock.settimeout(1.0)
    assert b"Call-ID: while-frozen" in sock.recv(65535)
    assert b"Call-ID: after-thaw" in (ask(sock, call_id="after-thaw") or b"")


def test_sipp_answers_late_and_with_503(
    make_sipp: MakeSipp, phone_udp: PhoneUdp, capture_phone: Capture
) -> None:
    make_sipp("pbx1", delay_ms=850)
    make_sipp("pbx2", delay_ms=0, status=503)

    late = ask(phone_udp(PBX1_IP, 5060), timeout_s=2.0, call_id="late")
    assert status_of(ask(phone_udp(PBX2_IP, 5060), call_id="busy")) == 503
    assert status_of(late) == 200
    assert late is not None
    assert b"CSeq: 1 OPTIONS" in late

    def both_answered(packets: list[Packet]) -> bool:
        return len([p for p in packets if p.sport == 5060]) >= 2

    packets = capture_phone.wait_packets(both_answered)
    by_kind = {(s.call_id, s.kind): p.ts for p in packets if (s := sip_summary(p.payload))}
    delay_ms = (by_kind["late", "200"] - by_kind["late", "OPTIONS"]) * 1000
    assert 840 <= delay_ms <= 950


def test_capture_sees_request_and_reply_with_sane_timestamps(
    primary: KamailioPbx, phone_udp: PhoneUdp, capture_phone: Capture
) -> None:
    before = time.time()
    sock = phone_udp(PBX1_IP, 5060)
    assert status_of(ask(sock, call_id="captured")) == 200
    after = time.time()

    packets = capture_phone.wait_packets(lambda ps: len(ps) >= 2)
    request, reply = packets[0], packets[1]
    assert (request.src, request.dst, request.dport) == (PHONE_IP, PBX1_IP, 5060)
    assert (reply.src, reply.sport, reply.dst) == (PBX1_IP, 5060, PHONE_IP)
    assert before - 0.01 <= request.ts <= reply.ts <= after + 0.01
    summary = sip_summary(reply.payload)
    assert summary is not None
    assert (summary.status, summary.call_id) == (200, "captured")


def test_registrations_show_the_contact_after_a_register(
    primary: KamailioPbx, phone_udp: PhoneUdp
) -> None:
    assert primary.registrations() == []
    sock = phone_udp(PBX1_IP, 5060)
    local_ip, local_port = sock.getsockname()
    register = (
        f"REGISTER sip:{PBX1_IP} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local_ip}:{local_port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:1001@{PBX1_IP}>;tag=lab1\r\n"
        f"To: <sip:1001@{PBX1_IP}>\r\n"
        "Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:1001@{local_ip}:{local_port}>\r\n"
        "Expires: 300\r\nContent-Length: 0\r\n\r\n"
    )
    sock.send(register.encode())
    sock.settimeout(1.0)

    assert status_of(sock.recv(65535)) == 200
    assert primary.registrations() == [f"sip:1001@{local_ip}:{local_port}"]


def test_kamailio_on_loopback_without_a_namespace(tmp_path: Path) -> None:
    host = "127.0.0.97"
    port = free_udp_port(None, host)
    with (
        KamailioPbx("loop", host, port, workdir=tmp_path) as pbx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect((host, port))
        assert status_of(ask(sock)) == 200
        pbx_pid = pbx.pid
    assert pbx_pid is not None
    assert not pbx.running
    with pytest.raises(ProcessLookupError):
        os.kill(pbx_pid, 0)


def test_lab_namespaces_are_wired_and_removed(
    run_in_phone: Callable[[Sequence[str]], subprocess.CompletedProcess[str]],
) -> None:
    assert f"{PHONE_IP}/24" in run_in_phone(["ip", "-4", "-br", "addr", "show", "eth0"]).stdout
    pid = dead_pid()
    stale = Lab(prefix=f"phl{pid}x")  # a PID that is not running: a crashed run's leftover
    stale.setup()
    assert set(stale.namespaces) <= set(list_netns())

    assert sorted(cleanup_stale(f"phl{pid}x")) == sorted(stale.namespaces)
    assert not set(stale.namespaces) & set(list_netns())
