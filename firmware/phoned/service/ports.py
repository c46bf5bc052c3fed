"""The ports: what the shell needs of each adapter, in the phone's words (STYLE §4).

Owns: small `typing.Protocol`s, one per adapter the §2 switch and the wiring drive. The
real adapters (`sip.stack.PjsuaStack`, `net.vpn.WireGuardVpn`, `net.apps.PhoneApps`,
`device.output.DeviceOutput`) satisfy them structurally; `tests/fakes.py` has a recording
fake of each, so the switch's order and the settings path are tested without real peers.
Must not touch: any implementation. Protocols only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from phoned.core.events import Server
from phoned.sip.account import SipTarget
from phoned.sip.leaving import Leaving


class SipStack(Protocol):
    """Registration, subscriptions and new calls on one server at a time (SPEC §2 step 2)."""

    def use_server(self, server: Server, target: SipTarget, *, left: Leaving | None = None) -> None:
        """Register on `server` at `target`; subscriptions and new calls follow. The other
        server is sent nothing more when `left` is DEAD (SPEC §10), else un-REGISTERed
        once `server` is registered (JUDGING: if its verdict says it is up).

        Raises:
            PhonedError: the stack refused (the switch reports it and goes on).
        """
        ...

    def accept_calls_from(self, peers: Mapping[Server, Iterable[str]]) -> None:
        """The addresses incoming calls may come from (each server and its proxy)."""
        ...


class Vpn(Protocol):
    """The WireGuard tunnel whose shared routes follow the server in use (SPEC §2 step 1)."""

    def point_to(self, server: Server) -> None:
        """Move the routes that carry PBX traffic to `server`'s peer.

        Raises:
            PhonedError: netlink or the UAPI refused.
        """
        ...

    def status(self) -> dict[str, object]:
        """The tunnel's state for `phoned status` (never a key)."""
        ...


class Apps(Protocol):
    """Phone App URLs on the server in use (SPEC §2 step 3)."""

    def point_to(self, server: Server) -> dict[str, str]:
        """Each app's URL on `server`, now in force; returned for the status."""
        ...


class DeviceOutput(Protocol):
    """The LEDs and the display (SPEC §5, §2 step 4)."""

    def show(self, snapshot: dict[str, Any], flash: str | None = None) -> None:
        """Show the state of a status snapshot (only what changed)."""
        ...

    def state(self) -> dict[str, Any]:
        """What they show, for `phoned status`."""
        ...
