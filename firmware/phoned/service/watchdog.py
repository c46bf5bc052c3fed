"""The systemd watchdog's gate: `WATCHDOG=1` only after every worker has beaten.

Owns: the register of worker threads (keepalive, control, vpn, ...) and when each last
reported a heartbeat, on an injected monotonic `Clock`. Answers two questions for the
supervisor loop: may it ping now (`due()`, STYLE §3: "only after every worker has
reported a heartbeat since the last ping"), and who is silent (`stuck()`, for the log
line that names the wedged worker). Must not touch: `sdnotify` (the supervisor pings and
then calls `ping_sent()`), threads (workers call `beat()` from their own), or decisions
about restarts (a worker that never beats again simply stops the pings, and systemd
restarts the service after `WatchdogSec`, SPEC §10).

Rules:
1. A worker counts as alive for the next ping once it has called `beat()` after the last
   `ping_sent()`; registering (`add()`) is not a beat.
2. With no worker registered the supervisor loop itself is the only thing to vouch for,
   so `due()` is True.
3. Every method is thread-safe; `beat()` is cheap (one lock, one clock read).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from phoned.clock import Clock
from phoned.errors import PhonedError


class UnknownWorkerError(PhonedError, KeyError):
    """A worker name that was never registered with `add()` (or was removed)."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument; this one is for a person.
        return str(self.args[0]) if self.args else ""


@dataclass
class _Worker:
    last_beat_at: float  #: when it last beat, or when it was registered
    beaten: bool = False  #: beat since the last ping


class Heartbeats:
    """Heartbeats of worker threads, deciding when the watchdog may be pinged.

    Args:
        clock: monotonic seconds (`phoned.clock.MonotonicClock` in the service).
        workers: the names of the workers that must beat before each ping.

    Raises:
        ValueError: a worker name is empty or given twice.
    """

    def __init__(self, clock: Clock, workers: Iterable[str]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        now = clock.now()
        for name in workers:
            _check_name(name)
            if name in self._workers:
                raise ValueError(f"watchdog: worker {name!r} registered twice")
            self._workers[name] = _Worker(last_beat_at=now)

    @property
    def workers(self) -> tuple[str, ...]:
        """The registered workers' names, in the order they were registered."""
        with self._lock:
            return tuple(self._workers)

    def beat(self, worker: str) -> None:
        """Report that `worker` is alive (call it from the worker's own thread).

        Args:
            worker: a registered worker's name.

        Raises:
            UnknownWorkerError: `worker` is not registered (also a `KeyError`).
        """
        now = self._clock.now()
        with self._lock:
            state = self._lookup(worker)
            state.last_beat_at = now
            state.beaten = True

    def add(self, worker: str) -> None:
        """Register `worker`, or re-register it after a restart; it must beat before the
        next ping (rule 1), and its silence counts from now.

        Args:
            worker: the worker's name (non-empty).

        Raises:
            ValueError: `worker` is empty.
        """
        _check_name(worker)
        now = self._clock.now()
        with self._lock:
            self._workers[worker] = _Worker(last_beat_at=now)

    def remove(self, worker: str) -> None:
        """Stop waiting for `worker` (stopped for good, or about to be restarted).

        Args:
            worker: a registered worker's name.

        Raises:
            UnknownWorkerError: `worker` is not registered (a typo would otherwise leave the
                real worker registered and stop the pings).
        """
        with self._lock:
            self._lookup(worker)
            del self._workers[worker]

    def due(self) -> bool:
        """Whether every registered worker has beaten since the last `ping_sent()`."""
        with self._lock:
            return all(state.beaten for state in self._workers.values())

    def ping_sent(self) -> None:
        """Record that `WATCHDOG=1` went out: every worker must beat again before the next.

        Call it only when the ping was really sent. A beat that lands between `due()` and
        this call is forgotten; that only delays the next ping by one beat (never pings
        for a silent worker).
        """
        with self._lock:
            for state in self._workers.values():
                state.beaten = False

    def stuck(self, older_than_s: float) -> list[str]:
        """The workers silent for more than `older_than_s`, in registration order.

        A worker that never beat counts as silent since it was registered.

        Args:
            older_than_s: how long a silence makes a worker stuck, in seconds.
        """
        now = self._clock.now()
        with self._lock:
            return [
                name
                for name, state in self._workers.items()
                if now - state.last_beat_at > older_than_s
            ]

    def silent_s(self, worker: str) -> float:
        """Seconds since `worker` last beat (or was registered), for the log line
        `watchdog: keepalive silent for 31.0 s, not pinging`.

        Args:
            worker: a registered worker's name.

        Raises:
            UnknownWorkerError: `worker` is not registered.
        """
        now = self._clock.now()
        with self._lock:
            return now - self._lookup(worker).last_beat_at

    def _lookup(self, worker: str) -> _Worker:
        """The state of `worker`; the caller holds the lock."""
        try:
            return self._workers[worker]
        except KeyError:
            known = ", ".join(self._workers) or "none"
            raise UnknownWorkerError(
                f"watchdog: no worker {worker!r} registered (workers: {known})"
            ) from None


def _check_name(worker: str) -> None:
    if not isinstance(worker, str) or not worker:
        raise ValueError(f"watchdog: a worker name is a non-empty string, got {worker!r}")
