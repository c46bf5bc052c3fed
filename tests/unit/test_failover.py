"""Time-travel tests of the failover core (SPEC §1): jump to `next_deadline()`, never sleep."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, cast

import pytest

from fakes import FakeClock
from phoned.core.events import (
    Action,
    CycleJudged,
    CycleVoided,
    Event,
    ProbeAnswered,
    ProbeFailed,
    RegistrationFailed,
    SendProbe,
    Server,
    Service,
    ServiceChanged,
    SettingsChanged,
    UseServer,
    Verdict,
)
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicyError, PolicySettings

P, B = Server.PRIMARY, Server.BACKUP
START_S = 1000.0  # the fake clock's reading at boot
DELAY_S = 2.0  # first_cycle_delay_s: cycle n starts at 1002 + n * interval
T0 = START_S + DELAY_S
WITH_BACKUP = PolicySettings(backup_enabled=True)

Timeline = list[tuple[float, Action]]


def drive(policy: FailoverPolicy, clock: FakeClock, until: float) -> Timeline:
    """Fire every deadline up to `until` in order; return what happened, when."""
    timeline: Timeline = []
    while (deadline := policy.next_deadline()) is not None and deadline <= until:
        clock.set(max(deadline, clock.now()))
        timeline += [(clock.now(), action) for action in policy.on_deadline(clock.now())]
    clock.set(max(until, clock.now()))
    return timeline


class Phone:
    """A policy, its fake clock and everything it did, as one timeline."""

    def __init__(self, settings: PolicySettings = WITH_BACKUP, delay_s: float = DELAY_S) -> None:
        self.clock = FakeClock(START_S)
        self.interval_s = settings.interval_s
        self.policy = FailoverPolicy(settings, self.clock.now(), delay_s)
        self.timeline: Timeline = [(START_S, a) for a in self.policy.start(self.clock.now())]

    def until(self, when: float) -> Timeline:
        """Drive to `when`; return (and record) what happened."""
        timeline = drive(self.policy, self.clock, when)
        self.timeline += timeline
        return timeline

    def feed(self, event: Event, at: float) -> Timeline:
        """Drive to `at`, then hand `event` to the core at that time."""
        timeline = self.until(at)
        handled = [(at, a) for a in self.policy.handle(event, at)]
        self.timeline += handled
        return timeline + handled

    def answer(
        self, server: Server, cycle: int, attempt: int, at: float, status: int = 200
    ) -> Timeline:
        """`server` answers `attempt` of `cycle` at `at` (rtt from that attempt's send)."""
        sent_at = self.cycle_start(cycle) + (0.0, 0.8, 1.2)[attempt - 1]
        rtt_ms = round((at - sent_at) * 1000, 3)
        return self.feed(ProbeAnswered(server, cycle, attempt, status, rtt_ms), at)

    def cycle_start(self, cycle: int) -> float:
        return T0 + cycle * self.interval_s

    def run_cycle(self, cycle: int, primary: float | None, backup: float | None) -> Timeline:
        """Cycle `cycle`, each server answering at that offset from t0 (None: silent)."""
        t0 = self.cycle_start(cycle)
        before = len(self.timeline)
        offsets = ((P, primary), (B, backup))
        answers = sorted((offset, server.value) for server, offset in offsets if offset is not None)
        for offset, name in answers:
            attempt = 1 if offset < 0.8 else 2 if offset < 1.2 else 3
            self.answer(Server(name), cycle, attempt, t0 + offset)
        self.until(t0 + 1.7)
        return self.timeline[before:]


def actions(timeline: Timeline, kind: type[Action] | None = None) -> list[Action]:
    return [a for _, a in timeline if kind is None or isinstance(a, kind)]


def first_probe_times(timeline: Timeline) -> list[float]:
    """When each cycle started: its attempt 1 to the primary."""
    return [t for t, a in timeline if isinstance(a, SendProbe) and a.server is P and a.attempt == 1]


def relative(timeline: Timeline, t0: float) -> list[tuple[float, Action]]:
    return [(round(t - t0, 6), a) for t, a in timeline]


def verdict_of(timeline: Timeline, server: Server) -> Verdict:
    judged = [cast(CycleJudged, a) for a in actions(timeline, CycleJudged)]
    [verdict] = [v for j in judged for v in j.verdicts if v.server is server]
    return verdict


# --------------------------------------------------------------------------- start, grid


def test_start_uses_primary_and_schedules_first_cycle_after_delay() -> None:
    phone = Phone(delay_s=3.25)
    assert actions(phone.timeline) == [UseServer(P, "start")]
    assert phone.policy.next_deadline() == START_S + 3.25
    assert (phone.policy.active, phone.policy.service, phone.policy.cycle) == (
        P,
        Service.STARTING,
        -1,
    )


def test_the_first_cycle_counts_its_random_offset_from_start_not_from_construction() -> None:
    """SPEC §1: start_0 within the first interval after start-up. The shell builds the
    core, then starts pjsua2 (a few hundred ms), then starts the core."""
    clock = FakeClock(START_S)
    policy = FailoverPolicy(WITH_BACKUP, clock.now(), 0.5)
    clock.advance(0.3)
    policy.start(clock.now())
    assert policy.next_deadline() == START_S + 0.3 + 0.5
    timeline = drive(policy, clock, START_S + 0.3 + 0.5 + 3 * WITH_BACKUP.interval_s)
    starts = sorted({t for t, a in timeline if isinstance(a, SendProbe) and a.attempt == 1})
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [WITH_BACKUP.interval_s] * len(gaps)  # no short first gap


def test_cycle_start_probes_primary_and_backup_at_the_same_instant() -> None:
    phone = Phone()
    assert phone.until(T0) == [(T0, SendProbe(P, 0, 1)), (T0, SendProbe(B, 0, 1))]
    assert phone.policy.cycle == 0


def test_cycle_starts_on_the_grid_whatever_the_previous_cycle_did() -> None:
    phone = Phone(replace(WITH_BACKUP, interval_s=2.3))
    assert first_probe_times(phone.until(T0 + 5 * 2.3)) == [T0 + n * 2.3 for n in range(6)]


def test_grid_does_not_drift_over_10000_cycles() -> None:
    interval_s = 1.1  # not exact in binary: repeated addition would drift
    phone = Phone(PolicySettings(interval_s=interval_s, attempt_timeouts_s=(0.3,)))
    starts = [t for t, a in phone.until(T0 + 10_000 * interval_s) if isinstance(a, SendProbe)]
    assert len(starts) == 10_001
    assert all(t == T0 + n * interval_s for n, t in enumerate(starts))
    accumulated = T0
    for _ in range(10_000):
        accumulated += interval_s
    assert accumulated != starts[-1]  # the naive way would have failed this test


def test_late_deadline_skips_whole_missed_cycles_without_burst() -> None:
    phone = Phone(PolicySettings(interval_s=10.0))
    late = T0 + 3 * 10.0 + 4.0  # cycles 0..3 missed entirely
    phone.clock.set(late)
    assert phone.policy.on_deadline(late) == []
    assert phone.policy.next_deadline() == T0 + 4 * 10.0
    assert phone.until(T0 + 40.0) == [(T0 + 40.0, SendProbe(P, 4, 1))]


def test_a_stall_inside_a_cycle_voids_it_instead_of_sending_its_attempts_in_a_burst() -> None:
    """SPEC §10: SIGSTOP 15 s between attempt 1 and its 800 ms deadline. On resume the
    core neither sends attempts 2 and 3 together nor judges the primary down."""
    phone = failed_over(replace(WITH_BACKUP, interval_s=10.0))
    t1 = phone.cycle_start(1)
    phone.until(t1)  # attempt 1 of cycle 1 to both
    resumed = t1 + 15.0
    phone.clock.set(resumed)
    [void] = phone.policy.on_deadline(resumed)
    assert isinstance(void, CycleVoided)
    assert void.cycle == 1
    assert void.stalled_s == pytest.approx(14.2)
    snapshot = phone.policy.snapshot()
    assert (snapshot.voided_cycles, snapshot.pending_cycles, phone.policy.active) == (1, (), B)
    nxt = phone.until(phone.cycle_start(3))  # cycle 2's start was missed: skipped
    assert actions(nxt, SendProbe) == [SendProbe(P, 3, 1), SendProbe(B, 3, 1)]


def test_a_reply_that_arrived_before_the_stall_ended_still_counts() -> None:
    """The shell hands the kernel's arrival time as `now`: an answer read after a stall
    is judged at the instant it arrived, before the passed deadlines run."""
    phone = Phone(PolicySettings(interval_s=10.0))
    phone.until(T0)
    judged = phone.policy.handle(ProbeAnswered(P, 0, 1, 200, 5.0), T0 + 0.005)
    assert [a for a in judged if isinstance(a, CycleJudged)] != []
    assert phone.policy.on_deadline(T0 + 15.0) == []  # cycle 1 missed: skipped, no void
    assert phone.policy.snapshot().voided_cycles == 0


def test_an_attempt_a_little_late_is_still_sent_not_voided() -> None:
    phone = Phone(PolicySettings(interval_s=10.0))
    phone.until(T0)
    phone.clock.set(T0 + 1.15)  # attempt 2 due at 0.8, its wait ends at 1.2
    assert phone.policy.on_deadline(T0 + 1.15) == [SendProbe(P, 0, 2)]


def test_a_stall_during_the_last_wait_judges_by_the_replies_that_arrived() -> None:
    phone = Phone(PolicySettings(interval_s=10.0))
    phone.until(T0 + 1.2)  # attempts 1..3 sent, no reply
    phone.clock.set(T0 + 5.0)
    [judged, _service] = phone.policy.on_deadline(T0 + 5.0)
    assert judged == CycleJudged(0, (Verdict(P, False, 3, None, None, "missed 3 probes"),))


def test_late_deadline_landing_on_a_grid_point_starts_that_cycle_at_once() -> None:
    phone = Phone(PolicySettings(interval_s=10.0))
    phone.clock.set(T0 + 20.0)
    assert phone.policy.on_deadline(T0 + 20.0) == [SendProbe(P, 2, 1)]
    assert phone.policy.cycle == 2


def test_a_start_more_than_100_ms_late_is_skipped_to_keep_the_grid() -> None:
    """SPEC §10: a stall resumes on the grid; a cycle is never started off it (issue 12:
    SIGSTOP for 1.25 intervals started the missed cycle 500 ms late)."""
    phone = Phone(PolicySettings(interval_s=2.0))
    phone.clock.set(T0 + 0.5)
    assert phone.policy.on_deadline(T0 + 0.5) == []
    assert phone.policy.next_deadline() == T0 + 2.0
    phone.clock.set(T0 + 2.1)  # 100 ms late: still this cycle
    assert phone.policy.on_deadline(T0 + 2.1) == [SendProbe(P, 1, 1)]


def test_slightly_late_deadline_still_starts_that_cycle() -> None:
    phone = Phone(PolicySettings(interval_s=10.0))
    phone.clock.set(T0 + 0.003)
    assert phone.policy.on_deadline(T0 + 0.003) == [SendProbe(P, 0, 1)]
    assert phone.policy.next_deadline() == pytest.approx(T0 + 0.803)  # attempts count from t0
    assert phone.policy.snapshot().next_cycle_at == T0 + 10.0  # the grid is not moved


# --------------------------------------------------------------------------- one server


def test_answer_at_799_ms_means_one_probe_only() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 1, T0 + 0.799)
    timeline = phone.until(T0 + 14.9)
    assert actions(phone.timeline, SendProbe) == [SendProbe(P, 0, 1)]
    assert actions(timeline) == []  # judged at 799 ms, nothing more this cycle
    verdict = verdict_of(phone.timeline, P)
    assert (verdict.up, verdict.attempts, verdict.rtt_ms) == (True, 1, 799.0)
    assert verdict.reason == "answered in 799 ms"


def test_answer_at_850_ms_means_second_probe_no_third() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 2, T0 + 0.85)
    phone.until(T0 + 14.9)
    assert relative(phone.timeline, T0)[1:3] == [
        (0.0, SendProbe(P, 0, 1)),
        (0.8, SendProbe(P, 0, 2)),
    ]
    assert actions(phone.timeline, SendProbe) == [SendProbe(P, 0, 1), SendProbe(P, 0, 2)]
    verdict = verdict_of(phone.timeline, P)
    assert (verdict.up, verdict.attempts, verdict.reason) == (
        True,
        2,
        "answered in 50 ms (probe 2)",
    )


def test_late_answer_to_attempt_1_after_attempt_2_was_sent_counts() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 1, T0 + 1.1)
    phone.until(T0 + 14.9)
    verdict = verdict_of(phone.timeline, P)
    assert (verdict.up, verdict.attempts, verdict.rtt_ms) == (True, 2, 1100.0)
    assert len(actions(phone.timeline, SendProbe)) == 2


def test_silent_server_gets_three_probes_then_is_down_at_1600_ms() -> None:
    phone = Phone(PolicySettings())
    timeline = relative(phone.until(T0 + 14.9), T0)
    assert timeline == [
        (0.0, SendProbe(P, 0, 1)),
        (0.8, SendProbe(P, 0, 2)),
        (1.2, SendProbe(P, 0, 3)),
        (1.6, CycleJudged(0, (Verdict(P, False, 3, None, None, "missed 3 probes"),))),
        (1.6, ServiceChanged(Service.NO_SERVICE, "primary missed 3 probes, backup disabled")),
    ]


def test_attempt_offsets_come_from_the_settings() -> None:
    phone = Phone(PolicySettings(attempt_timeouts_s=(0.5, 0.25, 0.25, 1.0)))
    timeline = relative(phone.until(T0 + 14.9), T0)
    assert [t for t, a in timeline if isinstance(a, SendProbe)] == [0.0, 0.5, 0.75, 1.0]
    assert [t for t, a in timeline if isinstance(a, CycleJudged)] == [2.0]


def test_503_on_all_three_attempts_is_down() -> None:
    phone = Phone(PolicySettings())
    for attempt, offset in ((1, 0.01), (2, 0.81), (3, 1.21)):
        phone.answer(P, 0, attempt, T0 + offset, status=503)
        assert isinstance(phone.timeline[-1][1], SendProbe)  # the 503 itself decided nothing
    phone.until(T0 + 1.6)
    verdict = verdict_of(phone.timeline, P)
    assert (verdict.up, verdict.attempts, verdict.status_code) == (False, 3, 503)
    assert verdict.reason == "answered 503 x3"


def test_503_then_200_on_a_later_attempt_is_up() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 1, T0 + 0.01, status=503)
    phone.answer(P, 0, 2, T0 + 0.82)
    phone.until(T0 + 14.9)
    verdict = verdict_of(phone.timeline, P)
    assert (verdict.up, verdict.status_code, verdict.attempts) == (True, 200, 2)


def test_provisional_1xx_is_ignored() -> None:
    phone = Phone(PolicySettings())
    assert phone.answer(P, 0, 1, T0 + 0.01, status=100) == [(T0, SendProbe(P, 0, 1))]
    phone.until(T0 + 1.6)
    assert not verdict_of(phone.timeline, P).up
    assert phone.policy.snapshot().ignored_answers == 0


def test_probe_failed_is_a_miss_and_the_schedule_is_unchanged() -> None:
    phone = Phone(PolicySettings())
    for attempt, offset in ((1, 0.0001), (2, 0.8001), (3, 1.2001)):
        phone.feed(ProbeFailed(P, 0, attempt, "port unreachable"), T0 + offset)
    sends = [(t, a) for t, a in relative(phone.timeline, T0) if isinstance(a, SendProbe)]
    assert [t for t, _ in sends] == [0.0, 0.8, 1.2]
    phone.until(T0 + 1.6)
    assert verdict_of(phone.timeline, P).reason == "port unreachable x3"


def test_mixed_misses_are_all_in_the_reason() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 1, T0 + 0.01, status=503)
    phone.feed(ProbeFailed(P, 0, 2, "port unreachable"), T0 + 0.8001)
    phone.until(T0 + 1.6)
    verdict = verdict_of(phone.timeline, P)
    assert verdict.reason == "missed 3 probes (answered 503 x1, port unreachable x1, no reply x1)"
    assert verdict.status_code == 503


def test_answers_for_judged_or_decided_probes_are_ignored_and_counted() -> None:
    phone = Phone(PolicySettings())
    phone.answer(P, 0, 1, T0 + 0.01)
    assert phone.answer(P, 0, 1, T0 + 0.02) == []  # duplicate: already up
    phone.until(T0 + 15.0)
    assert phone.answer(P, 0, 1, T0 + 15.01) == []  # cycle 0 is judged
    assert phone.policy.snapshot().ignored_answers == 2


def test_handle_runs_passed_deadlines_first_so_a_late_answer_is_late() -> None:
    phone = Phone(PolicySettings())
    phone.until(T0 + 1.5)
    timeline = phone.policy.handle(ProbeAnswered(P, 0, 3, 200, 450.0), T0 + 1.65)
    assert [type(a) for a in timeline] == [CycleJudged, ServiceChanged]
    assert not verdict_of([(0.0, a) for a in timeline], P).up
    assert phone.policy.snapshot().ignored_answers == 1


# --------------------------------------------------------------------------- decisions


def test_canonical_blackhole_primary_silent_backup_answers() -> None:
    phone = Phone()
    phone.answer(B, 0, 1, T0 + 0.004)
    phone.until(T0 + 14.9)
    reason = "primary missed 3 probes, backup answered in 4 ms"
    assert relative(phone.timeline, T0) == [
        (-DELAY_S, UseServer(P, "start")),
        (0.0, SendProbe(P, 0, 1)),
        (0.0, SendProbe(B, 0, 1)),
        (0.8, SendProbe(P, 0, 2)),
        (1.2, SendProbe(P, 0, 3)),
        (
            1.6,
            CycleJudged(
                0,
                (
                    Verdict(P, False, 3, None, None, "missed 3 probes"),
                    Verdict(B, True, 1, 4.0, 200, "answered in 4 ms"),
                ),
            ),
        ),
        (1.6, UseServer(B, reason)),
        (1.6, ServiceChanged(Service.OK, reason)),
    ]
    assert phone.policy.active is B


def test_first_cycle_with_active_up_turns_service_ok_once() -> None:
    phone = Phone()
    timeline = phone.run_cycle(0, primary=0.003, backup=0.004)
    assert actions(timeline, ServiceChanged) == [
        ServiceChanged(Service.OK, "primary answered in 3 ms, backup answered in 4 ms")
    ]
    assert [t for t, a in timeline if isinstance(a, CycleJudged)] == [T0 + 0.004]
    assert actions(phone.run_cycle(1, primary=0.003, backup=0.004), ServiceChanged) == []


def test_backup_down_too_means_no_failover_and_no_service_once() -> None:
    phone = Phone()
    timeline = phone.run_cycle(0, primary=None, backup=None)
    assert actions(timeline, UseServer) == []
    assert actions(timeline, ServiceChanged) == [
        ServiceChanged(Service.NO_SERVICE, "primary missed 3 probes, backup missed 3 probes")
    ]
    assert actions(phone.run_cycle(1, primary=None, backup=None), ServiceChanged) == []
    assert phone.policy.active is P
    back = phone.run_cycle(2, primary=0.01, backup=None)
    assert actions(back, ServiceChanged)[0] == ServiceChanged(
        Service.OK, "primary answered in 10 ms, backup missed 3 probes"
    )


def test_backup_disabled_probes_only_primary_and_never_fails_over() -> None:
    phone = Phone(PolicySettings(backup_enabled=False))
    for cycle in range(3):
        phone.run_cycle(cycle, primary=None, backup=None)
    assert {cast(SendProbe, a).server for a in actions(phone.timeline, SendProbe)} == {P}
    assert actions(phone.timeline, UseServer) == [UseServer(P, "start")]
    assert phone.policy.service is Service.NO_SERVICE


def failed_over(settings: PolicySettings = WITH_BACKUP) -> Phone:
    phone = Phone(settings)
    phone.run_cycle(0, primary=None, backup=0.004)
    assert phone.policy.active is B
    return phone


def test_failback_happens_when_the_primarys_reply_arrives() -> None:
    """SPEC §1: failback at the moment the reply completing the good cycles arrives; it
    does not wait for the backup's verdict of that cycle (issue 12)."""
    phone = failed_over()
    timeline = phone.run_cycle(1, primary=0.003, backup=0.005)
    reason = "primary answered in 3 ms; primary up 1 of 1 cycles"
    assert [(t, a) for t, a in timeline if isinstance(a, UseServer)] == [
        (phone.cycle_start(1) + 0.003, UseServer(P, reason))
    ]
    assert actions(timeline, ServiceChanged) == []  # was OK on backup, OK on primary
    assert phone.policy.snapshot().good_primary_cycles == 0


def test_failback_does_not_wait_for_a_silent_backups_verdict() -> None:
    phone = failed_over()
    timeline = phone.run_cycle(1, primary=0.004, backup=None)
    [(at, back)] = [(t, a) for t, a in timeline if isinstance(a, UseServer)]
    assert (round(at - phone.cycle_start(1), 6), back.server) == (0.004, P)
    assert phone.policy.active is P  # the backup's down verdict at 1.6 s moves nothing


def test_failback_when_the_backup_answered_first_is_decided_by_the_whole_cycle() -> None:
    phone = failed_over()
    timeline = phone.run_cycle(1, primary=0.006, backup=0.002)
    reason = "primary answered in 6 ms, backup answered in 2 ms; primary up 1 of 1 cycles"
    assert [(t, a) for t, a in timeline if isinstance(a, UseServer)] == [
        (phone.cycle_start(1) + 0.006, UseServer(P, reason))
    ]


def test_failback_waits_while_an_earlier_cycle_is_still_open() -> None:
    """Overlapping cycles: cycle 1's primary answer can't count before cycle 0 is judged."""
    phone = Phone(replace(WITH_BACKUP, interval_s=1.0))
    phone.answer(B, 0, 1, T0 + 0.002)
    phone.until(T0 + 1.6)  # cycle 0: primary down, backup up -> backup
    assert phone.policy.active is B
    phone.answer(B, 1, 1, T0 + 1.002)  # (already answered before cycle 0 was judged)
    assert phone.policy.active is B
    moved = phone.answer(P, 2, 1, T0 + 2.003)  # cycle 1 still open (its primary is silent)
    assert actions(moved, UseServer) == []
    back = phone.until(T0 + 2.6)  # cycle 1 judged: primary down; cycle 2 judged next
    assert [cast(UseServer, a).server for a in actions(back, UseServer)] == [P]


def test_failback_cycles_3_needs_three_good_cycles_in_a_row() -> None:
    phone = failed_over(replace(WITH_BACKUP, failback_cycles=3))
    for cycle in (1, 2):
        assert actions(phone.run_cycle(cycle, 0.003, 0.004), UseServer) == []
    assert phone.policy.snapshot().good_primary_cycles == 2
    assert actions(phone.run_cycle(3, None, 0.004), UseServer) == []  # a bad one resets
    assert phone.policy.snapshot().good_primary_cycles == 0
    for cycle in (4, 5):
        assert actions(phone.run_cycle(cycle, 0.003, 0.004), UseServer) == []
    [back] = actions(phone.run_cycle(6, 0.003, 0.004), UseServer)
    assert back == UseServer(P, "primary answered in 3 ms; primary up 3 of 3 cycles")
    assert phone.policy.snapshot().good_primary_cycles == 0


def test_backup_dies_while_on_backup_and_primary_up_goes_back_at_once() -> None:
    phone = failed_over(replace(WITH_BACKUP, failback_cycles=3))
    timeline = phone.run_cycle(1, primary=0.003, backup=None)
    assert [(t, a) for t, a in timeline if isinstance(a, UseServer)] == [
        (
            phone.cycle_start(1) + 1.6,
            UseServer(P, "primary answered in 3 ms, backup missed 3 probes"),
        )
    ]


def test_a_switch_says_whether_the_server_left_was_alive() -> None:
    """Issue 12: a switch away from a dead server sends nothing to it (the shell skips
    the un-REGISTER); a failback from a live backup un-registers there (SPEC §2)."""
    phone = Phone()
    [away] = actions(phone.run_cycle(0, primary=None, backup=0.004), UseServer)
    assert isinstance(away, UseServer)
    assert not away.left_alive
    [back] = actions(phone.run_cycle(1, primary=0.003, backup=0.004), UseServer)
    assert isinstance(back, UseServer)
    assert back.left_alive is None  # the backup answers 1 ms later: the shell waits for it
    phone.run_cycle(2, primary=None, backup=0.004)
    [dead_backup] = actions(phone.run_cycle(3, primary=0.003, backup=None), UseServer)
    assert isinstance(dead_backup, UseServer)
    assert dead_backup.server is P
    assert dead_backup.left_alive is None  # failback at the primary's reply: not judged yet


def test_a_dead_backup_left_for_a_primary_needing_more_cycles_is_known_dead() -> None:
    phone = failed_over(replace(WITH_BACKUP, failback_cycles=3))
    [back] = actions(phone.run_cycle(1, primary=0.003, backup=None), UseServer)
    assert isinstance(back, UseServer)
    assert not back.left_alive


def test_both_down_while_on_backup_stays_with_no_service() -> None:
    phone = failed_over()
    timeline = phone.run_cycle(1, primary=None, backup=None)
    assert actions(timeline, UseServer) == []
    assert actions(timeline, ServiceChanged) == [
        ServiceChanged(Service.NO_SERVICE, "primary missed 3 probes, backup missed 3 probes")
    ]
    assert phone.policy.active is B


def test_overlapping_cycles_are_judged_in_order() -> None:
    phone = Phone(replace(WITH_BACKUP, interval_s=1.0))
    phone.answer(B, 0, 1, T0 + 0.002)
    phone.answer(P, 1, 1, T0 + 1.003)  # cycle 1 fully answered before cycle 0 ends
    phone.answer(B, 1, 1, T0 + 1.004)
    timeline = relative(phone.until(T0 + 1.7), T0)
    assert (0.0, SendProbe(P, 0, 1)) in relative(phone.timeline, T0)
    assert [(t, a.cycle) for t, a in timeline if isinstance(a, CycleJudged)] == [
        (1.6, 0),
        (1.6, 1),
    ]
    assert [a for t, a in timeline if isinstance(a, UseServer)] == [
        UseServer(B, "primary missed 3 probes, backup answered in 2 ms"),
        UseServer(P, "primary answered in 3 ms, backup answered in 4 ms; primary up 1 of 1 cycles"),
    ]
    assert (1.2, SendProbe(P, 0, 3)) in relative(phone.timeline, T0)
    assert (1.0, SendProbe(P, 1, 1)) in relative(phone.timeline, T0)


# --------------------------------------------------------------------------- keep-alive off


def test_keepalive_off_sends_nothing_and_registration_drives_failover() -> None:
    phone = Phone(replace(WITH_BACKUP, keepalive=False))
    assert actions(phone.timeline) == [
        UseServer(P, "start"),
        ServiceChanged(Service.OK, "keep-alive probing off: service follows registration"),
    ]
    assert phone.policy.next_deadline() is None
    assert phone.feed(RegistrationFailed(B, "timeout"), T0) == []  # not the active one
    assert actions(phone.feed(RegistrationFailed(P, "503"), T0)) == [
        UseServer(B, "primary registration failed: 503")
    ]
    assert actions(phone.feed(RegistrationFailed(B, "timeout"), T0 + 1)) == [
        UseServer(P, "backup registration failed: timeout")
    ]
    assert actions(phone.timeline, SendProbe) == []


@pytest.mark.parametrize(
    "settings", [WITH_BACKUP, PolicySettings(keepalive=False)], ids=["keepalive", "no-backup"]
)
def test_registration_failure_is_ignored_with_keepalive_or_without_backup(
    settings: PolicySettings,
) -> None:
    phone = Phone(settings)
    assert phone.policy.handle(RegistrationFailed(P, "timeout"), START_S) == []
    assert phone.policy.active is P


# --------------------------------------------------------------------------- settings


def test_new_interval_keeps_the_scheduled_start_and_continues_from_it() -> None:
    phone = Phone(WITH_BACKUP)
    phone.run_cycle(0, 0.003, 0.004)
    phone.feed(SettingsChanged(replace(WITH_BACKUP, interval_s=5.0)), T0 + 3.0)
    assert phone.policy.next_deadline() == T0 + 15.0
    assert first_probe_times(phone.until(T0 + 30.0)) == [T0 + 15.0, T0 + 20.0, T0 + 25.0, T0 + 30.0]


def test_new_timeouts_apply_from_the_next_cycle() -> None:
    phone = Phone(PolicySettings())
    phone.until(T0 + 0.1)
    phone.feed(SettingsChanged(PolicySettings(attempt_timeouts_s=(0.5, 0.5))), T0 + 0.1)
    phone.until(T0 + 15.0 + 1.5)
    sends = [(round(t, 6), a.attempt) for t, a in phone.timeline if isinstance(a, SendProbe)]
    assert sends == [(T0, 1), (T0 + 0.8, 2), (T0 + 1.2, 3), (T0 + 15, 1), (T0 + 15.5, 2)]


def test_backup_disabled_while_on_backup_goes_back_to_primary() -> None:
    phone = failed_over()
    timeline = phone.feed(SettingsChanged(PolicySettings(backup_enabled=False)), T0 + 5.0)
    assert actions(timeline) == [UseServer(P, "backup disabled by new settings")]
    phone.until(phone.cycle_start(1) + 0.1)
    assert actions(phone.timeline, SendProbe)[-1] == SendProbe(P, 1, 1)


def test_backup_disabled_mid_cycle_never_fails_over_to_it() -> None:
    phone = Phone()
    phone.answer(B, 0, 1, T0 + 0.004)
    phone.feed(SettingsChanged(PolicySettings(backup_enabled=False)), T0 + 0.5)
    timeline = phone.until(T0 + 1.7)
    assert actions(timeline, UseServer) == []
    assert phone.policy.service is Service.NO_SERVICE


def test_keepalive_turned_off_drops_pending_cycles() -> None:
    phone = Phone()
    phone.until(T0 + 0.9)
    timeline = phone.feed(SettingsChanged(replace(WITH_BACKUP, keepalive=False)), T0 + 0.9)
    assert actions(timeline) == [
        ServiceChanged(Service.OK, "keep-alive probing off: service follows registration")
    ]
    assert phone.policy.next_deadline() is None
    assert phone.answer(P, 0, 2, T0 + 1.0) == []
    assert phone.policy.snapshot().ignored_answers == 1
    assert phone.policy.snapshot().pending_cycles == ()


def test_keepalive_turned_on_starts_after_the_first_delay_from_now() -> None:
    phone = Phone(PolicySettings(keepalive=False))
    phone.feed(SettingsChanged(PolicySettings()), START_S + 100.0)
    assert phone.policy.next_deadline() == START_S + 100.0 + DELAY_S
    assert phone.until(START_S + 102.0) == [(START_S + 102.0, SendProbe(P, 0, 1))]


# --------------------------------------------------------------------------- snapshot, errors


def test_snapshot_reports_state_for_status() -> None:
    phone = failed_over()
    phone.until(phone.cycle_start(1) + 0.1)
    snap = phone.policy.snapshot()
    assert (snap.active, snap.service, snap.cycle) == (B, Service.OK, 1)
    assert snap.next_cycle_at == T0 + 30.0
    assert [(v.server, v.up) for v in snap.last_verdicts] == [(P, False), (B, True)]
    assert snap.pending_cycles == (1,)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ProbeAnswered(B, 0, 1, 200, 1.0), "backup is not probed"),
        (ProbeAnswered(P, 0, 0, 200, 1.0), "attempt 0 is out of range"),
        (ProbeAnswered(P, 0, 2, 200, 1.0), "attempt 2 never sent"),
        (ProbeFailed(P, 0, 4, "refused"), "attempt 4 never sent"),
        (ProbeAnswered(P, 1, 1, 200, 1.0), "last cycle started is 0"),
        (SettingsChanged("interval=5"), "SettingsChanged with str"),
        (cast(Event, object()), "can't handle object"),
    ],
)
def test_nonsense_events_raise_policy_error(event: Event, message: str) -> None:
    phone = Phone(PolicySettings())
    phone.until(T0)
    with pytest.raises(PolicyError, match=message):
        phone.policy.handle(event, T0 + 0.1)


def test_calls_out_of_order_raise_policy_error() -> None:
    policy = FailoverPolicy(PolicySettings(), START_S, DELAY_S)
    assert policy.next_deadline() is None
    with pytest.raises(PolicyError, match="before start"):
        policy.on_deadline(T0)
    with pytest.raises(PolicyError, match="RegistrationFailed before start"):
        policy.handle(RegistrationFailed(P, "timeout"), START_S)
    policy.start(START_S)
    with pytest.raises(PolicyError, match="already started"):
        policy.start(START_S)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interval_s": 0.0}, "interval_s must be > 0"),
        ({"failback_cycles": 0}, "failback_cycles must be >= 1"),
        ({"attempt_timeouts_s": ()}, "attempt_timeouts_s must be > 0"),
        ({"attempt_timeouts_s": (0.8, -0.4)}, "attempt_timeouts_s must be > 0"),
    ],
)
def test_unusable_settings_raise_policy_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        replace(PolicySettings(), **changes)


def test_negative_first_delay_raises_policy_error() -> None:
    with pytest.raises(PolicyError, match="first_cycle_delay_s"):
        FailoverPolicy(PolicySettings(), START_S, -1.0)


def test_now_slightly_behind_a_passed_deadline_is_clamped() -> None:
    phone = Phone(PolicySettings())
    phone.until(T0 + 0.8)  # attempt 2 sent at exactly T0 + 0.8
    assert phone.policy.handle(ProbeAnswered(P, 0, 2, 200, 1.0), T0 + 0.7999) != []
    assert phone.policy.next_deadline() == T0 + 15.0


# ------------------------------------------------------- the server in use, with its address


def test_use_server_carries_the_address_that_answered_in_the_deciding_cycle() -> None:
    """Issue 10: the core is the one source of the server in use; the shell registers
    where the probe was answered from, without asking the prober or DNS."""
    phone = Phone()
    t0 = phone.cycle_start(0)
    backup_at = ("198.51.100.20", 5070)
    phone.until(t0 + 0.004)
    phone.feed(ProbeAnswered(B, 0, 1, 200, 4.0, backup_at), t0 + 0.004)
    switched = phone.until(t0 + 1.7)
    [failover] = actions(switched, UseServer)
    assert isinstance(failover, UseServer)
    assert (failover.server, failover.address) == (B, backup_at)
    assert verdict_of(switched, B).address == backup_at
    # failback: the primary's address from its answer in cycle 1
    t1 = phone.cycle_start(1)
    primary_at = ("203.0.113.10", 5060)
    phone.until(t1 + 0.003)
    back = phone.feed(ProbeAnswered(P, 1, 1, 200, 3.0, primary_at), t1 + 0.003)
    [failback] = actions(back, UseServer)
    assert isinstance(failback, UseServer)
    assert (failback.server, failback.address) == (P, primary_at)


def test_use_server_without_a_deciding_probe_has_no_address() -> None:
    phone = Phone(PolicySettings(backup_enabled=True, keepalive=False))
    [start] = actions(phone.timeline, UseServer)
    assert start == UseServer(P, "start", None)
    moved = phone.feed(RegistrationFailed(P, "408 Request Timeout"), START_S + 1)
    [switch] = actions(moved, UseServer)
    assert isinstance(switch, UseServer)
    assert (switch.server, switch.address) == (B, None)
