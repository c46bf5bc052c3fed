"""The provisioning worker: fetch-and-apply off the pjsua2 thread (SPEC §7).

Owns: the `provisioning` thread, which runs every fetch (a check-sync, `phoned resync`,
each `resync_interval`) so that the pjsua2 thread never waits on the network; coalescing
requests that arrive while a fetch runs into one; handing what it built to the main
thread to apply (`deliver`), then keeping an applied file as last good; its heartbeat.
Must not touch: pjsua2 or the phone's parts (the main thread applies), parsing (the
`ConfigSource`'s), decisions of what changed (the wiring's).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phoned.clock import Clock
from phoned.config.live import LiveSettings
from phoned.config.loader import SettingsError
from phoned.errors import PhonedError
from phoned.service.configsource import Built, ConfigSource

log = logging.getLogger("phoned")

#: The thread wakes at least this often to beat (the watchdog's heartbeat).
_BEAT_S = 1.0

#: Applies on the main thread what a fetch built, or reports its rejection; returns the
#: reply of `phoned resync` (raises `CommandError` for a rejection).
Deliver = Callable[[Built | SettingsError, str], dict[str, Any]]


@dataclass
class _Request:
    why: str  #: "check-sync", "resync", "timer"
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Provisioner:
    """Runs fetch-and-apply on its own thread.

    Args:
        source: the local and provisioned files.
        live: the settings in force (for `resync_interval`, read at each turn).
        deliver: applies on the main thread (see `Deliver`).
        clock: monotonic time.
        on_beat: the heartbeat, at each turn of the loop (at least every second).
    """

    def __init__(
        self,
        source: ConfigSource,
        live: LiveSettings,
        deliver: Deliver,
        clock: Clock,
        on_beat: Callable[[], None],
    ) -> None:
        self._source = source
        self._live = live
        self._deliver = deliver
        self._clock = clock
        self._on_beat = on_beat
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="provisioning", daemon=True)
        self._next_timer_at = float("inf")
        self._busy = threading.Event()
        self.fetches = 0  #: fetch-and-apply rounds run

    @property
    def busy(self) -> bool:
        """A fetch is asked for or under way: its apply will come to the main thread soon
        (which then polls pjsua2 briskly, SPEC §9: response -> applied within 50 ms)."""
        return self._busy.is_set()

    def start(self) -> None:
        """Start the thread."""
        self._schedule_timer()
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread (a fetch under way is abandoned, not applied)."""
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def request(self, why: str) -> None:
        """Fetch and apply soon (thread-safe, does not wait): a check-sync."""
        self._inbox.put(_Request(why))
        self._busy.set()

    def resync(self, timeout_s: float) -> dict[str, Any]:
        """Fetch and apply now and wait for the outcome (`phoned resync`).

        Raises:
            PhonedError: the file was rejected (its reasons), or no outcome in `timeout_s`.
        """
        item = _Request("resync")
        self._inbox.put(item)
        self._busy.set()
        if not item.done.wait(timeout_s):
            raise PhonedError(f"resync: no outcome within {timeout_s:.0f} s")
        if item.error:
            raise PhonedError(item.error)
        return item.result

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._on_beat()
            now = self._clock.now()
            wait_s = max(0.0, min(_BEAT_S, self._next_timer_at - now))
            try:
                first = self._inbox.get(timeout=wait_s)
            except queue.Empty:
                if self._clock.now() >= self._next_timer_at:
                    self._busy.set()
                    self._round([_Request("timer")])
                continue
            if first is None:
                return
            batch = [first]
            while not self._inbox.empty():  # coalesce: one fetch answers them all
                item = self._inbox.get_nowait()
                if item is None:
                    return
                batch.append(item)
            self._round(batch)

    def _round(self, batch: list[_Request]) -> None:
        why = ", ".join(sorted({item.why for item in batch}))
        self.fetches += 1
        try:
            result, error = self._fetch_and_apply(why), ""
        except PhonedError as exc:
            result, error = {}, str(exc)
        except Exception as exc:  # one odd round must not end the worker
            log.exception("provisioning: %s failed", why)
            result, error = {}, f"provisioning failed: {type(exc).__name__}"
        for item in batch:
            item.result, item.error = result, error
            item.done.set()
        self._busy.clear()
        if not self._inbox.empty():  # asked again meanwhile
            self._busy.set()
        self._schedule_timer()

    def _fetch_and_apply(self, why: str) -> dict[str, Any]:
        try:
            built: Built | SettingsError = self._source.refresh()
        except SettingsError as exc:
            built = exc
        reply = self._deliver(built, why)  # raises for a rejection
        if isinstance(built, Built) and built.fetched is not None:
            self._source.keep(built)  # after it is in force: a file never applied is not kept
        return reply

    def _schedule_timer(self) -> None:
        interval_s = self._live.get().provisioning.resync_interval
        has_url = bool(self._live.get().provisioning.url)
        self._next_timer_at = (
            self._clock.now() + interval_s if interval_s and has_url else float("inf")
        )
