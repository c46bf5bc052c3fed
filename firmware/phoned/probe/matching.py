"""Where a server is probed, and which replies match what was sent (SPEC §1, §10).

Owns: `ProbeTarget` (a server as configured or as resolved) and `AttemptBook` (the attempts
sent to one server in the last two cycles, and the exact rule a reply must meet to count:
top Via branch, Call-ID, CSeq number and method, and the source address and port).
Must not touch: sockets, timing, decisions. Pure data and matching, shared by the UDP and
stream probers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from phoned.core.events import ProbeAnswered, Server
from phoned.probe.sipmsg import SipResponse

_CYCLES_KEPT = 2  # the task brief: remember the attempts of the last two cycles


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where a server's OPTIONS go.

    As configured (`make_prober`'s input), `host` is an IP literal or a name, and port 0
    asks for DNS SRV. As handed to a transport prober, `host` is always an IP literal and
    `name` the name that was looked up for it (the configured name, or the SRV target;
    None for a literal): TLS checks the server certificate against `name or host`.
    """

    host: str
    port: int
    name: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        """`(host, port)`, as the SIP stack wants it."""
        return (self.host, self.port)

    @property
    def is_literal(self) -> bool:
        """Whether `host` is an IP address (nothing to resolve but SRV for port 0)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(slots=True)
class _Attempt:
    cycle: int
    attempt: int
    call_id: str
    cseq: int
    sent_at: float  #: clock seconds, taken just before the datagram was handed over
    answered: bool = False  #: a final (>= 200) reply was reported already


class AttemptBook:
    """The attempts sent to one server in the last two cycles, and reply matching.

    Pure (no sockets, no clock): the prober's IO wraps it, tests drive it directly.

    Args:
        server: the server the attempts went to.
        peer: the target as the kernel reports sources, `(ip_text, port)`.
    """

    def __init__(self, server: Server, peer: tuple[str, int]) -> None:
        self.server = server
        self.peer = peer
        self._by_branch: dict[str, _Attempt] = {}
        self._latest: _Attempt | None = None

    def unanswered(self, branch: str) -> tuple[int, int] | None:
        """(cycle, attempt) of the attempt sent with `branch`, if still remembered and
        without a final reply; None otherwise."""
        sent = self._by_branch.get(branch)
        return None if sent is None or sent.answered else (sent.cycle, sent.attempt)

    @property
    def latest(self) -> tuple[int, int] | None:
        """(cycle, attempt) of the latest attempt sent, if any."""
        return None if self._latest is None else (self._latest.cycle, self._latest.attempt)

    def record(
        self, branch: str, *, cycle: int, attempt: int, call_id: str, cseq: int, sent_at: float
    ) -> None:
        """Remember a sent attempt and forget those older than the last two cycles."""
        oldest_kept = cycle - (_CYCLES_KEPT - 1)
        stale = [b for b, a in self._by_branch.items() if a.cycle < oldest_kept]
        for old_branch in stale:
            del self._by_branch[old_branch]
        sent = _Attempt(cycle, attempt, call_id, cseq, sent_at)
        self._by_branch[branch] = sent
        self._latest = sent

    def match(
        self, response: SipResponse | None, source: tuple[str, int], now: float
    ) -> ProbeAnswered | None:
        """The answer `response` gives to one of our attempts, or None if it matches none.

        `source` is the sender `(ip_text, port)` as `recvfrom` reported it, and `now`
        when the response arrived (the kernel's stamp, where the socket has one).
        """
        if response is None or source != self.peer or response.via_branch is None:
            return None
        sent = self._by_branch.get(response.via_branch)
        if (
            sent is None
            or sent.answered
            or response.call_id != sent.call_id
            or response.cseq_number != sent.cseq
            or response.cseq_method != "OPTIONS"
        ):
            return None
        if response.status_code >= 200:
            sent.answered = True
        arrived_at = max(now, sent.sent_at)  # a wall-clock step can't make it precede its probe
        rtt_ms = (arrived_at - sent.sent_at) * 1000.0
        return ProbeAnswered(
            self.server,
            sent.cycle,
            sent.attempt,
            response.status_code,
            rtt_ms,
            self.peer,
            arrived_at=arrived_at,
        )
