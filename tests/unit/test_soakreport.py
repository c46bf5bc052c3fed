"""The soak's judging (`phonelab.soakreport`, `scripts/soak`): cycles against the grid on
the wire, and the growth rule for memory and descriptors."""

from __future__ import annotations

import pytest

from phonelab.soakreport import (
    Sample,
    growth,
    judge_grid,
    minute_rows,
    minute_table,
)

T0 = 1_700_000_000.0  # capture times are CLOCK_REALTIME


def options_times(cycles: int, *, skip: int, late: dict[int, float]) -> list[float]:
    """Attempt 1 of every cycle but `skip` (offset by `late`), and attempts 2 and 3 of
    the cycle before the skipped one, as a primary that stopped answering would draw."""
    times = [T0 + n + late.get(n, 0.0) for n in range(cycles) if n != skip]
    times += [T0 + skip - 1 + 0.8, T0 + skip - 1 + 1.2]
    return sorted(times)


def test_each_cycle_is_on_time_late_or_missed() -> None:
    times = options_times(12, skip=5, late={3: 0.012, 7: -0.004})

    grid = judge_grid(times, 1.0, end=T0 + 11.5)

    assert grid.cycles == 12
    assert grid.missed == (5,)  # attempt 3 of cycle 4 (at 5.2) is no attempt 1 of cycle 5
    assert grid.late == [3]  # 12 ms off; 4 ms is on time
    assert grid.worst_s == pytest.approx(0.012, abs=1e-6)  # epoch floats: ~0.2 us


def test_the_grid_runs_to_the_end_of_the_run() -> None:
    times = [T0 + n for n in range(5)]

    grid = judge_grid(times, 1.0, end=T0 + 7.5)

    assert grid.missed == (5, 6, 7)  # the phone went quiet before the run ended


def test_a_constant_offset_is_not_lateness_but_drift_is_measured() -> None:
    times = [T0 + 0.3 + n * 2.0 + n * 0.0001 for n in range(100)]  # +0.1 ms per cycle

    grid = judge_grid(times, 2.0, end=times[-1] + 0.5)

    assert grid.missed == ()
    assert grid.drift_ms_per_100() == pytest.approx(10.0, rel=0.01)


def test_no_options_is_an_error() -> None:
    with pytest.raises(ValueError, match="no OPTIONS"):
        judge_grid([], 1.0, end=T0)


def samples(rss: list[int], fds: list[int], every_s: float = 10.0) -> list[Sample]:
    return [Sample(k * every_s, r, f) for k, (r, f) in enumerate(zip(rss, fds, strict=True))]


def test_steady_memory_and_descriptors_do_not_count_as_growth() -> None:
    result = growth(samples([50_000, 52_000, 51_000, 52_500, 53_000, 52_000], [14] * 6))

    assert not result.rss_grew
    assert not result.fds_grew


def test_memory_up_more_than_ten_percent_is_growth() -> None:
    result = growth(samples([50_000, 50_000, 50_000, 56_000, 56_000, 56_000], [14] * 6))

    assert result.rss_grew
    assert not result.fds_grew


def test_more_than_five_extra_descriptors_is_growth() -> None:
    result = growth(samples([50_000] * 6, [14, 14, 14, 20, 20, 20]))

    assert result.fds_grew
    assert not growth(samples([50_000] * 6, [14, 14, 14, 19, 19, 19])).fds_grew


def test_long_runs_show_the_first_and_last_ten_minutes() -> None:
    rows = minute_rows(samples([50_000 + k for k in range(150)], [14] * 150))  # 25 minutes

    lines = minute_table(rows)

    assert len(rows) == 25
    assert [line.split()[0] for line in lines[1:]] == [
        *map(str, range(1, 11)), "...", *map(str, range(16, 26)),
    ]  # fmt: skip
