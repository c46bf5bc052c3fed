"""`phoned.sockfilter` against this kernel, on loopback: what its programs let through,
what they keep out, and the drop count that reports it (SPEC §10 junk).

Loopback answers for every 127.0.0.0/8 address, so each test's "other host" is just
another source address bound by hand.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from phoned import sockfilter
from phoned.sip.listeners import ipv4_sources, listening_fds

SERVER, STRANGER = "127.0.0.61", "127.0.0.62"


def udp_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock


@pytest.fixture
def phone() -> Iterator[socket.socket]:
    with udp_socket() as sock:
        sock.settimeout(1)
        yield sock


def send_from(host: str, target: socket.socket, payload: bytes, port: int = 0) -> int:
    """Send `payload` to `target` from `host` (a fresh socket); the source port used."""
    with udp_socket(host, port) as sender:
        sender.sendto(payload, target.getsockname())
        return int(sender.getsockname()[1])


def readable(sock: socket.socket, timeout_s: float = 0.2) -> bool:
    return bool(select.select([sock], [], [], timeout_s)[0])


def test_a_udp_peer_filter_admits_its_peer_only(phone: socket.socket) -> None:
    with udp_socket(SERVER) as server:
        host, port = server.getsockname()
        sockfilter.attach(phone, sockfilter.udp_peer_filter(host, port))
        send_from(STRANGER, phone, b"other host")
        send_from(SERVER, phone, b"server's host, other port")
        assert not readable(phone)  # both kept out in the kernel
        server.sendto(b"the peer", phone.getsockname())
        assert phone.recvfrom(100) == (b"the peer", (host, port))


def test_the_kernel_counts_what_a_filter_keeps_out(phone: socket.socket) -> None:
    with udp_socket(SERVER) as server:
        host, port = server.getsockname()
        sockfilter.attach(phone, sockfilter.udp_peer_filter(host, port))
        assert sockfilter.count_drops(phone)
        send_from(STRANGER, phone, b"other host")
        send_from(SERVER, phone, b"server's host, other port")
        server.sendto(b"the peer", phone.getsockname())
        data, ancillary, _, _ = phone.recvmsg(100, sockfilter.DROPS_SPACE)
    assert data == b"the peer"
    assert sockfilter.drops(ancillary) == 2


def test_without_drops_the_kernel_reports_none(phone: socket.socket) -> None:
    assert sockfilter.count_drops(phone)
    port = send_from(SERVER, phone, b"first")
    sockfilter.attach(phone, sockfilter.udp_peer_filter(SERVER, port))
    _, ancillary, _, _ = phone.recvmsg(100, sockfilter.DROPS_SPACE)
    assert sockfilter.drops(ancillary) is None


def tcp_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def connects(source: str, listener: socket.socket) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.bind((source, 0))
        client.settimeout(0.3)
        return client.connect_ex(listener.getsockname()) == 0


def test_a_listener_admits_connections_from_its_sources_only() -> None:
    with tcp_listener() as listener:
        [(inode, fd)] = listening_fds(listener.getsockname()[1]).items()
        assert fd == listener.fileno()
        assert inode.startswith("socket:[")
        sockfilter.attach(fd, sockfilter.ipv4_sources_filter((SERVER, "127.0.0.63")))
        assert connects(SERVER, listener)
        assert not connects(STRANGER, listener)  # the SYN never reached the listener
        sockfilter.attach(fd, sockfilter.ipv4_sources_filter(()))
        assert not connects(SERVER, listener)  # no sources: nobody


def test_listening_fds_finds_nothing_on_a_port_no_one_listens_on() -> None:
    with tcp_listener() as listener:
        port = listener.getsockname()[1]
    assert listening_fds(port) == {}


def test_only_ipv4_literals_become_sources() -> None:
    hosts = ["pbx.example.com", "2001:db8::1", "192.0.2.12", "192.0.2.11", "192.0.2.12"]
    assert ipv4_sources(hosts) == ("192.0.2.11", "192.0.2.12")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: sockfilter.ipv4_sources_filter(("x",) * 65), "at most 64"),
        (lambda: sockfilter.ipv4_sources_filter(("pbx.example.com",)), "IPv4"),
        (lambda: sockfilter.udp_peer_filter("2001:db8::1", 5060), "IPv4"),
        (lambda: sockfilter.udp_peer_filter("192.0.2.11", 0), "1..65535"),
    ],
)
def test_programs_refuse_what_they_cannot_express(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
