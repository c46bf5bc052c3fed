"""The TCP/TLS prober: SPEC §1's OPTIONS over a stream, without ever blocking the monitor.

Owns: which connection each attempt goes on, when connections are opened and dropped, and
the matching of replies to attempts. Must not touch: socket steps (`connection`:
connect, TLS handshake, writes, framing), timing (the core's `SendProbe` says when; `send`
acts at once), failover decisions, name resolution (`resolve`), pjsua2.

Why no threads: every step of a connection is driven from the monitor's `select` loop.
`writers()` lists the sockets waiting for a connect or a handshake to make progress (or
holding unsent bytes) and `writable()`/`receive()` move them on. One server's slow
handshake therefore never delays the other's attempt at t = 0, timing stays exact (no
hand-off between threads), and there is nothing to join at shutdown.

Rule 1: each attempt is a request of its own (new branch, new CSeq). It goes on the
server's newest connection that is up and whose attempts were all answered (the steady
state: one connection kept across cycles, like a real phone). Otherwise it opens a fresh
connection and is queued there until the connect (and handshake) is done, so against a
silent server the SYNs leave at 0 / 800 / 1200 ms just as UDP datagrams would.
Rule 2: older connections stay open until the next cycle's attempt 1, so a late reply to
an earlier attempt of the same cycle still counts (SPEC §1). At attempt 1 all but the
newest healthy connection are closed.
Rule 3: a refused, reset or closed connection, a rejected certificate or a stream that
cannot be framed is a `ProbeFailed` for every unanswered attempt it carried; the next
attempt reconnects (SPEC §1). `send`, `receive` and `writable` never raise for these.
A failure is logged once per change of reason, not at every cycle.
Rule 4: replies match as over UDP (top Via branch, Call-ID, CSeq) and must arrive on one
of that server's connections.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from phoned.clock import Clock
from phoned.core.events import Event, ProbeFailed, Server
from phoned.errors import ProbeError
from phoned.probe.connection import ConnState, StreamConnection, StreamError, tls_context
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

#: Connections per server at most: one kept plus one per attempt of a cycle.
_MAX_CONNECTIONS = 4


@dataclass(eq=False, slots=True)
class _Conn:
    """One connection to a server, its request template and the attempts it carried."""

    stream: StreamConnection
    template: OptionsTemplate  #: its Via names this connection's local address
    branches: list[str] = field(default_factory=list)  #: attempts carried, oldest first


@dataclass(slots=True)
class _Link:
    """One server: its target, connections (oldest first) and attempts."""

    server: Server
    target: ProbeTarget
    book: AttemptBook
    cseq: Iterator[int]
    conns: list[_Conn] = field(default_factory=list)
    last_failure: str = ""  #: logged once per change, not at every cycle


class StreamProber:
    """Sends OPTIONS over TCP or TLS and matches the replies; see the module rules.

    Args:
        targets: IP literal and port of each probed server (`name` for the TLS check).
        transport: "tcp" or "tls".
        from_user: the user part of the From URI (the account's username).
        domain: the SIP domain of the From URI.
        user_agent: the User-Agent header.
        clock: monotonic seconds; the round-trip times come from it.
        tls: the client context for "tls" (default: `tls_context("")`).

    Raises:
        ProbeError: a bad transport, target or text.
    """

    def __init__(
        self,
        targets: Mapping[Server, ProbeTarget],
        *,
        transport: str,
        from_user: str,
        domain: str,
        user_agent: str,
        clock: Clock,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if transport not in {"tcp", "tls"}:
            raise ProbeError(f"probe: stream transport must be tcp or tls, got {transport!r}")
        self._transport = transport
        self._tls = (tls or tls_context("")) if transport == "tls" else None
        self._from_user, self._domain, self._user_agent = from_user, domain, user_agent
        self._clock = clock
        self._unmatched = 0
        self._links: dict[Server, _Link] = {}
        self.retarget(targets)

    # -- public -------------------------------------------------------------------
    @property
    def unmatched(self) -> int:
        """Responses that matched no attempt (counted, otherwise ignored)."""
        return self._unmatched

    @property
    def connecting(self) -> int:
        """Connections whose connect or TLS handshake is still running."""
        return sum(1 for conn in self._conns() if conn.stream.busy)

    def sockets(self) -> list[socket.socket]:
        """Sockets to wait on for reading: open connections and handshakes that read."""
        return [c.stream.sock for c in self._conns() if c.stream.wants_read]

    def writers(self) -> list[socket.socket]:
        """Sockets to wait on for writing: connects, handshakes and unsent bytes."""
        return [c.stream.sock for c in self._conns() if c.stream.wants_write]

    def prepare(self, _next_cycle_at: float | None, _now: float) -> float | None:
        """Nothing to prepare before a cycle (targets are IP literals)."""
        return None

    def resolved(self, server: Server) -> tuple[str, int] | None:
        """The address `server` is probed at, None if it has no target."""
        link = self._links.get(server)
        return None if link is None else link.target.address

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        """Send (or queue until connected) attempt `attempt` of `cycle` to `server`.

        Returns:
            `ProbeFailed` for this attempt when its connection failed at once.
        """
        link = self._links.get(server)
        if link is None:
            log.warning("probe: %s has no target -> attempt %d missed", server.value, attempt)
            return [ProbeFailed(server, cycle, attempt, "no target")]
        if attempt == 1:
            self._new_cycle(link)
        conn = self._usable(link)
        if conn is None:
            try:
                conn = self._open(link)
            except StreamError as exc:
                self._note_failure(link, exc.reason)
                return [ProbeFailed(server, cycle, attempt, exc.reason)]
        data = self._attempt_request(link, conn, cycle, attempt)
        return self._after(link, conn, conn.stream.send(data))

    def receive(self, sock: socket.socket) -> list[Event]:
        """Move a readable connection on: handshake, or read and match replies."""
        found = self._find(sock)
        if found is None:
            return []
        link, conn = found
        messages, failure = conn.stream.on_readable()
        return self._match(link, messages) + self._after(link, conn, failure)

    def writable(self, sock: socket.socket) -> list[Event]:
        """Move a writable connection on: connect done, handshake, or unsent bytes."""
        found = self._find(sock)
        if found is None:
            return []
        link, conn = found
        return self._after(link, conn, conn.stream.on_writable())

    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None:
        """Apply new targets: unchanged servers keep their connections and attempts,
        changed or new ones start afresh, removed ones are closed.

        Raises:
            ProbeError: a target is not an IP literal or makes no valid OPTIONS; the old
                targets stay in force.
        """
        for server, target in targets.items():
            self._check(server, target)
        for server, link in list(self._links.items()):
            if targets.get(server) != link.target:
                self._close_link(link)
                del self._links[server]
        for server, target in targets.items():
            if server not in self._links:
                book = AttemptBook(server, target.address)
                self._links[server] = _Link(server, target, book, itertools.count(1))
                shown = format_hostport(target.host, target.port)
                log.info("probe: %s -> %s over %s", server.value, shown, self._transport)

    def close(self) -> None:
        """Close every connection (idempotent)."""
        for link in self._links.values():
            self._close_link(link)
        self._links.clear()

    def __enter__(self) -> StreamProber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connections --------------------------------------------------------------
    def _conns(self) -> Iterator[_Conn]:
        for link in self._links.values():
            yield from link.conns

    def _find(self, sock: socket.socket) -> tuple[_Link, _Conn] | None:
        for link in self._links.values():
            for conn in link.conns:
                if conn.stream.sock is sock:
                    return link, conn
        return None

    @staticmethod
    def _healthy(link: _Link, conn: _Conn) -> bool:
        """Up, and no attempt it carried is still waiting for its final reply."""
        return conn.stream.state is ConnState.OPEN and all(
            link.book.unanswered(branch) is None for branch in conn.branches
        )

    def _new_cycle(self, link: _Link) -> None:
        """Rule 2: keep only the newest healthy connection, if there is one."""
        keep = self._usable(link)
        for conn in link.conns:
            if conn is not keep:
                conn.stream.close()
        link.conns = [] if keep is None else [keep]
        if keep is not None:
            keep.branches.clear()

    def _usable(self, link: _Link) -> _Conn | None:
        """Rule 1: the newest connection that is up with all its attempts answered."""
        return next((c for c in reversed(link.conns) if self._healthy(link, c)), None)

    def _open(self, link: _Link) -> _Conn:
        """A fresh connection to the server (connect started, not done).

        Raises:
            StreamError: the connect failed at once.
        """
        target = link.target
        stream = StreamConnection.open(target.address, self._tls, target.name or target.host)
        if len(link.conns) >= _MAX_CONNECTIONS:
            link.conns.pop(0).stream.close()
        conn = _Conn(stream, self._template(target, *stream.local))
        link.conns.append(conn)
        return conn

    def _after(self, link: _Link, conn: _Conn, failure: str | None) -> list[Event]:
        """Rule 3: after a step of `conn`; a miss for each of its unanswered attempts if it
        failed (it is closed then), else nothing."""
        if failure is None:
            if conn.stream.state is ConnState.OPEN:
                link.last_failure = ""
            return []
        if conn in link.conns:
            link.conns.remove(conn)
        self._note_failure(link, failure)
        events: list[Event] = []
        for branch in conn.branches:
            sent = link.book.unanswered(branch)
            if sent is not None:
                events.append(ProbeFailed(link.server, sent[0], sent[1], failure))
        return events

    # -- attempts -----------------------------------------------------------------
    def _template(self, target: ProbeTarget, local_host: str, local_port: int) -> OptionsTemplate:
        return OptionsTemplate.create(
            target_host=target.host,
            target_port=target.port,
            local_host=local_host,
            local_port=local_port,
            transport=self._transport,
            from_user=self._from_user,
            domain=self._domain,
            user_agent=self._user_agent,
        )

    def _check(self, server: Server, target: ProbeTarget) -> None:
        if not target.is_literal:
            raise ProbeError(f"probe: {server.value} host {target.host!r} is not an IP address")
        try:  # settings errors surface here, not later on the send path
            self._template(target, "192.0.2.2", 5060)
        except ValueError as exc:
            raise ProbeError(f"probe: cannot build OPTIONS for {server.value}: {exc}") from exc

    def _attempt_request(self, link: _Link, conn: _Conn, cycle: int, attempt: int) -> bytes:
        """A new request for this attempt, recorded in the book and carried by `conn`."""
        branch, cseq = new_branch(), next(link.cseq)
        call_id = new_call_id(conn.stream.local[0])
        data = conn.template.render(call_id=call_id, cseq=cseq, branch=branch, from_tag=new_tag())
        link.book.record(
            branch,
            cycle=cycle,
            attempt=attempt,
            call_id=call_id,
            cseq=cseq,
            sent_at=self._clock.now(),
        )
        conn.branches.append(branch)
        return data

    def _match(self, link: _Link, messages: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for message in messages:
            answer = link.book.match(parse_response(message), link.book.peer, self._clock.now())
            if answer is None:
                self._unmatched += 1
                log.debug(
                    "probe: %d bytes from %s unmatched -> ignored", len(message), link.server.value
                )
            else:
                link.last_failure = ""
                events.append(answer)
        return events

    def _note_failure(self, link: _Link, reason: str) -> None:
        """Log a failure once per change of reason (not at every cycle)."""
        if reason == link.last_failure:
            log.debug("probe: %s: %s again", link.server.value, reason)
            return
        link.last_failure = reason
        shown = format_hostport(link.target.host, link.target.port)
        log.warning(
            "probe: %s %s over %s: %s -> miss, reconnect at next attempt",
            link.server.value,
            shown,
            self._transport,
            reason,
        )

    def _close_link(self, link: _Link) -> None:
        for conn in link.conns:
            conn.stream.close()
        link.conns.clear()
