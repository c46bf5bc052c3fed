"""The tables `scripts/sim-fleet` prints: arrivals per second at the backup (issue 12).

Owns: turning simulated runs (`phonelab.fleet_sim`) and a real run (`phonelab.fleet_lab`)
into rows and text. Must not touch: the lab, the simulation's model or any clock.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from phonelab.fleet_lab import RealFleetRun, median_mib
from phonelab.fleet_sim import (
    FleetRun,
    Rates,
    arrival_rates,
    percentile,
    register_rates,
    subscribe_rates,
)

DEADLINE_S = 1.6  # SPEC §1: the primary is judged down 1.6 s after its cycle's start
HEADER = (
    f"{'phones':>7}  {'request':<20} {'expected/s':>10} {'mean/s':>8} {'median/s':>8} "
    f"{'p99/s':>7} {'peak/s':>7} {'total':>8}"
)
LEGEND = (
    "expected/s: N x requests per phone / interval; mean/s: first requests / interval; "
    "median, p99: of the arrivals in the last second, sampled every 10 ms from 2.6 s to "
    "interval + 1.6 s after the kill; peak/s: most in any 1 s window (retries included)"
)


@dataclass(frozen=True)
class Row:
    """One line of the table: who, which request, its rates."""

    phones: int
    request: str
    rates: Rates


def render_row(row: Row) -> str:
    """The row under `HEADER`."""
    r = row.rates
    return (
        f"{row.phones:>7}  {row.request:<20} {r.expected_per_s:>10.1f} {r.mean_per_s:>8.1f} "
        f"{r.median_per_s:>8.0f} {r.p99_per_s:>7.0f} {r.peak_per_s:>7} {r.total:>8}"
    )


def sim_rows(runs: Sequence[FleetRun], label: str = "") -> list[Row]:
    """REGISTER and SUBSCRIBE rows of simulated runs of one parameter set."""
    phones = runs[0].params.phones
    rows = [Row(phones, f"{label}REGISTER", register_rates(runs))]
    if runs[0].params.blf_keys:
        rows.append(Row(phones, f"{label}SUBSCRIBE", subscribe_rates(runs)))
    return rows


def sim_summary(runs: Sequence[FleetRun], seconds_per_run: float) -> str:
    """Where the switches fell, who moved, retries and speed, for one parameter set."""
    params = runs[0].params
    switches = [s for run in runs for s in run.switches]
    moved = min(run.on_backup for run in runs)
    everyone = "all" if moved == params.phones else f"only {moved} of"
    retries = sum(run.retries for run in runs)
    return (
        f"{params.phones:>7}  switches {min(switches):.2f}..{max(switches):.2f} s after the kill "
        f"(budget {params.interval_s + DEADLINE_S:.1f} s); {everyone} {params.phones} on the "
        f"backup in each of {len(runs)} runs; {retries} REGISTER retries; "
        f"{seconds_per_run:.2f} s per run"
    )


def real_rows(run: RealFleetRun) -> list[Row]:
    """REGISTER and SUBSCRIBE rows measured on the wire at the backup."""
    params = run.params
    rows = [
        Row(params.phones, "REGISTER (wire)",
            arrival_rates([(run.registers, len(run.switches))], per_phone=1, phones=params.phones,
                          interval_s=params.interval_s, deadline_s=DEADLINE_S)),
    ]  # fmt: skip
    if params.blf_keys:
        rates = arrival_rates(
            [(run.subscribes, len(run.subscribes))], per_phone=params.blf_keys,
            phones=params.phones, interval_s=params.interval_s, deadline_s=DEADLINE_S,
        )  # fmt: skip
        rows.append(Row(params.phones, "SUBSCRIBE (wire)", rates))
    return rows


def peak_spread(runs: Sequence[FleetRun], kind: str) -> str:
    """ "median M, p95 P, max X" of the per-run peak/s of `kind` (REGISTER or SUBSCRIBE)."""
    pick = register_rates if kind == "REGISTER" else subscribe_rates
    peaks = [pick([run]).peak_per_s for run in runs]
    return f"median {statistics.median(peaks):g}, p95 {percentile(peaks, 0.95):g}, max {max(peaks)}"


def real_summary(run: RealFleetRun) -> list[str]:
    """The real run's facts: set-up time, switch spread, memory, descriptors."""
    params = run.params
    switches = sorted(run.switches.values())
    total_mib = sum(run.rss_kib) / 1024
    return [
        f"all {params.phones} registered, probing and lit on the primary {run.ready_s:.1f} s "
        f"after the first start; primary dropped {run.kill_after_s:.2f} s later",
        f"first REGISTER to the backup {switches[0]:.2f}..{switches[-1]:.2f} s after the drop "
        f"(budget {params.interval_s + DEADLINE_S:.1f} s); {len(run.registers)} REGISTERs, "
        f"{len(run.subscribes)} SUBSCRIBEs (retransmissions not counted); "
        f"tcpdump dropped {run.dropped}",
        f"each phoned: VmRSS median {median_mib(run.rss_kib):.1f} MiB, max "
        f"{max(run.rss_kib) / 1024:.1f} MiB (all {total_mib:.0f} MiB); open fds median "
        f"{statistics.median(run.fds):g}, max {max(run.fds)}",
    ]
