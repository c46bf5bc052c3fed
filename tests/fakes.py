"""Fakes of phoned's ports, one per port, each recording what happened (STYLE §4).

Owns: test doubles only. Must not touch: real sockets, clocks, pins or processes.
Sections start with a `# --- <port>` line; append new fakes below the last one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from phoned.core.events import Server
from phoned.errors import PhonedError
from phoned.sip.account import SipTarget
from phoned.sip.leaving import Leaving

# --- clocks


class FakeClock:
    """A `phoned.clock.Clock` that moves only when a test moves it (time travel)."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now_s = start_s
        #: every time `set()`/`advance()` moved the clock to, in order
        self.history: list[float] = [start_s]

    def now(self) -> float:
        """Return the time the test last set."""
        return self._now_s

    def set(self, when_s: float) -> float:
        """Jump to `when_s` (never backwards: a monotonic clock cannot)."""
        if when_s < self._now_s:
            raise ValueError(f"FakeClock cannot go back from {self._now_s} to {when_s}")
        self._now_s = when_s
        self.history.append(when_s)
        return when_s

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds`; return the new time."""
        return self.set(self._now_s + seconds)


# --- the ports of phoned.service.ports (the §2 switch and the wiring drive these)


class StepFailedError(PhonedError):
    """What a fake raises when a test asks one of its steps to fail."""


class CallLog:
    """One ordered list of what every fake did, shared, so tests can assert the order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def record(self, who: str, what: str) -> None:
        """Append one call: `("sip", "use_server backup 198.51.100.20:5060")`."""
        self.calls.append((who, what))

    def names(self) -> list[str]:
        """`"who.what-verb"` of each call, in order: `["vpn.point_to", "sip.use_server"]`."""
        return [f"{who}.{what.split()[0]}" for who, what in self.calls]


class FakeSipStack:
    """A `SipStack`: records `use_server` and `accept_calls_from`; `fail` makes them raise."""

    def __init__(self, log: CallLog | None = None) -> None:
        self.log = log or CallLog()
        self.fail: str | None = None  #: a method name that raises StepFailedError
        self.server: Server | None = None
        self.target: SipTarget | None = None
        self.peers: dict[Server, tuple[str, ...]] = {}
        self.left: Leaving | None = None

    def use_server(self, server: Server, target: SipTarget, *, left: Leaving | None = None) -> None:
        """Record the server, the target and what was said of the server left (or fail)."""
        self.log.record("sip", f"use_server {server.value} {target.host}:{target.port}")
        self.left = left
        if self.fail == "use_server":
            raise StepFailedError(f"pjsua refused the {server.value} account")
        self.server, self.target = server, target

    def accept_calls_from(self, peers: Mapping[Server, Iterable[str]]) -> None:
        """Record who may call."""
        self.log.record("sip", "accept_calls_from")
        if self.fail == "accept_calls_from":
            raise StepFailedError("no transport")
        self.peers = {server: tuple(hosts) for server, hosts in peers.items()}


class FakeVpn:
    """A `Vpn`: records where the routes point; `fail = True` makes `point_to` raise."""

    def __init__(self, log: CallLog | None = None) -> None:
        self.log = log or CallLog()
        self.fail = False
        self.peer: Server | None = None

    def point_to(self, server: Server) -> None:
        """Record the peer the routes follow (or fail)."""
        self.log.record("vpn", f"point_to {server.value}")
        if self.fail:
            raise StepFailedError("netlink: operation not permitted")
        self.peer = server

    def status(self) -> dict[str, object]:
        """The peer in use."""
        return {"peer": None if self.peer is None else self.peer.value}


class FakeApps:
    """An `Apps`: `urls[server]` is what `point_to(server)` puts in force."""

    def __init__(self, urls: dict[Server, dict[str, str]], log: CallLog | None = None) -> None:
        self.log = log or CallLog()
        self.urls = urls
        self.current: dict[str, str] = {}

    def point_to(self, server: Server) -> dict[str, str]:
        """Put `server`'s URLs in force."""
        self.log.record("apps", f"point_to {server.value}")
        self.current = dict(self.urls.get(server, {}))
        return dict(self.current)


class FakeDeviceOutput:
    """A `DeviceOutput`: keeps every snapshot shown (and its flash)."""

    def __init__(self, log: CallLog | None = None) -> None:
        self.log = log or CallLog()
        self.shown: list[tuple[dict[str, Any], str | None]] = []

    def show(self, snapshot: dict[str, Any], flash: str | None = None) -> None:
        """Keep what would be shown."""
        self.log.record("device", f"show {snapshot.get('active')}")
        self.shown.append((snapshot, flash))

    def state(self) -> dict[str, Any]:
        """How many frames were shown."""
        return {"frames": len(self.shown)}
