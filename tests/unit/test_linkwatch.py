"""linkwatch: netlink link and address messages -> the phone's usable addresses (SPEC §10).

Pure: the messages are built here byte by byte, as the kernel lays them out (nlmsghdr,
ifinfomsg / ifaddrmsg, rtattrs padded to 4 bytes). The real socket is exercised in
tests/integration/test_linkwatch_netns.py.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from phoned.net.linkwatch import LinkState, dump_request, messages

NEWLINK, DELLINK, NEWADDR, DELADDR = 16, 17, 20, 21
UP, LOOPBACK, RUNNING = 0x1, 0x8, 0x40
SCOPE_UNIVERSE, SCOPE_LINK = 0, 253
TENTATIVE = 0x40


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def link(index: int, name: str, flags: int, kind: int = NEWLINK) -> tuple[int, bytes]:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF)
    return kind, body + (attr(3, name.encode() + b"\0") if name else b"")


def address(
    index: int, text: str, scope: int = SCOPE_UNIVERSE, flags: int = 0, kind: int = NEWADDR
) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(text)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBI", family, 24, flags, scope, index)
    return kind, body + attr(1, ip.packed) + attr(8, struct.pack("=I", flags))


def state_of(*items: tuple[int, bytes], ignore: tuple[str, ...] = ()) -> LinkState:
    state = LinkState(ignore)
    for kind, body in items:
        state.apply(kind, body)
    return state


def test_a_running_interface_with_a_global_address_is_usable() -> None:
    state = state_of(link(2, "eth0", UP | RUNNING), address(2, "192.0.2.2"))
    assert state.usable() == {"eth0 192.0.2.2"}


@pytest.mark.parametrize(
    ("flags", "why"), [(UP, "no carrier"), (RUNNING, "admin down"), (0, "down")]
)
def test_an_interface_not_up_and_running_is_not_usable(flags: int, why: str) -> None:
    state = state_of(link(2, "eth0", flags), address(2, "192.0.2.2"))
    assert state.usable() == frozenset(), why


def test_link_down_then_up_keeps_the_ipv4_address_as_the_kernel_does() -> None:
    state = state_of(link(2, "eth0", UP | RUNNING), address(2, "192.0.2.2"))
    state.apply(*link(2, "eth0", 0))
    assert state.usable() == frozenset()
    state.apply(*link(2, "", UP | RUNNING))  # a NEWLINK without IFLA_IFNAME keeps the name
    assert state.usable() == {"eth0 192.0.2.2"}


def test_loopback_link_local_tentative_and_ignored_addresses_are_not_usable() -> None:
    state = state_of(
        link(1, "lo", UP | RUNNING | LOOPBACK),
        address(1, "127.0.0.1"),
        link(2, "eth0", UP | RUNNING),
        address(2, "fe80::1", scope=SCOPE_LINK),
        address(2, "2001:db8::2", flags=TENTATIVE),
        link(3, "wg-phoned", UP | RUNNING),
        address(3, "198.18.0.2"),
        ignore=("wg-phoned",),
    )
    assert state.usable() == frozenset()
    state.apply(*address(2, "2001:db8::2"))  # DAD done: the same address without the flag
    assert state.usable() == {"eth0 2001:db8::2"}


def test_deleted_addresses_and_links_are_forgotten() -> None:
    state = state_of(
        link(2, "eth0", UP | RUNNING), address(2, "192.0.2.2"), address(2, "192.0.2.3")
    )
    state.apply(*address(2, "192.0.2.2", kind=DELADDR))
    assert state.usable() == {"eth0 192.0.2.3"}
    state.apply(*link(2, "eth0", UP | RUNNING, kind=DELLINK))
    assert state.usable() == frozenset()


def test_messages_splits_a_datagram_and_stops_at_a_truncated_one() -> None:
    first, second = link(2, "eth0", UP), address(2, "192.0.2.2")
    data = message(*first) + message(*second)
    assert list(messages(data)) == [first, second]
    assert list(messages(data[:-3])) == [first]  # the second is cut: not parsed
    assert list(messages(b"\x10\x00")) == []


def test_garbage_attributes_are_ignored() -> None:
    kind, body = link(2, "eth0", UP | RUNNING)
    state = LinkState()
    state.apply(kind, body[:16] + struct.pack("=HH", 200, 3))  # attribute longer than the body
    state.apply(NEWADDR, b"\x02\x18")  # too short for an ifaddrmsg
    state.apply(99, b"")  # not a link or address message
    ifaddr = struct.pack("=BBBBI", socket.AF_INET, 24, 0, SCOPE_UNIVERSE, 2)
    state.apply(NEWADDR, ifaddr + attr(1, b"\xc0\x00\x02"))  # an address 3 bytes long
    assert state.usable() == frozenset()


def test_dump_request_asks_for_every_link_and_address() -> None:
    for kind, size in ((18, 16), (22, 8)):
        request = dump_request(kind, 7)
        length, got, flags, sequence, _ = struct.unpack_from("=IHHII", request)
        assert (length, got, flags, sequence) == (16 + size, kind, 0x301, 7)
        assert len(request) == length
