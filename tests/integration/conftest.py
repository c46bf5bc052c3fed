"""Fixtures for tests against real peers in network namespaces (SPEC §8). Needs root.

Topology (one `Lab` per test session, prefix `phl<pid>n<k>`):
phone 192.0.2.2, pbx1 192.0.2.11, pbx2 192.0.2.12, all on one bridge.

Running code "in the phone": `phone_udp(host, port)` gives a UDP socket created inside
the phone namespace (on a throwaway thread that setns()-ed there) and connected to
`host:port`; the test thread then uses it normally. Whole programs go through
`run_in_phone(argv)` (`ip netns exec`). Every process, rule and namespace a fixture
creates is removed in its teardown, by PID or by name, even when the test fails.

Real-PBX fixtures (issue 3; the lab also has peer 192.0.2.30, dns 192.0.2.53, and the
proxies 192.0.2.21 in pbx1 and 192.0.2.22 in pbx2):
- `pbx_users`: the lab's SIP accounts, `PBX_USERS` ({"1001": "lab-1001-pw", ...}).
- `make_pbx(role, **options)`: a started `KamailioPbx` on the role's address ("pbx1" ->
  192.0.2.11 named "primary", "pbx2" -> 192.0.2.12 named "backup") in its namespace;
  options go to `KamailioPbx` (users=, trusted=, presence=, routes=, record_route=, tcp=,
  tls=, extensions=, port=, name=); `host=` puts it on another address of the role's
  host (192.0.2.21 on pbx1, 192.0.2.22 on pbx2). Do not also request `primary`/`backup`
  for the role.
- `make_proxy(role, next_hop=None)`: a started `KamailioProxy` on the role's proxy address
  (pbx1 -> 192.0.2.21, pbx2 -> 192.0.2.22), relaying to that role's PBX on 5060 by default.
- `lab_ca`: a session-wide `CertAuthority`; `lab_ca.issue(name, sans)` gives `TlsFiles`.
- `dns`: a started `DnsServer` on 192.0.2.53 (the phone's resolver), empty at start.
- `make_call_peer(hangup_after_ms=None, port=None)`: a started `SippCallPeer` (UAS) in
  the peer namespace on 192.0.2.30 (ports 5060, 5062, ... unless given); route calls to
  it with `make_pbx(..., routes={"2000": peer.uri}, trusted=[PEER_IP])`.
- `make_caller(pbx_role, ext="1001", hangup_after_ms=1000)`: a started `SippCaller` (UAC)
  in the peer namespace calling `sip:<ext>@<pbx>` through that PBX (one call, then exits).
- `make_prov(**options)`: a started `NginxServer` (the endpoint manager's provisioning
  server) on 192.0.2.40 in the prov namespace; options go to `NginxServer` (tls=, users=).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from phonelab.calls import SippCaller, SippCallPeer
from phonelab.capture import Capture
from phonelab.dns import DnsServer
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import (
    DNS_IP,
    PBX1_IP,
    PBX2_IP,
    PEER_IP,
    PROV_IP,
    PROXY1_IP,
    PROXY2_IP,
    Lab,
    cleanup_stale,
    netns_socket,
)
from phonelab.nginx import NginxServer
from phonelab.phone import RunningPhone, write_config
from phonelab.proxy import KamailioProxy
from phonelab.sipp import SippResponder
from phonelab.tls import CertAuthority
from phonelab.wireguard import VpnLab, open_vpn_lab

PhoneUdp = Callable[[str, int], socket.socket]
MakeSipp = Callable[..., SippResponder]
MakePbx = Callable[..., KamailioPbx]
MakeProxy = Callable[..., KamailioProxy]
MakeCallPeer = Callable[..., SippCallPeer]
MakeCaller = Callable[..., SippCaller]
MakeProv = Callable[..., NginxServer]

#: The lab PBXs' SIP accounts: username -> password (test credentials, not secrets).
PBX_USERS = {"1001": "lab-1001-pw", "1002": "lab-1002-pw", "1003": "lab-1003-pw"}
_PBX_ADDRESS = {"pbx1": (PBX1_IP, "primary"), "pbx2": (PBX2_IP, "backup")}
_PROXY_ADDRESS = {"pbx1": PROXY1_IP, "pbx2": PROXY2_IP}


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The session's namespaces; leftovers of crashed earlier runs are removed first."""
    cleanup_stale()
    with Lab() as built:
        yield built


@pytest.fixture
def primary(lab: Lab, tmp_path: Path) -> Iterator[KamailioPbx]:
    """A started Kamailio on 192.0.2.11:5060 in the pbx1 namespace."""
    with KamailioPbx("primary", PBX1_IP, workdir=tmp_path, netns=lab.pbx1) as pbx:
        yield pbx


@pytest.fixture
def backup(lab: Lab, tmp_path: Path) -> Iterator[KamailioPbx]:
    """A started Kamailio on 192.0.2.12:5060 in the pbx2 namespace."""
    with KamailioPbx("backup", PBX2_IP, workdir=tmp_path, netns=lab.pbx2) as pbx:
        yield pbx


@pytest.fixture
def faults() -> Iterator[Faults]:
    """Faults applied through it are undone after the test (rules lifted, PBXs thawed)."""
    with Faults() as applied:
        yield applied


@pytest.fixture
def capture_phone(lab: Lab, tmp_path: Path) -> Iterator[Capture]:
    """tcpdump on every interface of the phone namespace, `udp port 5060 or icmp`."""
    with Capture(lab.phone, tmp_path / "phone.pcap") as capture:
        yield capture


@pytest.fixture
def make_sipp(lab: Lab, tmp_path: Path) -> Iterator[MakeSipp]:
    """Factory `make_sipp(role, delay_ms=..., status=...)` of started SippResponders.

    `role` is "pbx1" or "pbx2": the responder takes that PBX's address and namespace
    (do not also request the Kamailio fixture of the same role).
    """
    started: list[SippResponder] = []

    def make(role: str, *, delay_ms: int, status: int = 200) -> SippResponder:
        host = {"pbx1": PBX1_IP, "pbx2": PBX2_IP}[role]
        name = f"sipp-{role}-{len(started)}"
        responder = SippResponder(
            name, host, netns=lab.ns(role), workdir=tmp_path, delay_ms=delay_ms, status=status
        )
        started.append(responder)
        responder.start()
        return responder

    yield make
    for responder in started:
        responder.stop()


@pytest.fixture
def phone_udp(lab: Lab) -> Iterator[PhoneUdp]:
    """Factory of UDP sockets in the phone namespace, connected to (host, port)."""
    opened: list[socket.socket] = []

    def open_socket(host: str, port: int) -> socket.socket:
        sock = netns_socket(lab.phone)
        opened.append(sock)
        sock.connect((host, port))
        return sock

    yield open_socket
    for sock in opened:
        sock.close()


@pytest.fixture
def run_in_phone(lab: Lab) -> Callable[[Sequence[str]], subprocess.CompletedProcess[str]]:
    """Run a command to completion in the phone namespace (raises LabError on failure)."""

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return lab.run(lab.phone, argv)

    return run


@pytest.fixture
def pbx_users() -> dict[str, str]:
    """The lab's SIP accounts (a fresh copy of `PBX_USERS`)."""
    return dict(PBX_USERS)


@pytest.fixture
def make_pbx(lab: Lab, tmp_path: Path) -> Iterator[MakePbx]:
    """Factory `make_pbx(role, **options)` of started KamailioPbx (see module docstring)."""
    started: list[KamailioPbx] = []

    def make(
        role: str,
        *,
        name: str | None = None,
        port: int = 5060,
        host: str | None = None,
        **options: Any,
    ) -> KamailioPbx:
        address, default_name = _PBX_ADDRESS[role]
        pbx = KamailioPbx(
            name or default_name,
            host or address,  # another address of the role's host: its proxy's
            port,
            workdir=tmp_path,
            netns=lab.ns(role),
            **options,
        )
        started.append(pbx)
        pbx.start()
        return pbx

    yield make
    for pbx in started:
        pbx.stop()


@pytest.fixture
def make_proxy(lab: Lab, tmp_path: Path) -> Iterator[MakeProxy]:
    """Factory `make_proxy(role, next_hop=None)` of started KamailioProxy (module docstring)."""
    started: list[KamailioProxy] = []

    def make(role: str, next_hop: tuple[str, int] | None = None) -> KamailioProxy:
        hop = next_hop or (_PBX_ADDRESS[role][0], 5060)
        proxy = KamailioProxy(
            f"proxy-{role}", _PROXY_ADDRESS[role], next_hop=hop, workdir=tmp_path,
            netns=lab.ns(role),
        )  # fmt: skip
        started.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """The session's lab CA (EC P-256); `lab_ca.cert` is the file clients trust."""
    return CertAuthority.create(tmp_path_factory.mktemp("lab-ca"))


@pytest.fixture
def dns(lab: Lab, tmp_path: Path) -> Iterator[DnsServer]:
    """dnsmasq on 192.0.2.53 in the dns namespace, the phone's resolver; no records yet."""
    with DnsServer(lab.dns, DNS_IP, workdir=tmp_path) as server:
        yield server


@pytest.fixture
def make_call_peer(lab: Lab, tmp_path: Path) -> Iterator[MakeCallPeer]:
    """Factory `make_call_peer(hangup_after_ms=None, port=None)` of started SippCallPeers."""
    started: list[SippCallPeer] = []

    def make(hangup_after_ms: int | None = None, port: int | None = None) -> SippCallPeer:
        chosen = port or 5060 + 2 * len(started)
        peer = SippCallPeer(
            f"call-peer-{len(started)}", PEER_IP, chosen, netns=lab.peer, workdir=tmp_path,
            hangup_after_ms=hangup_after_ms,
        )  # fmt: skip
        started.append(peer)
        peer.start()
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def make_caller(lab: Lab, tmp_path: Path) -> Iterator[MakeCaller]:
    """Factory `make_caller(pbx_role, ext="1001", hangup_after_ms=1000)` of started callers."""
    started: list[SippCaller] = []

    def make(pbx_role: str, ext: str = "1001", hangup_after_ms: int | None = 1000) -> SippCaller:
        pbx_ip = _PBX_ADDRESS[pbx_role][0]
        caller = SippCaller(
            f"caller-{len(started)}", PEER_IP, 5090 + 2 * len(started),
            target=f"sip:{ext}@{pbx_ip}", via=(pbx_ip, 5060), netns=lab.peer,
            workdir=tmp_path, hangup_after_ms=hangup_after_ms,
        )  # fmt: skip
        started.append(caller)
        caller.start()
        return caller

    yield make
    for caller in started:
        caller.stop()


# --------------------------------------------------------------------- VPN lab (issue 4)


@pytest.fixture
def vpn_lab(lab: Lab, tmp_path: Path) -> Iterator[VpnLab]:
    """WireGuard endpoints and app servers in pbx1/pbx2, and the phone's key (SPEC §6).

    pbx1: wg 198.18.1.1/24 at 192.0.2.11:51820, HTTP on 198.18.1.1:80 answering
    `pbx1 <path>\\n`; pbx2 the same with 198.18.2.1 / 192.0.2.12 / `pbx2`. Both also hold
    the shared address 198.18.100.1 (the `routes` network 198.18.100.0/24) and answer on
    it. Their one peer is the phone (198.18.0.2/32, `vpn_lab.phone_public_key`). Nothing
    runs on the phone side: `vpn_lab.settings_tables()` gives `[vpn]`, `[vpn.primary]`
    and `[vpn.backup]` for `write_config(..., settings=...)` (interface
    `vpn_lab.phone_ifname`, key file `vpn_lab.phone_key_file`, routes 198.18.100.0/24).
    """
    with open_vpn_lab(lab, tmp_path) as built:
        yield built


@pytest.fixture
def make_tunnel_pbx(lab: Lab, tmp_path: Path, vpn_lab: VpnLab) -> Iterator[MakePbx]:
    """Factory `make_tunnel_pbx(role, **options)`: a KamailioPbx on the role's tunnel address.

    "pbx1" -> 198.18.1.1:5060 named "primary", "pbx2" -> 198.18.2.1:5060 named "backup",
    in that role's namespace: reachable from the phone only through its tunnel. Options as
    for `make_pbx`; it can be combined with `make_pbx` for the same role (other address).
    """
    started: list[KamailioPbx] = []
    hosts = {"pbx1": (vpn_lab.primary_host, "primary"), "pbx2": (vpn_lab.backup_host, "backup")}

    def make(
        role: str, *, name: str | None = None, port: int = 5060, **options: Any
    ) -> KamailioPbx:
        host, default_name = hosts[role]
        pbx = KamailioPbx(
            name or f"{default_name}-wg", host, port, workdir=tmp_path, netns=lab.ns(role),
            **options,
        )  # fmt: skip
        started.append(pbx)
        pbx.start()
        return pbx

    yield make
    for pbx in started:
        pbx.stop()


@pytest.fixture
def make_prov(lab: Lab, tmp_path: Path) -> Iterator[MakeProv]:
    """Factory `make_prov(**options)` of started NginxServers on PROV_IP in the prov netns."""
    started: list[NginxServer] = []

    def make(**options: Any) -> NginxServer:
        server = NginxServer(lab.prov, PROV_IP, workdir=tmp_path / f"prov{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


StartPhone = Callable[..., RunningPhone]


@pytest.fixture
def start_phone(lab: Lab, tmp_path: Path) -> Iterator[StartPhone]:
    """Factory of running phones (settings overridable); each is stopped after the test."""
    phones: list[RunningPhone] = []

    def start(**overrides: Any) -> RunningPhone:
        workdir = tmp_path / f"phone{len(phones)}"
        workdir.mkdir()
        phone = RunningPhone(lab, workdir, write_config(workdir, **overrides))
        phones.append(phone)
        return phone

    yield start
    for phone in phones:
        phone.stop()
