"""A building of phones on a simulated clock: the real failover core, N times (issue 12).

Owns: `simulate()`, which drives one `phoned.core.failover.FailoverPolicy` per phone from
one event heap (no threads, no sockets, no sleeps), and the arithmetic on what reached the
backup (`arrival_rates`). Must not touch: the product's code paths (it only calls the
core's public API and `phoned.sip.registration.retry_delay_s`) or any real clock.

The model (what `scripts/sim-fleet` prints against N / interval):
1. Every phone boots at t = 0 and draws its first cycle delay uniform in [0, interval), as
   `phoned.service.wiring` does (SPEC §1: "a building full of phones does not probe in
   lockstep"); `lockstep` draws 0 for everyone instead, to show what the spread buys.
2. A probe sent to a live server is answered `rtt_s` later (status 200). The primary dies
   at `kill_at` (at random within one interval, once every phone has judged a cycle) and
   from then on answers nothing. The backup never dies.
3. When the core says `UseServer(BACKUP)` the phone puts one REGISTER on the wire
   `processing_s` later and one SUBSCRIBE per BLF key `subscribe_after_s` after that.
   Nothing travels: a request arrives when it is sent.
4. The backup answers a REGISTER 503 with probability `register_503`; pjsua then retries
   after `first_interval_s`, later `interval_s`, each +- `random_s` at random (SPEC §2),
   drawn by `phoned.sip.registration.retry_delay_s` (the same spread and clamp).
5. Once a phone is on the backup it is done: the primary never returns, so nothing it does
   afterwards reaches the backup as a REGISTER or SUBSCRIBE.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phoned.core.events import Action, ProbeAnswered, SendProbe, Server, UseServer
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.sip.account import RetryPolicy
from phoned.sip.registration import retry_delay_s

#: A heap entry: (when, sequence, phone index, deadline generation, probe answered or None).
_Entry = tuple[float, int, int, int, SendProbe | None]


@dataclass(frozen=True)
class FleetParams:
    """One simulated building (see the module docstring for the model)."""

    phones: int
    interval_s: float = 15.0
    blf_keys: int = 2  #: SUBSCRIBEs per phone on the backup
    register_503: float = 0.0  #: chance that the backup answers a REGISTER 503
    rtt_s: float = 0.001  #: a live server's answer to a probe
    processing_s: float = 0.002  #: UseServer(BACKUP) -> REGISTER on the wire
    subscribe_after_s: float = 0.005  #: REGISTER -> the SUBSCRIBEs
    lockstep: bool = False  #: every phone's first cycle at t = 0 (no random phase)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_register_attempts: int = 10  #: REGISTERs a phone sends at most (retries counted)

    def __post_init__(self) -> None:
        if self.phones < 1 or self.interval_s <= 0 or self.blf_keys < 0:
            raise ValueError("phones >= 1, interval_s > 0 and blf_keys >= 0, please")
        if not 0.0 <= self.register_503 < 1.0:
            raise ValueError(f"register_503 must be in [0, 1), got {self.register_503}")

    def settings(self) -> PolicySettings:
        """The redundancy settings of every phone (SPEC §3 defaults, backup enabled)."""
        return PolicySettings(interval_s=self.interval_s, backup_enabled=True)

    @property
    def deadline_s(self) -> float:
        """From a cycle's start to the primary's down verdict (SPEC §1: 1.6 s)."""
        return sum(self.settings().attempt_timeouts_s)


@dataclass
class FleetRun:
    """What one simulated failover put on the backup; times in s after the kill."""

    params: FleetParams
    kill_at: float  #: when the primary died (simulated s after boot)
    switches: list[float] = field(default_factory=list)  #: each phone's UseServer(BACKUP)
    registers: list[float] = field(default_factory=list)  #: arrivals, retries included
    subscribes: list[float] = field(default_factory=list)
    retries: int = 0  #: REGISTERs that followed a 503
    events: int = 0  #: heap entries processed (for the speed figure)

    @property
    def on_backup(self) -> int:
        """Phones that moved to the backup."""
        return len(self.switches)


def pjsua_retry_delay_s(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """pjsua's wait before re-REGISTERing after failure number `attempt` (SPEC §2).

    pjsua waits `first_interval_s` after the first failure and `interval_s` after later
    ones, each spread by +- `random_s` (`randomRetryIntervalSec`); the draw is
    `retry_delay_s`'s (same spread, same clamp to half the wait), on that single wait.
    """
    wait_s = float(policy.first_interval_s if attempt <= 1 else policy.interval_s)
    return retry_delay_s(1, dataclasses.replace(policy, refused_s=wait_s), rand)


class _Building:
    """The heap and the phones of one run."""

    def __init__(self, params: FleetParams, rng: random.Random) -> None:
        self.params, self.rng = params, rng
        interval = params.interval_s
        # SPEC §1 / wiring.py: start_0 uniform in the first interval; all boot at t = 0.
        phases = (rng.uniform(0.0, interval) for _ in range(params.phones))
        delays = [0.0 if params.lockstep else d for d in phases]
        self.policies = [FailoverPolicy(params.settings(), 0.0, d) for d in delays]
        self.generations = [0] * params.phones
        self.done = [False] * params.phones
        self.kill_at = interval + params.deadline_s + rng.uniform(0.0, interval)
        self.run = FleetRun(params, self.kill_at)
        self._heap: list[_Entry] = []
        self._seq = 0
        for index, policy in enumerate(self.policies):
            policy.start(0.0)
            self._reschedule(index)

    def _push(self, when: float, index: int, generation: int, probe: SendProbe | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, index, generation, probe))

    def _reschedule(self, index: int) -> None:
        self.generations[index] += 1
        deadline = self.policies[index].next_deadline()
        if deadline is not None and not self.done[index]:
            self._push(deadline, index, self.generations[index], None)

    def alive(self, server: Server, now: float) -> bool:
        """The backup always answers; the primary until it dies."""
        return server is Server.BACKUP or now < self.kill_at

    def drain(self) -> FleetRun:
        """Process every event; the run once no phone has anything left to do.

        A phone still on the primary three intervals after the kill never moves (a bug
        the caller sees in `FleetRun.on_backup`): the run stops there.
        """
        horizon = self.kill_at + 3 * self.params.interval_s + 10.0
        while self._heap and self._heap[0][0] <= horizon:
            when, _, index, generation, probe = heapq.heappop(self._heap)
            self.run.events += 1
            if self.done[index]:
                continue
            policy = self.policies[index]
            if probe is None:
                if generation != self.generations[index]:
                    continue  # superseded by a later reschedule
                actions = policy.on_deadline(when)
            else:
                rtt_ms = self.params.rtt_s * 1000
                answer = ProbeAnswered(probe.server, probe.cycle, probe.attempt, 200, rtt_ms)
                actions = policy.handle(answer, when)
            self._obey(index, actions, when)
            self._reschedule(index)
        return self.run

    def _obey(self, index: int, actions: Sequence[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, SendProbe) and self.alive(action.server, now):
                self._push(now + self.params.rtt_s, index, 0, action)
            elif isinstance(action, UseServer) and action.server is Server.BACKUP:
                self._move(now)
                self.done[index] = True

    def _move(self, now: float) -> None:
        """One phone's REGISTER (and its retries) and SUBSCRIBEs reach the backup."""
        params, run = self.params, self.run
        since_kill = now - self.kill_at
        run.switches.append(since_kill)
        register_at = since_kill + params.processing_s
        run.subscribes += [register_at + params.subscribe_after_s] * params.blf_keys
        run.registers.append(register_at)
        for attempt in range(1, params.max_register_attempts):
            if self.rng.random() >= params.register_503:
                break
            register_at += pjsua_retry_delay_s(attempt, params.retry, self.rng.random)
            run.registers.append(register_at)
            run.retries += 1


def simulate(params: FleetParams, rng: random.Random) -> FleetRun:
    """Boot `params.phones` phones, kill the primary at random, run until all moved.

    Every phone whose primary is dead moves within one interval plus 1.6 s (SPEC §1), so
    the heap empties on its own: a phone that moved schedules nothing more.
    """
    return _Building(params, rng).drain()


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """Arrivals per second at the backup of one kind of request, over one or more runs.

    The rate at instant t is the number of arrivals in the second before it, (t - 1, t];
    it is sampled every 10 ms while every phone could be switching: a phone moves 1.6 s
    after the start of its first cycle after the kill, so from kill + 1.6 s to kill +
    interval + 1.6 s; samples start 1 s into that so that each window lies inside it.
    """

    expected_per_s: float  #: N x requests per phone / interval
    mean_per_s: float  #: first requests (no retries) over one interval
    median_per_s: float  #: of the samples
    p99_per_s: float  #: of the samples
    peak_per_s: int  #: the most arrivals in any 1 s window of the run, retries included
    total: int  #: arrivals, retries included (summed over runs)


SAMPLE_STEP_S = 0.01


def window_counts(
    arrivals: Sequence[float], from_s: float, until_s: float, step_s: float = SAMPLE_STEP_S
) -> list[int]:
    """Arrivals in (t - 1, t] for t from `from_s` to `until_s` by `step_s` (`arrivals` sorted)."""
    counts = []
    for k in range(max(1, round((until_s - from_s) / step_s) + 1)):
        t = from_s + k * step_s
        counts.append(bisect.bisect_right(arrivals, t) - bisect.bisect_right(arrivals, t - 1.0))
    return counts


def sliding_peak(arrivals: Sequence[float], window_s: float = 1.0) -> int:
    """The most arrivals in any window of `window_s` (two pointers over sorted times)."""
    times = sorted(arrivals)
    best, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in (0, 1]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile: no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def arrival_rates(
    runs: Sequence[tuple[Sequence[float], int]],
    *,
    per_phone: int,
    phones: int,
    interval_s: float,
    deadline_s: float,
) -> Rates:
    """Rates of one request kind over `runs`: (arrivals after the kill, first ones) each."""
    samples: list[int] = []
    peak, total, firsts = 0, 0, 0
    for arrivals, first_count in runs:
        ordered = sorted(arrivals)
        samples += window_counts(ordered, deadline_s + 1.0, interval_s + deadline_s)
        peak = max(peak, sliding_peak(ordered))
        total += len(arrivals)
        firsts += first_count
    return Rates(
        expected_per_s=phones * per_phone / interval_s,
        mean_per_s=firsts / len(runs) / interval_s,
        median_per_s=statistics.median(samples),
        p99_per_s=percentile(samples, 0.99),
        peak_per_s=peak,
        total=total,
    )


def register_rates(runs: Sequence[FleetRun]) -> Rates:
    """The REGISTER rates of simulated runs of the same parameters."""
    params = runs[0].params
    return arrival_rates(
        [(run.registers, run.on_backup) for run in runs],
        per_phone=1, phones=params.phones, interval_s=params.interval_s,
        deadline_s=params.deadline_s,
    )  # fmt: skip


def subscribe_rates(runs: Sequence[FleetRun]) -> Rates:
    """The SUBSCRIBE rates of simulated runs of the same parameters."""
    params = runs[0].params
    return arrival_rates(
        [(run.subscribes, len(run.subscribes)) for run in runs],
        per_phone=params.blf_keys, phones=params.phones, interval_s=params.interval_s,
        deadline_s=params.deadline_s,
    )  # fmt: skip
