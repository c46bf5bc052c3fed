"""A few real phones at once (`phonelab.fleet_lab`, `scripts/sim-fleet --real`): each moves
to the backup on its own cycle, with one REGISTER and its SUBSCRIBEs, seen on the wire at
the backup."""

from __future__ import annotations

import random
from pathlib import Path

from phonelab.fleet_lab import RealFleetParams, run_real_fleet

PHONES, INTERVAL_S, KEYS = 3, 3, 2


def test_three_phones_each_move_on_their_own_cycle(tmp_path: Path) -> None:
    params = RealFleetParams(PHONES, INTERVAL_S, KEYS)

    run = run_real_fleet(params, tmp_path, random.Random(3))  # noqa: S311 - a test's drop instant

    assert len(run.switches) == PHONES  # one source port (phone) each
    assert len(run.registers) == PHONES  # one REGISTER per switch, no retransmission
    assert len(run.subscribes) == PHONES * KEYS
    # SPEC §1 and §9: 1.6 s after the start of the first cycle after the drop, within
    # interval + 1.9 s of the primary's death (the REGISTER goes out first).
    assert min(run.switches.values()) >= 1.6
    assert max(run.switches.values()) <= INTERVAL_S + 1.9
    assert run.dropped == 0
    assert max(run.rss_kib) < 80 * 1_000_000 / 1024  # SPEC §9: < 80 MB resident
