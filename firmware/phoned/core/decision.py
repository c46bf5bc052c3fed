"""The SPEC §1 decision table: what a judged cycle does to the server in use.

Owns: how one server did in a judged cycle (`Outcome`), the possible moves (`Move`) and
the table `RULES` from (active server, primary's outcome, backup's outcome) to a move.
Must not touch: any state or IO; `failover` looks moves up here and carries them out.
"""

from __future__ import annotations

import enum

from phoned.core.events import Server


class Outcome(enum.Enum):
    """How one server did in a judged cycle, as the decision table sees it."""

    #: Answered (status >= 200, not 503) within the cycle.
    UP = "up"
    #: Probed, and no valid answer by the end of the cycle.
    DOWN = "down"
    #: Not probed in this cycle, or the backup is disabled now.
    OFF = "off"


class Move(enum.Enum):
    """What a judged cycle does to the active server."""

    #: Keep the active server.
    STAY = "stay"
    #: Use the other server at once.
    SWITCH = "switch"
    #: Count a good primary cycle; fail back once `failback_cycles` are counted.
    COUNT = "count"


_P, _B = Server.PRIMARY, Server.BACKUP
_UP, _DOWN, _OFF = Outcome.UP, Outcome.DOWN, Outcome.OFF

#: SPEC §1 failover and failback, one row per case: (active, primary, backup) -> move.
RULES: dict[tuple[Server, Outcome, Outcome], Move] = {
    (_P, _UP, _UP): Move.STAY,
    (_P, _UP, _DOWN): Move.STAY,
    (_P, _UP, _OFF): Move.STAY,
    (_P, _DOWN, _UP): Move.SWITCH,  # failover at once
    (_P, _DOWN, _DOWN): Move.STAY,  # nowhere to go: NO_SERVICE
    (_P, _DOWN, _OFF): Move.STAY,  # backup disabled: never fail over
    (_B, _UP, _UP): Move.COUNT,  # failback after failback_cycles
    (_B, _UP, _DOWN): Move.SWITCH,  # backup died, primary is back: at once
    (_B, _UP, _OFF): Move.SWITCH,  # backup disabled meanwhile
    (_B, _DOWN, _UP): Move.STAY,
    (_B, _DOWN, _DOWN): Move.STAY,  # NO_SERVICE
    (_B, _DOWN, _OFF): Move.STAY,
}
