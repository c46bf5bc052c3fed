"""Server names resolved at each cycle (SPEC §1), and the prober stack that uses them.

Owns: running the lookups of the configured servers (`lookup`: a name or SRV to an IP
literal and port) on worker threads shortly before each cycle starts; `ResolvingProber`,
which hands the results to a transport prober; `make_prober`, which builds the right
stack for the settings. Must not touch: the schedule or verdicts (the core's), sockets
of the transport probers, pjsua2.

Rule 1: a lookup starts `lead_s` before each cycle start (the monitor calls `prepare`),
each on a daemon thread of its own, so a slow name never delays the other server's
lookup, the monitor thread never waits on DNS, and a lookup stuck at exit never holds up
the process. At most one lookup per server is in flight.
Rule 2: attempt 1 of a cycle binds the cycle to the latest lookup started. Every attempt
of that cycle then uses its result: an address (the transport prober is retargeted when
it changed) or a miss, `ProbeFailed(..., "name does not resolve")`, or "name lookup
timed out" while it is still running. No stale address from an older cycle is used.
Rule 3: the lookups themselves (A/AAAA, SRV, the SRV target's name kept for TLS) are
`lookup`'s; their names are re-exported here.
Rule 4: results are logged once per change ("resolve: primary pbx1.lab -> 192.0.2.11:5060").
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Protocol

from phoned.clock import Clock
from phoned.core.events import Event, ProbeFailed, Server
from phoned.probe.connection import tls_context
from phoned.probe.lookup import (
    LEAD_S,
    SRV_TIMEOUT_S,
    AddressLookup,
    ResolveError,
    SrvLookup,
    SrvRecord,
    lookup_addresses,
    lookup_srv,
    resolve_target,
    srv_name,
    srv_target_name,
)
from phoned.probe.matching import ProbeTarget
from phoned.probe.sipmsg import format_hostport
from phoned.probe.stream import StreamProber
from phoned.probe.udp import UdpProber

log = logging.getLogger(__name__)

__all__ = [
    "LEAD_S", "LOOKUP_LATE", "NO_NAME", "SRV_TIMEOUT_S", "AddressLookup", "ResolveError",
    "ResolvingProber", "SrvLookup", "SrvRecord", "TransportProber", "lookup_addresses",
    "lookup_srv", "make_prober", "resolve_target", "srv_name", "srv_target_name",
]  # fmt: skip
Resolve = Callable[[ProbeTarget], ProbeTarget]

NO_NAME = "name does not resolve"
LOOKUP_LATE = "name lookup timed out"


class TransportProber(Protocol):
    """What `ResolvingProber` needs of the prober it feeds (UDP or stream)."""

    @property
    def unmatched(self) -> int: ...
    def sockets(self) -> Sequence[socket.socket]: ...
    def writers(self) -> Sequence[socket.socket]: ...
    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]: ...
    def receive(self, sock: socket.socket) -> list[Event]: ...
    def writable(self, sock: socket.socket) -> list[Event]: ...
    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None: ...
    def close(self) -> None: ...


class ResolvingProber:
    """Resolves named servers before each cycle and probes them through `inner`.

    Args:
        configured: each server as configured (IP or name; port 0 = SRV).
        inner: the transport prober, created with the literal targets only.
        resolve: configured target -> resolved target (raises `ResolveError`).
        lead_s: how long before a cycle start its lookups begin.
    """

    def __init__(
        self,
        configured: Mapping[Server, ProbeTarget],
        inner: TransportProber,
        resolve: Resolve,
        *,
        lead_s: float = LEAD_S,
    ) -> None:
        self._inner, self._resolve, self._lead_s = inner, resolve, lead_s
        self._configured: dict[Server, ProbeTarget] = {}
        self._in_use: dict[Server, ProbeTarget] = {}  #: what `inner` probes now
        self._latest: dict[Server, Future[ProbeTarget]] = {}  #: latest lookup started
        self._bound: dict[Server, Future[ProbeTarget] | None] = {}  #: this cycle's lookup
        self._logged: dict[Server, str] = {}
        self._lookup_for: float | None = None  #: cycle start of the latest lookups
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.retarget(configured)

    @property
    def lookups_running(self) -> int:
        """Lookups started and not finished yet."""
        return sum(1 for future in self._latest.values() if not future.done())

    @property
    def unmatched(self) -> int:
        """Responses that matched no attempt (the transport prober's count)."""
        return self._inner.unmatched

    # -- Prober, for the monitor ---------------------------------------------------
    def prepare(self, next_cycle_at: float | None, now: float) -> float | None:
        """Start the lookups for the cycle at `next_cycle_at` once it is `lead_s` away.

        Returns:
            When to be called again (the next lookup start), None if nothing to do.
        """
        if next_cycle_at is None or next_cycle_at == self._lookup_for:
            return None
        starts_at = next_cycle_at - self._lead_s
        if now < starts_at:
            return starts_at
        self._lookup_for = next_cycle_at
        self._start_lookups()
        return None

    def sockets(self) -> list[socket.socket]:
        """The transport's sockets, and the one that says a lookup finished."""
        return [*self._inner.sockets(), self._wake_r]

    def writers(self) -> Sequence[socket.socket]:
        """The transport's sockets waiting to write."""
        return self._inner.writers()

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        """Send through the transport to this cycle's address, or miss (Rule 2)."""
        if server not in self._bound:  # a literal: nothing to resolve
            return self._inner.send(server, cycle, attempt)
        if attempt == 1:
            self._bound[server] = self._latest.get(server)
        outcome = self._outcome(server)
        if isinstance(outcome, str):
            self._use(server, None)
            return [ProbeFailed(server, cycle, attempt, outcome)]
        self._use(server, outcome)
        return self._inner.send(server, cycle, attempt)

    def receive(self, sock: socket.socket) -> list[Event]:
        """Transport replies; or, on the wake socket, log the lookups that finished."""
        if sock is not self._wake_r:
            return self._inner.receive(sock)
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(64):
                pass
        for server, future in self._latest.items():
            if future.done():
                self._log_result(server, future)
        return []

    def writable(self, sock: socket.socket) -> list[Event]:
        """The transport's writable socket."""
        return self._inner.writable(sock)

    def resolved(self, server: Server) -> tuple[str, int] | None:
        """The address `server` was probed at in the latest cycle; None if it did not
        resolve then (or is not probed)."""
        target = self._in_use.get(server)
        return None if target is None else target.address

    def retarget(self, configured: Mapping[Server, ProbeTarget]) -> None:
        """New configured targets (settings changed): literals apply at once, names are
        looked up now and used from the next cycle.

        Raises:
            ProbeError: the transport refused a literal target.
        """
        literal = {s: t for s, t in configured.items() if t.is_literal}
        named = {s: t for s, t in configured.items() if not t.is_literal}
        kept = {s: t for s, t in self._in_use.items() if named.get(s) == self._configured.get(s)}
        self._inner.retarget({**kept, **literal})
        self._in_use = {**kept, **literal}
        self._configured = dict(configured)
        self._bound = dict.fromkeys(named)
        self._latest = {s: f for s, f in self._latest.items() if s in named}
        if named:
            self._start_lookups()

    def close(self) -> None:
        """Stop the lookup workers (without waiting on a slow DNS) and close everything."""
        self._closed = True
        self._inner.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ResolvingProber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lookups -------------------------------------------------------------------
    def _start_lookups(self) -> None:
        if self._closed:
            return
        for server in self._bound:
            running = self._latest.get(server)
            if running is not None and not running.done():
                continue  # Rule 1: one in flight per server; this cycle binds to it
            self._latest[server] = self._lookup(server, self._configured[server])

    def _lookup(self, server: Server, target: ProbeTarget) -> Future[ProbeTarget]:
        """Run one lookup on a daemon thread of its own.

        Not a ThreadPoolExecutor: its workers are joined at interpreter exit, and a
        getaddrinfo stuck on a dead DNS server would hold up SIGTERM (SPEC §4: 2 s).
        """
        future: Future[ProbeTarget] = Future()
        future.set_running_or_notify_cancel()
        future.add_done_callback(self._wake)

        def run() -> None:
            try:
                result = self._resolve(target)
            except Exception as exc:  # any failure of the lookup is a miss, handed over
                future.set_exception(exc)
            else:
                future.set_result(result)

        name = f"resolve-{server.value}"
        threading.Thread(target=run, name=name, daemon=True).start()
        return future

    def _wake(self, _future: Future[ProbeTarget]) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already awake, or closed
            self._wake_w.send(b"\0")

    def _outcome(self, server: Server) -> ProbeTarget | str:
        future = self._bound.get(server)
        if future is None or not future.done():
            return LOOKUP_LATE
        if future.cancelled() or future.exception() is not None:
            return NO_NAME
        return future.result()

    def _use(self, server: Server, target: ProbeTarget | None) -> None:
        if self._in_use.get(server) == target:
            return
        targets = {s: t for s, t in self._in_use.items() if s != server}
        if target is not None:
            targets[server] = target
        self._inner.retarget(targets)
        self._in_use = targets

    def _log_result(self, server: Server, future: Future[ProbeTarget]) -> None:
        name = self._configured[server].host
        error = None if future.cancelled() else future.exception()
        if error is None and not future.cancelled():
            target = future.result()
            via = f"{target.name} " if target.name and target.name != name else ""
            shown = format_hostport(target.host, target.port)
            text = f"resolve: {server.value} {name} -> {via}{shown}"
        else:
            text = f"resolve: {server.value} {name} does not resolve ({error}) -> down this cycle"
        if self._logged.get(server) != text:
            self._logged[server] = text
            log.log(logging.INFO if error is None else logging.WARNING, text)


def make_prober(
    targets: Mapping[Server, ProbeTarget],
    *,
    transport: str,
    tls_ca_file: str,
    from_user: str,
    domain: str,
    user_agent: str,
    clock: Clock,
    resolve: Resolve | None = None,
) -> UdpProber | StreamProber | ResolvingProber:
    """The prober for the settings: UDP or stream by `transport`, wrapped in a
    `ResolvingProber` when a server is given as a name or with port 0.

    Args:
        targets: each server as configured (`[server]`, `[redundancy]` backup).
        transport: "udp", "tcp" or "tls" (SPEC §3: for both servers and the probes).
        tls_ca_file: CA bundle for "tls" ("" = the system's).
        resolve: replaces `resolve_target` (tests).

    Raises:
        ProbeError: a bad transport, target, text or CA file.
    """
    literal = {s: t for s, t in targets.items() if t.is_literal and t.port}
    inner: UdpProber | StreamProber
    if transport == "udp":
        inner = UdpProber(
            literal, from_user=from_user, domain=domain, user_agent=user_agent, clock=clock
        )
    else:
        inner = StreamProber(
            literal,
            transport=transport,
            from_user=from_user,
            domain=domain,
            user_agent=user_agent,
            clock=clock,
            tls=tls_context(tls_ca_file) if transport == "tls" else None,
        )
    if len(literal) == len(targets):
        return inner
    lookup = resolve or partial(resolve_target, transport=transport)
    return ResolvingProber(targets, inner, lookup)
