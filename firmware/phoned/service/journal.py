"""The service's log lines: one per probe result and state change (SPEC §4).

Owns: the wording and the `key=value` fields of each line an installer reads
(`failover: primary missed 3 probes, backup answered in 4 ms -> backup 192.0.2.12:5060`).
Must not touch: any state; callers hand in what happened and the addresses to name.
Never logs a secret: no function here receives one.
"""

from __future__ import annotations

import logging

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
from phoned.sip.stack import BlfChanged, CallInfo, RegistrationChanged, RegState

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
