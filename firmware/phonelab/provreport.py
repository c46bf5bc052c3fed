"""Results and report of `scripts/bench-provisioning`: the table of issue 11's figures.

Owns: the measured results' types, how each becomes a table row with its target (issue 11:
the SPEC §7 provisioning budgets, judged on the median like SPEC §9's), the progress
lines, and the printed table and JSON. Rows are `benchreport.Metric`s, so the verdicts
and the median/worst arithmetic are bench-failover's. Must not touch: the lab, processes
or captures (the script runs the scenarios; the arithmetic on packets is `provtiming`'s).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from phonelab import benchreport
from phonelab.benchreport import Machine, Metric, Section, at_most, info
from phonelab.provtiming import BootTiming, CheckSyncTiming
from phonelab.timing import summarize


@dataclass(frozen=True)
class BlfUpdate:
    """One Force Update whose file swapped the BLF key (one added, one removed)."""

    added: str
    removed: str
    check_sync: CheckSyncTiming
    subscribe_after_s: float  #: response end -> the added key's first SUBSCRIBE leaving
    unsubscribe_after_s: float  #: response end -> the removed key's un-SUBSCRIBE leaving
    log_after_s: float  #: response end -> the `applied` log line (its time + 1 ms: a bound)


@dataclass(frozen=True)
class MoveUpdate:
    """One Force Update whose file moved `server.address` (and the registration with it)."""

    to_server: str
    check_sync: CheckSyncTiming
    register_after_s: float  #: response end -> the first REGISTER to `to_server` leaving
    log_after_s: float  #: response end -> the `applied` log line (its time + 1 ms: a bound)


@dataclass(frozen=True)
class BootRun:
    """One `phoned run` with the provisioning server up or blackholed."""

    prov_up: bool
    timing: BootTiming
    #: the first cycle's random offset (SPEC §1: start_0 within the first interval), from
    #: the phone's log line `keepalive: first cycle in N ms`
    first_cycle_offset_s: float = 0.0

    @property
    def probing_after_s(self) -> float:
        """Spawn -> the prober started its grid: the first OPTIONS less its random offset."""
        return self.timing.options_after_s - self.first_cycle_offset_s


@dataclass
class ProvResults:
    """Everything measured; a group that did not run stays empty."""

    blf: list[BlfUpdate] = field(default_factory=list)
    moves: list[MoveUpdate] = field(default_factory=list)
    boots: list[BootRun] = field(default_factory=list)


def brief_update(sync: CheckSyncTiming, end_s: float, what: str, log_s: float) -> str:
    """One progress line for a Force Update."""
    return (
        f"200 {1000 * sync.ok_after_s:.2f} ms, SYN {1000 * sync.syn_after_s:.2f} ms after "
        f"the NOTIFY; {what} {1000 * end_s:.2f} ms, log {1000 * log_s:.1f} ms after the response"
    )


def brief_boot(run: BootRun) -> str:
    """One progress line for a boot."""
    t = run.timing
    syn = f"{1000 * t.syn_after_s:.1f} ms" if t.syn_after_s is not None else "none"
    return (
        f"first packet {1000 * t.first_packet_after_s:.1f} ms (SYN {syn}), first REGISTER "
        f"{1000 * t.register_after_s:.1f} ms, first OPTIONS {1000 * t.options_after_s:.1f} ms "
        "after the spawn"
    )


def _ms(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(1000 * v for v in values)


def check_sync_rows(syncs: Sequence[CheckSyncTiming]) -> list[Metric]:
    """NOTIFY -> 200 and NOTIFY -> fetch, from the NOTIFY arriving (issue 11)."""
    return [
        at_most("NOTIFY -> its 200", "ms", _ms([s.ok_after_s for s in syncs]), 10),
        at_most("NOTIFY -> GET sent (SYN)", "ms", _ms([s.syn_after_s for s in syncs]), 20),
        info("NOTIFY -> GET's 1st segment", _ms([s.get_after_s for s in syncs])),
    ]


def blf_rows(runs: Sequence[BlfUpdate]) -> list[Metric]:
    """The BLF-key Force Updates: the fetch, then the apply's first packets and log line."""
    return [
        *check_sync_rows([r.check_sync for r in runs]),
        at_most("response -> SUBSCRIBE added", "ms", _ms([r.subscribe_after_s for r in runs]),
                50),
        info("response -> un-SUBSCRIBE removed", _ms([r.unsubscribe_after_s for r in runs])),
        at_most("response -> log applied (<=)", "ms", _ms([r.log_after_s for r in runs]), 50),
    ]  # fmt: skip


def move_rows(runs: Sequence[MoveUpdate]) -> list[Metric]:
    """The address-change Force Updates: the fetch, then the REGISTER to the new server."""
    return [
        *check_sync_rows([r.check_sync for r in runs]),
        at_most("response -> REGISTER new server", "ms", _ms([r.register_after_s for r in runs]),
                100),
        info("response -> log applied (<=)", _ms([r.log_after_s for r in runs])),
    ]  # fmt: skip


def boot_rows(runs: Sequence[BootRun], *, prov_up: bool) -> list[Metric]:
    """Spawn -> probing starts (the first OPTIONS less SPEC §1's random first-cycle
    offset; issue 11: 1 s with the server up, 5.5 s down), and the steps on the way: the
    boot fetch's SYN, the core's start (first REGISTER), the raw first OPTIONS."""
    timings = [r.timing for r in runs]

    def ms(pick: Callable[[BootTiming], float | None]) -> tuple[float, ...]:
        return tuple(1000 * v for v in map(pick, timings) if v is not None)

    probing = tuple(1000 * r.probing_after_s for r in runs)
    rows = [
        info("run -> boot fetch's SYN", ms(lambda t: t.syn_after_s)),
        info("run -> first REGISTER", ms(lambda t: t.register_after_s)),
        at_most("run -> probing starts", "ms", probing,
                1000 if prov_up else 5500),
        info("run -> first OPTIONS", ms(lambda t: t.options_after_s)),
        info("first cycle's random offset", tuple(1000 * r.first_cycle_offset_s for r in runs)),
        info("first REGISTER -> first OPTIONS", ms(lambda t: t.options_after_s
                                                   - t.register_after_s)),
    ]  # fmt: skip
    if prov_up:
        rows.insert(2, info("boot response -> first REGISTER", ms(_response_to_register)))
    return rows


def _response_to_register(t: BootTiming) -> float | None:
    if t.response_end_after_s is None:
        return None
    return t.register_after_s - t.response_end_after_s


def sections(results: ProvResults) -> list[Section]:
    """The table: one titled section per group that ran."""
    found: list[Section] = []
    if results.blf:
        title = f"Force Update, [blf] keys swapped: {len(results.blf)} runs, from kernel stamps"
        found.append((title, blf_rows(results.blf)))
    if results.moves:
        title = f"Force Update, server.address moved: {len(results.moves)} runs"
        found.append((title, move_rows(results.moves)))
    for prov_up, state in ((True, "up"), (False, "blackholed")):
        runs = [r for r in results.boots if r.prov_up == prov_up]
        if runs:
            title = f"Boot (`phoned run`), provisioning server {state}: {len(runs)} runs"
            found.append((title, boot_rows(runs, prov_up=prov_up)))
    return found


def print_table(table: Sequence[Section]) -> None:
    """The compact human table (bench-failover's layout)."""
    benchreport.print_table(table, bench="bench-provisioning", budget="issue 11", widths=(33, 10))


def print_json(results: ProvResults, table: Sequence[Section]) -> None:
    """Every raw number, for the record."""
    report = {
        "machine": asdict(Machine.here()),
        "blf": [asdict(r) for r in results.blf],
        "moves": [asdict(r) for r in results.moves],
        "boots": [asdict(r) for r in results.boots],
        "metrics": [
            {
                "section": title,
                **asdict(row),
                **asdict(summarize(row.values, row.reference)),
                "verdict": row.verdict(),
            }
            for title, rows in table
            for row in rows
        ],
    }
    print(json.dumps(report, indent=2))
