"""The UDP prober: sends SPEC §1's OPTIONS and turns what comes back into events.

Owns: one UDP socket per probed server, the attempts sent in the last two cycles, and
the matching of replies to attempts. Must not touch: timing (when to send is the core's
`SendProbe`; the monitor calls `send` at once), failover decisions, pjsua2.

Rule 1: one socket per server, bound to the local address the route to it picks, *not*
connected, with IP_RECVERR. A kernel filter (`sockfilter`) admits only datagrams from the
target's IPv4 address and port, so a flood from elsewhere never costs this process a
read (SPEC §10 junk); what it keeps out, and anything dropped for lack of room, is
counted in `unmatched` all the same, from the kernel's drop count that comes with the
next datagram read (SO_RXQ_OVFL), where a connected socket's kernel would drop it
uncounted. IPv6 targets get no filter: strays reach the matching. IP_RECVERR still
reports ICMP port unreachable as a connected socket would (STACK-NOTES): the error fails
the next `recv` (or the next `send`, and that datagram is *not* sent), within a fraction
of a millisecond of the probe; its copy in the error queue is drained and dropped.
Rule 2: a reply counts only if it matches an attempt exactly (`matching.AttemptBook`): top
Via branch, Call-ID, CSeq number and method, and the source address and port of the
target. Anything else is counted in `unmatched` and ignored. A final reply is reported
once per attempt.
Rule 3: `send` and `receive` never raise for network errors: they become `ProbeFailed`
for the latest attempt sent to that server.
Rule 4: a reply's time is the kernel's receive timestamp (`arrival`), so its round trip
and the instant the core judges it at do not depend on when this process read it.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from phoned import sockfilter
from phoned.clock import Clock
from phoned.core.events import Event, ProbeFailed, Server
from phoned.errors import ProbeError
from phoned.probe import arrival
from phoned.probe.matching import AttemptBook, ProbeTarget
from phoned.probe.sipmsg import (
    OptionsTemplate,
    format_hostport,
    new_branch,
    new_call_id,
    new_tag,
    parse_response,
)

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 65535
#: Linux's IP_RECVERR and IPV6_RECVERR (Python 3.11 has no constants for them).
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}
#: An ICMP error's queued copy: the offending datagram (ours) and its extended error.
_ERRQUEUE_ANCILLARY = 512
#: Datagrams read per `receive` call at most, so a flood cannot starve the monitor loop;
#: the rest stay readable for its next `select`.
_MAX_DRAIN = 256

#: errno of a send or receive -> the `ProbeFailed.reason` the core and logs see.
_NETWORK_ERRORS: Mapping[int, str] = {
    errno.ECONNREFUSED: "port unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host down",
    errno.ENETDOWN: "network down",
    errno.EADDRNOTAVAIL: "no local address",
    errno.EPERM: "blocked by firewall",
    errno.EACCES: "blocked by firewall",
    errno.EMSGSIZE: "message too long",
    errno.ENOBUFS: "no buffer space",
    errno.EAGAIN: "send buffer full",
    errno.ETIMEDOUT: "timed out",
    errno.ECONNRESET: "connection reset",
    errno.EPROTO: "protocol error",
}


@dataclass(slots=True)
class _Link:
    """One server's socket and what was sent through it."""

    server: Server
    target: ProbeTarget
    sock: socket.socket
    book: AttemptBook
    cseq: Iterator[int]
    template: OptionsTemplate | None = None  #: built once a route to the target is known
    local_host: str = ""
    drops: int = 0  #: the socket's kernel drops counted so far (rule 1)


class UdpProber:
    """Sends OPTIONS over UDP, one socket per server (rule 1), and matches the replies.

    Args:
        targets: where each probed server is reached (only the primary when
            `backup_destination = false`).
        from_user: the user part of the From URI (the account's username).
        domain: the SIP domain of the From URI.
        user_agent: the User-Agent header.
        clock: monotonic seconds; the round-trip times come from it.

    Raises:
        ProbeError: a socket could not be created, or a target or text is invalid.
    """

    def __init__(
        self,
        targets: Mapping[Server, ProbeTarget],
        *,
        from_user: str,
        domain: str,
        user_agent: str,
        clock: Clock,
    ) -> None:
        self._from_user = from_user
        self._domain = domain
        self._user_agent = user_agent
        self._clock = clock
        self._unmatched = 0
        self._links: dict[Server, _Link] = self._open_all(targets)

    # -- public -------------------------------------------------------------------
    @property
    def unmatched(self) -> int:
        """Responses that matched no attempt (counted, otherwise ignored)."""
        return self._unmatched

    def sockets(self) -> list[socket.socket]:
        """The sockets to `select()` on, one per server; re-read after `retarget`."""
        return [link.sock for link in self._links.values()]

    def writers(self) -> list[socket.socket]:
        """Sockets waiting to become writable: none, UDP sends never wait."""
        return []

    def writable(self, _sock: socket.socket) -> list[Event]:
        """Nothing to do: see `writers`."""
        return []

    def prepare(self, _next_cycle_at: float | None, _now: float) -> float | None:
        """Nothing to prepare before a cycle (targets are IP literals)."""
        return None

    def resolved(self, server: Server) -> tuple[str, int] | None:
        """The address `server` is probed at, None if it has no target."""
        target = self._target(server)
        return None if target is None else target.address

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        """Send attempt `attempt` of cycle `cycle` to `server` now.

        Returns:
            `ProbeFailed` events: for this attempt if it could not be sent, or for an
            earlier one whose ICMP error surfaced on this send. Usually empty.
        """
        link = self._links.get(server)
        if link is None:
            log.warning("probe: %s has no target -> attempt %d missed", server.value, attempt)
            return [ProbeFailed(server, cycle, attempt, "no target")]
        template = link.template or self._connect(link)
        if isinstance(template, str):
            return [ProbeFailed(server, cycle, attempt, template)]
        return self._send_attempt(link, template, cycle, attempt)

    def receive(self, sock: socket.socket) -> list[Event]:
        """Read the datagrams ready on `sock` (one of `sockets()`; others give nothing).

        Returns:
            `ProbeAnswered` per matched reply, `ProbeFailed` per network error (for the
            latest attempt sent to that server); unmatched replies are only counted.

        Raises:
            ProbeError: a local fault that is not the network's (e.g. a closed socket).
        """
        link = next((lk for lk in self._links.values() if lk.sock is sock), None)
        if link is None:
            return []
        events: list[Event] = []
        for _ in range(_MAX_DRAIN):
            try:
                datagram = arrival.receive(sock, _MAX_DATAGRAM, self._clock)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _NETWORK_ERRORS:
                    raise ProbeError(f"probe: cannot read {link.server.value}: {exc}") from exc
                events.extend(self._failed_latest(link, network_reason(exc)))
                continue
            if datagram.drops is not None and datagram.drops > link.drops:
                self._unmatched += datagram.drops - link.drops  # filtered out (rule 1)
                link.drops = datagram.drops
            data, source = datagram.data, datagram.source
            answer = link.book.match(parse_response(data), source, datagram.at)
            if answer is None:
                self._unmatched += 1
                log.debug("probe: %d bytes from %s unmatched -> ignored", len(data), source)
            else:
                events.append(answer)
        _drain_error_queue(sock)  # reported through the socket's error already (rule 1)
        return events

    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None:
        """Apply new targets: unchanged servers keep their socket and attempts, changed
        or new ones get a fresh socket, removed ones are closed.

        Raises:
            ProbeError: a new socket could not be created; the old targets stay in force.
        """
        changed = {s: t for s, t in targets.items() if self._target(s) != t}
        fresh = self._open_all(changed)
        for server, link in list(self._links.items()):
            if server not in targets or server in fresh:
                link.sock.close()
                del self._links[server]
        self._links.update(fresh)
        for server, target in changed.items():
            log.info("probe: %s -> %s", server.value, format_hostport(target.host, target.port))

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for link in self._links.values():
            link.sock.close()
        self._links.clear()

    def __enter__(self) -> UdpProber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sockets ------------------------------------------------------------------
    def _template(
        self, target_host: str, target_port: int, local_host: str, local_port: int
    ) -> OptionsTemplate:
        return OptionsTemplate.create(
            target_host=target_host,
            target_port=target_port,
            local_host=local_host,
            local_port=local_port,
            transport="udp",
            from_user=self._from_user,
            domain=self._domain,
            user_agent=self._user_agent,
        )

    def _target(self, server: Server) -> ProbeTarget | None:
        link = self._links.get(server)
        return None if link is None else link.target

    def _open_all(self, targets: Mapping[Server, ProbeTarget]) -> dict[Server, _Link]:
        links: dict[Server, _Link] = {}
        try:
            for server, target in targets.items():
                links[server] = self._open(server, target)
        except ProbeError:
            for link in links.values():
                link.sock.close()
            raise
        return links

    def _open(self, server: Server, target: ProbeTarget) -> _Link:
        """A non-blocking socket for `target`, connected if the network allows now."""
        try:
            ip = ipaddress.ip_address(target.host)
        except ValueError as exc:
            raise ProbeError(f"probe: {server.value} host {target.host!r}: {exc}") from exc
        try:  # settings errors surface here, not later on the send path
            self._template(target.host, target.port, "192.0.2.2", 5060)
        except ValueError as exc:
            raise ProbeError(f"probe: cannot build OPTIONS for {server.value}: {exc}") from exc
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            sock = _new_socket(family)
        except OSError as exc:
            raise ProbeError(f"probe: cannot open a socket for {server.value}: {exc}") from exc
        book = AttemptBook(server, (str(ip), target.port))
        link = _Link(server, target, sock, book, itertools.count(1))
        connected = self._connect(link)
        if isinstance(connected, str):  # e.g. no route yet at boot: retried at each send
            log.warning("probe: %s %s: %s -> retry at next probe", server.value, ip, connected)
        return link

    def _connect(self, link: _Link) -> OptionsTemplate | str:
        """Bind `link.sock` where the route to the target leaves and build its template;
        the template, or why not.

        A throwaway connected socket asks the kernel which local address the route picks;
        the probe socket binds there (rule 1). The Via carries that address, and replies
        are accepted from the peer exactly as the kernel spells it (as `recvmsg` will).
        """
        try:
            with socket.socket(link.sock.family, socket.SOCK_DGRAM) as route:
                route.connect((link.target.host, link.target.port))
                local_ip = route.getsockname()[0]
                peer_host, peer_port = route.getpeername()[:2]
            if link.sock.getsockname()[1] == 0:  # not bound yet
                link.sock.bind((local_ip, 0))
            local_host, local_port = link.sock.getsockname()[:2]
        except OSError as exc:
            return network_reason(exc)
        local_host = local_host.partition("%")[0]  # no IPv6 zone id in a Via
        link.template = self._template(link.target.host, link.target.port, local_host, local_port)
        link.local_host = local_host
        link.book.peer = (peer_host, peer_port)
        _admit_only(link.sock, peer_host, peer_port)
        return link.template

    # -- attempts -----------------------------------------------------------------
    def _send_attempt(
        self, link: _Link, template: OptionsTemplate, cycle: int, attempt: int
    ) -> list[Event]:
        branch, call_id, cseq = new_branch(), new_call_id(link.local_host), next(link.cseq)
        data = template.render(call_id=call_id, cseq=cseq, branch=branch, from_tag=new_tag())
        events: list[Event] = []
        for _ in range(2):
            sent_at = self._clock.now()
            try:
                link.sock.sendto(data, link.book.peer)
            except ConnectionRefusedError:
                # A pending ICMP error of an earlier attempt failed this send without
                # sending: report it for that attempt, then try once more for this one.
                if link.book.latest is None:
                    break
                events.extend(self._failed_latest(link, "port unreachable"))
                continue
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENETUNREACH):
                    self._rebind(link)  # our address (or its route) went away: find it afresh
                return [*events, ProbeFailed(link.server, cycle, attempt, network_reason(exc))]
            link.book.record(
                branch, cycle=cycle, attempt=attempt, call_id=call_id, cseq=cseq, sent_at=sent_at
            )
            return events
        return [*events, ProbeFailed(link.server, cycle, attempt, "port unreachable")]

    def _rebind(self, link: _Link) -> None:
        """A fresh socket for `link`, bound at the next send where the route leaves then
        (the phone's address changed); the attempts sent stay in its book."""
        try:
            fresh = _new_socket(link.sock.family)
        except OSError as exc:
            log.warning("probe: %s: no new socket: %s", link.server.value, exc)
            return
        link.sock.close()
        link.sock, link.template = fresh, None
        log.info("probe: %s: the local address went away -> new socket", link.server.value)

    def _failed_latest(self, link: _Link, reason: str) -> list[Event]:
        latest = link.book.latest
        if latest is None:
            return []
        cycle, attempt = latest
        log.debug("probe: %s attempt %d of cycle %d: %s", link.server.value, attempt, cycle, reason)
        return [ProbeFailed(link.server, cycle, attempt, reason)]


def _new_socket(family: socket.AddressFamily) -> socket.socket:
    """A non-blocking, unbound UDP socket with ICMP errors (rule 1) and arrival stamps."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(*_RECVERR[family], 1)
    except OSError:
        sock.close()
        raise
    arrival.enable(sock)  # replies count by their arrival (SPEC §10)
    sockfilter.count_drops(sock)  # what the filter keeps out is counted (rule 1)
    return sock


def _admit_only(sock: socket.socket, host: str, port: int) -> None:
    """Rule 1: the kernel hands `sock` datagrams from IPv4 `host`:`port` only."""
    if sock.family != socket.AF_INET:
        return
    try:
        sockfilter.attach(sock, sockfilter.udp_peer_filter(host, port))
    except (OSError, ValueError) as exc:  # the phone works on, strays reach the matching
        log.warning("probe: no kernel filter for %s:%d (%s) -> strays read and dropped here",
                    host, port, exc)  # fmt: skip


def _drain_error_queue(sock: socket.socket) -> None:
    """Drop the queued copies of ICMP errors (each was reported once through the socket's
    error); left queued, they would keep the socket readable."""
    for _ in range(_MAX_DRAIN):
        try:
            sock.recvmsg(_MAX_DATAGRAM, _ERRQUEUE_ANCILLARY, socket.MSG_ERRQUEUE)
        except OSError:  # EAGAIN: empty
            return


def network_reason(exc: OSError) -> str:
    """A short reason for logs and the core; unknown errors keep their strerror."""
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    return _NETWORK_ERRORS.get(exc.errno) or (exc.strerror or errno.errorcode.get(exc.errno, "?"))
