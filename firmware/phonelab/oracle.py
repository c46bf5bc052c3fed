"""The wire oracle: SPEC §1 verdicts, attempts and switches, judged from a capture (§10).

Owns: `judge()`, which turns a capture of the phone's traffic into one row per cycle and
server (attempts sent, first counting reply, verdict) and a list of discrepancies between
what SPEC §1 implies for the replies that really reached the phone and what the phone put
on the wire: attempts 2 and 3 (only without a reply by 800 / 1200 ms, on time), the
cycle grid (none missing, no burst), and the switches (a REGISTER to the other server
at the decisive instant); and the decision walk over the cycles. Pure: packets in, a
`Report` out. The pieces: `oracle_wire` (packets -> probes, replies, REGISTERs),
`oracle_cycles` (placing probes on the grid, one server's verdict per cycle),
`oracle_rule` (what verdicts imply), `oracle_report` (the result and its table).
Must not touch: the phone, captures, sockets, files. It never imports `phoned`: it is an
independent reading of the SPEC, so a bug in the core cannot hide itself.

How the wire is read (`phoned.probe.udp`): every attempt is a new request (new Call-ID,
CSeq and branch), so cycle numbers are not on the wire. The first OPTIONS is attempt 1 of
cycle 0 (the phone's own cycle 0, so the phone's logged verdicts can be checked by
number); every later OPTIONS is the attempt whose due time (its cycle's attempt 1, or the
grid, plus 0 / 800 / 1200 ms) is nearest (`oracle_cycles.place`).
Times are capture timestamps. A reply within `boundary_s` of 800, 1200 or 1600 ms could
be either side of it by the phone's own clock: every reading is accepted then.
Fault windows on the phone's side (`Window`): during a `STALL` (SIGSTOP, its own link
down) the cycles that meet it are void (no verdict, no switch; attempts optional but never
late) unless all their replies were in before it; during `NO_NAME` (DNS silent) a server
may go unprobed in a cycle and is down then (SPEC §1), attempts optional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from phonelab.oracle_cycles import (
    Cell,
    OracleSettings,
    Slot,
    Window,
    WindowKind,
    grid,
    judge_cell,
    place,
)
from phonelab.oracle_report import CycleRow, Report
from phonelab.oracle_rule import Move, Outcome, Verdict, judged_at, moves, settle
from phonelab.oracle_wire import (
    PRIMARY,
    Probe,
    Register,
    Reply,
    Servers,
    Switch,
    Wire,
    bindings,
    extract,
    first_sends,
    registrations_per_stay,
)
from phonelab.pcap import Packet

__all__ = [
    "OracleSettings", "Report", "Verdict", "Window", "WindowKind", "judge", "logged",
]  # fmt: skip


def logged(records: Iterable[Mapping[str, str]]) -> dict[tuple[int, str], bool]:
    """The phone's own verdicts from its `event=cycle` log records: (cycle, server) -> up."""
    return {
        (int(r["cycle"]), r["server"]): r.get("up") == "true"
        for r in records
        if r.get("event", "cycle") == "cycle" and r.get("cycle", "").isdigit() and "server" in r
    }


def judge(
    packets: Sequence[Packet],
    *,
    phone: str,
    servers: Servers,
    settings: OracleSettings,
    windows: Sequence[Window] = (),
    end: float | None = None,
    phone_verdicts: Mapping[tuple[int, str], bool] | None = None,
) -> Report:
    """Judge a capture of the phone's traffic against SPEC §1 (module docstring).

    Args:
        packets: the capture (the phone's namespace, `udp port 5060`).
        phone: the phone's address.
        servers: "primary" (and "backup" when enabled) -> the address and port probed.
        settings: the phone's interval and failback_cycles, and the tolerances.
        windows: faults on the phone's side (stalls, names not resolving).
        end: when the capture was read (epoch s); cycles not over by then are left out.
        phone_verdicts: the phone's logged verdicts (`logged`), checked against the wire's.
    """
    wire = extract(packets, phone=phone, servers=servers)
    last = end if end is not None else max((p.ts for p in packets), default=0.0)
    judgement = _Judgement(wire, servers, settings, windows, phone_verdicts or {})
    return judgement.run(last)


@dataclass
class _Walk:
    """The decision walk's state: the phone's server, the good primary cycles counted,
    when the last cycle was judged, the service state."""

    active: str = PRIMARY
    good: int = 0
    floor: float = float("-inf")
    service: str = "ok"
    moves: list[Switch] = field(default_factory=list)


class _Judgement:
    """One run of `judge`: placement, rows, the decision walk, the checks."""

    def __init__(
        self,
        wire: Wire,
        servers: Servers,
        settings: OracleSettings,
        windows: Sequence[Window],
        phone_verdicts: Mapping[tuple[int, str], bool],
    ) -> None:
        self.wire, self.servers, self.s, self.windows = wire, servers, settings, windows
        self.phone_verdicts = phone_verdicts
        self.origin = wire.probes[0].ts if wire.probes else 0.0
        self.problems: list[str] = []
        self.by_call_id: dict[str | None, list[Reply]] = {}
        for reply in wire.replies:
            self.by_call_id.setdefault(reply.call_id, []).append(reply)

    def at(self, ts: float) -> str:
        """A capture time for a person: seconds from the first probe."""
        return f"{ts - self.origin:.3f}"

    def run(self, end: float) -> Report:
        slots, off_schedule = place(self.wire.probes, self.s)
        self.problems += [
            f"OPTIONS to {p.server} at {self.at(p.ts)} fits no attempt of any cycle"
            for p in off_schedule
        ]
        anchor, grid_problems = grid(slots, self.s)
        self.problems += grid_problems
        rows = [self.row(n, slots.get(n), anchor) for n in self.numbers(anchor, end)]
        seen = self.decide(rows)
        self.check_registrations(seen)
        late, unmatched = self.reply_counts(slots, off_schedule)
        return Report(self.origin, rows, self.problems, seen, self.wire, late, unmatched)

    def numbers(self, anchor: float | None, end: float) -> list[int]:
        """Every cycle on the grid from 0 that is over (its switch included) by `end`."""
        if anchor is None:
            return []
        horizon = self.s.down_s + self.s.switch_late_s
        count = 0
        while anchor + count * self.s.interval_s + horizon <= end:
            count += 1
        return list(range(count))

    def row(self, number: int, slot: Slot | None, anchor: float | None) -> CycleRow:
        """One cycle's row; its servers judged, their problems and logged verdicts checked."""
        start = slot.t0() if slot is not None else None
        if start is None:
            start = (anchor or self.origin) + number * self.s.interval_s
        cells = {}
        for server in self.servers:
            probes = slot.attempts.get(server, {}) if slot is not None else {}
            cell, problems = judge_cell(
                Cell(number, server, probes, start), self.by_call_id, self.s, self.windows
            )
            self.problems += problems
            said = self.phone_verdicts.get((number, server))
            judged = cell.verdict in {Verdict.UP, Verdict.DOWN}
            if said is not None and judged and said != (cell.verdict is Verdict.UP):
                self.problems.append(
                    f"cycle {number}: the phone logged {server} {'up' if said else 'DOWN'}; "
                    f"the wire: {cell.summary()}"
                )
            cells[server] = cell
        return CycleRow(number, start, cells)

    # -- decisions -----------------------------------------------------------------
    def decide(self, rows: Sequence[CycleRow]) -> list[Switch]:
        """Walk the cycles in order; each owns the REGISTERs sent until the next starts
        (the first also those before it). Returns the phone's moves."""
        walk = _Walk()
        sends = first_sends(self.wire.registers)
        held = bindings(self.wire, self.servers)

        def alive(server: str, at: float) -> bool:
            return any(b.server == server and b.start <= at < b.end for b in held)

        horizon = max(self.s.interval_s, self.s.down_s + self.s.switch_late_s)
        for index, row in enumerate(rows):
            since = row.t0 if index else float("-inf")
            until = rows[index + 1].t0 if index + 1 < len(rows) else row.t0 + horizon
            window = [r for r in sends if since <= r.ts < until]
            self.settle_row(row, window, walk, alive)
        return walk.moves

    def settle_row(
        self,
        row: CycleRow,
        window: Sequence[Register],
        walk: _Walk,
        alive: Callable[[str, float], bool],
    ) -> None:
        """One cycle's implied moves vs the REGISTERs the phone sent in its window."""
        outcomes = {
            name: Outcome(
                cell.verdict,
                None if cell.reply_s is None else row.t0 + cell.reply_s,
                row.t0 + self.s.down_s,
            )
            for name, cell in row.servers.items()
        }
        if any(o.verdict is Verdict.VOID for o in outcomes.values()):
            options = [Move(None, None, "void", walk.good, walk.service)]
        else:
            options = moves(
                walk.active, walk.good, outcomes,
                failback_cycles=self.s.failback_cycles, judged_floor=walk.floor,
            )  # fmt: skip
            walk.floor = judged_at(outcomes, walk.floor)
        settled = settle(
            options, window, active=walk.active, alive=alive, early_s=self.s.boundary_s,
            late_s=self.s.switch_late_s, origin=self.origin,
        )  # fmt: skip
        row.rule = " | ".join(_rule_text(o, row.t0) for o in options)
        row.phone = ", ".join(_move_text(m, row.t0) for m in settled.moved) or "-"
        if settled.problem is not None:
            hint = self.hint(options, window)
            self.problems.append(f"cycle {row.number}: {settled.problem}{hint}")
        walk.good = 0 if settled.moved or settled.problem else settled.chosen.good_after
        walk.moves += settled.moved
        walk.active = settled.moved[-1].server if settled.moved else walk.active
        walk.service = row.service = settled.chosen.service

    def hint(self, options: Sequence[Move], window: Sequence[Register]) -> str:
        """For a switch the phone made no REGISTER for in its cycle: its next one there."""
        for option in options:
            if option.target is None or option.at is None:
                continue
            if any(r.server == option.target for r in window):
                return ""
            at, target = option.at, option.target
            branches = {r.branch for r in self.wire.registers if r.ts <= at}
            later = [r for r in self.wire.registers if r.server == target and r.ts > at]
            later = [r for r in later if not r.unregister]
            if later:
                again = " (a retransmission)" if later[0].branch in branches else ""
                late_ms = (later[0].ts - at) * 1000
                return f" (its next REGISTER to {target}{again}: {late_ms:+.0f} ms)"
        return ""

    # -- other checks --------------------------------------------------------------
    def check_registrations(self, seen: Sequence[Switch]) -> None:
        """SPEC §10: one registration per switch (pjsip's retransmissions keep the Call-ID)."""
        limit = self.s.registrations_per_switch
        if limit is None:
            return
        for begin, server, count in registrations_per_stay(self.wire.registers, seen):
            if count > limit:
                since = "the start" if begin == float("-inf") else self.at(begin)
                self.problems.append(
                    f"{count} registrations (Call-IDs) to {server} in the stay from {since}"
                )

    def reply_counts(
        self, slots: Mapping[int, Slot], off_schedule: Sequence[Probe]
    ) -> tuple[int, int]:
        """(late, unmatched): replies to a probe arriving after its cycle's 1600 ms (an
        off-schedule probe's: after its own 1600 ms), and responses to OPTIONS that answer
        no probe (wrong source, Call-ID, CSeq, branch)."""
        owner: dict[str, tuple[Probe, float]] = {p.call_id: (p, p.ts) for p in off_schedule}
        for slot in slots.values():
            for per in slot.attempts.values():
                for probe in per.values():
                    owner[probe.call_id] = (probe, slot.t0() or probe.ts)
        late = unmatched = 0
        for reply in self.wire.replies:
            if reply.cseq is None or not reply.cseq.endswith("OPTIONS"):
                continue
            found = owner.get(reply.call_id or "")
            if found is None or not reply.answers(found[0]):
                unmatched += 1
            elif reply.ts > found[1] + self.s.down_s:
                late += 1
        return late, unmatched


def _move_text(move: Switch, t0: float) -> str:
    if move.silent:
        return f"{move.server} (binding kept, no REGISTER)"
    return f"{move.server} {move.ts - t0:+.3f}"


def _rule_text(move: Move, t0: float) -> str:
    if move.target is None or move.at is None:
        return move.why
    return f"{move.why} -> {move.target} {move.at - t0:+.3f}"
