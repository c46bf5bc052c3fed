"""Board profiles (SPEC §5): which pins drive the LEDs and buttons, and which display is fitted.

Owns: the `BoardProfile` dataclasses and loading one profile, by name from the package's
`boards/` directory (a symlink to `board/profiles/`) or from a path. Reads that one TOML
file and nothing else. Must not touch: GPIO, the display, logging, any process-wide state.

Rule 1: a profile is checked whole before it is used: unknown keys, a pin outside the
header's GPIO range, or one pin used twice is a `ConfigError` shaped
`<file>:<line>: <key> must be <expected>, got <value>`; the first problem found is reported.
Rule 2: pin numbers are Broadcom (BCM) GPIO numbers, as gpiozero takes them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from phoned.config.check import KeyPath, scan_lines
from phoned.config.rules import show
from phoned.errors import ConfigError

#: BCM GPIO numbers a 40-pin Raspberry Pi header exposes.
GPIO_RANGE = range(28)
#: Display drivers the display adapter knows.
DISPLAY_DRIVERS = ("emulated", "st7735", "ssd1306")
#: Options each display bus needs (`[display.options]`), all integers.
_BUS_OPTIONS = {"spi": ("port", "device", "dc"), "i2c": ("port", "address"), "none": ()}
#: Options that name GPIO pins (checked against the header and for reuse).
_PIN_OPTIONS = ("dc", "rst", "backlight")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True, slots=True)
class StatusLedPins:
    """The status LED: an RGB LED (three PWM pins) or a bi-colour red/green LED."""

    kind: str  #: "rgb" or "bicolour"
    red: int
    green: int
    blue: int | None = None  #: only for "rgb"
    active_high: bool = True  #: False for a common-anode LED (pin low = lit)


@dataclass(frozen=True, slots=True)
class BiLedPins:
    """One BLF key's bi-colour LED (red + green, both on = amber)."""

    red: int
    green: int


@dataclass(frozen=True, slots=True)
class DisplaySpec:
    """The fitted display, as the display adapter needs it."""

    driver: str  #: "emulated" | "st7735" | "ssd1306"
    width: int  #: pixels
    height: int  #: pixels
    interface: str  #: "spi" | "i2c" | "none" (emulated)
    #: Bus and panel options (spi: port, device, dc, rst, backlight; i2c: port, address).
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class BoardProfile:
    """One board: its status LED, BLF key LEDs, line-key buttons and display."""

    name: str
    status_led: StatusLedPins
    blf_leds: tuple[BiLedPins, ...]  #: one per BLF key, in key order
    buttons: tuple[int, ...]  #: line-key button pins, in key order (pressed = pin low)
    display: DisplaySpec
    #: "mock": pins are gpiozero mock pins kept in memory (emulated), "real": the Pi's GPIO.
    gpio: str = "real"


def available_boards() -> tuple[str, ...]:
    """The names of the profiles shipped in the package, sorted."""
    folder = resources.files("phoned") / "boards"
    return tuple(
        sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    )


def load_board(name_or_path: str | Path) -> BoardProfile:
    """Load a profile: a shipped one by name ("emulated", "rpi-st7735") or a TOML file path.

    Raises:
        ConfigError: the profile is unknown, unreadable, not TOML, or breaks a rule.
    """
    text, source, name = _read(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return parse_board(data, _Where(source, scan_lines(text)), name)


def _read(name_or_path: str | Path) -> tuple[str, str, str]:
    """(text, source shown in errors, profile name) of a named profile or a file."""
    raw = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in raw or raw.endswith(".toml"):
        path = Path(raw)
        try:
            return path.read_text(encoding="utf-8"), raw, path.stem
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{raw}: cannot read board profile: {exc}") from exc
    known = available_boards()
    if not _NAME.fullmatch(raw) or raw not in known:
        raise ConfigError(f"board profile must be one of {', '.join(known)}, got {show(raw)}")
    entry = resources.files("phoned") / "boards" / f"{raw}.toml"
    return entry.read_text(encoding="utf-8"), f"boards/{raw}.toml", raw


class _Where:
    """Turns a key path into `<file>:<line>:` for error messages."""

    def __init__(self, source: str, lines: dict[KeyPath, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: KeyPath, expected: str, value: object, label: str = "") -> ConfigError:
        """`<file>:<line>: <label or key> must be <expected>, got <value>`."""
        shown = "nothing" if value is None else show(value)
        return self.fail(path, f"{label or '.'.join(path)} must be {expected}, got {shown}")

    def fail(self, path: KeyPath, text: str) -> ConfigError:
        """`<file>:<line>: <text>`, the line of `path` or of its nearest parent."""
        found = (self.lines.get(path[:end]) for end in range(len(path), 0, -1))
        line = next((number for number in found if number is not None), 1)
        return ConfigError(f"{self.source}:{line}: {text}")


def parse_board(data: Mapping[str, Any], where: _Where, name: str) -> BoardProfile:
    """A `BoardProfile` from parsed TOML (`where` places errors in the file)."""
    _only(data, ("description", "gpio", "buttons", "status_led", "blf_leds", "display"), (), where)
    gpio = data.get("gpio", "real")
    if gpio not in ("real", "mock"):
        raise where.error(("gpio",), '"real" or "mock"', gpio)
    buttons = data.get("buttons", [])
    if not isinstance(buttons, list):
        raise where.error(("buttons",), "a list of GPIO pins", buttons)
    leds = data.get("blf_leds", [])
    if not isinstance(leds, list):
        raise where.error(("blf_leds",), "an array of tables [[blf_leds]]", leds)
    profile = BoardProfile(
        name=name,
        status_led=_status_led(_table(data, ("status_led",), where), where),
        blf_leds=tuple(_bi_led(led, i, where) for i, led in enumerate(leds)),
        buttons=tuple(
            _pin(pin, ("buttons",), where, f"buttons[{i}]") for i, pin in enumerate(buttons)
        ),
        display=_display(_table(data, ("display",), where), where),
        gpio=gpio,
    )
    _check_unique(profile, where)
    return profile


def _table(data: Mapping[str, Any], path: KeyPath, where: _Where) -> Mapping[str, Any]:
    value = data.get(path[-1])
    if not isinstance(value, dict):
        raise where.error(path, "a table", value)
    return value


def _only(table: Mapping[str, Any], allowed: tuple[str, ...], path: KeyPath, where: _Where) -> None:
    for key in table:
        if key not in allowed:
            name = ".".join((*path, key))
            raise where.fail(
                (*path, key), f"unknown key {name}, expected one of {', '.join(allowed)}"
            )


def _pin(value: object, path: KeyPath, where: _Where, label: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in GPIO_RANGE:
        expected = f"a BCM GPIO number {GPIO_RANGE.start}..{GPIO_RANGE.stop - 1}"
        raise where.error(path, expected, value, label)
    return value


def _status_led(table: Mapping[str, Any], where: _Where) -> StatusLedPins:
    path = ("status_led",)
    kind = table.get("kind")
    if kind not in ("rgb", "bicolour"):
        raise where.error((*path, "kind"), '"rgb" or "bicolour"', kind)
    colours = ("red", "green", "blue") if kind == "rgb" else ("red", "green")
    _only(table, ("kind", "active_high", *colours), path, where)
    active_high = table.get("active_high", True)
    if not isinstance(active_high, bool):
        raise where.error((*path, "active_high"), "true or false", active_high)
    pins = {c: _pin(table.get(c), (*path, c), where) for c in colours}
    return StatusLedPins(kind, pins["red"], pins["green"], pins.get("blue"), active_high)


def _bi_led(table: object, index: int, where: _Where) -> BiLedPins:
    path = ("blf_leds",)
    if not isinstance(table, dict):
        raise where.error(path, "tables with red and green pins", table)
    _only(table, ("red", "green"), path, where)
    red, green = (
        _pin(table.get(c), (*path, c), where, f"blf_leds[{index}].{c}") for c in ("red", "green")
    )
    return BiLedPins(red, green)


def _display(table: Mapping[str, Any], where: _Where) -> DisplaySpec:
    path = ("display",)
    _only(table, ("driver", "width", "height", "interface", "options"), path, where)
    driver = table.get("driver")
    if driver not in DISPLAY_DRIVERS:
        raise where.error((*path, "driver"), " or ".join(f'"{d}"' for d in DISPLAY_DRIVERS), driver)
    interface = table.get("interface", "none" if driver == "emulated" else None)
    if interface not in _BUS_OPTIONS or (interface == "none") != (driver == "emulated"):
        expected = '"none"' if driver == "emulated" else '"spi" or "i2c"'
        raise where.error((*path, "interface"), expected, interface)
    size = {}
    for key in ("width", "height"):
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 1024:
            raise where.error((*path, key), "pixels 8..1024", value)
        size[key] = value
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise where.error((*path, "options"), "a table", options)
    _check_options(options, interface, where)
    return DisplaySpec(
        driver, size["width"], size["height"], interface, MappingProxyType(dict(options))
    )


def _check_options(options: Mapping[str, Any], interface: str, where: _Where) -> None:
    path = ("display", "options")
    for key in _BUS_OPTIONS[interface]:
        value = options.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise where.error(
                (*path, key), f"an integer >= 0 (the {interface} bus needs it)", value
            )
    for key in _PIN_OPTIONS:
        if key in options:
            _pin(options[key], (*path, key), where)


def _check_unique(profile: BoardProfile, where: _Where) -> None:
    """Rule 1: one pin, one job."""
    seen: dict[int, str] = {}
    for pin, label, path in _pins_of(profile):
        if pin in seen:
            raise where.error(path, f"a pin not already used by {seen[pin]}", pin, label)
        seen[pin] = label


def _pins_of(profile: BoardProfile) -> list[tuple[int, str, KeyPath]]:
    """Every pin of the profile with its label and its key path (for the error's line)."""
    led = profile.status_led
    colours = {"red": led.red, "green": led.green, "blue": led.blue}
    pins: list[tuple[int, str, KeyPath]] = [
        (pin, f"status_led.{c}", ("status_led", c)) for c, pin in colours.items() if pin is not None
    ]
    for i, bi in enumerate(profile.blf_leds):
        pins += [
            (bi.red, f"blf_leds[{i}].red", ("blf_leds", "red")),
            (bi.green, f"blf_leds[{i}].green", ("blf_leds", "green")),
        ]
    pins += [(pin, f"buttons[{i}]", ("buttons",)) for i, pin in enumerate(profile.buttons)]
    for key in _PIN_OPTIONS:
        value = profile.display.options.get(key)
        if isinstance(value, int):
            pins.append((value, f"display.options.{key}", ("display", "options", key)))
    return pins
