"""The service's log lines: one per probe result and state change (SPEC §4), and a limit
on lines that repeat (SPEC §10 "Junk").

Owns: the wording and the `key=value` fields of each line an installer reads
(`failover: primary missed 3 probes, backup answered in 4 ms -> backup 192.0.2.12:5060`),
and `RepeatFilter`, which `install_repeat_limit()` puts on the service's log handlers.
Must not touch: any state of the phone; callers hand in what happened and the addresses
to name. Never logs a secret: no function here receives one.

Repeat rule: lines of one kind (same logger and level, and the same first 64 characters
once the digits are taken out) pass `burst` times per `window_s`; the rest of that window is
counted, and one line "N similar lines suppressed ..." follows once the window is over
(with the next line logged, or at exit). The SPEC §4 state lines (`log_event`'s) are paced
by the phone's cycle, not by what arrives: their kind keeps the digits (the lamps of 50
BLF keys changing at a failover are 50 kinds, not one), and each kind has a burst of
`STATE_BURST`, which their own pace never reaches: a unique state line is never held back.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from phoned.core.events import (
    ProbeAnswered,
    ProbeFailed,
    SendProbe,
    Server,
    Service,
    ServiceChanged,
    UseServer,
    Verdict,
)
from phoned.logfmt import log_event

if TYPE_CHECKING:  # only types: `install_repeat_limit` must not load pjsua2 (0.35 s at boot)
    from phoned.sip.stack import BlfChanged, CallInfo, RegistrationChanged

log = logging.getLogger("phoned")


def probe(item: SendProbe | ProbeAnswered | ProbeFailed, host: str) -> None:
    """A probe sent (debug for attempt 1), answered, or failed at once."""
    if isinstance(item, SendProbe):
        log_event(
            log,
            "probe_sent",
            f"probe: OPTIONS #{item.attempt} to {item.server.value} {host}",
            level=logging.INFO if item.attempt > 1 else logging.DEBUG,
            server=item.server.value,
            cycle=item.cycle,
            attempt=item.attempt,
        )
    elif isinstance(item, ProbeAnswered):
        log_event(
            log,
            "probe_answer",
            f"probe: {item.server.value} answered {item.status_code} in {item.rtt_ms:.1f} ms",
            level=logging.DEBUG if item.status_code < 300 else logging.INFO,
            server=item.server.value,
            cycle=item.cycle,
            attempt=item.attempt,
            status=item.status_code,
            rtt_ms=item.rtt_ms,
        )
    else:
        log_event(
            log,
            "probe_failed",
            f"probe: {item.server.value} attempt {item.attempt}: {item.reason}",
            server=item.server.value,
            cycle=item.cycle,
            attempt=item.attempt,
        )


def verdict(cycle: int, result: Verdict, host: str) -> None:
    """How one server did in a judged cycle."""
    log_event(
        log,
        "cycle",
        f"cycle {cycle}: {result.server.value} {host} "
        f"{'up' if result.up else 'DOWN'}, {result.reason}",
        cycle=cycle,
        server=result.server.value,
        up=result.up,
        attempts=result.attempts,
        rtt_ms=result.rtt_ms,
        status=result.status_code,
    )


def switch(action: UseServer, previous: Server, label: str, sip: str) -> None:
    """A move of the active server: start, failover or failback (SPEC §2)."""
    if action.reason == "start":
        verb = "start"
    else:
        verb = "failover" if action.server is Server.BACKUP else "failback"
    log_event(
        log,
        "use_server",
        f"{verb}: {action.reason} -> {action.server.value} {label}",
        server=action.server.value,
        previous=previous.value,
        sip=sip,
    )


def service(action: ServiceChanged) -> None:
    """The service state changed (NO SERVICE is a warning)."""
    no_service = action.service is Service.NO_SERVICE
    log_event(
        log,
        "service",
        f"service: {action.reason} -> {action.service.value}",
        level=logging.WARNING if no_service else logging.INFO,
        service=action.service.value,
    )


def registration(event: RegistrationChanged, host: str, detail: str) -> None:
    """A registration state change (a failure is a warning)."""
    from phoned.sip.stack import RegState  # noqa: PLC0415 - loaded with the stack by now

    log_event(
        log,
        "registration",
        f"registration: {event.server.value} {host} {event.state.value}"
        + (f" ({detail})" if detail else ""),
        level=logging.WARNING if event.state is RegState.FAILED else logging.INFO,
        server=event.server.value,
        state=event.state.value,
        code=event.code,
    )


def call(info: CallInfo) -> None:
    """A call's state changed."""
    detail = f" ({info.code} {info.reason})" if info.code else ""
    log_event(
        log,
        "call",
        f"call {info.call_id}: {info.direction.value} {info.remote_uri} via "
        f"{info.server.value} {info.state.value}{detail}",
        call_id=info.call_id,
        state=info.state.value,
        server=info.server.value,
        direction=info.direction.value,
        code=info.code or None,
    )


def blf(event: BlfChanged) -> None:
    """A BLF lamp changed."""
    log_event(
        log,
        "blf",
        f"blf: {event.ext} {event.state.value}",
        ext=event.ext,
        state=event.state.value,
    )


#: Lines of one kind let through per window (SPEC §10: junk must not flood the journal).
REPEAT_BURST = 5
#: The window, seconds.
REPEAT_WINDOW_S = 10.0
#: The burst of a kind of SPEC §4 state line: twice the most that interval = 1 s makes of
#: one kind (a probe line per attempt, 3 a cycle: 30 in 10 s), so only a flood (e.g.
#: spoofed check-syncs) is held back.
STATE_BURST = 60
#: Kinds tracked at once; junk that varies its text shares one kind per logger and level.
MAX_KINDS = 512
_SHAPE_CHARS = 64
_DIGITS = b"0123456789"
_SUMMARY = "phoned_repeat_summary"  #: LogRecord attribute marking a summary line
_Key = tuple[str, int, bytes]  #: a kind: logger name, level, the line's start without digits


@dataclass(slots=True)
class _Kind:
    """One kind of line in its current window."""

    start: float  #: when the window began (clock seconds)
    burst: int  #: lines let through per window
    passed: int = 0
    suppressed: int = 0
    example: str = ""  #: the last line held back


class RepeatFilter(logging.Filter):
    """Lets `burst` lines of a kind through per window, then counts (the repeat rule)."""

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        *,
        burst: int = REPEAT_BURST,
        state_burst: int = STATE_BURST,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        """Args:
        emit: where summary lines go (the handler's `handle`).
        clock: monotonic seconds (tests hand in their own).
        """
        super().__init__()
        self._emit = emit
        self._burst, self._state_burst = burst, state_burst
        self._window_s, self._clock, self._max_kinds = window_s, clock, max_kinds
        self._lock = threading.Lock()
        self._kinds: dict[_Key, _Kind] = {}
        self._next_sweep = clock() + window_s

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` is written; sends the summaries that are due first."""
        if getattr(record, _SUMMARY, False):
            return True
        state = _is_state_line(record)
        text = _message(record)
        # bytes.translate: 0.1 µs where str.translate or re.sub take 2-3 µs a line
        shape = text[: 2 * _SHAPE_CHARS].encode(errors="replace")
        shape = shape if state else shape.translate(None, _DIGITS)
        key = (record.name, record.levelno, shape[:_SHAPE_CHARS])
        now = self._clock()
        with self._lock:
            due = self._sweep(now) if now >= self._next_sweep else []
            passes = self._count(key, text, now, due, self._state_burst if state else self._burst)
        for kind_key, kind in due:
            self._summarise(kind_key, kind)
        return passes

    def flush(self) -> None:
        """Send the summaries of every kind held back so far (at exit)."""
        with self._lock:
            due = [(key, kind) for key, kind in self._kinds.items() if kind.suppressed]
            self._kinds.clear()
        for key, kind in due:
            self._summarise(key, kind)

    def _count(
        self,
        key: _Key,
        text: str,
        now: float,
        due: list[tuple[_Key, _Kind]],
        burst: int,
    ) -> bool:
        kind = self._kinds.get(key)
        if kind is None and len(self._kinds) >= self._max_kinds:
            key = (key[0], key[1], b"")  # the shared kind of this logger and level
            kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = _Kind(now, burst)
        elif now - kind.start >= self._window_s:
            if kind.suppressed:
                due.append((key, replace(kind)))
            kind.start, kind.passed, kind.suppressed = now, 0, 0
        kind.passed += 1
        if kind.passed <= kind.burst:
            return True
        kind.suppressed += 1
        kind.example = text
        return False

    def _sweep(self, now: float) -> list[tuple[_Key, _Kind]]:
        """Forget the kinds whose window is over; returns those with lines held back."""
        due = []
        for key, kind in list(self._kinds.items()):
            if now - kind.start >= self._window_s:
                del self._kinds[key]
                if kind.suppressed:
                    due.append((key, kind))
        self._next_sweep = now + self._window_s
        return due

    def _summarise(self, key: _Key, kind: _Kind) -> None:
        name, level, _ = key
        record = logging.getLogger(name).makeRecord(
            name,
            level,
            __file__,
            0,
            "%d similar lines suppressed (at most %d every %g s), the last: %s",
            (kind.suppressed, kind.burst, self._window_s, kind.example[:200]),
            None,
            extra={_SUMMARY: True},
        )
        self._emit(record)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad arguments: the handler reports them when it formats the line
        return str(record.msg)


def _is_state_line(record: logging.LogRecord) -> bool:
    """A line of `phoned.logfmt.log_event`: `"%s %s"` with `event=...` fields second."""
    args = record.args
    return (
        record.msg == "%s %s"
        and isinstance(args, tuple)
        and len(args) == 2
        and isinstance(args[1], str)
        and args[1].startswith("event=")
    )


def install_repeat_limit(
    root: logging.Logger | None = None, *, at_exit: bool = True
) -> list[RepeatFilter]:
    """Put a `RepeatFilter` on each handler of `root` (default: the root logger), once;
    with `at_exit`, the summaries still held are sent at exit. Call after the handlers
    are set up (`phoned.logfmt.setup_logging`)."""
    logger = root if root is not None else logging.getLogger()
    installed = []
    for handler in logger.handlers:
        if any(isinstance(f, RepeatFilter) for f in handler.filters):
            continue
        repeat = RepeatFilter(handler.handle)
        handler.addFilter(repeat)
        if at_exit:
            atexit.register(repeat.flush)
        installed.append(repeat)
    return installed
