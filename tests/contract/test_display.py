"""The display adapter: emulated frames on disk and in the terminal, real luma panels on a
recording bus (no Pi here: the serial interface and the backlight GPIO are test doubles)."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops

import phoned.device.display
from phoned.device.board import DisplaySpec
from phoned.device.display import Display, DisplayError, to_ansi
from phoned.device.screen import render
from phoned.device.view import DeviceView
from phoned.service.status import LedState

PRIMARY = DeviceView(
    top_line="1001  primary",
    status_led=LedState("green"),
    server="primary",
    server_address="192.0.2.11",
    registration="registered",
    vpn_up=True,
    blf=(("1002", "idle"), ("1003", "busy")),
    last_event="",
)
BACKUP = replace(
    PRIMARY,
    top_line="1001  BACKUP",
    status_led=LedState("amber"),
    server="backup",
    server_address="192.0.2.12",
    last_event="failover: primary missed 3 probes",
)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and ImageChops.difference(a, b).getbbox() is None


@pytest.fixture
def emulated(tmp_path: Path) -> Display:
    return Display("emulated", 128, 160, options={}, state_dir=str(tmp_path))


def test_each_new_frame_is_one_png_of_the_rendered_image(emulated: Display, tmp_path: Path) -> None:
    assert emulated.show(PRIMARY) is True
    assert emulated.show(BACKUP) is True

    assert emulated.frames == [
        tmp_path / "frames" / "frame-000001.png",
        tmp_path / "frames" / "frame-000002.png",
    ]
    for path, view in zip(emulated.frames, (PRIMARY, BACKUP), strict=True):
        with Image.open(path) as frame:
            assert same_pixels(frame.convert("RGB"), render(view, (128, 160)))
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "frame-000001.png",
        "frame-000002.png",
    ]


def test_an_unchanged_view_writes_no_frame(emulated: Display) -> None:
    emulated.show(PRIMARY)
    assert emulated.show(PRIMARY) is False
    assert emulated.show(replace(PRIMARY)) is False
    # a change nobody can see (the LED blinks, the screen does not) is no new frame either
    assert emulated.show(replace(PRIMARY, status_led=LedState("green", True))) is False
    assert len(emulated.frames) == 1
    emulated.show(BACKUP)
    emulated.show(PRIMARY)
    assert len(emulated.frames) == 3


def test_a_new_display_starts_with_no_frames(tmp_path: Path) -> None:
    first = Display("emulated", 128, 64, options={}, state_dir=str(tmp_path))
    first.show(PRIMARY)
    first.close()
    second = Display("emulated", 128, 64, options={}, state_dir=str(tmp_path))
    assert second.frames == []
    assert list((tmp_path / "frames").glob("*.png")) == []


def test_emulated_mono_panel_keeps_one_bit_frames(tmp_path: Path) -> None:
    display = Display("emulated", 128, 64, options={"mode": "1"}, state_dir=str(tmp_path))
    display.show(BACKUP)
    with Image.open(display.frames[0]) as frame:
        assert same_pixels(frame, render(BACKUP, (128, 64), "1"))


def test_terminal_gets_each_new_frame_once(tmp_path: Path) -> None:
    out = io.StringIO()
    display = Display(
        "emulated", 128, 64, options={}, state_dir=str(tmp_path), terminal=True, stream=out
    )
    display.show(PRIMARY)
    display.show(PRIMARY)
    assert out.getvalue() == to_ansi(render(PRIMARY, (128, 64))) + "\n"
    assert out.getvalue().count("\n") == 32


_SGR = re.compile(r"\x1b\[(38|48);2;(\d+);(\d+);(\d+)m|(▀)|\x1b\[0m")


def from_ansi(text: str) -> list[list[tuple[int, int, int] | None]]:
    """Pixel rows back from `to_ansi` text (None where a background was never set)."""
    rows: list[list[tuple[int, int, int] | None]] = []
    for line in text.split("\n"):
        fg: tuple[int, int, int] | None = None
        bg: tuple[int, int, int] | None = None
        upper: list[tuple[int, int, int] | None] = []
        lower: list[tuple[int, int, int] | None] = []
        for match in _SGR.finditer(line):
            layer, *rgb, block = match.groups()
            if block:
                upper.append(fg)
                lower.append(bg)
            elif layer:
                color = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
                fg, bg = (color, bg) if layer == "38" else (fg, color)
        rows += [upper, lower]
    return rows


def pixels(image: Image.Image) -> list[list[tuple[int, int, int] | None]]:
    rgb = image.convert("RGB")
    return [[rgb.getpixel((x, y)) for x in range(rgb.width)] for y in range(rgb.height)]  # type: ignore[misc]


def test_to_ansi_is_one_line_per_two_pixel_rows_of_the_image() -> None:
    image = render(BACKUP, (128, 160))
    text = to_ansi(image)

    assert text.count("\n") + 1 == 80
    assert all(line.count("▀") == 128 for line in text.split("\n"))
    assert all(line.endswith("\x1b[0m") for line in text.split("\n"))
    assert from_ansi(text) == pixels(image)


def test_to_ansi_of_an_odd_height_leaves_the_last_background() -> None:
    image = Image.new("RGB", (2, 3), (255, 255, 255))
    image.putpixel((1, 0), (255, 0, 0))
    text = to_ansi(image)

    assert text.split("\n")[0] == (
        "\x1b[38;2;255;255;255m\x1b[48;2;255;255;255m▀\x1b[38;2;255;0;0m▀\x1b[0m"
    )
    assert text.split("\n")[1] == "\x1b[38;2;255;255;255m▀▀\x1b[0m"
    assert from_ansi(text)[:3] == pixels(image)


def test_an_unknown_driver_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DisplayError, match="unknown driver 'ili9341'"):
        Display("ili9341", 128, 160, options={}, state_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("driver", "size", "options"),
    [("st7735", (128, 160), {}), ("ssd1306", (128, 64), {"port": 99})],
)
def test_a_missing_bus_is_a_clear_error(
    driver: str, size: tuple[int, int], options: dict[str, object], tmp_path: Path
) -> None:
    with pytest.raises(DisplayError, match=f"cannot open {driver} on (spi|i2c)"):
        Display(driver, *size, options=options, state_dir=str(tmp_path))


# --- real luma panels on a recording bus


class RecordingSerial:
    """A luma serial interface that keeps what the panel driver sends."""

    def __init__(self) -> None:
        self.opened: tuple[str, dict[str, object]] | None = None  #: (bus, luma arguments)
        self.commands: list[int] = []
        self.sent: list[int] = []  #: every data byte, in order

    def command(self, *cmd: int) -> None:
        self.commands.extend(cmd)

    def data(self, data: list[int]) -> None:
        self.sent.extend(data)

    def cleanup(self) -> None:
        pass


class FakeGpio:
    """Enough of RPi.GPIO for luma.lcd's backlight."""

    OUT, HIGH, LOW = 0, 1, 0

    def __init__(self) -> None:
        self.outputs: list[tuple[int, int]] = []

    def setup(self, pin: int, mode: int) -> None:
        pass

    def output(self, pin: int, value: int) -> None:
        self.outputs.append((pin, value))

    def cleanup(self, pin: int | None = None) -> None:
        pass


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> RecordingSerial:
    serial = RecordingSerial()

    def open_serial(bus: str, args: dict[str, object]) -> RecordingSerial:
        serial.opened = (bus, args)
        return serial

    monkeypatch.setattr(phoned.device.display, "_open_serial", open_serial)
    return serial


def test_st7735_portrait_panel_gets_each_changed_frame_once(
    bus: RecordingSerial, tmp_path: Path
) -> None:
    gpio = FakeGpio()
    display = Display("st7735", 128, 160, options={"gpio": gpio}, state_dir=str(tmp_path))
    assert (display.mode, display.frames) == ("RGB", [])
    sent = len(bus.sent)

    display.show(PRIMARY)
    first = len(bus.sent) - sent
    # RGB565; luma sends only the part that differs from what the panel shows
    assert 0 < first <= 128 * 160 * 2
    assert first % 2 == 0
    display.show(PRIMARY)
    assert len(bus.sent) == sent + first
    display.show(BACKUP)
    assert len(bus.sent) > sent + first
    display.close()
    assert gpio.outputs[-1] == (18, FakeGpio.LOW)  # backlight off


# luma.oled 3.16 still calls Image.getdata, deprecated by Pillow 13: not ours to fix
@pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")
def test_ssd1306_gets_one_bit_frames(bus: RecordingSerial, tmp_path: Path) -> None:
    display = Display("ssd1306", 128, 64, options={}, state_dir=str(tmp_path))
    assert display.mode == "1"
    sent = len(bus.sent)
    display.show(BACKUP)
    assert len(bus.sent) - sent == 128 * 64 // 8
    assert not (tmp_path / "frames").exists()


def test_a_panel_of_the_wrong_size_is_refused(bus: RecordingSerial, tmp_path: Path) -> None:
    with pytest.raises(DisplayError, match="cannot open st7735"):
        Display("st7735", 100, 100, options={"gpio": FakeGpio()}, state_dir=str(tmp_path))


def test_a_board_profile_display_opens_with_luma_names(
    bus: RecordingSerial, tmp_path: Path
) -> None:
    gpio = FakeGpio()
    options = {"port": 0, "device": 1, "dc": 24, "rst": 25, "backlight": 12, "gpio": gpio}
    spec = DisplaySpec("st7735", 128, 160, "spi", options)

    display = Display.from_spec(spec, state_dir=str(tmp_path))

    assert bus.opened == ("spi", {"port": 0, "device": 1, "gpio_DC": 24, "gpio_RST": 25})
    display.close()
    assert gpio.outputs[-1] == (12, FakeGpio.LOW)  # the backlight named in the profile


def test_the_emulated_board_profile_display(tmp_path: Path) -> None:
    spec = DisplaySpec("emulated", 128, 160, "none")
    display = Display.from_spec(spec, state_dir=str(tmp_path))
    display.show(PRIMARY)
    assert [p.name for p in display.frames] == ["frame-000001.png"]


def test_an_in_memory_panel_keeps_the_picture_of_the_missing_one_and_writes_nothing(
    tmp_path: Path,
) -> None:
    spec = DisplaySpec("ssd1306", 128, 64, "i2c", {"port": 1, "address": 0x3C})
    display = Display.in_memory(spec, state_dir=str(tmp_path))
    assert display.show(BACKUP) is True
    assert display.image is not None
    assert same_pixels(display.image, render(BACKUP, (128, 64), "1"))
    assert (display.shown, display.frames, display.last_frame) == (1, [], None)
    assert list(tmp_path.iterdir()) == []
