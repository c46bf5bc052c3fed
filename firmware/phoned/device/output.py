"""The device's outputs: status LED, BLF lamps, line keys and display (SPEC §5).

Owns: building the board profile's LED panel and display, turning each status snapshot into
a `DeviceView` and showing it on both, and the line keys' presses. Must not touch: phone
state (the supervisor hands snapshots in) or pjsua2 (a key press is handed back as a
callback).

Rule (SPEC §10 "Local faults"): a missing or broken LED panel or display never stops the
phone. A device that cannot be opened is logged once with its reason and replaced by one
that keeps its state in memory (`faults` in the status says which); a device that fails
while showing is logged once per run of failures, and each part is tried on its own.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phoned.device.board import load_board
from phoned.device.display import Display, DisplayError
from phoned.device.leds import LedError, LedPanel
from phoned.device.view import DeviceView, view_from_snapshot
from phoned.errors import PhonedError

log = logging.getLogger("phoned.device")

#: What a device may raise while showing or closing (luma and gpiozero raise these).
_DEVICE_ERRORS = (PhonedError, OSError, ValueError, RuntimeError)


class DeviceOutput:
    """LEDs, keys and display of one board profile."""

    def __init__(self, profile_name: str, *, state_dir: str, on_key: Callable[[int], None]) -> None:
        """Raises:
        ConfigError: the profile is unknown or invalid (a missing device is not an error).
        """
        self.profile = load_board(profile_name)
        #: the devices that could not be opened, each with its reason (for `phoned status`)
        self.faults: dict[str, str] = {}
        with contextlib.suppress(OSError):  # read-only: the display says so, once
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._panel = self._open_leds(on_key)
        self._display = self._open_display(state_dir)
        self._last: DeviceView | None = None
        self._failing: set[str] = set()

    def _open_leds(self, on_key: Callable[[int], None]) -> LedPanel:
        try:
            return LedPanel(self.profile, on_key=on_key)
        except LedError as exc:
            self.faults["leds"] = str(exc)
            log.error("%s; LEDs and keys off (their state kept in memory)", exc)
            return LedPanel.in_memory(self.profile, on_key=on_key)

    def _open_display(self, state_dir: str) -> Display:
        spec = self.profile.display
        # SPEC §5: the emulated panel is also drawn in the terminal, on stdout when it is
        # one (logs go to stderr, so under systemd nothing is drawn).
        terminal = spec.driver == "emulated" and sys.stdout.isatty()
        try:
            return Display.from_spec(
                spec, state_dir=state_dir, terminal=terminal, stream=sys.stdout
            )
        except DisplayError as exc:
            self.faults["display"] = str(exc)
            log.error("%s; display off (its picture kept in memory)", exc)
            return Display.in_memory(spec, state_dir=state_dir)

    def show(self, snapshot: dict[str, Any], flash: str | None = None) -> None:
        """Show the state of `snapshot` on the LEDs and the display (only what changed)."""
        view = view_from_snapshot(snapshot, flash)
        if view == self._last:
            return
        self._last = view
        self._try("leds", self._panel.show, view)
        self._try("display", self._display.show, view)

    def _try(self, part: str, show: Callable[[DeviceView], object], view: DeviceView) -> None:
        """Show `view` on one part; a failure is logged once until that part works again."""
        try:
            show(view)
        except _DEVICE_ERRORS as exc:
            if part not in self._failing:  # once: a dead panel must not flood the journal
                log.error("device: the %s can't show the state: %s", part, exc)
                self._failing.add(part)
        else:
            if part in self._failing:
                log.info("device: the %s shows the state again", part)
                self._failing.discard(part)

    def state(self) -> dict[str, Any]:
        """For `phoned status`: the LEDs as lit and the display's frames."""
        frame = self._display.last_frame
        return {
            "board": self.profile.name,
            "leds": self._panel.state(),
            "frames": self._display.shown,  # pictures shown: grows with every change
            "last_frame": str(frame) if frame is not None else None,
            "flash": self._last.flash if self._last is not None else None,
            "faults": dict(self.faults),
        }

    def close(self) -> None:
        """Release the pins and the display (a failure is logged, never raised)."""
        for part, close in (("leds", self._panel.close), ("display", self._display.close)):
            try:
                close()
            except _DEVICE_ERRORS as exc:
                log.warning("device: closing the %s: %s", part, exc)
