"""One probing cycle (SPEC §1): each server's attempts, misses and verdict.

Owns: the bookkeeping of a single cycle for `failover`: when each server's next attempt
or down verdict is due, why each attempt missed, and the verdict with a reason an
installer can read ("answered in 4 ms", "missed 3 probes", "answered 503 x3").
Must not touch: the grid, the choice of server or the service state (`failover`
decides those), nor any IO, clock or logging. Pure data and arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phoned.core.events import SendProbe, Server, Verdict

NO_REPLY = "no reply"


def attempt_offsets(timeouts_s: tuple[float, ...]) -> tuple[float, ...]:
    """(0.8, 0.4, 0.4) -> (0.0, 0.8, 1.2, 1.6): when each attempt goes out, then down."""
    offsets = [0.0]
    for timeout_s in timeouts_s:
        offsets.append(offsets[-1] + timeout_s)
    return tuple(offsets)


def format_ms(value_ms: float) -> str:
    """Milliseconds for a reason string: "4", "37", or "0.4" below one."""
    return f"{value_ms:.0f}" if value_ms >= 1 else f"{value_ms:.1f}"


@dataclass(slots=True)
class ServerProbe:
    """One server in one cycle: attempts sent, misses seen, the verdict once known."""

    server: Server
    cycle: int
    t0: float  #: when attempt 1 went out
    send_offsets_s: tuple[float, ...]  #: from t0, one per attempt: (0, 0.8, 1.2)
    down_offset_s: float  #: from t0: no valid answer by then = down (1.6)
    sent: int = 1
    misses: dict[int, str] = field(default_factory=dict)  #: attempt -> why it missed
    last_status: int | None = None
    verdict: Verdict | None = None

    def deadline(self) -> float | None:
        """When this probe needs attention next: its next attempt or its down verdict."""
        if self.verdict is not None:
            return None
        if self.sent < len(self.send_offsets_s):
            return self.t0 + self.send_offsets_s[self.sent]
        return self.t0 + self.down_offset_s

    def stalled_by(self, now: float) -> float | None:
        """How late the next attempt is, when `now` is already past the wait after it
        (SPEC §10: the process stalled; this attempt can no longer follow §1), else None."""
        if self.verdict is not None or self.sent >= len(self.send_offsets_s):
            return None
        offsets = (*self.send_offsets_s, self.down_offset_s)
        if now < self.t0 + offsets[self.sent + 1]:
            return None
        return now - (self.t0 + offsets[self.sent])

    def fire(self) -> SendProbe | None:
        """The deadline passed: the next attempt to send, or None once judged down."""
        if self.sent < len(self.send_offsets_s):
            self.sent += 1  # SPEC §1: no valid reply yet, next OPTIONS
            return SendProbe(self.server, self.cycle, self.sent)
        self.judge_down()
        return None

    def miss(self, attempt: int, why: str, status_code: int | None = None) -> None:
        """Attempt `attempt` will not make the server up: keep why, for the verdict."""
        self.misses[attempt] = why
        if status_code is not None:
            self.last_status = status_code

    def judge_up(
        self, attempt: int, status_code: int, rtt_ms: float, address: tuple[str, int] | None
    ) -> None:
        """A valid answer arrived from `address`: up, with that attempt's round trip."""
        probe_note = "" if attempt == 1 else f" (probe {attempt})"
        reason = f"answered in {format_ms(rtt_ms)} ms{probe_note}"
        self.last_status = status_code
        self.verdict = Verdict(
            self.server, True, self.sent, rtt_ms, status_code, reason, address=address
        )

    def judge_down(self) -> None:
        """The last wait ran out: down, saying how each attempt missed."""
        whys = [self.misses.get(attempt, NO_REPLY) for attempt in range(1, self.sent + 1)]
        counts = {why: whys.count(why) for why in whys}
        if counts == {NO_REPLY: self.sent}:
            reason = f"missed {self.sent} probes"
        elif len(counts) == 1:
            reason = f"{whys[0]} x{self.sent}"
        else:
            details = ", ".join(f"{why} x{count}" for why, count in counts.items())
            reason = f"missed {self.sent} probes ({details})"
        self.verdict = Verdict(self.server, False, self.sent, None, self.last_status, reason)


@dataclass(slots=True)
class Cycle:
    """The probes of one cycle, one per server probed, all started at `t0`."""

    number: int
    probes: dict[Server, ServerProbe]

    @classmethod
    def start(
        cls, number: int, t0: float, servers: list[Server], timeouts_s: tuple[float, ...]
    ) -> Cycle:
        """A cycle whose attempt 1 to each of `servers` goes out at `t0`."""
        offsets = attempt_offsets(timeouts_s)
        probes = {s: ServerProbe(s, number, t0, offsets[:-1], offsets[-1]) for s in servers}
        return cls(number, probes)

    def verdicts(self) -> tuple[Verdict, ...] | None:
        """Every probed server's verdict, or None while one is still missing."""
        verdicts = tuple(p.verdict for p in self.probes.values() if p.verdict is not None)
        return verdicts if len(verdicts) == len(self.probes) else None
