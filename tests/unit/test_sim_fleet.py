"""The building-of-phones simulation (`phonelab.fleet_sim`, `scripts/sim-fleet`): the real
failover core for many phones on a simulated clock, and the rates it reports."""

from __future__ import annotations

import random

import pytest

from phoned.sip.account import RetryPolicy
from phonelab.fleet_sim import (
    FleetParams,
    percentile,
    pjsua_retry_delay_s,
    register_rates,
    simulate,
    sliding_peak,
    subscribe_rates,
    window_counts,
)

PHONES = 200
INTERVAL_S = 15.0


def seeded(seed: int) -> random.Random:
    """A seeded generator: the simulation is reproducible, nothing here is a secret."""
    return random.Random(seed)  # noqa: S311


def test_random_phases_spread_the_backups_load_and_every_phone_moves() -> None:
    run = simulate(FleetParams(PHONES, INTERVAL_S, blf_keys=2), seeded(7))

    assert run.on_backup == PHONES
    # SPEC §1: each phone moves 1.6 s after the start of its first cycle after the kill.
    assert min(run.switches) >= 1.6
    assert max(run.switches) < INTERVAL_S + 1.6
    assert len(run.registers) == PHONES
    assert len(run.subscribes) == 2 * PHONES
    registers = register_rates([run])
    assert registers.expected_per_s == pytest.approx(PHONES / INTERVAL_S)
    # Spread over the interval: a second sees a few times N / interval at most, never N.
    assert registers.peak_per_s < PHONES / 4
    assert subscribe_rates([run]).peak_per_s < 2 * PHONES / 4


def test_phones_in_lockstep_all_hit_the_backup_in_the_same_second() -> None:
    run = simulate(FleetParams(PHONES, INTERVAL_S, lockstep=True), seeded(7))

    assert run.on_backup == PHONES
    assert register_rates([run]).peak_per_s == PHONES
    assert max(run.switches) - min(run.switches) < 0.01


def test_refused_registers_are_retried_with_the_spread() -> None:
    params = FleetParams(PHONES, INTERVAL_S, register_503=0.5, max_register_attempts=2)

    run = simulate(params, seeded(3))

    assert 0 < run.retries < PHONES  # about half, each phone at most once (2 attempts)
    assert len(run.registers) == PHONES + run.retries
    first_wave = max(run.switches) + params.processing_s
    retries = sorted(at for at in run.registers if at > first_wave)
    assert len(retries) == run.retries
    # 30 +- 10 s after a first REGISTER sent 1.6..16.6 s after the kill: not one second.
    assert retries[0] >= 1.6 + 20
    assert retries[-1] <= INTERVAL_S + 1.6 + 40 + 0.01
    assert retries[-1] - retries[0] > 10


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [(1, 0.0, 20.0), (1, 0.5, 30.0), (1, 0.999, 39.98), (2, 0.0, 50.0), (3, 0.5, 60.0)],
)
def test_pjsua_retry_waits_first_then_later_interval_with_the_random_spread(
    attempt: int, rand: float, delay: float
) -> None:
    policy = RetryPolicy(first_interval_s=30, interval_s=60, random_s=10)

    assert pjsua_retry_delay_s(attempt, policy, lambda: rand) == pytest.approx(delay)


def test_same_seed_same_run() -> None:
    params = FleetParams(50, 5.0, register_503=0.1)

    first, second = simulate(params, seeded(11)), simulate(params, seeded(11))

    assert first.kill_at == second.kill_at
    assert first.registers == second.registers


def test_rate_arithmetic() -> None:
    arrivals = [0.1, 0.5, 0.95, 1.15, 3.0]

    assert sliding_peak(arrivals) == 3  # never 0.1 and 1.15 in one second
    assert sliding_peak([*arrivals, 0.12]) == 4
    assert window_counts(arrivals, 1.0, 1.2, step_s=0.1) == [3, 2, 3]
    assert percentile([5, 1, 3, 2, 4], 0.99) == 5
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
