"""What `scripts/soak` judges and prints: the cycle grid on the wire, memory and descriptors.

Owns: the pure arithmetic of a soak run (issue 12 item 9): each cycle's attempt 1 to the
primary against the ideal grid (on time, late, missed), per-minute resident memory and
open descriptors, the growth rule, and the report's text. Must not touch: the lab,
processes or captures (`phonelab.soak` runs those).

Rules:
1. Grid. The first OPTIONS to the primary is cycle 0's attempt 1 (the capture starts before
   the phone). Cycle n's attempt 1 is due at anchor + n * interval; the anchor is moved by
   the median offset of the first minute's attempts, so one early or late first packet
   does not tilt the whole run. A packet within `TOLERANCE_S` of a grid point is that
   cycle's attempt 1 (attempts 2 and 3 go out 800 and 1200 ms after it: 200 ms away from
   any grid point at 1 s, more at longer intervals); no such packet: the cycle is missed.
   Late: more than `LATE_S` (10 ms, SPEC §9) off its grid point.
2. Growth. The median of the last window (10 minutes, or half a shorter run) against the
   first's: resident memory more than 10 % higher, or more than 5 more open descriptors,
   is growth; so is any missed cycle. Samples start once the phone is registered.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

TOLERANCE_S = 0.1
LATE_S = 0.010
ANCHOR_CYCLES = 60  #: the first minute at 1 s: what the anchor is fitted on
WINDOW_S = 600.0  #: the first and last 10 minutes
RSS_GROWTH = 0.10  #: last window's median RSS above the first's by more: growth
FD_GROWTH = 5  #: last window's median fds above the first's by more: growth


@dataclass(frozen=True)
class GridReport:
    """Each cycle's attempt 1 to the primary against the grid (rule 1)."""

    cycles: int  #: grid points from cycle 0 to the end of the run
    offsets_s: dict[int, float]  #: cycle -> its attempt 1's offset from the grid point
    missed: tuple[int, ...]  #: cycles with no attempt 1 near their grid point

    @property
    def late(self) -> list[int]:
        """Cycles whose attempt 1 was more than `LATE_S` off."""
        return sorted(n for n, off in self.offsets_s.items() if abs(off) > LATE_S)

    @property
    def worst_s(self) -> float:
        """The offset furthest from the grid (0 with no cycle)."""
        return max(self.offsets_s.values(), key=abs, default=0.0)

    def drift_ms_per_100(self) -> float:
        """Least-squares slope of offset against cycle number, ms per 100 cycles."""
        points = sorted(self.offsets_s.items())
        if len(points) < 2:
            return 0.0
        mean_n = statistics.fmean(n for n, _ in points)
        mean_o = statistics.fmean(o for _, o in points)
        spread = sum((n - mean_n) ** 2 for n, _ in points)
        slope = sum((n - mean_n) * (o - mean_o) for n, o in points) / spread
        return slope * 100 * 1000


def _nearest(times: Sequence[float], anchor: float, interval_s: float) -> dict[int, float]:
    """cycle -> offset of the packet nearest its grid point, within `TOLERANCE_S`."""
    best: dict[int, float] = {}
    for at in times:
        n = round((at - anchor) / interval_s)
        offset = at - anchor - n * interval_s
        if n >= 0 and abs(offset) <= TOLERANCE_S and (n not in best or abs(offset) < abs(best[n])):
            best[n] = offset
    return best


def judge_grid(times: Sequence[float], interval_s: float, end: float) -> GridReport:
    """Judge the OPTIONS sent to the primary (capture times, sorted) up to `end` (rule 1).

    Raises:
        ValueError: no OPTIONS at all.
    """
    if not times:
        raise ValueError("no OPTIONS to the primary in the capture")
    first = _nearest(times, times[0], interval_s)
    early = [off for n, off in first.items() if n < ANCHOR_CYCLES]
    anchor = times[0] + statistics.median(early)
    offsets = _nearest(times, anchor, interval_s)
    last = math.floor((end - TOLERANCE_S - anchor) / interval_s)
    offsets = {n: off for n, off in offsets.items() if n <= last}
    missed = tuple(n for n in range(last + 1) if n not in offsets)
    return GridReport(cycles=last + 1, offsets_s=offsets, missed=missed)


@dataclass(frozen=True)
class Sample:
    """The service's footprint at one instant."""

    at_s: float  #: since the phone was started
    rss_kib: int
    fds: int


@dataclass(frozen=True)
class MinuteRow:
    """A minute's samples, summarised."""

    minute: int  #: 0 = the first minute of the run
    rss_median_kib: float
    rss_max_kib: int
    fds_median: float
    fds_max: int


def minute_rows(samples: Sequence[Sample]) -> list[MinuteRow]:
    """One row per minute that has samples, in order."""
    by_minute: dict[int, list[Sample]] = {}
    for sample in samples:
        by_minute.setdefault(int(sample.at_s // 60), []).append(sample)
    return [
        MinuteRow(
            minute,
            statistics.median(s.rss_kib for s in group),
            max(s.rss_kib for s in group),
            statistics.median(s.fds for s in group),
            max(s.fds for s in group),
        )
        for minute, group in sorted(by_minute.items())
    ]


@dataclass(frozen=True)
class Growth:
    """First and last windows' medians and the verdict (rule 2)."""

    window_s: float
    rss_first_kib: float
    rss_last_kib: float
    fds_first: float
    fds_last: float

    @property
    def rss_grew(self) -> bool:
        """Resident memory grew by more than `RSS_GROWTH`."""
        return self.rss_last_kib > self.rss_first_kib * (1 + RSS_GROWTH)

    @property
    def fds_grew(self) -> bool:
        """Open descriptors grew by more than `FD_GROWTH`."""
        return self.fds_last > self.fds_first + FD_GROWTH


def growth(samples: Sequence[Sample]) -> Growth:
    """Compare the first and last windows of the samples (rule 2).

    Raises:
        ValueError: fewer than two samples.
    """
    if len(samples) < 2:
        raise ValueError("growth: fewer than two samples")
    start, end = samples[0].at_s, samples[-1].at_s
    window = min(WINDOW_S, (end - start) / 2)
    first = [s for s in samples if s.at_s <= start + window] or [samples[0]]
    last = [s for s in samples if s.at_s >= end - window] or [samples[-1]]
    return Growth(
        window,
        statistics.median(s.rss_kib for s in first),
        statistics.median(s.rss_kib for s in last),
        statistics.median(s.fds for s in first),
        statistics.median(s.fds for s in last),
    )


def minute_table(rows: Sequence[MinuteRow], edge: int = 10) -> list[str]:
    """The first and last `edge` minutes (all of them for a short run), as text lines."""
    shown = list(rows) if len(rows) <= 2 * edge else [*rows[:edge], *rows[-edge:]]
    lines = [
        f"{'minute':>6} {'RSS median MiB':>15} {'RSS max MiB':>12} {'fds median':>11} "
        f"{'fds max':>8}"
    ]
    for index, row in enumerate(shown):
        if index == edge and len(rows) > 2 * edge:
            lines.append(f"{'...':>6}")
        lines.append(
            f"{row.minute + 1:>6} {row.rss_median_kib / 1024:>15.2f} "
            f"{row.rss_max_kib / 1024:>12.2f} {row.fds_median:>11g} {row.fds_max:>8}"
        )
    return lines


def grid_lines(grid: GridReport, interval_s: float) -> list[str]:
    """The cycle verdicts as text lines."""
    offsets_ms = sorted(abs(off) * 1000 for off in grid.offsets_s.values())
    late = grid.late
    lines = [
        f"cycles: {grid.cycles} on the {interval_s:g} s grid; attempt 1 to the primary seen for "
        f"{len(grid.offsets_s)}; late (> {LATE_S * 1000:g} ms off): {len(late)}; missed: "
        f"{len(grid.missed)}",
    ]
    if offsets_ms:
        p99 = offsets_ms[max(0, math.ceil(0.99 * len(offsets_ms)) - 1)]
        lines.append(
            f"attempt 1 vs grid: median {statistics.median(offsets_ms):.2f} ms, p99 {p99:.2f} "
            f"ms, worst {grid.worst_s * 1000:+.2f} ms; drift {grid.drift_ms_per_100():+.3f} ms "
            f"per 100 cycles"
        )
    if late:
        shown = ", ".join(f"{n} ({grid.offsets_s[n] * 1000:+.1f} ms)" for n in late[:10])
        lines.append(f"late cycles: {shown}{' ...' if len(late) > 10 else ''}")
    if grid.missed:
        lines.append(f"missed cycles: {', '.join(map(str, grid.missed[:20]))}")
    return lines


def growth_lines(result: Growth) -> list[str]:
    """The growth verdict as text lines."""
    minutes = result.window_s / 60
    return [
        f"RSS median: first {minutes:.1f} min {result.rss_first_kib / 1024:.2f} MiB, last "
        f"{minutes:.1f} min {result.rss_last_kib / 1024:.2f} MiB "
        f"({'GREW' if result.rss_grew else 'ok'}: limit +{RSS_GROWTH:.0%})",
        f"open fds median: first {result.fds_first:g}, last {result.fds_last:g} "
        f"({'GREW' if result.fds_grew else 'ok'}: limit +{FD_GROWTH})",
    ]
