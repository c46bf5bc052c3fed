"""Junk at every port a phone has open, from another host of the lab (SPEC §10 "Junk").

Owns: finding the UDP and TCP ports a process holds (`ss` in its namespace), the UDP
flood (one sending process per core asked for: garbage, malformed SIP, fake replies and
oversized datagrams at every UDP port, as fast as it can) and the half-open TCP
connections (opened to every listening TCP port, sent the start of a request or of
nothing, and left hanging until the flood ends).
Must not touch: the phone, the PBXs or any capture; it only sends and holds connections.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from types import TracebackType

from phonelab.errors import LabError
from phonelab.netns import netns_socket
from phonelab.procs import ns_argv

Address = tuple[str, int]

#: What every UDP port gets, in turn: binary garbage, a fake reply to a probe (no
#: transaction of ours), an oversized header, a truncated request, and a datagram near
#: UDP's maximum (fragmented on the wire).
JUNK: tuple[bytes, ...] = (
    b"\x00\xff" * 700,
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK-junk\r\nCall-ID: junk\r\n"
    b"CSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\n" + b"X: " + b"a" * 4000 + b"\r\n\r\n",
    b"INVITE \r\n\r\n",
    b"SIP/2.0 " + b"9" * 60000,
)
#: What a half-open TCP connection sends before it goes silent: the start of a request
#: that announces a body it never sends, a header line never ended, or nothing at all.
HALF_REQUESTS: tuple[bytes, ...] = (
    b"INVITE sip:1001@phone SIP/2.0\r\nContent-Length: 100000\r\n",
    b"OPTIONS sip:1001@phone SIP/2.0\r\nVia: SIP/2.0/TCP ",
    b"",
)
#: How long the half-open connections get to complete their handshakes.
CONNECT_WAIT_S = 1.0
_USERS_PID = re.compile(r"pid=(\d+),")
_WILDCARDS = frozenset({"*", "0.0.0.0"})  # noqa: S104 - read from `ss`, never bound


@dataclass(frozen=True)
class OpenPorts:
    """The IPv4 ports one process holds: UDP sockets and listening TCP sockets."""

    udp: tuple[Address, ...]
    tcp: tuple[Address, ...]


def open_ports(netns: str | None, pid: int, *, host: str) -> OpenPorts:
    """What process `pid` has open in `netns`, addressed as `host` (for wildcard binds).

    Raises:
        LabError: `ss` failed.
    """
    argv = ["ss", "-H", "-n", "-a", "-p", "-4", "-u", "-t"]
    result = subprocess.run(ns_argv(netns, argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"flood: ss failed: {result.stderr.strip()}")
    udp: list[Address] = []
    tcp: list[Address] = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) < 6 or str(pid) not in _USERS_PID.findall(line):
            continue
        proto, state, local = fields[0], fields[1], fields[4]
        address, _, port = local.rpartition(":")
        target = (host if address in _WILDCARDS else address, int(port))
        if proto == "udp":
            udp.append(target)
        elif proto == "tcp" and state == "LISTEN":
            tcp.append(target)
    return OpenPorts(udp=tuple(sorted(set(udp))), tcp=tuple(sorted(set(tcp))))


def tcp_connects(netns: str | None, target: Address, timeout_s: float = 1.0) -> bool:
    """Whether a host in `netns` can open a TCP connection to `target` (then closed)."""
    with netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex(target) == 0


def _send_forever(
    netns: str | None, targets: Sequence[Address], sent: Synchronized[int]
) -> None:  # pragma: no cover - a child process, killed at the end
    sock = netns_socket(netns)
    pairs = itertools.cycle(list(itertools.product(JUNK, targets)))  # each kind to each port
    for count, (datagram, target) in enumerate(pairs, start=1):
        with contextlib.suppress(OSError):  # ICMP errors, full buffers: keep sending
            sock.sendto(datagram, target)
        if count % 1000 == 0:
            with sent.get_lock():
                sent.value += 1000


class Flood:
    """UDP junk at every `ports.udp` and `connections` half-open TCP connections to every
    `ports.tcp`, all from `netns`, until the block ends."""

    def __init__(
        self, netns: str | None, ports: OpenPorts, *, senders: int = 1, connections: int = 50
    ) -> None:
        self.netns = netns
        self.ports = ports
        self._senders_wanted = senders
        self._connections_wanted = connections
        self._sent: Synchronized[int] = multiprocessing.Value("q", 0)
        self._senders: list[multiprocessing.process.BaseProcess] = []
        self.connections: list[socket.socket] = []
        self.admitted = 0  #: connections the phone's side completed (the rest: refused or dropped)

    @property
    def datagrams_sent(self) -> int:
        """Datagrams sent so far (in thousands, rounded down, times 1000)."""
        return int(self._sent.value)

    def start(self) -> Flood:
        """Open the TCP connections (all at once, `CONNECT_WAIT_S` for the handshakes),
        then start the senders."""
        pending: dict[socket.socket, int] = {}
        for target, k in itertools.product(self.ports.tcp, range(self._connections_wanted)):
            sock = netns_socket(self.netns, socket.AF_INET, socket.SOCK_STREAM)
            self.connections.append(sock)
            sock.setblocking(False)
            sock.connect_ex(target)  # EINPROGRESS: judged below
            pending[sock] = k
        deadline = time.monotonic() + CONNECT_WAIT_S
        while pending and (left := deadline - time.monotonic()) > 0:
            _, ready, _ = select.select([], list(pending), [], left)
            for sock in ready:
                k = pending.pop(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    self.admitted += 1
                    with contextlib.suppress(OSError):  # the phone may close it: fine
                        sock.send(HALF_REQUESTS[k % len(HALF_REQUESTS)])
        if self.ports.udp:
            context = multiprocessing.get_context("fork")
            for _ in range(self._senders_wanted):
                sender = context.Process(
                    target=_send_forever,
                    args=(self.netns, self.ports.udp, self._sent),
                    daemon=True,
                )
                sender.start()
                self._senders.append(sender)
        return self

    def stop(self) -> None:
        """Stop the senders and close every connection."""
        for sender in self._senders:
            sender.terminate()
            sender.join(5)
        self._senders.clear()
        for sock in self.connections:
            sock.close()
        self.connections.clear()

    def __enter__(self) -> Flood:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def flood_lines(flood: Flood) -> Iterator[str]:
    """What a flood aimed at, for a test's or a benchmark's output."""
    udp = ", ".join(f"{h}:{p}" for h, p in flood.ports.udp) or "none"
    tcp = ", ".join(f"{h}:{p}" for h, p in flood.ports.tcp) or "none"
    yield f"flood: UDP junk at {udp}"
    tried = len(flood.connections)
    yield f"flood: {tried} TCP connections tried to {tcp}, {flood.admitted} admitted (half-open)"
