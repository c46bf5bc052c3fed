"""What the device shows (SPEC §5): the LEDs' and the display's input, derived from the status.

Owns: `DeviceView`, a frozen picture of the phone for the LED and display adapters, and
its derivation from a `StatusBoard.snapshot()`. Must not touch: GPIO, the display, or
any state: the same snapshot always gives the same view (so tests compare pictures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phoned.service.status import LedState

#: BLF lamp states (SPEC §5): off = unknown, green = idle, red = busy, red blinking = ringing.
BLF_STATES = ("unknown", "idle", "ringing", "busy")


@dataclass(frozen=True, slots=True)
class DeviceView:
    """Everything the LEDs and the display show at one moment."""

    top_line: str  #: SPEC §5 display top line: "1001  primary", "1001  BACKUP", "NO SERVICE"
    status_led: LedState  #: SPEC §5 status LED
    server: str  #: "primary" or "backup": where registration and new calls go
    server_address: str  #: that server's address as configured
    registration: str  #: registration state on that server ("registered", "failed"...)
    vpn_up: bool | None  #: the tunnel in use is up; None when there is no VPN
    blf: tuple[tuple[str, str], ...]  #: (extension, state) per BLF key, in settings order
    last_event: str  #: one short line: "failover: primary missed 3 probes"
    flash: str | None = None  #: "applied" / "rejected" after provisioning (SPEC §5), else None


def view_from_snapshot(snapshot: dict[str, Any], flash: str | None = None) -> DeviceView:
    """The view of a `StatusBoard.snapshot()` (what `phoned status --json` prints)."""
    active = snapshot["active"]
    server = snapshot["servers"].get(active, {})
    led = snapshot["leds"]["status"]
    vpn = snapshot.get("vpn", {})
    switch = snapshot.get("last_switch") or {}
    last_event = ""
    if switch.get("reason") and switch.get("reason") != "start":
        verb = "failover" if switch.get("to") == "backup" else "failback"
        last_event = f"{verb}: {switch['reason']}"
    return DeviceView(
        top_line=snapshot["display"]["top_line"],
        status_led=LedState(led["color"], led["blinking"]),
        server=active,
        server_address=str(server.get("address", "")),
        registration=str(server.get("registration", "idle")),
        vpn_up=bool(vpn.get("up")) if vpn.get("enabled") else None,
        blf=tuple(snapshot.get("blf", {}).items()),
        last_event=last_event,
        flash=flash,
    )
