"""The lab's real-PBX features: digest auth, BLF presence, call routing, outbound proxies,
TCP/TLS and DNS, each checked from the phone's namespace with hand-made SIP (issue 3).
"""

from __future__ import annotations

import socket
import ssl
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from phonelab.calls import SippCaller, SippCallPeer
from phonelab.dns import DnsServer, resolve_status
from phonelab.kamailio import TLS_PORT, KamailioPbx, options_request
from phonelab.netns import (
    DNS_IP,
    PBX1_IP,
    PBX2_IP,
    PEER_IP,
    PHONE_IP,
    PROXY1_IP,
    PROXY2_IP,
    Lab,
    call_in_netns,
    list_netns,
    poll_until,
)
from phonelab.proxy import KamailioProxy
from phonelab.sipreq import (
    digest_authorization,
    ok_for,
    register_request,
    response_status,
    split_message,
    subscribe_request,
)
from phonelab.tls import CertAuthority, self_signed

PhoneUdp = Callable[[str, int], socket.socket]
MakePbx = Callable[..., KamailioPbx]
MakeProxy = Callable[..., KamailioProxy]
MakeCallPeer = Callable[..., SippCallPeer]
MakeCaller = Callable[..., SippCaller]
NXDOMAIN = 3
WAIT_S = 5.0


def receive(sock: socket.socket, timeout_s: float = 2.0) -> bytes:
    """The next SIP message on `sock`; NOTIFYs are answered 200 on the way."""
    sock.settimeout(timeout_s)
    data = sock.recv(65535)
    if data.startswith(b"NOTIFY "):
        sock.send(ok_for(data))
    return data


def receive_notify(sock: socket.socket) -> str:
    """The body of the next NOTIFY (answered 200), skipping responses."""
    while True:
        data = receive(sock)
        if data.startswith(b"NOTIFY "):
            return split_message(data)[2]


def register(
    sock: socket.socket, registrar: str, user: str, password: str, **kw: object
) -> int | None:
    """REGISTER, answer the 401 with credentials; the final status."""
    call_id = uuid.uuid4().hex
    local = sock.getsockname()
    sock.send(register_request(registrar, user, local, call_id=call_id, **kw))  # type: ignore[arg-type]
    challenge = split_message(receive(sock))[1]["www-authenticate"]
    auth = digest_authorization(
        challenge, method="REGISTER", uri=f"sip:{registrar}", username=user, password=password
    )
    request = register_request(
        registrar,
        user,
        local,
        call_id=call_id,
        cseq=2,
        authorization=auth,
        **kw,  # type: ignore[arg-type]
    )
    sock.send(request)
    return response_status(receive(sock))


# ------------------------------------------------------------------ 1. auth + presence


def test_register_is_challenged_wrong_password_forbidden_right_one_registers(
    make_pbx: MakePbx, pbx_users: dict[str, str], phone_udp: PhoneUdp
) -> None:
    pbx = make_pbx("pbx1", users=pbx_users)
    sock = phone_udp(PBX1_IP, 5060)

    assert register(sock, PBX1_IP, "1001", "not-the-password") == 403
    assert pbx.registrations() == []
    assert register(sock, PBX1_IP, "1001", pbx_users["1001"]) == 200

    port = sock.getsockname()[1]
    assert pbx.registrations() == [f"sip:1001@{PHONE_IP}:{port}"]
    assert [r.split()[0] for r in pbx.requests()] == ["REGISTER"] * 4


def test_dialog_subscription_is_challenged_then_notified_of_published_states(
    make_pbx: MakePbx, pbx_users: dict[str, str], phone_udp: PhoneUdp
) -> None:
    pbx = make_pbx("pbx1", users=pbx_users, presence=True)
    sock = phone_udp(PBX1_IP, 5060)
    aor, call_id = f"sip:1002@{PBX1_IP}", uuid.uuid4().hex
    sock.send(subscribe_request(aor, sock.getsockname(), call_id=call_id, watcher="1001"))
    challenge = split_message(receive(sock))
    assert response_status(challenge[0].encode()) == 407
    auth = digest_authorization(
        challenge[1]["proxy-authenticate"],
        method="SUBSCRIBE", uri=aor, username="1001", password=pbx_users["1001"],
    )  # fmt: skip
    sock.send(
        subscribe_request(
            aor,
            sock.getsockname(),
            call_id=call_id,
            cseq=2,
            watcher="1001",
            proxy_authorization=auth,
        )
    )
    first = [receive(sock), receive(sock)]  # 200 and the initial NOTIFY, in either order
    assert sorted(m.split(b" ", 2)[1] for m in first if m.startswith(b"SIP/2.0")) == [b"200"]
    assert any(m.startswith(b"NOTIFY ") for m in first)

    pbx.publish_dialog("1002", "busy")
    assert "<state>confirmed</state>" in receive_notify(sock)
    pbx.publish_dialog("1002", "ringing")
    assert "<state>early</state>" in receive_notify(sock)
    pbx.publish_dialog("1002", "idle")
    body = receive_notify(sock)
    assert "<state>terminated</state>" in body
    assert "confirmed" not in body  # one publication per extension, refreshed in place


# ------------------------------------------------------------------ 2. calls


def test_call_to_a_registered_user_is_relayed_and_its_bye_passes_after_unregister(
    lab: Lab,
    make_pbx: MakePbx,
    make_caller: MakeCaller,
    pbx_users: dict[str, str],
    phone_udp: PhoneUdp,
    tmp_path: Path,
) -> None:
    pbx = make_pbx("pbx1", users=pbx_users, trusted=[PEER_IP])
    with SippCallPeer(
        "phone-uas", PHONE_IP, 5062, netns=lab.phone, workdir=tmp_path, hangup_after_ms=None
    ) as callee:
        sock = phone_udp(PBX1_IP, 5060)
        assert register(sock, PBX1_IP, "1001", pbx_users["1001"], contact=(PHONE_IP, 5062)) == 200
        caller = make_caller("pbx1", "1001", hangup_after_ms=800)
        poll_until(callee.calls_answered, timeout_s=WAIT_S)
        # The phone moves away (un-REGISTER): the record-routed dialog must not care.
        assert (
            register(
                sock, PBX1_IP, "1001", pbx_users["1001"], contact=(PHONE_IP, 5062), expires_s=0
            )
            == 200
        )
        assert pbx.registrations() == []

        assert caller.wait(WAIT_S) == 0
        poll_until(callee.byes_received, timeout_s=WAIT_S)
    assert (caller.calls_answered(), caller.byes_sent()) == (1, 1)
    methods = [r.split()[0] for r in pbx.requests() if "from 192.0.2.30" in r]
    assert methods == ["INVITE", "ACK", "BYE"]


def test_call_to_a_routed_extension_reaches_the_peer_which_hangs_up(
    make_pbx: MakePbx,
    make_call_peer: MakeCallPeer,
    make_caller: MakeCaller,
    pbx_users: dict[str, str],
) -> None:
    peer = make_call_peer(hangup_after_ms=300)
    pbx = make_pbx("pbx2", users=pbx_users, trusted=[PEER_IP], routes={"2000": peer.uri})
    caller = make_caller("pbx2", "2000", hangup_after_ms=None)

    assert caller.wait(WAIT_S) == 0
    poll_until(peer.byes_sent, timeout_s=WAIT_S)  # logged once the caller's 200 is in
    assert (peer.calls_answered(), peer.byes_sent()) == (1, 1)
    assert caller.byes_received() == 1
    byes = [r for r in pbx.requests() if r.startswith("BYE ")]
    assert byes == [f"BYE from {PEER_IP}:{peer.port} {caller.events('invite')[0]}"]


def test_a_call_from_an_untrusted_address_is_challenged(
    make_pbx: MakePbx,
    make_call_peer: MakeCallPeer,
    make_caller: MakeCaller,
    pbx_users: dict[str, str],
) -> None:
    peer = make_call_peer()
    pbx = make_pbx("pbx1", users=pbx_users, routes={"2000": peer.uri})  # peer not trusted
    caller = make_caller("pbx1", "2000")

    assert caller.wait(WAIT_S) != 0
    assert "SIP/2.0 407 Proxy Authentication Required" in caller.error_path.read_text()
    assert peer.calls_answered() == 0
    methods = [r.split()[0] for r in pbx.requests()]
    assert methods.count("INVITE") == 1  # challenged once; sipp gives up, no retry
    assert set(methods) <= {"INVITE", "ACK"}


# ------------------------------------------------------------------ 3. outbound proxy


def test_register_through_the_backup_proxy_reaches_the_backup(
    make_pbx: MakePbx, make_proxy: MakeProxy, pbx_users: dict[str, str], phone_udp: PhoneUdp
) -> None:
    pbx = make_pbx("pbx2", users=pbx_users)
    proxy: KamailioProxy = make_proxy("pbx2")
    sock = phone_udp(PROXY2_IP, 5060)

    assert register(sock, PBX2_IP, "1001", pbx_users["1001"]) == 200

    port = sock.getsockname()[1]
    assert [r.split()[:3] for r in proxy.requests()] == [
        ["REGISTER", "from", f"{PHONE_IP}:{port}"]
    ] * 2
    assert [r.split()[:3] for r in pbx.requests()] == [
        ["REGISTER", "from", f"{PROXY2_IP}:5060"]
    ] * 2
    assert pbx.registrations() == [f"sip:1001@{PHONE_IP}:{port}"]


def test_proxy1_answers_options_for_itself_in_the_pbx1_namespace(
    make_proxy: MakeProxy, phone_udp: PhoneUdp
) -> None:
    proxy = make_proxy("pbx1")
    sock = phone_udp(PROXY1_IP, 5060)
    sock.send(options_request(PROXY1_IP, 5060, sock.getsockname(), "opt-proxy1"))

    assert response_status(receive(sock)) == 200
    assert proxy.requests() == [f"OPTIONS from {PHONE_IP}:{sock.getsockname()[1]} opt-proxy1"]


# ------------------------------------------------------------------ 4. TCP / TLS


def _stream_options(host: str, port: int, context: ssl.SSLContext | None) -> bytes:
    """One OPTIONS over a fresh TCP (or TLS when `context`) connection; the reply."""
    raw = socket.create_connection((host, port), timeout=2.0)
    conn = context.wrap_socket(raw, server_hostname=host) if context else raw
    with conn:
        proto = b"TLS" if context else b"TCP"
        request = options_request(host, port, conn.getsockname(), f"{proto.decode()}-opt")
        conn.sendall(request.replace(b"SIP/2.0/UDP", b"SIP/2.0/" + proto))
        return conn.recv(65535)


def test_options_over_tls_verified_against_the_lab_ca_and_over_tcp(
    lab: Lab, make_pbx: MakePbx, lab_ca: CertAuthority
) -> None:
    pbx = make_pbx("pbx1", tls=lab_ca.issue("pbx1", [PBX1_IP, "pbx1.lab.test"]))
    context = ssl.create_default_context(cafile=str(lab_ca.cert))

    tls_reply = call_in_netns(lab.phone, lambda: _stream_options(PBX1_IP, TLS_PORT, context))
    tcp_reply = call_in_netns(lab.phone, lambda: _stream_options(PBX1_IP, 5060, None))

    assert response_status(tls_reply) == 200
    assert response_status(tcp_reply) == 200
    assert [r.split()[-1] for r in pbx.requests()] == ["TLS-opt", "TCP-opt"]
    verified = lab.run("phone", ["openssl", "s_client", "-connect", f"{PBX1_IP}:{TLS_PORT}",
                                 "-CAfile", str(lab_ca.cert), "-verify_ip", PBX1_IP,
                                 "-verify_return_error", "-brief"], timeout_s=5)  # fmt: skip
    assert "Verification: OK" in verified.stderr


@pytest.mark.parametrize("bad", ["unknown issuer", "wrong name"])
def test_a_bad_server_certificate_is_refused(
    lab: Lab, make_pbx: MakePbx, lab_ca: CertAuthority, tmp_path: Path, bad: str
) -> None:
    if bad == "unknown issuer":
        files = self_signed(tmp_path, "rogue", [PBX2_IP])
    else:
        files = lab_ca.issue("misnamed", ["192.0.2.99", "elsewhere.lab.test"])
    make_pbx("pbx2", tls=files)
    context = ssl.create_default_context(cafile=str(lab_ca.cert))

    with pytest.raises(ssl.SSLCertVerificationError):
        call_in_netns(lab.phone, lambda: _stream_options(PBX2_IP, TLS_PORT, context))


# ------------------------------------------------------------------ 5. DNS


def test_phone_resolves_a_and_srv_records_and_a_removed_name_fails(
    lab: Lab, dns: DnsServer
) -> None:
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_a("pbx2.lab.test", PBX2_IP)
    dns.set_srv("_sip._udp.pbx.lab.test", "pbx1.lab.test", 5060, priority=10)
    dns.set_srv("_sip._udp.pbx.lab.test", "pbx2.lab.test", 5080, priority=20)

    hosts = lab.run("phone", ["getent", "hosts", "pbx1.lab.test"]).stdout
    assert hosts.split() == [PBX1_IP, "pbx1.lab.test"]
    # A child under `ip netns exec` reads the lab resolv.conf: stdlib and dnspython alike.
    script = (
        "import socket, dns.resolver\n"
        "print(socket.getaddrinfo('pbx2.lab.test', 5060, proto=17)[0][4][0])\n"
        "answer = dns.resolver.resolve('_sip._udp.pbx.lab.test', 'SRV')\n"
        "print(sorted((r.priority, r.port, str(r.target)) for r in answer))\n"
    )
    out = lab.run("phone", [sys.executable, "-c", script]).stdout
    assert out.splitlines() == [
        PBX2_IP,
        "[(10, 5060, 'pbx1.lab.test.'), (20, 5080, 'pbx2.lab.test.')]",
    ]

    dns.remove("pbx1.lab.test")
    assert lab.run("phone", ["getent", "hosts", "pbx1.lab.test"], check=False).returncode == 2
    assert resolve_status(lab.phone, DNS_IP, "pbx1.lab.test") == NXDOMAIN
    assert resolve_status(lab.phone, DNS_IP, "pbx2.lab.test") == 0


def test_lab_roles_proxy_addresses_and_resolv_conf_come_and_go() -> None:
    with Lab() as fresh:
        assert {fresh.peer, fresh.dns} <= set(list_netns())
        addrs = fresh.run("pbx2", ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{PBX2_IP}/24" in addrs
        assert f"{PROXY2_IP}/24" in addrs
        assert fresh.resolv_conf.read_text().startswith(f"nameserver {DNS_IP}")
    assert not fresh.resolv_conf.parent.exists()
    assert not set(fresh.namespaces) & set(list_netns())


def test_pbx_options_are_kept_on_restart(make_pbx: MakePbx, pbx_users: dict[str, str]) -> None:
    pbx: KamailioPbx = make_pbx("pbx1", users=pbx_users, presence=True)
    pbx.stop()
    pbx.start()

    pbx.publish_dialog("1003", "busy")  # presence tables and auth db rebuilt
    assert pbx.requests()[-1].startswith(f"PUBLISH from {PBX1_IP}:")
