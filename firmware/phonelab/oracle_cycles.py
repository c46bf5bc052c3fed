"""The oracle's cycles: probes placed on the grid, and each server's verdict per cycle.

Owns: the oracle's settings and fault windows; placing every OPTIONS of a capture as
attempt k of cycle n (`place`), the grid check (no burst, no drift), and judging one
server in one cycle (`judge_cell`): its first counting reply, its SPEC §1 verdict and the
attempts the rule implies (attempt k sent iff no counting reply by its due time, on
time). Pure; `phonelab.oracle` explains the reading and drives it.
Must not touch: switches and the decision rule (`oracle_rule`), packets (`oracle_wire`).
"""

from __future__ import annotations

import enum
import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from phonelab.oracle_report import ServerRow
from phonelab.oracle_rule import Verdict
from phonelab.oracle_wire import Probe, Reply


@dataclass(frozen=True)
class OracleSettings:
    """What the phone was configured with, and how strictly to judge it."""

    interval_s: float  #: sip_keep_alive_interval
    failback_cycles: int = 1
    timeouts_s: tuple[float, ...] = (0.8, 0.4, 0.4)  #: SPEC §1: waits after each attempt
    tolerance_s: float = 0.015  #: attempts and cycle starts vs their due time (§9: 10 ms)
    switch_late_s: float = 0.1  #: a switch REGISTER at most this long after its instant
    boundary_s: float = 0.002  #: capture vs kernel clock: "either" side of a boundary
    placement_s: float = 0.1  #: an OPTIONS further than this from any due time: off-schedule
    #: registrations (distinct Call-IDs) per stay on a server; None = not checked
    registrations_per_switch: int | None = 1

    @property
    def offsets_s(self) -> tuple[float, ...]:
        """When each attempt is due from t0: (0, 0.8, 1.2)."""
        return tuple(itertools.accumulate(self.timeouts_s[:-1], initial=0.0))

    @property
    def down_s(self) -> float:
        """No counting reply by t0 + this: down (1.6)."""
        return sum(self.timeouts_s)


class WindowKind(enum.Enum):
    """Why the phone is excused from parts of §1 for a while."""

    #: The phone could not act on the wire (stopped, or its own link down): cycles that
    #: meet it are void unless every reply was in before it; attempts optional, never late.
    STALL = "stall"
    #: Server names did not resolve: a server may go unprobed (down); attempts optional.
    NO_NAME = "no_name"


@dataclass(frozen=True)
class Window:
    """A stretch of capture time (epoch seconds) with a known fault on the phone's side."""

    start: float
    end: float
    kind: WindowKind

    def overlaps(self, start: float, end: float) -> bool:
        """Whether [start, end] meets this window."""
        return start <= self.end and self.start <= end


@dataclass
class Slot:
    """The OPTIONS placed in one cycle: server -> attempt -> probe."""

    number: int
    attempts: dict[str, dict[int, Probe]] = field(default_factory=dict)
    late: bool = False  #: opened by an attempt 1 that fits no due time (a late start)

    def t0(self) -> float | None:
        """The cycle's start: its earliest attempt 1, None when none was sent."""
        firsts = [per[1].ts for per in self.attempts.values() if 1 in per]
        return min(firsts) if firsts else None


def place(probes: Sequence[Probe], settings: OracleSettings) -> tuple[dict[int, Slot], list[Probe]]:
    """Each OPTIONS as attempt k of cycle n; those that fit nowhere (or twice) apart.

    The first OPTIONS is attempt 1 of cycle 0; each next one goes to the (cycle, attempt)
    whose due time is nearest: the cycle's own start when known, else the grid extended
    from the latest on-grid start. One that fits nothing, while the cycle whose slot it
    falls in has no attempt 1 to its server yet, opens that cycle late (`Slot.late`): the
    grid check then says how late, and the grid is not extended from it.
    """
    slots: dict[int, Slot] = {}
    extra: list[Probe] = []
    ref: tuple[int, float] | None = None
    for probe in sorted(probes, key=lambda p: p.ts):
        spot = (0, 1) if ref is None else _nearest(probe.ts, ref, slots, settings)
        late = spot is None and ref is not None
        if spot is None and ref is not None:
            spot = _late_start(probe, ref, slots, settings)
        if spot is None:
            extra.append(probe)
            continue
        slot = slots.setdefault(spot[0], Slot(spot[0]))
        per = slot.attempts.setdefault(probe.server, {})
        if spot[1] in per:
            extra.append(probe)
            continue
        per[spot[1]] = probe
        slot.late = slot.late or late
        start = slot.t0()
        if spot[1] == 1 and start is not None and not slot.late:
            ref = (spot[0], start)
    return slots, extra


def _late_start(
    probe: Probe, ref: tuple[int, float], slots: Mapping[int, Slot], settings: OracleSettings
) -> tuple[int, int] | None:
    """(n, 1) when `probe` falls in cycle n's slot and n has no attempt 1 to its server."""
    ref_n, ref_t = ref
    number = ref_n + int((probe.ts - ref_t) // settings.interval_s)
    slot = slots.get(number)
    if number < 0 or (slot is not None and 1 in slot.attempts.get(probe.server, {})):
        return None
    return number, 1


def _nearest(
    ts: float, ref: tuple[int, float], slots: Mapping[int, Slot], settings: OracleSettings
) -> tuple[int, int] | None:
    ref_n, ref_t = ref
    approx = int(ref_n + (ts - ref_t) // settings.interval_s)
    best: tuple[float, int, int] | None = None
    for n in range(max(0, approx - 2), approx + 2):
        known = slots[n].t0() if n in slots else None
        base = known if known is not None else ref_t + (n - ref_n) * settings.interval_s
        for k, offset in enumerate(settings.offsets_s, start=1):
            error = abs(ts - base - offset)
            if best is None or error < best[0]:
                best = (error, n, k)
    if best is None or best[0] > settings.placement_s:
        return None
    return best[1], best[2]


def grid(slots: Mapping[int, Slot], settings: OracleSettings) -> tuple[float | None, list[str]]:
    """The grid's anchor (cycle 0's start, a median fit) and its problems: starts off the
    grid by more than the tolerance, two starts closer than the interval (a burst)."""
    starts = sorted((n, t0) for n, slot in slots.items() if (t0 := slot.t0()) is not None)
    if not starts:
        return None, []
    interval, tolerance = settings.interval_s, settings.tolerance_s
    anchor = statistics.median(t0 - n * interval for n, t0 in starts)
    problems = []
    for n, t0 in starts:
        drift = t0 - (anchor + n * interval)
        if abs(drift) > tolerance:
            problems.append(f"cycle {n}: starts {drift * 1000:+.0f} ms off the grid")
    for (n1, t1), (n2, t2) in itertools.pairwise(starts):
        if t2 - t1 < interval - tolerance:
            gap_ms = (t2 - t1) * 1000
            problems.append(f"cycles {n1} and {n2}: attempt 1 only {gap_ms:.0f} ms apart")
    return anchor, problems


@dataclass(frozen=True)
class Cell:
    """One server in one cycle, as placed: what `judge_cell` looks at."""

    number: int
    server: str
    probes: Mapping[int, Probe]  #: attempt -> probe
    t0: float  #: the cycle's start (attempt 1, or the grid when nothing was sent)


def first_reply(
    probes: Mapping[int, Probe], replies: Mapping[str | None, Sequence[Reply]]
) -> tuple[float | None, int | None, int]:
    """Arrival and attempt of the first counting reply to `probes`, and the 503s to them.

    Args:
        probes: attempt -> probe, one server in one cycle.
        replies: every reply that reached the phone, by Call-ID.
    """
    best: tuple[float, int] | None = None
    refused = 0
    for attempt, probe in probes.items():
        for reply in replies.get(probe.call_id, ()):
            if not reply.answers(probe):
                continue
            refused += reply.status == 503
            if reply.counts_as_up and (best is None or reply.ts < best[0]):
                best = (reply.ts, attempt)
    return (best[0], best[1], refused) if best else (None, None, refused)


def judge_cell(
    cell: Cell,
    replies: Mapping[str | None, Sequence[Reply]],
    settings: OracleSettings,
    windows: Sequence[Window],
) -> tuple[ServerRow, list[str]]:
    """The row of one server in one cycle, and what the phone did against §1 there."""
    up_at, by, refused = first_reply(cell.probes, replies)
    span = (cell.t0, cell.t0 + settings.down_s)
    stall = next((w for w in windows if w.kind is WindowKind.STALL and w.overlaps(*span)), None)
    no_name = any(w.kind is WindowKind.NO_NAME and w.overlaps(*span) for w in windows)
    problems: list[str] = []
    if stall is not None and (up_at is None or up_at >= stall.start):
        verdict = Verdict.VOID
    else:
        verdict = _verdict(cell.t0 + settings.down_s, up_at, settings.boundary_s)
        if not cell.probes and not no_name:
            problems.append(f"cycle {cell.number}: {cell.server} not probed at all")
    optional = verdict is Verdict.VOID or no_name or not cell.probes
    problems += _attempt_problems(cell, up_at, settings, optional=optional)
    offsets = {k: p.ts - cell.t0 for k, p in sorted(cell.probes.items())}
    reply_s = None if up_at is None else up_at - cell.t0
    return ServerRow(cell.server, offsets, reply_s, by, refused, verdict), problems


def _verdict(deadline: float, up_at: float | None, boundary_s: float) -> Verdict:
    if up_at is None or up_at > deadline + boundary_s:
        return Verdict.DOWN
    return Verdict.UP if up_at < deadline - boundary_s else Verdict.EITHER


def _attempt_problems(
    cell: Cell, up_at: float | None, settings: OracleSettings, *, optional: bool
) -> list[str]:
    """Attempt k goes out iff no counting reply by its due time, within the tolerance.

    `optional`: missing and unneeded attempts are excused (a void cycle, names failing);
    an attempt sent off its due time never is.
    """
    problems = []
    where = f"cycle {cell.number}: {cell.server} attempt"
    for k, offset in enumerate(settings.offsets_s, start=1):
        due = cell.t0 + offset
        probe = cell.probes.get(k)
        if probe is not None and abs(probe.ts - due) > settings.tolerance_s:
            problems.append(f"{where} {k} {(probe.ts - due) * 1000:+.0f} ms off its due time")
        if optional:
            continue
        if k == 1:
            if probe is None:  # attempts 2/3 without 1: the phone skipped the start
                problems.append(f"{where} 1 missing")
            continue
        if probe is None and (up_at is None or up_at > due + settings.boundary_s):
            problems.append(f"{where} {k} missing (no reply by {offset * 1000:.0f} ms)")
        if probe is not None and up_at is not None and up_at < due - settings.boundary_s:
            answered_ms = (up_at - cell.t0) * 1000
            problems.append(f"{where} {k} sent although a reply arrived at +{answered_ms:.0f} ms")
    return problems
