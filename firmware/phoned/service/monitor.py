"""The keepalive monitor: the thread that runs the failover core on a monotonic clock.

Owns: the loop `deadline = policy.next_deadline()`, wait on the prober's sockets until then,
feed answers and deadlines to the core, send the probes it asks for at once, and hand every
other action to the supervisor; a heartbeat at each turn of the loop (the watchdog's), and
new settings (`reconfigure`) applied to the prober and the core on this thread, between two
waits. Must not touch: pjsua2, the status board, or any decision
(the core decides; this thread only carries events in and actions out).

The thread never blocks but in `select`: a stream prober's connects and TLS handshakes
progress when its sockets turn writable or readable (`writers()`, `writable()`), and name
lookups run on the prober's own workers, started through `prepare()` ahead of each cycle.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from phoned.clock import Clock
from phoned.core.events import Action, Event, ProbeAnswered, SendProbe, Server, SettingsChanged
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicyError, PolicySettings
from phoned.errors import PhonedError
from phoned.probe.matching import ProbeTarget

log = logging.getLogger(__name__)

#: Longest wait without a deadline, so that the heartbeat keeps beating (watchdog).
_MAX_WAIT_S = 1.0


def _arrival(event: Event) -> float:
    """Sort key: an answer by its arrival; anything else as just happened."""
    if isinstance(event, ProbeAnswered) and event.arrived_at is not None:
        return event.arrived_at
    return float("inf")


class Prober(Protocol):
    """What the monitor needs of a prober (`probe.udp.UdpProber`, `probe.stream.StreamProber`,
    `probe.resolve.ResolvingProber`)."""

    @property
    def unmatched(self) -> int:
        """Responses that matched no attempt: stray, spoofed or garbled (counted)."""
        ...

    def sockets(self) -> Sequence[socket.socket]:
        """Sockets to wait on for reading."""
        ...

    def writers(self) -> Sequence[socket.socket]:
        """Sockets to wait on for writing (connects, handshakes, unsent bytes)."""
        ...

    def prepare(self, next_cycle_at: float | None, now: float) -> float | None:
        """Work ahead of the next cycle start; returns when to be called again."""
        ...

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        """Send one attempt now."""
        ...

    def receive(self, sock: socket.socket) -> list[Event]:
        """`sock` (of `sockets()`) is readable."""
        ...

    def writable(self, sock: socket.socket) -> list[Event]:
        """`sock` (of `writers()`) is writable."""
        ...

    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None:
        """New configured targets (settings changed), used from the next cycle."""
        ...

    def close(self) -> None:
        """Release every socket and worker."""
        ...


@dataclass(frozen=True, slots=True)
class ProbeCounts:
    """Replies that never counted, and cycles dropped, since the service started."""

    #: Matched no attempt of the last two cycles: wrong Call-ID, CSeq, branch, garbage.
    unmatched: int = 0
    #: Matched an attempt whose cycle was already judged or dropped: late or stale.
    late: int = 0
    #: Cycles voided because the service stalled in them (SPEC §10).
    voided_cycles: int = 0


@dataclass(frozen=True, slots=True)
class _Reconfigure:
    """New settings for the core and the prober, applied on the monitor's thread."""

    policy: PolicySettings
    targets: Mapping[Server, ProbeTarget]


class KeepaliveMonitor:
    """Drives a `FailoverPolicy` with a `Prober` on a thread of its own.

    Args:
        policy: the core; only this thread touches it once started.
        prober: sends OPTIONS and turns replies into events.
        clock: monotonic time, the same the core was created with.
        on_action: receives every action but SendProbe (UseServer, CycleJudged, ...).
        observe: sees every probe sent and every event fed, for logs (optional).
        on_beat: called at each turn of the loop, at least every second: the heartbeat
            that the supervisor's watchdog waits for (a wedged loop stops beating).
    """

    def __init__(
        self,
        policy: FailoverPolicy,
        prober: Prober,
        clock: Clock,
        on_action: Callable[[Action], None],
        *,
        observe: Callable[[Event | SendProbe, float], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._prober = prober
        self._clock = clock
        self._on_action = on_action
        self._observe = observe
        self._on_beat = on_beat
        self._inbox: queue.SimpleQueue[Event | _Reconfigure] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keepalive", daemon=True)
        #: The core's next deadline and the last one fired (clock seconds), published so
        #: that the supervisor can poll pjsua2 briskly only when actions may come.
        self.next_deadline_at: float | None = None
        self.last_deadline_at = float("-inf")

    # -- called from other threads -------------------------------------------------
    def start(self) -> None:
        """Start the thread; the core's `start()` actions go out first."""
        self._thread.start()

    def post(self, event: Event) -> None:
        """Hand an event to the core (thread-safe), e.g. RegistrationFailed."""
        self._inbox.put(event)
        self._wake()

    def reconfigure(self, policy: PolicySettings, targets: Mapping[Server, ProbeTarget]) -> None:
        """New settings (thread-safe): the prober's targets, then the core's
        `SettingsChanged`, both on this monitor's thread, in effect from the next cycle."""
        self._inbox.put(_Reconfigure(policy, dict(targets)))
        self._wake()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and close the prober's sockets."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("keepalive: thread did not stop within %.1f s", timeout_s)
        self._prober.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def counts(self) -> ProbeCounts:
        """Replies that did not count, for `phoned status` (SPEC §1, §10). Plain counters
        read from any thread."""
        policy = self._policy
        return ProbeCounts(self._prober.unmatched, policy.ignored_answers, policy.voided_cycles)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already awake, or closing
            self._wake_w.send(b"\0")

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            # The supervisor sees the thread gone, stops pinging the watchdog and exits 1
            # so that systemd restarts the service; say why first.
            log.exception("keepalive: thread crashed")
            raise

    def _loop(self) -> None:
        self._dispatch(self._policy.start(self._clock.now()))
        while not self._stop.is_set():
            if self._on_beat is not None:
                self._on_beat()
            deadline = self._policy.next_deadline()
            self.next_deadline_at = deadline
            now = self._clock.now()
            if deadline is not None and now >= deadline:
                # Replies already in the kernel go first, each at its arrival time: one
                # that came in time counts, however late this thread got here (SPEC §10).
                self._wait(0.0)
                now = max(now, self._clock.now())
                self.last_deadline_at = now
                self._dispatch(self._policy.on_deadline(now))
                continue
            prepare_at = self._prober.prepare(self._policy.snapshot().next_cycle_at, now)
            wake_at = [t for t in (deadline, prepare_at) if t is not None]
            self._wait(min([_MAX_WAIT_S, *(t - now for t in wake_at)]))

    def _wait(self, wait_s: float) -> None:
        readers = [*self._prober.sockets(), self._wake_r]
        writers = list(self._prober.writers())
        readable, writable, _ = select.select(readers, writers, [], max(0.0, wait_s))
        events: list[Event] = []
        for sock in readable:
            if sock is self._wake_r:
                self._drain_wake()
            else:
                events += self._prober.receive(sock)
        for sock in writable:
            events += self._prober.writable(sock)
        self._feed(sorted(events, key=_arrival))
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, _Reconfigure):
                self._reconfigure(item)
            else:
                self._feed([item])

    def _reconfigure(self, item: _Reconfigure) -> None:
        try:
            self._prober.retarget(item.targets)
        except PhonedError as exc:  # the old targets stay in force; the timing still applies
            log.error("keepalive: new probe targets refused: %s", exc)
        self._feed([SettingsChanged(item.policy)])

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(64):
                pass

    def _feed(self, events: list[Event]) -> None:
        for event in events:
            now = self._clock.now()
            if isinstance(event, ProbeAnswered) and event.arrived_at is not None:
                now = min(now, event.arrived_at)  # judged at its arrival (SPEC §10)
            if self._observe is not None:
                self._observe(event, now)
            try:
                actions = self._policy.handle(event, now)
            except PolicyError as exc:  # one odd event must not stop the probing
                log.error("keepalive: %s ignored: %s", type(event).__name__, exc)
                continue
            self._dispatch(actions)

    def _dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendProbe):
                self._feed(self._prober.send(action.server, action.cycle, action.attempt))
                if self._observe is not None:
                    self._observe(action, self._clock.now())
            else:
                self._on_action(action)
