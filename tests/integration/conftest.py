"""Fixtures for tests against real peers in network namespaces (SPEC §8). Needs root.

Topology (one `Lab` per test session, prefix `phl<pid>n<k>`):
phone 192.0.2.2, pbx1 192.0.2.11, pbx2 192.0.2.12, all on one bridge.

Running code "in the phone": `phone_udp(host, port)` gives a UDP socket created inside
the phone namespace (on a throwaway thread that setns()-ed there) and connected to
`host:port`; the test thread then uses it normally. Whole programs go through
`run_in_phone(argv)` (`ip netns exec`). Every process, rule and namespace a fixture
creates is removed in its teardown, by PID or by name, even when the test fails.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from phoned.lab.capture import Capture
from phoned.lab.faults import Faults
from phoned.lab.kamailio import KamailioPbx
from phoned.lab.netns import PBX1_IP, PBX2_IP, Lab, cleanup_stale, netns_socket
from phoned.lab.sipp import SippResponder

PhoneUdp = Callable[[str, int], socket.socket]
MakeSipp = Callable[..., SippResponder]


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
