"""What the failover core obeys and what it shows (SPEC §1, §3 `[redundancy]`, §4).

Owns: `PolicySettings` (the redundancy settings, checked on creation), `PolicySnapshot`
(the core's state for `phoned status`) and `PolicyError`. Must not touch: any IO; plain
frozen data, read by `failover` and handed in by the wiring.
"""

from __future__ import annotations

from dataclasses import dataclass

from phoned.core.events import Server, Service, Verdict
from phoned.errors import PhonedError


class PolicyError(PhonedError, RuntimeError):
    """The core was handed an event or setting its state cannot make sense of."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The redundancy settings the core obeys (SPEC §3 `[redundancy]`).

    Raises:
        PolicyError: a value no schedule can follow (checked on creation).
    """

    #: `sip_keep_alive_interval`: seconds between two cycle starts.
    interval_s: float = 15.0
    #: `sip_keep_alive_mode`: probe with OPTIONS; off = registration drives failover.
    keepalive: bool = True
    #: `backup_destination` (with an address): probe the backup and fail over to it.
    backup_enabled: bool = False
    #: Consecutive cycles with the primary up, while on the backup, before failing back.
    failback_cycles: int = 1
    #: Wait after each attempt (SPEC §1: 800 ms, then 400, 400); its length = attempts.
    attempt_timeouts_s: tuple[float, ...] = (0.8, 0.4, 0.4)

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise PolicyError(f"interval_s must be > 0, got {self.interval_s}")
        if self.failback_cycles < 1:
            raise PolicyError(f"failback_cycles must be >= 1, got {self.failback_cycles}")
        if not self.attempt_timeouts_s or not all(t > 0 for t in self.attempt_timeouts_s):
            raise PolicyError(f"attempt_timeouts_s must be > 0, got {self.attempt_timeouts_s}")


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """What the core knows, for `phoned status` (SPEC §4)."""

    active: Server
    service: Service
    cycle: int  #: the last cycle started; -1 before the first
    next_cycle_at: float | None  #: start of the next cycle; None when probing is off
    last_verdicts: tuple[Verdict, ...]  #: each server's latest verdict, primary first
    good_primary_cycles: int  #: consecutive cycles with the primary up while on backup
    ignored_answers: int  #: answers for judged, dropped or already decided probes
    pending_cycles: tuple[int, ...]  #: started and not judged yet
    voided_cycles: int = 0  #: dropped undecided because the service stalled (SPEC §10)
