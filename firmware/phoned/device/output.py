"""The device's outputs: status LED, BLF lamps, line keys and display (SPEC §5).

Owns: building the board profile's LED panel and display, turning each status snapshot into
a `DeviceView` and showing it on both, and the line keys' presses. Must not touch: phone
state (the supervisor hands snapshots in) or pjsua2 (a key press is handed back as a
callback). A broken LED or display never stops the phone: the failure is logged once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phoned.device.board import load_board
from phoned.device.display import Display
from phoned.device.leds import LedPanel
from phoned.device.view import DeviceView, view_from_snapshot
from phoned.errors import PhonedError

log = logging.getLogger("phoned.device")


class DeviceOutput:
    """LEDs, keys and display of one board profile."""

    def __init__(self, profile_name: str, *, state_dir: str, on_key: Callable[[int], None]) -> None:
        """Raises:
        ConfigError: the profile is unknown or invalid.
        PhonedError: its LEDs or display cannot be opened.
        """
        self.profile = load_board(profile_name)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._panel = LedPanel(self.profile, on_key=on_key)
        # SPEC §5: the emulated panel is also drawn in the terminal, on stdout when it is
        # one (logs go to stderr, so under systemd nothing is drawn).
        terminal = self.profile.display.driver == "emulated" and sys.stdout.isatty()
        self._display = Display.from_spec(
            self.profile.display, state_dir=state_dir, terminal=terminal, stream=sys.stdout
        )
        self._last: DeviceView | None = None
        self._failed = False

    def show(self, snapshot: dict[str, Any], flash: str | None = None) -> None:
        """Show the state of `snapshot` on the LEDs and the display (only what changed)."""
        view = view_from_snapshot(snapshot, flash)
        if view == self._last:
            return
        self._last = view
        try:
            self._panel.show(view)
            self._display.show(view)
        except (PhonedError, OSError, ValueError) as exc:
            if not self._failed:  # once: a dead panel must not flood the journal
                log.error("device: cannot show the state: %s", exc)
            self._failed = True
        else:
            self._failed = False

    def state(self) -> dict[str, Any]:
        """For `phoned status`: the LEDs as lit and the display's frames."""
        frames = self._display.frames
        return {
            "board": self.profile.name,
            "leds": self._panel.state(),
            "frames": len(frames),
            "last_frame": str(frames[-1]) if frames else None,
            "flash": self._last.flash if self._last is not None else None,
        }

    def close(self) -> None:
        """Release the pins and the display."""
        self._panel.close()
        self._display.close()
