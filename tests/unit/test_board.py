"""Board profiles: the shipped ones load, bad ones are refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoned.device.board import (
    BiLedPins,
    DisplaySpec,
    StatusLedPins,
    available_boards,
    load_board,
)
from phoned.errors import ConfigError

GOOD = """\
gpio = "mock"
buttons = [20, 21]

[status_led]
kind = "bicolour"
red = 17
green = 27

[[blf_leds]]
red = 5
green = 6

[display]
driver = "ssd1306"
width = 128
height = 64
interface = "i2c"

[display.options]
port = 1
address = 0x3C
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "myboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_package_ships_the_three_profiles() -> None:
    assert {"emulated", "rpi-st7735", "rpi-ssd1306"} <= set(available_boards())


def test_emulated_has_mock_pins_an_rgb_led_four_keys_and_a_png_display() -> None:
    board = load_board("emulated")

    assert (board.name, board.gpio) == ("emulated", "mock")
    assert board.status_led.kind == "rgb"
    assert board.status_led.blue is not None
    assert len(board.blf_leds) == len(board.buttons) == 4
    assert board.display == DisplaySpec("emulated", 128, 160, "none", {})


def test_rpi_st7735_names_its_spi_panel_pins() -> None:
    board = load_board("rpi-st7735")

    assert board.status_led == StatusLedPins("rgb", 17, 27, 22, active_high=True)
    assert len(board.blf_leds) == len(board.buttons) == 4
    assert (board.display.driver, board.display.width, board.display.height) == ("st7735", 128, 160)
    assert board.display.interface == "spi"
    assert dict(board.display.options) == {
        "port": 0,
        "device": 0,
        "dc": 24,
        "rst": 25,
        "backlight": 18,
    }


def test_rpi_ssd1306_is_bicolour_with_two_keys_and_an_i2c_oled() -> None:
    board = load_board("rpi-ssd1306")

    assert board.status_led == StatusLedPins("bicolour", 17, 27)
    assert board.blf_leds == (BiLedPins(5, 6), BiLedPins(13, 19))
    assert board.buttons == (20, 21)
    assert board.display.driver == "ssd1306"
    assert (board.display.width, board.display.height, board.display.interface) == (128, 64, "i2c")
    assert dict(board.display.options) == {"port": 1, "address": 0x3C}


def test_a_profile_loads_from_a_path_and_takes_the_file_name(tmp_path: Path) -> None:
    board = load_board(write(tmp_path, GOOD))

    assert board.name == "myboard"
    assert board.blf_leds == (BiLedPins(5, 6),)
    assert board.display.options["address"] == 60


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r'must be one of emulated, .*rpi-st7735, got "nope"'):
        load_board("nope")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read board profile"):
        load_board(tmp_path / "absent.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "gpio = \n")
    with pytest.raises(ConfigError, match=r"myboard\.toml: invalid TOML"):
        load_board(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("red = 17", "red = 40", r":6: status_led\.red must be a BCM GPIO number 0\.\.27, got 40"),
        ("red = 17", "red = true", r":6: status_led\.red must be a BCM GPIO number"),
        ("red = 5", "red = 17", r":10: blf_leds\[0\]\.red must be a pin not already used by "),
        (
            "[20, 21]",
            "[20, 20]",
            r":2: buttons\[1\] must be a pin not already used by buttons\[0\]",
        ),
        ('kind = "bicolour"', 'kind = "rgbw"', r':5: status_led\.kind must be "rgb" or "bicolour"'),
        (
            "green = 27",
            "green = 27\nblue = 22",
            r":8: unknown key status_led\.blue, expected one of kind,",
        ),
        ('gpio = "mock"', 'gpio = "sim"', r':1: gpio must be "real" or "mock", got "sim"'),
        (
            'driver = "ssd1306"',
            'driver = "ili9341"',
            r':14: display\.driver must be "emulated" or "st7735" or "ssd1306", got "ili9341"',
        ),
        (
            'interface = "i2c"',
            'interface = "spi"',
            r":19: display\.options\.device must be an integer >= 0 \(the spi bus needs it\)",
        ),
        ("height = 64", "height = 4", r":16: display\.height must be pixels 8\.\.1024, got 4"),
        (
            "address = 0x3C",
            "addr = 0x3C",
            r":19: display\.options\.address must be an integer >= 0 \(the i2c bus needs it\)",
        ),
        ("[display]", "[screen]", r":13: unknown key screen, expected one of description, gpio"),
    ],
)
def test_bad_profiles_name_file_line_key_and_expectation(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))

    with pytest.raises(ConfigError, match=r"myboard\.toml" + message):
        load_board(path)


def test_an_emulated_display_takes_no_bus(tmp_path: Path) -> None:
    text = GOOD.replace('driver = "ssd1306"', 'driver = "emulated"')
    with pytest.raises(ConfigError, match=r':17: display\.interface must be "none", got "i2c"'):
        load_board(write(tmp_path, text))


def test_a_display_pin_may_not_reuse_a_led_pin(tmp_path: Path) -> None:
    text = GOOD.replace("address = 0x3C", "address = 0x3C\nrst = 5")
    with pytest.raises(
        ConfigError,
        match=r":22: display\.options\.rst must be a pin not already used by blf_leds\[0\]\.red",
    ):
        load_board(write(tmp_path, text))


def test_a_board_without_display_is_refused(tmp_path: Path) -> None:
    text = GOOD[: GOOD.index("[display]")]
    with pytest.raises(ConfigError, match=r":1: display must be a table, got nothing"):
        load_board(write(tmp_path, text))


def test_config_errors_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="board profile"):
        load_board("no-such-board")
