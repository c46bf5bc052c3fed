"""The installed service over TCP, TLS and DNS names (issue 3, SPEC §1), end to end.

`phoned run` in the phone namespace (`ip netns exec`, so the lab's resolver 192.0.2.53
applies to it and to pjsua), against Kamailio PBXs listening on TCP and TLS, judged from
what it puts on the wire (tcpdump in its namespace), `phoned status` and its log.

TCP segments are read with tcpdump's text output (`syn_times`, `data_times` from
`test_probe_transports`): the first SYN of each connection and the first copy of each data
segment, so kernel retransmissions never count as attempts. Over TLS the payload is
encrypted: an attempt is a data segment on the kept connection or a fresh SYN, and the
REGISTER to the backup is the first SYN to its TLS port (pjsua opens its own connection).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import StartPhone
from test_probe_transports import data_times, syn_times, tcpdump_lines
from test_service import (
    INTERVAL_S,
    OFFSET_TOLERANCE_S,
    SWITCH_TIMEOUT_S,
    SWITCH_TOLERANCE_S,
    assert_offsets,
    kamailio_holds_contact,
    registered,
    wait_cycles,
)

from phonelab.capture import Capture
from phonelab.dns import DnsServer
from phonelab.faults import Faults
from phonelab.kamailio import TLS_PORT, KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab
from phonelab.phone import RunningPhone, SettingsTables, sip_from_phone
from phonelab.tls import CertAuthority, self_signed

MakePbx = Callable[..., KamailioPbx]
#: A port for the SRV case that nothing would reach by default.
SRV_PORT = 5070


def transport(name: str, port: int, ca: Path | None = None) -> SettingsTables:
    """Settings: both servers on `port` over `name` (and the CA for TLS)."""
    server: dict[str, str | int] = {"transport": name, "port": port}
    if ca is not None:
        server["tls_ca_file"] = str(ca)
    return {"server": server, "redundancy": {"backup_destination_port": port}}


def fail_over(phone: RunningPhone) -> None:
    """Wait for the switch to the backup and the registration there."""
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=3)


def fail_back(phone: RunningPhone) -> None:
    """Wait for the second switch to the primary and the registration there."""
    phone.wait_count("use_server", 2, SWITCH_TIMEOUT_S, server="primary")
    phone.wait_count("registration", 2, 3, server="primary", state="registered")


def probes_up(phone: RunningPhone) -> None:
    """Both servers judged up in a cycle (waits for the backup's first verdict)."""
    wait_cycles(phone, "backup", 1, timeout_s=2 * INTERVAL_S + 2)
    servers = phone.status()["servers"]
    for name in ("primary", "backup"):
        assert servers[name]["last_cycle"]["up"] is True, servers[name]


def udp_sip_from_phone(packets: list[Any]) -> list[Any]:
    """Every UDP datagram the phone sent to a SIP port (5060/5061)."""
    return [p for p in packets if p.src == PHONE_IP and p.dport in (5060, TLS_PORT)]


def after(times: list[float], since: float) -> list[float]:
    return [t for t in times if t >= since]


# ------------------------------------------------------------------ 1. TLS


def test_tls_registers_probes_fails_over_and_back(
    lab: Lab,
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    faults: Faults,
    start_phone: StartPhone,
    tmp_path: Path,
) -> None:
    primary = make_pbx("pbx1", tls=lab_ca.issue("svc-pbx1", [PBX1_IP]))
    backup = make_pbx("pbx2", tls=lab_ca.issue("svc-pbx2", [PBX2_IP]))
    bpf = f"tcp or udp port 5060 or udp port {TLS_PORT}"
    with Capture(lab.phone, tmp_path / "tls.pcap", bpf=bpf) as capture:
        phone = start_phone(settings=transport("tls", TLS_PORT, lab_ca.cert))
        registered(phone, "primary")
        probes_up(phone)
        assert kamailio_holds_contact(primary)
        assert "transport=tls" in primary.registrations()[0].lower()
        silenced_at = time.time()
        faults.blackhole(lab.pbx1, TLS_PORT, proto="tcp")

        fail_over(phone)
        assert kamailio_holds_contact(backup)
        faults.unblackhole(lab.pbx1)
        fail_back(phone)
    assert udp_sip_from_phone(capture.packets()) == []  # everything went over TLS
    assert f"{PBX1_IP}.{TLS_PORT}:" in tcpdump_lines(capture.path, "tcp")
    # The PBXs also listen on TCP 5060: nothing may have gone there in clear.
    assert tcpdump_lines(capture.path, f"tcp and src {PHONE_IP} and not dst port {TLS_PORT}") == ""
    # SPEC §1: attempt 1 on the kept connection, then a fresh connect at 800 and 1200 ms.
    reconnects = after(syn_times(capture.path, PBX1_IP), silenced_at)[:2]
    t0 = max(t for t in data_times(capture.path, PBX1_IP) if t < reconnects[0] - 0.5)
    assert_offsets([0.0, *(t - t0 for t in reconnects)], [0.0, 0.8, 1.2])
    to_backup = after(syn_times(capture.path, PBX2_IP), silenced_at)[0]  # pjsua's REGISTER
    offsets_s = [round(t - t0, 3) for t in reconnects]
    print(f"tls: reconnects at {offsets_s} s, backup at {to_backup - t0:.3f} s")
    assert 1.6 <= to_backup - t0 <= 1.6 + SWITCH_TOLERANCE_S
    assert phone.status()["active"] == "primary"


# ------------------------------------------------------------------ 2. bad certificate


def test_backup_with_an_untrusted_certificate_is_down_and_gives_no_failover(
    lab: Lab,
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    faults: Faults,
    start_phone: StartPhone,
    tmp_path: Path,
) -> None:
    make_pbx("pbx1", tls=lab_ca.issue("svc-bad-pbx1", [PBX1_IP]))
    backup = make_pbx("pbx2", tls=self_signed(tmp_path, "svc-rogue", [PBX2_IP]))
    phone = start_phone(settings=transport("tls", TLS_PORT, lab_ca.cert))
    registered(phone, "primary")
    wait_cycles(phone, "backup", 1, timeout_s=2 * INTERVAL_S + 2)

    judged = phone.status()["servers"]["backup"]["last_cycle"]
    assert judged["up"] is False
    assert "TLS certificate rejected" in judged["reason"], judged
    faults.blackhole(lab.pbx1, TLS_PORT, proto="tcp")

    phone.wait_event("service", SWITCH_TIMEOUT_S, service="no_service")
    status = phone.status()
    assert (status["active"], status["service"]) == ("primary", "no_service")
    assert status["display"]["top_line"] == "NO SERVICE"
    assert phone.events("use_server", server="backup") == []
    assert backup.registrations() == []


# ------------------------------------------------------------------ 3. TCP


def test_tcp_registers_probes_and_fails_over_when_the_primary_stops(
    lab: Lab,
    make_pbx: MakePbx,
    faults: Faults,
    start_phone: StartPhone,
    tmp_path: Path,
) -> None:
    primary = make_pbx("pbx1", tcp=True)
    backup = make_pbx("pbx2", tcp=True)
    with Capture(lab.phone, tmp_path / "tcp.pcap", bpf="port 5060") as capture:
        phone = start_phone(settings=transport("tcp", 5060))
        registered(phone, "primary")
        probes_up(phone)
        assert "transport=tcp" in primary.registrations()[0].lower()
        stopped_at = time.time()
        faults.stop(primary)  # refused: every attempt is a miss that reconnects

        fail_over(phone)
        verdict = phone.events("cycle", server="primary", up="false")[0]
        assert verdict["attempts"] == "3", verdict
        judged = phone.status()["servers"]["primary"]["last_cycle"]
        assert judged["reason"] == "connection refused x3", judged
        assert kamailio_holds_contact(backup)
        primary.start()
        fail_back(phone)
    assert udp_sip_from_phone(capture.packets()) == []
    connects = after(syn_times(capture.path, PBX1_IP), stopped_at)[:3]
    assert_offsets([t - connects[0] for t in connects], [0.0, 0.8, 1.2])
    to_backup = min(t for t in syn_times(capture.path, PBX2_IP) if t > connects[0])
    print(f"tcp: attempts {[round(t - connects[0], 3) for t in connects]} s, "
          f"backup at {to_backup - connects[0]:.3f} s")  # fmt: skip
    assert 1.6 <= to_backup - connects[0] <= 1.6 + SWITCH_TOLERANCE_S
    assert abs(connects[1] - connects[0] - 0.8) <= OFFSET_TOLERANCE_S


# ------------------------------------------------------------------ 4. DNS


def by_name(primary: str, backup: str, port: int | None = None) -> dict[str, Any]:
    """`start_phone` arguments: servers given as names (and the primary's port)."""
    settings: SettingsTables = {"server": {"port": port}} if port is not None else {}
    return {"primary": primary, "backup": backup, "settings": settings}


def test_names_resolve_each_cycle_and_a_vanished_name_fails_over(
    make_pbx: MakePbx, dns: DnsServer, start_phone: StartPhone
) -> None:
    primary = make_pbx("pbx1")
    backup = make_pbx("pbx2")
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_a("pbx2.lab.test", PBX2_IP)
    phone = start_phone(**by_name("pbx1.lab.test", "pbx2.lab.test"))
    registered(phone, "primary")
    probes_up(phone)
    assert kamailio_holds_contact(primary)

    dns.remove("pbx1.lab.test")  # pbx1 itself still answers
    fail_over(phone)
    judged = phone.status()["servers"]["primary"]["last_cycle"]
    assert judged["up"] is False
    assert "name does not resolve" in judged["reason"], judged
    assert kamailio_holds_contact(backup)

    dns.set_a("pbx1.lab.test", PBX1_IP)
    fail_back(phone)
    assert phone.status()["active"] == "primary"
    assert kamailio_holds_contact(primary)


def test_port_0_probes_and_registers_at_the_srv_target(
    lab: Lab, make_pbx: MakePbx, dns: DnsServer, start_phone: StartPhone, tmp_path: Path
) -> None:
    primary = make_pbx("pbx1", port=SRV_PORT)
    make_pbx("pbx2")
    dns.set_a("sip1.lab.test", PBX1_IP)
    dns.set_srv("_sip._udp.pbx1.lab.test", "sip1.lab.test", SRV_PORT)
    with Capture(lab.phone, tmp_path / "srv.pcap", bpf="udp") as capture:
        phone = start_phone(**by_name("pbx1.lab.test", PBX2_IP, port=0))
        registered(phone, "primary")
        probes_up(phone)
    packets = capture.packets()
    assert sip_from_phone(packets, PBX1_IP, "OPTIONS", dport=SRV_PORT)
    assert sip_from_phone(packets, PBX1_IP, "REGISTER", dport=SRV_PORT)
    assert [p for p in packets if p.dst == PBX1_IP and p.dport != SRV_PORT] == []
    assert phone.events("use_server", server="primary")[0]["sip"] == f"{PBX1_IP}:{SRV_PORT}"
    assert kamailio_holds_contact(primary)


# ------------------------------------------------------------------ 5. SRV and TLS


def srv_tls(ca: Path) -> dict[str, Any]:
    """`start_phone` arguments: the primary through `_sips._tcp.voip1.lab.test` over TLS,
    the backup at its address on the TLS port."""
    server = {"transport": "tls", "port": 0, "tls_ca_file": str(ca)}  # SPEC §3: 0 = SRV
    settings = {"server": server, "redundancy": {"backup_destination_port": TLS_PORT}}
    return {"primary": "voip1.lab.test", "backup": PBX2_IP, "settings": settings}


def serve_srv(dns: DnsServer) -> None:
    """`_sips._tcp.voip1.lab.test` -> pbx1.lab.test:5061 -> PBX1_IP."""
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_srv("_sips._tcp.voip1.lab.test", "pbx1.lab.test", TLS_PORT)


def test_srv_with_tls_verifies_the_srv_targets_name_at_start_and_at_failback(
    lab: Lab,
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    dns: DnsServer,
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    # Issue 12: the certificate names the SRV target only, not its IP nor the SIP domain.
    primary = make_pbx("pbx1", tls=lab_ca.issue("srv-target-pbx1", ["pbx1.lab.test"]))
    backup = make_pbx("pbx2", tls=lab_ca.issue("srv-pbx2", [PBX2_IP]))
    serve_srv(dns)
    phone = start_phone(**srv_tls(lab_ca.cert))
    registered(phone, "primary")
    probes_up(phone)
    assert phone.events("use_server", server="primary")[0]["sip"] == f"pbx1.lab.test:{TLS_PORT}"
    assert kamailio_holds_contact(primary)

    faults.blackhole(lab.pbx1, TLS_PORT, proto="tcp")
    fail_over(phone)
    assert kamailio_holds_contact(backup)
    faults.unblackhole(lab.pbx1)
    fail_back(phone)  # UseServer brings the address that answered: its SRV name is used
    back = phone.events("use_server", server="primary")[-1]
    assert back["sip"] == f"pbx1.lab.test:{TLS_PORT}", back
    assert phone.status()["servers"]["primary"]["registration"] == "registered"


@pytest.mark.parametrize("names", [[PBX1_IP], ["voip1.lab.test"]], ids=["ip", "domain"])
def test_srv_with_tls_refuses_a_certificate_not_naming_the_srv_target(
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    dns: DnsServer,
    start_phone: StartPhone,
    names: list[str],
) -> None:
    primary = make_pbx("pbx1", tls=lab_ca.issue(f"srv-wrong-{names[0]}", names))
    make_pbx("pbx2", tls=lab_ca.issue("srv-pbx2-ok", [PBX2_IP]))
    serve_srv(dns)
    phone = start_phone(**srv_tls(lab_ca.cert))

    phone.wait_event("registration", 10, server="primary", state="failed")
    wait_cycles(phone, "primary", 1, timeout_s=2 * INTERVAL_S + 2)
    failed = [ln for ln in phone.lines() if "registration: primary" in ln and " failed " in ln]
    assert "TLS certificate rejected by" in failed[0], failed  # pjsua checked the name
    judged = phone.status()["servers"]["primary"]["last_cycle"]
    assert judged["up"] is False
    assert "TLS certificate rejected: Hostname mismatch" in judged["reason"], judged
    assert primary.registrations() == []
