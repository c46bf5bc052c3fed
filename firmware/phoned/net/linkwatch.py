"""The phone's own link: noticing that it came back or changed address (SPEC §10).

Owns: one netlink route socket (standard library, `AF_NETLINK`, never pyroute2: that one
loads in a quarter of a second and stays resident, for a phone without a VPN too)
subscribed to link and address events; the phone's *usable addresses* built from them;
and the moment a change is worth telling the SIP stack about (`LinkWatch.poll`).
Must not touch: links, addresses or routes (it only listens), SIP, probing, threads.

Rule 1: a usable address is a global (universe or site scope) IPv4 or IPv6 address, not
tentative or failed (DAD), on an interface that is up and running (IFF_UP|IFF_RUNNING),
not the loopback and not one the service made itself (`ignore`: the VPN interface).
Rule 2: the start-up state is the baseline. Every change of the usable set marks the link
*changed*; once the set has stayed the same for `settle_s` and is not empty, `poll`
returns one `LinkChange` (a link down and up again, a new DHCP address). A link that is
down returns nothing: there is nowhere to send anything yet (pjsua's IP change handling
wants the new address in place, not the old one gone).
Rule 3: nothing here blocks after the start-up dump or raises after construction: the
socket is read without waiting, and a socket that fails is logged once and closed, after
which `poll` returns None (the phone goes on without link events).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NETLINK_ROUTE = 0
_GROUPS = 0x1 | 0x10 | 0x100  # RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
_IFLA_IFNAME = 3
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_DADFAILED, _IFA_F_TENTATIVE = 0x08, 0x40
_GLOBAL_SCOPES = frozenset({0, 200})  # RT_SCOPE_UNIVERSE, RT_SCOPE_SITE
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
_RECV_BYTES = 65536
#: How long the start-up dump may take at most (a netlink dump answers in microseconds).
_DUMP_TIMEOUT_S = 1.0
#: Usable addresses must stay unchanged this long before a change is reported.
SETTLE_S = 0.3


@dataclass(frozen=True, slots=True)
class LinkChange:
    """The link is usable again, or with other addresses (Rule 2)."""

    addresses: tuple[str, ...]  #: "eth0 192.0.2.2", one per usable address
    reason: str  #: for logs: "eth0 back with 192.0.2.2"


def _aligned(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each rtattr from `offset` to the end of `data`."""
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size : offset + length]
        offset += _aligned(length)


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each netlink message in one datagram; a truncated one ends it."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, data[offset + _NLMSGHDR.size : offset + length]
        offset += _aligned(length)


class LinkState:
    """Interfaces and addresses as netlink told them; pure (tests feed it messages)."""

    def __init__(self, ignore: Collection[str] = ()) -> None:
        self._ignore = frozenset(ignore)
        self._links: dict[int, tuple[str, int]] = {}  # index -> (name, flags)
        self._addresses: dict[tuple[int, str], bool] = {}  # (index, address) -> usable

    def apply(self, kind: int, body: bytes) -> None:
        """Take one RTM_NEWLINK/DELLINK/NEWADDR/DELADDR message (others are ignored)."""
        if kind in (_RTM_NEWLINK, _RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
            if kind == _RTM_DELLINK:
                self._links.pop(index, None)
                return
            name = self._links.get(index, ("", 0))[0]
            for attr, value in _attributes(body, _IFINFOMSG.size):
                if attr == _IFLA_IFNAME:
                    name = value.split(b"\0", 1)[0].decode(errors="replace")
            self._links[index] = (name, flags)
        elif kind in (_RTM_NEWADDR, _RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
            self._apply_address(kind, body)

    def _apply_address(self, kind: int, body: bytes) -> None:
        family, _prefix, flags, scope, index = _IFADDRMSG.unpack_from(body)
        found: dict[int, bytes] = dict(_attributes(body, _IFADDRMSG.size))
        raw = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
        size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
        if raw is None or len(raw) != size:
            return
        if _IFA_FLAGS in found and len(found[_IFA_FLAGS]) == 4:
            flags = struct.unpack("=I", found[_IFA_FLAGS])[0]
        address = str(ipaddress.ip_address(raw))
        if kind == _RTM_DELADDR:
            self._addresses.pop((index, address), None)
            return
        failed = flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED)
        self._addresses[(index, address)] = scope in _GLOBAL_SCOPES and not failed

    def usable(self) -> frozenset[str]:
        """Rule 1: "ifname address" of every usable address."""
        found = set()
        for (index, address), global_ok in self._addresses.items():
            name, flags = self._links.get(index, ("", 0))
            running = flags & (_IFF_UP | _IFF_RUNNING) == (_IFF_UP | _IFF_RUNNING)
            if global_ok and running and not flags & _IFF_LOOPBACK and name not in self._ignore:
                found.add(f"{name} {address}")
        return frozenset(found)


def dump_request(kind: int, sequence: int) -> bytes:
    """A netlink dump request for every link (RTM_GETLINK) or address (RTM_GETADDR)."""
    layout = _IFINFOMSG if kind == _RTM_GETLINK else _IFADDRMSG
    body = layout.pack(*[0] * 5)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP,
                            sequence, 0)  # fmt: skip
    return header + body


class LinkWatch:
    """Link and address events of the phone, read without blocking (Rule 3).

    Args:
        ignore: interface names the service makes itself (the VPN's).
        settle_s: how long the usable addresses must stay unchanged (Rule 2).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        ignore: Collection[str] = (),
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = LinkState(ignore)
        self._settle_s = settle_s
        self._clock = clock
        self._seen: frozenset[str] = frozenset()
        self._changed_at: float | None = None  # when the usable set last changed, if dirty
        self._lost_at: float | None = None  # when the last usable address went
        self._sock: socket.socket | None = None
        try:
            self._sock = self._open()
        except OSError as exc:
            log.warning("link: netlink unavailable (%s) -> link changes go unnoticed", exc)
            return
        self._seen = self._state.usable()
        shown = ", ".join(sorted(self._seen)) or "no usable address"
        log.info("link: watching (%s)", shown)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             _NETLINK_ROUTE)  # fmt: skip
        try:
            sock.bind((0, _GROUPS))
            sock.settimeout(_DUMP_TIMEOUT_S)
            for sequence, kind in enumerate((_RTM_GETLINK, _RTM_GETADDR), start=1):
                sock.send(dump_request(kind, sequence))
                self._read_dump(sock)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _read_dump(self, sock: socket.socket) -> None:
        """Apply messages until the dump's NLMSG_DONE (events in between count too)."""
        while True:
            for kind, body in messages(sock.recv(_RECV_BYTES)):
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    raise OSError(code, f"netlink dump refused: {errno.errorcode.get(code, code)}")
                self._state.apply(kind, body)

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed), for a caller that selects on it."""
        return -1 if self._sock is None else self._sock.fileno()

    def poll(self, now: float | None = None) -> LinkChange | None:
        """Read what arrived; a `LinkChange` once a change has settled (Rule 2)."""
        if self._sock is None:
            return None
        now = self._clock() if now is None else now
        self._read(self._sock, now)
        if self._changed_at is None or now - self._changed_at < self._settle_s:
            return None
        if not self._seen:
            return None  # Rule 2: still down; report once it is back
        self._changed_at = None
        shown = ", ".join(sorted(self._seen))
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is None:
            return LinkChange(tuple(sorted(self._seen)), f"addresses now {shown}")
        return LinkChange(tuple(sorted(self._seen)), f"back after {now - lost_at:.1f} s: {shown}")

    def _read(self, sock: socket.socket, now: float) -> None:
        while True:
            try:
                data = sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events were lost: assume a change
                    self._changed_at = now
                    continue
                log.warning("link: netlink read failed (%s) -> link changes go unnoticed", exc)
                self.close()
                return
            for kind, body in messages(data):
                self._state.apply(kind, body)
                self._note(now)

    def _note(self, now: float) -> None:
        usable = self._state.usable()
        if usable == self._seen:
            return
        if not usable and self._lost_at is None:
            self._lost_at = now
            log.warning("link: no usable address any more (was %s) -> waiting for it",
                        ", ".join(sorted(self._seen)))  # fmt: skip
        self._seen = usable
        self._changed_at = now

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
