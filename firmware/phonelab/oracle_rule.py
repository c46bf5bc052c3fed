"""The switches SPEC §1 implies for judged cycles, and how they compare with the wire.

Owns: the failover/failback rule as the oracle applies it (what a cycle's verdicts imply
for the server in use, and at which instant), and matching those implied switches with
the REGISTERs the phone sent (a move to a server that still holds the phone's binding
may send none: it is accepted silently). Pure arithmetic on data
handed in; `phonelab.oracle` drives it cycle by cycle.
Must not touch: packets, captures, the phone. It never imports the product: it is the
SPEC's reading, independent of `phoned.core`.

The rule (SPEC §1, as written):
- On the primary: primary down and backup up in a cycle -> failover once the cycle is
  judged (the primary's 1600 ms deadline). Anything else: stay.
- On the backup: the primary up completes `failback_cycles` consecutive good cycles ->
  failback at the moment that primary reply arrived (not waiting for the backup's
  verdict), but never before the cycles before it were judged (they are judged in order).
  Otherwise, the primary up and the backup down -> back to the primary once the cycle is
  judged. The primary down resets the count.
- A verdict within the capture/kernel clock margin of a boundary is "either": every
  reading is computed, and the phone may follow any of them.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from phonelab.oracle_wire import BACKUP, PRIMARY, Register, Switch


class Verdict(enum.Enum):
    """A server's outcome in one cycle, as the wire shows it."""

    #: A matching final non-503 reply arrived by t0 + 1600 ms.
    UP = "up"
    #: Probed, and no such reply by then (or not probed because its name failed).
    DOWN = "DOWN"
    #: The reply arrived within the clock margin of t0 + 1600 ms: up or down.
    EITHER = "either"
    #: The phone stalled (stopped, or its link was down) during the cycle: not judged.
    VOID = "void"
    #: Not probed (backup disabled).
    OFF = "off"


@dataclass(frozen=True)
class Outcome:
    """A server's verdict in a cycle and the instant it was known (epoch seconds)."""

    verdict: Verdict
    up_at: float | None  #: arrival of the first counting reply (None if none)
    down_at: float  #: t0 + 1600 ms


@dataclass(frozen=True)
class Move:
    """What one reading of a cycle implies."""

    target: str | None  #: server switched to; None = stay
    at: float | None  #: the decisive instant of the switch
    why: str
    good_after: int  #: consecutive good primary cycles counted after it
    service: str  #: "ok" or "no_service" afterwards


def _readings(outcomes: Mapping[str, Outcome]) -> list[dict[str, tuple[bool, float]]]:
    """Every concrete reading: server -> (up, instant known); "either" splits in two."""
    choices: list[list[tuple[str, bool, float]]] = []
    for server, outcome in outcomes.items():
        if outcome.verdict is Verdict.OFF:
            continue
        up_at = outcome.up_at if outcome.up_at is not None else outcome.down_at
        options = []
        if outcome.verdict in {Verdict.UP, Verdict.EITHER}:
            options.append((server, True, up_at))
        if outcome.verdict in {Verdict.DOWN, Verdict.EITHER}:
            options.append((server, False, outcome.down_at))
        choices.append(options)
    return [{server: (up, at) for server, up, at in combo} for combo in itertools.product(*choices)]


def moves(
    active: str,
    good: int,
    outcomes: Mapping[str, Outcome],
    *,
    failback_cycles: int,
    judged_floor: float,
) -> list[Move]:
    """Every move the rule allows for one cycle (one per reading, duplicates removed).

    Args:
        active: the server in use when the cycle was judged.
        good: consecutive good primary cycles counted so far (on the backup).
        outcomes: each probed server's outcome (a VOID cycle is not handed in).
        failback_cycles: SPEC §3 setting.
        judged_floor: when the previous cycle was judged (cycles are judged in order).
    """
    found: list[Move] = []
    for reading in _readings(outcomes):
        move = _move(active, good, reading, failback_cycles, judged_floor)
        if move not in found:
            found.append(move)
    return found


def _move(
    active: str,
    good: int,
    reading: Mapping[str, tuple[bool, float]],
    failback_cycles: int,
    floor: float,
) -> Move:
    primary_up, primary_at = reading.get(PRIMARY, (False, floor))
    backup_up, backup_at = reading.get(BACKUP, (False, floor))
    backup_probed = BACKUP in reading
    judged = max(floor, primary_at, backup_at if backup_probed else floor)
    if active == PRIMARY:
        if not primary_up and backup_up:
            return Move(BACKUP, judged, "failover", 0, "ok")
        return Move(None, None, "stay", 0, "ok" if primary_up else "no_service")
    if primary_up and good + 1 >= failback_cycles:
        return Move(PRIMARY, max(floor, primary_at), "failback", 0, "ok")
    if primary_up and not backup_up:
        why = "backup down" if backup_probed else "backup disabled"
        return Move(PRIMARY, judged, why, 0, "ok")
    count = good + 1 if primary_up else 0
    return Move(None, None, "stay", count, "ok" if backup_up else "no_service")


def judged_at(outcomes: Mapping[str, Outcome], floor: float) -> float:
    """When a cycle is judged at the latest: every verdict known, after the cycle before."""
    instants = [floor]
    for outcome in outcomes.values():
        if outcome.verdict is Verdict.UP and outcome.up_at is not None:
            instants.append(outcome.up_at)
        elif outcome.verdict is not Verdict.OFF:
            instants.append(outcome.down_at)
    return max(instants)


@dataclass(frozen=True)
class Settled:
    """How one cycle's implied moves compare with what the phone did in its window."""

    chosen: Move  #: the reading the phone followed (or the first, when it followed none)
    moved: tuple[Switch, ...]  #: the phone's moves in the window
    problem: str | None  #: None when the phone did what one reading implies


def settle(
    options: Sequence[Move],
    sends: Sequence[Register],
    *,
    active: str,
    alive: Callable[[str, float], bool],
    early_s: float,
    late_s: float,
    origin: float = 0.0,
) -> Settled:
    """Compare the moves one cycle allows with the REGISTERs the phone sent in its window.

    Args:
        options: the moves the rule allows (`moves`).
        sends: first transmissions of binding REGISTERs in the cycle's window.
        active: the server the phone is on when the window opens.
        alive: whether a server holds the phone's binding at an instant: a move there
            needs no REGISTER (the phone may revive it), so a silent move is accepted.
        early_s, late_s: a switch's REGISTER is due within [at - early_s, at + late_s].
        origin: times in the problem text are seconds from it.
    """
    for option in options:
        fitted = _fit(option, sends, active, alive, early_s=early_s, late_s=late_s)
        if fitted is not None:
            return Settled(option, fitted, None)
    foreign = [r for r in sends if r.server != active]
    moved = (Switch(foreign[0].ts, foreign[0].server),) if foreign else ()
    did = ", ".join(f"REGISTER to {r.server} at {r.ts - origin:.3f}" for r in sends) or "nothing"
    wanted = " or ".join(describe(o, origin) for o in options)
    followed = next((o for o in options if moved and o.target == moved[0].server), options[0])
    return Settled(followed, moved, f"expected {wanted}; the phone did {did}")


def _fit(
    option: Move,
    sends: Sequence[Register],
    active: str,
    alive: Callable[[str, float], bool],
    *,
    early_s: float,
    late_s: float,
) -> tuple[Switch, ...] | None:
    """The phone's moves if `sends` follow `option`, else None."""
    if option.target is None or option.at is None:
        return None if any(r.server != active for r in sends) else ()
    to_target = [r for r in sends if r.server == option.target]
    if not to_target:
        if alive(option.target, option.at) and all(r.server == active for r in sends):
            return (Switch(option.at, option.target, silent=True),)
        return None
    first = to_target[0]
    back = [r for r in sends if r.server == active and r.ts > first.ts]
    if back or not option.at - early_s <= first.ts <= option.at + late_s:
        return None
    return (Switch(first.ts, option.target),)


def describe(move: Move, origin: float = 0.0) -> str:
    """A move for a person: "no switch", "failover to backup at 7.601"."""
    if move.target is None or move.at is None:
        return "no switch"
    return f"{move.why} to {move.target} at {move.at - origin:.3f}"
