"""What the phone knows about itself, for `phoned status`, the LEDs and the display.

Owns: the status board (written by the supervisor thread, read by the control thread,
guarded by one lock) and the pure rules of SPEC §5 that turn it into a display top line and
a status LED. Must not touch: sockets, pjsua2, GPIO or the display itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from phoned.core.events import Server, Service, Verdict


@dataclass(frozen=True, slots=True)
class LedState:
    """A status LED as SPEC §5 describes it."""

    color: str  #: "green" | "amber" | "red" | "off"
    blinking: bool = False


def top_line(ext: str, active: Server, service: Service, registered: bool) -> str:
    """SPEC §5: the display's top line for this state."""
    if service is Service.NO_SERVICE:
        return "NO SERVICE"
    if not registered:
        return f"{ext}  registering"
    return f"{ext}  {'primary' if active is Server.PRIMARY else 'BACKUP'}"


def status_led(active: Server, service: Service, registered: bool) -> LedState:
    """SPEC §5: the status LED for this state."""
    if service is Service.NO_SERVICE:
        return LedState("red", blinking=True)
    if not registered:
        return LedState("green", blinking=True)
    return LedState("green" if active is Server.PRIMARY else "amber")


@dataclass(frozen=True, slots=True)
class BoardFacts:
    """What the status shows that the settings own: read at each snapshot, never kept."""

    ext: str  #: the account's user name
    servers: Mapping[Server, tuple[str, int]]  #: each server probed: configured host, port
    keepalive: bool
    interval_s: float


@dataclass(slots=True)
class ServerStatus:
    """One PBX as the phone sees it (its address is the settings': `BoardFacts`)."""

    registration: str = "idle"  #: a `sip.RegState` value
    registration_detail: str = ""  #: "200 OK", "408 Request Timeout"
    last_cycle: Verdict | None = None


@dataclass(slots=True)
class _Board:
    servers: dict[Server, ServerStatus] = field(default_factory=dict)
    active: Server = Server.PRIMARY
    service: Service = Service.STARTING
    cycle: int | None = None
    last_switch: dict[str, Any] = field(default_factory=dict)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    blf: dict[str, str] = field(default_factory=dict)
    apps: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)
    vpn: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    device: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


class StatusBoard:
    """The phone's state, safe to update from one thread and read from another."""

    def __init__(self, facts: Callable[[], BoardFacts]) -> None:
        """Args:
        facts: what the settings in force say (account, servers, keep-alive), read at
            each snapshot so that new settings show at once and nothing here goes stale.
        """
        self._lock = threading.Lock()
        self._facts = facts
        self._b = _Board({role: ServerStatus() for role in Server})
        self._config: Callable[[], dict[str, Any]] = dict
        self._counters: Callable[[], dict[str, int]] = dict

    def show_config(self, report: Callable[[], dict[str, Any]]) -> None:
        """Where the settings in force came from (SPEC §7 `config`), read at each snapshot."""
        self._config = report

    def show_counters(self, counters: Callable[[], dict[str, int]]) -> None:
        """What never counted (stray replies, refused check-syncs, SPEC §10), read at
        each snapshot from their owners."""
        self._counters = counters

    def watch_blf(self, keys: tuple[str, ...]) -> None:
        """Show these BLF keys: a key kept keeps its lamp, a new one is unknown until a
        NOTIFY says otherwise, a removed one is gone."""
        with self._lock:
            self._b.blf = {key: self._b.blf.get(key, "unknown") for key in keys}

    def set_apps(self, urls: dict[str, str]) -> None:
        """Record each Phone App's URL on the server in use (SPEC §2 step 3)."""
        with self._lock:
            self._b.apps = dict(urls)

    def set_step(self, step: str, outcome: str) -> None:
        """Record the outcome of one step of the last switch (SPEC §2: vpn, sip, apps)."""
        with self._lock:
            self._b.steps[step] = outcome

    def set_vpn(self, state: dict[str, Any]) -> None:
        """Record the VPN's state (never a key: the adapter leaves them out)."""
        with self._lock:
            self._b.vpn = {"enabled": True, **state}

    def set_device(self, state: dict[str, Any]) -> None:
        """Record what the board's LEDs and display show (SPEC §4: LED and display state)."""
        with self._lock:
            self._b.device = dict(state)

    def app_url(self, name: str) -> str | None:
        """The URL of app `name` on the server in use, if configured."""
        with self._lock:
            return self._b.apps.get(name)

    def set_blf(self, ext: str, state: str) -> None:
        """Record the state of one BLF key (idle, ringing, busy, unknown)."""
        with self._lock:
            self._b.blf[ext] = state

    def set_active(self, server: Server, reason: str) -> None:
        """Record a switch of the active server (SPEC §2)."""
        with self._lock:
            previous = self._b.active
            self._b.active = server
            self._b.last_switch = {
                "from": previous.value,
                "to": server.value,
                "reason": reason,
                "at": time.time(),
            }

    def set_service(self, service: Service) -> None:
        """Record the service state (OK / NO_SERVICE)."""
        with self._lock:
            self._b.service = service

    def set_registration(self, server: Server, state: str, detail: str) -> None:
        """Record the registration state of one server."""
        with self._lock:
            self._b.servers[server].registration = state
            self._b.servers[server].registration_detail = detail

    def set_cycle(self, cycle: int, verdicts: tuple[Verdict, ...]) -> None:
        """Record the last judged cycle."""
        with self._lock:
            self._b.cycle = cycle
            for verdict in verdicts:
                self._b.servers[verdict.server].last_cycle = verdict

    def set_call(self, call_id: int, call: dict[str, Any] | None) -> None:
        """Record a live call (a JSON-able dict), or forget an ended one (None)."""
        with self._lock:
            if call is None:
                self._b.calls.pop(call_id, None)
            else:
                self._b.calls[call_id] = call

    def has_calls(self) -> bool:
        """Whether a call is up (an apply that needs a restart waits for it to end)."""
        with self._lock:
            return bool(self._b.calls)

    @property
    def active(self) -> Server:
        """The server registration, subscriptions and new calls go to."""
        with self._lock:
            return self._b.active

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of everything `phoned status` shows (SPEC §4)."""
        facts = self._facts()
        config = self._config()
        counters = self._counters()
        with self._lock:
            b = self._b
            active = b.servers[b.active]
            registered = active.registration == "registered"
            servers = {
                role.value: _server_dict(address, b.servers[role])
                for role, address in facts.servers.items()
            }
            led = status_led(b.active, b.service, registered)
            return {
                "account": facts.ext,
                "active": b.active.value,
                "service": b.service.value,
                "registered": registered,
                "cycle": b.cycle,
                "keepalive": {"enabled": facts.keepalive, "interval_s": facts.interval_s},
                "servers": servers,
                "last_switch": dict(b.last_switch),
                "calls": [dict(call) for _, call in sorted(b.calls.items())],
                "blf": dict(b.blf),
                "apps": dict(b.apps),
                "switch_steps": dict(b.steps),
                "vpn": dict(b.vpn),
                "device": dict(b.device),
                "display": {"top_line": top_line(facts.ext, b.active, b.service, registered)},
                "leds": {"status": asdict(led)},
                "config": config,
                "counters": counters,
                "uptime_s": round(time.time() - b.started_at, 1),
            }


def _server_dict(address: tuple[str, int], status: ServerStatus) -> dict[str, Any]:
    verdict = status.last_cycle
    return {
        "address": address[0],
        "port": address[1],
        "registration": status.registration,
        "registration_detail": status.registration_detail,
        "last_cycle": None
        if verdict is None
        else {
            "up": verdict.up,
            "attempts": verdict.attempts,
            "rtt_ms": None if verdict.rtt_ms is None else round(verdict.rtt_ms, 1),
            "status_code": verdict.status_code,
            "reason": verdict.reason,
        },
    }


def render_text(snapshot: dict[str, Any]) -> str:
    """`phoned status` without --json: a few lines a person reads at a glance."""
    flash = (snapshot.get("device") or {}).get("flash")
    shown = f"config {flash} (flashing; then {snapshot['display']['top_line']})" if flash else ""
    lines = [
        f"display:  {shown or snapshot['display']['top_line']}",
        f"active:   {snapshot['active']}   service: {snapshot['service']}"
        f"   cycle: {snapshot['cycle'] if snapshot['cycle'] is not None else '-'}",
    ]
    for role, server in snapshot["servers"].items():
        last = server["last_cycle"]
        probe = "not judged yet" if last is None else ("up" if last["up"] else "down")
        if last is not None and last["reason"]:
            probe += f" ({last['reason']})"
        lines.append(
            f"{role + ':':9} {server['address']}:{server['port']}  "
            f"registration {server['registration']}  last cycle {probe}"
        )
    led = snapshot["leds"]["status"]
    lines.append(f"led:      {led['color']}{' blinking' if led['blinking'] else ''}")
    if snapshot.get("blf"):
        lamps = "  ".join(f"{ext} {state}" for ext, state in snapshot["blf"].items())
        lines.append(f"blf:      {lamps}")
    vpn = snapshot.get("vpn", {})
    if vpn.get("enabled"):
        lines.append(
            f"vpn:      {vpn.get('interface')} ({vpn.get('backend')}) "
            f"{'up' if vpn.get('up') else 'DOWN'}, routes via the {vpn.get('active')} peer"
        )
    for name, url in snapshot.get("apps", {}).items():
        lines.append(f"app:      {name} -> {url}")
    for call in snapshot.get("calls", []):
        lines.append(
            f"call {call['call_id']}:   {call['direction']} {call['remote']} {call['state']}"
            f" via {call['server']} ({call['duration_s']:.0f} s)"
        )
    config = snapshot.get("config") or {}
    if config.get("source"):
        origin = f"{config['source']} {config.get('url') or ''}".rstrip()
        lines.append(f"config:   {origin}, last {config.get('last_result')}")
    if any((counters := snapshot.get("counters") or {}).values()):
        lines.append(
            "ignored:  " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counters.items())
        )
    if snapshot["last_switch"]:
        switch = snapshot["last_switch"]
        lines.append(f"switched: {switch['from']} -> {switch['to']}: {switch['reason']}")
    return "\n".join(lines)
