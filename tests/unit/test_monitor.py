"""The keep-alive thread: carries the core's probes out and events in, and survives an
event the core refuses (a bug elsewhere must not stop the probing)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping, Sequence

import pytest

from phoned.clock import MonotonicClock
from phoned.core.events import Action, CycleJudged, Event, ProbeAnswered, Server, UseServer
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.probe.matching import ProbeTarget
from phoned.service.monitor import KeepaliveMonitor, ProbeCounts


class RecordingProber:
    """A prober without sockets: records each send; can answer with a bogus event."""

    def __init__(self, reply: list[Event] | None = None) -> None:
        self.sent: list[tuple[Server, int, int]] = []
        self.retargeted: list[dict[Server, ProbeTarget]] = []
        self.third_attempt = threading.Event()
        self._reply = reply or []
        self.unmatched = 0

    def sockets(self) -> Sequence[socket.socket]:
        return []

    def writers(self) -> Sequence[socket.socket]:
        return []

    def prepare(self, _next_cycle_at: float | None, _now: float) -> float | None:
        return None

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        self.sent.append((server, cycle, attempt))
        if attempt == 3:
            self.third_attempt.set()
        return self._reply if attempt == 1 else []

    def receive(self, _sock: socket.socket) -> list[Event]:
        return []

    def writable(self, _sock: socket.socket) -> list[Event]:
        return []

    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None:
        self.retargeted.append(dict(targets))

    def close(self) -> None:
        pass


def run_until_third_attempt(prober: RecordingProber) -> tuple[list[Action], bool]:
    clock = MonotonicClock()
    actions: list[Action] = []
    policy = FailoverPolicy(PolicySettings(interval_s=5.0), clock.now(), first_cycle_delay_s=0.0)
    monitor = KeepaliveMonitor(policy, prober, clock, on_action=actions.append)
    monitor.start()
    try:
        assert prober.third_attempt.wait(timeout=3.0), prober.sent
        alive = monitor.alive
    finally:
        monitor.stop()
    return actions, alive


def test_a_silent_server_gets_three_attempts_from_the_thread() -> None:
    prober = RecordingProber()

    actions, alive = run_until_third_attempt(prober)

    assert actions[0] == UseServer(Server.PRIMARY, "start")
    assert prober.sent == [(Server.PRIMARY, 0, 1), (Server.PRIMARY, 0, 2), (Server.PRIMARY, 0, 3)]
    assert alive


def test_an_event_the_core_refuses_is_logged_and_probing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bogus = ProbeAnswered(Server.BACKUP, cycle=99, attempt=1, status_code=200, rtt_ms=1.0)
    prober = RecordingProber(reply=[bogus])  # backup is not probed, cycle 99 never ran

    _, alive = run_until_third_attempt(prober)

    assert alive
    assert [attempt for _, _, attempt in prober.sent] == [1, 2, 3]
    assert "keepalive: ProbeAnswered ignored" in caplog.text


class StallingProber(RecordingProber):
    """Its reply arrives 5 ms after attempt 1, then the thread stalls for a second before
    it reads anything (a stopped or starved process, SPEC §10)."""

    def __init__(self, clock: MonotonicClock, stall_s: float) -> None:
        super().__init__()
        self._clock = clock
        self._stall_s = stall_s
        self._inbox, self._peer = socket.socketpair()
        self._answer: ProbeAnswered | None = None
        self.unmatched = 2  # two stray replies came in meanwhile

    def sockets(self) -> Sequence[socket.socket]:
        return [self._inbox]

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        self.sent.append((server, cycle, attempt))
        if attempt == 1 and self._answer is None:
            arrived = self._clock.now() + 0.005
            self._answer = ProbeAnswered(server, cycle, 1, 200, 5.0, arrived_at=arrived)
            self._peer.send(b"!")
            time.sleep(self._stall_s)  # the scenario: the thread is stopped past 800 ms
        return []

    def receive(self, sock: socket.socket) -> list[Event]:
        sock.recv(16)
        answer, self._answer = self._answer, None
        return [] if answer is None else [answer]

    def close(self) -> None:
        self._inbox.close()
        self._peer.close()


def test_a_reply_in_before_a_stall_ends_counts_and_no_attempt_follows() -> None:
    """The monitor reads what already arrived before it runs passed deadlines, and hands
    the core each answer at its arrival time: no attempt 2, no down verdict."""
    clock = MonotonicClock()
    prober = StallingProber(clock, stall_s=1.0)
    actions: list[Action] = []
    judged = threading.Event()

    def on_action(action: Action) -> None:
        actions.append(action)
        if isinstance(action, CycleJudged):
            judged.set()

    policy = FailoverPolicy(PolicySettings(interval_s=30.0), clock.now(), first_cycle_delay_s=0.0)
    monitor = KeepaliveMonitor(policy, prober, clock, on_action=on_action)
    monitor.start()
    try:
        assert judged.wait(3.0)
    finally:
        monitor.stop()
    assert prober.sent == [(Server.PRIMARY, 0, 1)]
    [cycle] = [a for a in actions if isinstance(a, CycleJudged)]
    assert isinstance(cycle, CycleJudged)
    assert cycle.verdicts[0].up
    assert monitor.counts == ProbeCounts(unmatched=2, late=0, voided_cycles=0)
