"""The LEDs and line keys on gpiozero mock pins: every SPEC §5 row and every BLF state.

Runs against the RGB board (emulated) and the bi-colour board (rpi-ssd1306). Blinking is
checked from each pin's history (`MockPin.states`), polled with a deadline.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
from gpiozero import LED, Device
from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinFactoryFallback
from gpiozero.pins.mock import MockFactory, MockPWMPin

from phoned.device.board import BoardProfile, load_board
from phoned.device.leds import LedError, LedPanel
from phoned.device.view import DeviceView
from phoned.service.status import LedState
from phonelab.procs import poll_until

BLINK_S = 0.02
FLASH_S = 0.02
#: SPEC §5 status colours as pin levels: (red, green, blue) on RGB, (red, green) on bi-colour.
LEVELS: dict[str, dict[str, tuple[float, ...]]] = {
    "rgb": {"off": (0, 0, 0), "green": (0, 1, 0), "amber": (1, 0.5, 0), "red": (1, 0, 0)},
    "bicolour": {"off": (0, 0), "green": (0, 1), "amber": (1, 1), "red": (1, 0)},
}


@dataclass
class Rig:
    profile: BoardProfile
    factory: MockFactory
    panel: LedPanel
    pressed: list[int] = field(default_factory=list)

    def status_pins(self) -> list[MockPWMPin]:
        led = self.profile.status_led
        numbers = [led.red, led.green] + ([led.blue] if led.blue is not None else [])
        return [self.factory.pin(n) for n in numbers]

    def blf_pins(self, key: int) -> list[MockPWMPin]:
        led = self.profile.blf_leds[key]
        return [self.factory.pin(led.red), self.factory.pin(led.green)]

    def levels(self) -> tuple[float, ...]:
        return tuple(float(pin.state) for pin in self.status_pins())

    def expect(self, color: str) -> tuple[float, ...]:
        return LEVELS[self.profile.status_led.kind][color]


@pytest.fixture(params=["emulated", "rpi-ssd1306"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    factory = MockFactory(pin_class=MockPWMPin)
    profile = load_board(request.param)
    pressed: list[int] = []
    panel = LedPanel(
        profile, pin_factory=factory, on_key=pressed.append, blink_s=BLINK_S, flash_s=FLASH_S
    )
    yield Rig(profile, factory, panel, pressed)
    panel.close()
    factory.reset()


def view(
    led: LedState, top: str = "1001  primary", blf: tuple[str, ...] = (), flash: str | None = None
) -> DeviceView:
    keys = tuple((str(1002 + i), state) for i, state in enumerate(blf))
    return DeviceView(top, led, "primary", "192.0.2.11", "registered", True, keys, "", flash)


def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll `condition` until it holds or the deadline passes (the lab's poll_until)."""
    try:
        return bool(poll_until(condition, timeout_s=timeout_s, interval_s=0.002))
    except TimeoutError:
        return False


def history(pin: MockPWMPin, since: int) -> list[float]:
    """The levels `pin` took since index `since` of its history."""
    return [float(s.state) for s in pin.states[since:]]


def toggled(pin: MockPWMPin, since: int, on: float, times: int = 2) -> bool:
    """`pin` went to `on` and back to 0 at least `times` times since `since`."""
    levels = history(pin, since)
    rises = sum(1 for a, b in zip([0.0, *levels], levels, strict=False) if a != on and b == on)
    return rises >= times and 0.0 in levels


@pytest.mark.parametrize(
    ("row", "led", "color"),
    [("primary", LedState("green"), "green"), ("BACKUP", LedState("amber"), "amber")],
)
def test_registered_rows_are_steady(rig: Rig, row: str, led: LedState, color: str) -> None:
    rig.panel.show(view(led, top=f"1001  {row}"))
    marks = [len(pin.states) for pin in rig.status_pins()]

    assert rig.levels() == rig.expect(color)
    # Steady means nothing rewrites the pins over several blink periods.
    threading.Event().wait(5 * BLINK_S)
    assert [len(pin.states) for pin in rig.status_pins()] == marks
    assert rig.panel.state()["status"] == color
    assert rig.panel.state()["status_blinking"] is False


@pytest.mark.parametrize(("row", "color"), [("1001  registering", "green"), ("NO SERVICE", "red")])
def test_registering_blinks_green_and_no_service_blinks_red(rig: Rig, row: str, color: str) -> None:
    marks = [len(pin.states) for pin in rig.status_pins()]
    rig.panel.show(view(LedState(color, blinking=True), top=row))

    lit = rig.expect(color).index(1)
    pins = rig.status_pins()
    assert wait_for(lambda: toggled(pins[lit], marks[lit], on=1.0, times=3))
    for index, pin in enumerate(pins):
        if index != lit:
            assert set(history(pin, marks[index])) <= {0.0}, f"pin {index} lit"
    assert rig.panel.state()["status_blinking"] is True


@pytest.mark.parametrize(("flash", "color"), [("applied", "amber"), ("rejected", "red")])
def test_provisioning_flashes_twice_then_returns(rig: Rig, flash: str, color: str) -> None:
    rig.panel.show(view(LedState("green")))
    red = rig.status_pins()[0]
    mark = len(red.states)

    rig.panel.show(view(LedState("green"), flash=flash))

    assert wait_for(lambda: rig.panel.state()["flashing"] is False)
    assert rig.levels() == rig.expect("green")
    # SPEC §5: a short flash of the flash colour: the red die (in amber and red) lit twice.
    assert toggled(red, mark, on=1.0, times=2)
    assert history(red, mark).count(1.0) == 2
    green_levels = set(history(rig.status_pins()[1], mark))
    assert rig.expect(color)[1] in green_levels


def test_a_flash_plays_once_and_ends_in_the_state_asked_meanwhile(rig: Rig) -> None:
    rig.panel.show(view(LedState("green", blinking=True), flash="applied"))
    rig.panel.show(view(LedState("amber"), top="1001  BACKUP", flash="applied"))
    assert wait_for(lambda: rig.panel.state()["flashing"] is False)
    assert rig.levels() == rig.expect("amber")
    marks = [len(pin.states) for pin in rig.status_pins()]

    rig.panel.show(view(LedState("amber"), top="1001  BACKUP", flash="applied"))

    assert [len(pin.states) for pin in rig.status_pins()] == marks


@pytest.mark.parametrize(
    ("state", "lamp"),
    [("unknown", "off"), ("idle", "green"), ("busy", "red"), ("ringing", "red-blink")],
)
def test_blf_keys_show_every_state(rig: Rig, state: str, lamp: str) -> None:
    count = len(rig.profile.blf_leds)
    marks = [len(pin.states) for key in range(count) for pin in rig.blf_pins(key)]

    rig.panel.show(view(LedState("green"), blf=(state,) * count))

    assert rig.panel.state()["blf"] == [lamp] * count
    for key in range(count):
        red, green = rig.blf_pins(key)
        if lamp == "red-blink":
            mark = marks[2 * key]
            assert wait_for(partial(toggled, red, mark, 1.0))
            assert float(green.state) == 0.0
        else:
            expected = {"off": (0.0, 0.0), "green": (0.0, 1.0), "red": (1.0, 0.0)}[lamp]
            assert (float(red.state), float(green.state)) == expected


def test_keys_beyond_the_leds_are_ignored_and_leds_beyond_the_keys_are_off(rig: Rig) -> None:
    count = len(rig.profile.blf_leds)
    rig.panel.show(view(LedState("green"), blf=("busy",) * (count + 2)))
    assert rig.panel.state()["blf"] == ["red"] * count

    rig.panel.show(view(LedState("green"), blf=("idle",)))

    assert rig.panel.state()["blf"] == ["green"] + ["off"] * (count - 1)
    assert [float(p.state) for p in rig.blf_pins(0)] == [0.0, 1.0]
    for key in range(1, count):
        assert [float(p.state) for p in rig.blf_pins(key)] == [0.0, 0.0]


def test_show_changes_only_what_differs(rig: Rig) -> None:
    first = view(LedState("green"), blf=("ringing", "idle"))
    rig.panel.show(first)
    status_marks = [len(pin.states) for pin in rig.status_pins()]
    idle_marks = [len(pin.states) for pin in rig.blf_pins(1)]

    rig.panel.show(first)
    rig.panel.show(replace(first, blf=(("1002", "busy"), ("1003", "idle"))))

    assert [len(pin.states) for pin in rig.status_pins()] == status_marks
    assert [len(pin.states) for pin in rig.blf_pins(1)] == idle_marks
    assert [float(p.state) for p in rig.blf_pins(0)] == [1.0, 0.0]
    assert rig.panel.state()["blf"] == ["red", "green"] + ["off"] * (len(rig.profile.blf_leds) - 2)


@pytest.mark.parametrize("board", ["emulated", "rpi-ssd1306"])
def test_showing_the_same_blink_again_does_not_restart_it(board: str) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    profile = load_board(board)
    panel = LedPanel(profile, pin_factory=factory, blink_s=0.5)
    try:
        blinking = view(LedState("red", blinking=True), top="NO SERVICE", blf=("ringing",))
        panel.show(blinking)
        pins = [factory.pin(profile.status_led.red), factory.pin(profile.blf_leds[0].red)]
        # Catch both in their off half-period: a restarted blink would light them at once.
        assert wait_for(lambda: all(pin.state == 0 for pin in pins))
        marks = [len(pin.states) for pin in pins]

        panel.show(blinking)

        assert [len(pin.states) for pin in pins] == marks
    finally:
        panel.close()


def pressed_keys_are(rig: Rig, keys: list[int]) -> bool:
    return rig.pressed == keys


def test_pressing_a_line_key_calls_on_key_with_its_index(rig: Rig) -> None:
    for index, number in enumerate(rig.profile.buttons):
        pin = rig.factory.pin(number)
        pin.drive_low()
        assert wait_for(partial(pressed_keys_are, rig, list(range(index + 1))))
        pin.drive_high()

    assert rig.pressed == list(range(len(rig.profile.buttons)))


def test_a_failing_on_key_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    called = threading.Event()

    def on_key(index: int) -> None:
        called.set()
        raise RuntimeError(f"no call for key {index}")

    panel = LedPanel(load_board("rpi-ssd1306"), pin_factory=factory, on_key=on_key)
    with caplog.at_level(logging.ERROR, logger="phoned.leds"):
        factory.pin(21).drive_low()
        assert called.wait(2.0)
        assert wait_for(lambda: "line key 2: on_key failed" in caplog.text)
    panel.close()


def test_close_releases_every_pin(rig: Rig) -> None:
    rig.panel.show(view(LedState("red", blinking=True), blf=("ringing",)))
    with pytest.raises(GPIOPinInUse):
        LED(rig.profile.status_led.red, pin_factory=rig.factory)

    rig.panel.close()
    rig.panel.close()

    numbers = [rig.profile.status_led.red, rig.profile.blf_leds[0].red, rig.profile.buttons[0]]
    for number in numbers:
        LED(number, pin_factory=rig.factory).close()
    rig.panel.show(view(LedState("green")))  # after close: ignored, no error


def test_a_pin_in_use_is_a_led_error_and_releases_what_was_claimed() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    profile = load_board("rpi-ssd1306")
    squatter = LED(profile.buttons[1], pin_factory=factory)

    with pytest.raises(LedError, match="rpi-ssd1306"):
        LedPanel(profile, pin_factory=factory)

    LED(profile.status_led.red, pin_factory=factory).close()
    squatter.close()


def test_the_emulated_board_runs_on_mock_pins_by_itself() -> None:
    panel = LedPanel(load_board("emulated"))
    try:
        assert isinstance(panel.pin_factory, MockFactory)
        panel.show(view(LedState("amber"), top="1001  BACKUP", blf=("idle", "ringing")))
        assert panel.state() == {
            "status": "amber",
            "status_blinking": False,
            "flashing": False,
            "blf": ["green", "red-blink", "off", "off"],
        }
    finally:
        panel.close()


def test_no_gpio_chip_is_one_led_error_naming_what_gpiozero_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rule 4: the reasons of gpiozero's fallbacks go into the one error, not to stderr."""

    def default_pin_factory() -> object:
        fallback = PinFactoryFallback("Falling back from lgpio: can not open gpiochip")
        warnings.warn(fallback, stacklevel=1)
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setattr(Device, "_default_pin_factory", staticmethod(default_pin_factory))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning escaping would fail here
        with pytest.raises(LedError) as error:
            LedPanel(load_board("rpi-st7735"))
    assert str(error.value) == (
        "leds: can't claim the pins of board rpi-st7735: Unable to load any default pin "
        "factory! (lgpio: can not open gpiochip)"
    )


def test_an_in_memory_panel_keeps_what_the_leds_would_show() -> None:
    panel = LedPanel.in_memory(load_board("rpi-st7735"))
    try:
        panel.show(view(LedState("red", blinking=True), blf=("busy",)))
        assert panel.state()["status"] == "red"
        assert panel.state()["blf"] == ["red", "off", "off", "off"]
    finally:
        panel.close()
