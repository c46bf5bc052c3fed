"""The LEDs and line-key buttons (SPEC §5), through gpiozero: the only importer of gpiozero.

Owns: the status LED (RGB or bi-colour), one bi-colour LED per BLF key, the line-key
buttons, the short provisioning flash and its timer thread. Must not touch: the display,
the status board, SIP: it is handed a `DeviceView` and calls `on_key(i)` when key i is pressed.

Rule 1: `show()` is idempotent: it diffs what the view asks for against what the LEDs show
and touches only the LEDs that differ (a steady LED is not rewritten, a blink not restarted).
Rule 2: a provisioning flash (`view.flash` turning "applied" / "rejected") plays once, then
the status LED returns to what the view asks for at that moment.
Rule 3: button callbacks run on gpiozero's thread; `on_key` must return quickly.
Rule 4: a board without GPIO (no chip, no pin library, pins taken) is one `LedError` naming
every reason gpiozero gave; `LedPanel.in_memory()` then keeps the LEDs' state in mock pins.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gpiozero import LED, RGBLED, Button
from gpiozero.exc import GPIOZeroError, PinFactoryFallback
from gpiozero.pins.mock import MockFactory, MockPWMPin

from phoned.device.board import BoardProfile
from phoned.device.view import DeviceView
from phoned.errors import PhonedError

log = logging.getLogger(__name__)

#: Status LED colour -> (red, green, blue) levels of an RGB LED (amber: red + half green).
RGB_LEVELS = {
    "off": (0.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "amber": (1.0, 0.5, 0.0),
    "red": (1.0, 0.0, 0.0),
}
#: Colour -> (red, green) of a bi-colour LED (amber: both dies on).
BI_LEVELS = {"off": (0, 0), "green": (0, 1), "amber": (1, 1), "red": (1, 0)}
#: SPEC §5 BLF lamps: off = unknown, green = idle, red = busy, red blinking = ringing.
FLASH_COLOURS = {"applied": "amber", "rejected": "red"}
#: How many times a provisioning flash blinks (SPEC §5: "a short flash").
FLASH_TIMES = 2
#: Debounce of the line-key buttons.
BUTTON_BOUNCE_S = 0.02


class LedError(PhonedError, OSError):
    """The GPIO pins of the board profile cannot be claimed or driven."""


@dataclass(frozen=True, slots=True)
class Lamp:
    """What one LED shows."""

    color: str  #: "off" | "green" | "amber" | "red"
    blinking: bool = False

    def label(self) -> str:
        """ "green", "red-blink": how `phoned status` names it."""
        return f"{self.color}-blink" if self.blinking and self.color != "off" else self.color


OFF = Lamp("off")
BLF_LAMPS = {
    "unknown": OFF,
    "idle": Lamp("green"),
    "busy": Lamp("red"),
    "ringing": Lamp("red", True),
}


class _Light(Protocol):
    def show(self, lamp: Lamp, period_s: float) -> None: ...
    def flash(self, color: str, period_s: float, times: int) -> None: ...
    def close(self) -> None: ...


class _RgbLight:
    """An RGB LED on three PWM pins: one gpiozero thread blinks all three in step."""

    def __init__(
        self, red: int, green: int, blue: int, active_high: bool, factory: object | None
    ) -> None:
        self._led = RGBLED(red, green, blue, active_high=active_high, pin_factory=factory)

    def show(self, lamp: Lamp, period_s: float) -> None:
        if lamp.blinking:
            self._led.blink(period_s, period_s, on_color=RGB_LEVELS[lamp.color], background=True)
        else:
            self._led.value = RGB_LEVELS[lamp.color]

    def flash(self, color: str, period_s: float, times: int) -> None:
        self._led.blink(period_s, period_s, on_color=RGB_LEVELS[color], n=times, background=True)

    def close(self) -> None:
        self._led.close()


class _BiLight:
    """A red/green LED on two plain pins; amber lights both dies."""

    def __init__(self, red: int, green: int, active_high: bool, factory: object | None) -> None:
        self._leds: list[Any] = []
        try:
            for pin in (red, green):
                self._leds.append(LED(pin, active_high=active_high, pin_factory=factory))
        except GPIOZeroError:
            self.close()
            raise

    def show(self, lamp: Lamp, period_s: float) -> None:
        for led, level in zip(self._leds, BI_LEVELS[lamp.color], strict=True):
            if lamp.blinking and level:
                led.blink(period_s, period_s, background=True)
            else:
                led.value = level

    def flash(self, color: str, period_s: float, times: int) -> None:
        for led, level in zip(self._leds, BI_LEVELS[color], strict=True):
            if level:
                led.blink(period_s, period_s, n=times, background=True)
            else:
                led.off()

    def close(self) -> None:
        for led in self._leds:
            led.close()


class LedPanel:
    """The board's LEDs and line keys, driven from `DeviceView`s (SPEC §5)."""

    def __init__(
        self,
        profile: BoardProfile,
        *,
        pin_factory: object | None = None,
        on_key: Callable[[int], None] | None = None,
        blink_s: float = 0.5,
        flash_s: float = 0.15,
    ) -> None:
        """Claim the profile's pins.

        Args:
            profile: which pins drive what.
            pin_factory: a gpiozero pin factory; None = mock pins for a `gpio = "mock"`
                profile (emulated), else gpiozero's default (the Pi's GPIO).
            on_key: called with the key index (0-based) when a line key is pressed.
            blink_s: on time and off time of a blinking LED.
            flash_s: on time and off time of each of the `FLASH_TIMES` provisioning blinks.

        Raises:
            LedError: a pin is in use, invalid, or no GPIO is available.
        """
        if pin_factory is None and profile.gpio == "mock":
            pin_factory = MockFactory(pin_class=MockPWMPin)
        self._factory = pin_factory
        self._blink_s, self._flash_s = blink_s, flash_s
        self._on_key = on_key
        self._lock = threading.RLock()
        self._closed = False
        self._devices: list[Any] = []
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always", PinFactoryFallback)
            try:
                self._claim_all(profile)
            except (GPIOZeroError, OSError, RuntimeError) as exc:  # lgpio, RPi.GPIO: theirs
                self.close()
                tried = "; ".join(_fallback_reason(w.message) for w in fallbacks)
                raise LedError(
                    f"leds: can't claim the pins of board {profile.name}: {exc}"
                    + (f" ({tried})" if tried else "")
                ) from exc
        for caught in fallbacks:  # gpiozero found a pin library after trying others
            log.info("leds: gpiozero: %s", _fallback_reason(caught.message))
        self._want = OFF  #: what the view asks of the status LED
        self._shown: Lamp | None = OFF  #: what the status LED shows (None: flashing)
        self._blf_shown = [OFF] * len(self._blf)
        self._flash_seen: str | None = None
        self._flash_timer: threading.Timer | None = None

    @classmethod
    def in_memory(
        cls, profile: BoardProfile, *, on_key: Callable[[int], None] | None = None
    ) -> LedPanel:
        """The profile's LEDs on gpiozero mock pins: what `phoned status` shows when the
        board has no GPIO (Rule 4); its keys are never pressed."""
        return cls(profile, pin_factory=MockFactory(pin_class=MockPWMPin), on_key=on_key)

    def _claim_all(self, profile: BoardProfile) -> None:
        self._status = self._status_light(profile)
        self._blf = [
            self._claim(_BiLight(p.red, p.green, True, self._factory)) for p in profile.blf_leds
        ]
        for index, pin in enumerate(profile.buttons):
            self._devices.append(self._button(index, pin))

    def _claim(self, light: _Light) -> _Light:
        self._devices.append(light)
        return light

    def _status_light(self, profile: BoardProfile) -> _Light:
        pins = profile.status_led
        if pins.kind == "rgb" and pins.blue is not None:
            return self._claim(
                _RgbLight(pins.red, pins.green, pins.blue, pins.active_high, self._factory)
            )
        return self._claim(_BiLight(pins.red, pins.green, pins.active_high, self._factory))

    def _button(self, index: int, pin: int) -> Button:
        button = Button(pin, bounce_time=BUTTON_BOUNCE_S, pin_factory=self._factory)

        def pressed() -> None:
            self._pressed(index)

        button.when_pressed = pressed
        return button

    def _pressed(self, index: int) -> None:
        """Rule 3: runs on gpiozero's thread; a failing callback must not kill it."""
        log.info("leds: line key %d pressed -> on_key(%d)", index + 1, index)
        if self._on_key is None:
            return
        try:
            self._on_key(index)
        except Exception:
            log.exception("leds: line key %d: on_key failed -> ignored", index + 1)

    def show(self, view: DeviceView) -> None:
        """Make the LEDs show `view` (Rule 1: only what differs changes)."""
        blf = [BLF_LAMPS.get(state, OFF) for _, state in view.blf[: len(self._blf)]]
        blf += [OFF] * (len(self._blf) - len(blf))
        with self._lock:
            if self._closed:
                return
            self._want = Lamp(view.status_led.color, view.status_led.blinking)
            if view.flash != self._flash_seen:
                self._flash_seen = view.flash
                if view.flash is not None:
                    self._start_flash(view.flash)
            if self._shown is not None and self._shown != self._want:
                self._status.show(self._want, self._blink_s)
                self._shown = self._want
            for index, (light, lamp) in enumerate(zip(self._blf, blf, strict=True)):
                if self._blf_shown[index] != lamp:
                    light.show(lamp, self._blink_s)
                    self._blf_shown[index] = lamp

    def _start_flash(self, flash: str) -> None:
        """Rule 2: blink the flash colour, then a timer puts back the wanted state."""
        color = FLASH_COLOURS.get(flash)
        if color is None:
            log.warning("leds: unknown flash %r -> ignored", flash)
            return
        if self._flash_timer is not None:
            self._flash_timer.cancel()
        self._status.flash(color, self._flash_s, FLASH_TIMES)
        self._shown = None
        timer = threading.Timer(2 * FLASH_TIMES * self._flash_s, self._end_flash)
        timer.daemon = True
        self._flash_timer = timer
        timer.start()

    def _end_flash(self) -> None:
        with self._lock:
            if self._closed or threading.current_thread() is not self._flash_timer:
                return
            self._flash_timer = None
            self._status.show(self._want, self._blink_s)
            self._shown = self._want

    def state(self) -> dict[str, object]:
        """What the LEDs show, for `phoned status`."""
        with self._lock:
            return {
                "status": self._want.color,
                "status_blinking": self._want.blinking,
                "flashing": self._shown is None,
                "blf": [lamp.label() for lamp in self._blf_shown],
            }

    @property
    def pin_factory(self) -> object | None:
        """The gpiozero pin factory in use (the mock one for an emulated board)."""
        return self._factory

    def close(self) -> None:
        """Stop blinking and the flash timer and release every pin (idempotent)."""
        with self._lock:
            self._closed = True
            timer, self._flash_timer = getattr(self, "_flash_timer", None), None
            if timer is not None:
                timer.cancel()
            devices, self._devices = self._devices, []
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=1.0)
        for device in reversed(devices):
            device.close()


def _fallback_reason(message: Warning | str) -> str:
    """ "lgpio: can not open gpiochip" from gpiozero's "Falling back from lgpio: ..." """
    return str(message).removeprefix("Falling back from ")
