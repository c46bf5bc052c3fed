"""Inputs to and outputs of the failover core (SPEC §1), as frozen dataclasses.

Owns: the vocabulary shared by the core (`failover`), the prober, the SIP adapter and
the supervisor. Must not touch: any IO, clock or thread. Everything here is plain data.

Events flow *into* `FailoverPolicy.handle()`; actions flow *out* of it. Times inside
events are durations measured by the shell (`rtt_ms`); the core receives `now` alongside
every event and reads no other absolute time (`ProbeAnswered.arrived_at` is the shell's).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Server(enum.Enum):
    """One of the two PBXs the phone knows."""

    #: The PBX of `[server]`: where the phone lives when all is well.
    PRIMARY = "primary"
    #: The PBX of `[redundancy] backup_destination_address`.
    BACKUP = "backup"

    @property
    def other(self) -> Server:
        """The server that is not this one."""
        return Server.BACKUP if self is Server.PRIMARY else Server.PRIMARY


class Service(enum.Enum):
    """Whether the phone believes it can reach a PBX (SPEC §5 status rows)."""

    #: Started, no cycle judged yet (display: `registering`).
    STARTING = "starting"
    #: The active server was up in the last judged cycle (or probing is off).
    OK = "ok"
    #: The active server is down and no other server answered (display: `NO SERVICE`).
    NO_SERVICE = "no_service"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class ProbeAnswered:
    """A SIP response matched one of this cycle's OPTIONS to `server` (SPEC §1).

    Any status counts as an answer here; the core decides what a status means
    (503 is "no reply").
    """

    server: Server
    cycle: int
    attempt: int  #: 1, 2 or 3: which OPTIONS of the cycle the response matched
    status_code: int
    rtt_ms: float  #: from that attempt's send to the response's arrival
    #: The (ip, port) the OPTIONS went to and the answer came from: for a name, what it
    #: resolved to in this cycle. It travels on to `Verdict` and `UseServer`, so the shell
    #: never asks the prober (or DNS) where a server is. Left out of equality: two
    #: answers are the same answer wherever a name resolved to.
    address: tuple[str, int] | None = field(default=None, compare=False)
    #: When the response reached the phone (monotonic seconds, from the kernel's receive
    #: timestamp where the socket has one), for the shell: it hands this, not the time it
    #: got round to reading the socket, to the core as `now` (SPEC §10: a reply counts by
    #: its arrival). The core itself only ever reads the `now` it is given.
    arrived_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ProbeFailed:
    """An attempt failed at once (ICMP port unreachable, connection refused, no route).

    It is a miss for that attempt only: the schedule of SPEC §1 goes on unchanged.
    """

    server: Server
    cycle: int
    attempt: int
    reason: str  #: short, for logs: "port unreachable", "connection refused"


@dataclass(frozen=True)
class RegistrationFailed:
    """A REGISTER to `server` timed out or was answered 503 (drives failover when
    `sip_keep_alive_mode = false`, SPEC §1)."""

    server: Server
    reason: str


@dataclass(frozen=True)
class SettingsChanged:
    """New redundancy settings pushed by the PBX or re-read from disk (SPEC §7).

    `settings` is a `failover.PolicySettings`; typed loosely here so that this module
    imports nothing from the core.
    """

    settings: object


Event = ProbeAnswered | ProbeFailed | RegistrationFailed | SettingsChanged


# -------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SendProbe:
    """Send OPTIONS attempt `attempt` of cycle `cycle` to `server` now."""

    server: Server
    cycle: int
    attempt: int


@dataclass(frozen=True)
class Verdict:
    """How one server did in one cycle (SPEC §1), for status and logs."""

    server: Server
    up: bool
    attempts: int  #: OPTIONS sent in this cycle (1..3)
    rtt_ms: float | None = None  #: of the answer that made it up
    status_code: int | None = None  #: last status seen (e.g. 503), None if silent
    reason: str = ""  #: "answered in 4 ms", "missed 3 probes", "answered 503 x3"
    #: Where the answer that made it up came from (not part of equality, as above).
    address: tuple[str, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CycleJudged:
    """Every probed server of cycle `cycle` has a verdict (emitted once per cycle)."""

    cycle: int
    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class UseServer:
    """Move registration, subscriptions, new calls, apps and routes to `server`
    (SPEC §2). `reason` is a sentence an installer can read; log it verbatim."""

    server: Server
    reason: str
    #: (ip, port) the server answered from in the cycle that decided this switch; None
    #: when no probe decided it (start-up, keep-alive off): the shell then uses the
    #: configured target. Not part of equality, as above.
    address: tuple[str, int] | None = field(default=None, compare=False)
    #: Whether the server being left may still be alive (it answered in the deciding
    #: cycle, or nothing says it died). False when it was judged down: SPEC §10, a switch
    #: away from a dead server sends nothing to it (no un-REGISTER retransmitted to it).
    #: None when its verdict of this cycle is not in yet (a failback at the primary's
    #: reply): the shell waits for the `CycleJudged` that says.
    left_alive: bool | None = field(default=True, compare=False)


@dataclass(frozen=True)
class CycleVoided:
    """Cycle `cycle` is dropped without a verdict: the service stalled (SIGSTOP, a long
    pause) past one of its attempts, so the wire does not show what SPEC §1 asks of it.
    Nothing is decided from it; the next cycle on the grid judges afresh (SPEC §10)."""

    cycle: int
    stalled_s: float  #: how late the missed attempt would have gone out


@dataclass(frozen=True)
class ServiceChanged:
    """The service state changed (e.g. to NO_SERVICE when nothing answers)."""

    service: Service
    reason: str


Action = SendProbe | CycleJudged | CycleVoided | UseServer | ServiceChanged
