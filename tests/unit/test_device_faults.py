"""The device's own faults (SPEC §10 "Local faults"): a read-only or full state directory, a
missing display or GPIO chip, a terminal that is gone. Each is logged once with its reason
and the phone goes on showing its state with what it has.

Read-only and full file systems are real: a small tmpfs mounted for the test (CI runs as
root). The missing display is a real luma error (an I2C bus that does not exist); the
missing GPIO chip is gpiozero's own error from its default pin factory.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gpiozero
import pytest
from gpiozero.exc import BadPinFactory, PinFactoryFallback
from PIL import Image, ImageChops

from phoned.device.display import Display
from phoned.device.frames import KEEP_FRAMES
from phoned.device.output import DeviceOutput
from phoned.device.screen import render
from phoned.device.view import DeviceView
from phoned.service.status import LedState

VIEW = DeviceView(
    top_line="1001  primary",
    status_led=LedState("green"),
    server="primary",
    server_address="192.0.2.11",
    registration="registered",
    vpn_up=None,
    blf=(("1002", "idle"),),
    last_event="",
)
PROFILES = Path(__file__).resolve().parents[2] / "board" / "profiles"


def view(n: int) -> DeviceView:
    """The n-th of many views that all look different."""
    return replace(VIEW, last_event=f"failover: event {n}")


def snapshot(
    active: str = "backup", color: str = "amber", top: str = "1001  BACKUP"
) -> dict[str, Any]:
    """What `StatusBoard.snapshot()` gives, as much as the device reads of it."""
    return {
        "active": active,
        "servers": {active: {"address": "192.0.2.12", "registration": "registered"}},
        "leds": {"status": {"color": color, "blinking": False}},
        "display": {"top_line": top},
        "blf": {"1002": "busy"},
        "vpn": {"enabled": False},
        "last_switch": {"to": active, "reason": "primary missed 3 probes"},
    }


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "phoned.device")


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def latest(display: Display) -> Path | None:
    return display.last_frame


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and ImageChops.difference(a, b).getbbox() is None


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs with the given options (e.g. "ro", "size=64k"); unmounted after."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        run = ["mount", "-t", "tmpfs", "-o", options, "phoned-test", str(where)]
        subprocess.run(run, check=True, capture_output=True)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    run = ["mount", "-o", f"remount,{options}", str(where)]
    subprocess.run(run, check=True, capture_output=True)


def fill(where: Path) -> Path:
    """Writes a file until the file system is full; returns it."""
    filler = where / "filler"
    filler.write_bytes(b"\0" * shutil.disk_usage(where).free)
    assert shutil.disk_usage(where).free == 0
    return filler


# --- a read-only or full state directory


def test_a_read_only_state_directory_is_logged_once_and_the_panel_goes_on(
    tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    state = tmpfs("ro")

    display = Display("emulated", 128, 160, options={}, state_dir=str(state))
    for n in range(3):
        assert display.show(view(n)) is True

    assert lines(caplog, "frames") == [
        f"display: can't write frames to {state}/frames: Read-only file system; frames off"
    ]
    assert (display.shown, display.frames, display.last_frame) == (3, [], None)
    assert display.image is not None
    assert same_pixels(display.image, render(view(2), (128, 160)))


def test_a_state_directory_turning_read_only_later_is_logged_once_then_back(
    tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    state = tmpfs("size=1m")
    display = Display("emulated", 128, 160, options={}, state_dir=str(state))
    display.show(view(0))
    remount(state, "ro")

    for n in range(1, 4):
        assert display.show(view(n)) is True  # nothing escapes show()
    assert len(lines(caplog, "can't write frames")) == 1
    assert [p.name for p in display.frames] == ["frame-000001.png"]
    assert latest(display) is None  # the picture shown now is not on disk

    remount(state, "rw")
    display.show(view(4))
    assert lines(caplog, "again") == [f"display: frames written to {state}/frames again"]
    assert latest(display) == state / "frames" / "frame-000005.png"
    assert len(lines(caplog, "can't write frames")) == 1


def test_a_full_disk_leaves_no_part_file_and_is_logged_once(
    tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    state = tmpfs("size=64k")
    display = Display("emulated", 128, 160, options={}, state_dir=str(state))
    display.show(view(0))
    filler = fill(state)

    for n in range(1, 4):
        assert display.show(view(n)) is True
    assert sorted(p.name for p in (state / "frames").iterdir()) == ["frame-000001.png"]
    assert lines(caplog, "can't write frames") == [
        f"display: can't write frames to {state}/frames: No space left on device; frames off"
    ]

    filler.unlink()
    display.show(view(4))
    assert [p.name for p in display.frames] == ["frame-000001.png", "frame-000005.png"]


def test_a_previous_runs_frames_and_part_files_are_removed_at_start(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("frame-0007.png", "frame-000003.png", "frame-000004.png.part"):
        (frames / name).write_bytes(b"old")
    (frames / "notes.txt").write_text("not ours")

    display = Display("emulated", 128, 64, options={}, state_dir=str(tmp_path))

    assert display.frames == []
    assert [p.name for p in frames.iterdir()] == ["notes.txt"]


def test_only_the_newest_frames_stay_and_the_newest_has_the_highest_number(
    tmp_path: Path,
) -> None:
    display = Display("emulated", 128, 64, options={}, state_dir=str(tmp_path), keep_frames=3)
    for n in range(5):
        display.show(view(n))

    names = ["frame-000003.png", "frame-000004.png", "frame-000005.png"]
    assert [p.name for p in display.frames] == names
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == names
    assert display.last_frame == tmp_path / "frames" / "frame-000005.png"
    with Image.open(display.frames[-1]) as newest:
        assert same_pixels(newest.convert("RGB"), render(view(4), (128, 64)))


def test_by_default_a_long_run_keeps_a_bounded_number_of_frames(tmp_path: Path) -> None:
    display = Display("emulated", 128, 64, options={"mode": "1"}, state_dir=str(tmp_path))
    for n in range(KEEP_FRAMES + 5):
        display.show(view(n))
    assert len(list((tmp_path / "frames").iterdir())) == KEEP_FRAMES
    assert display.frames[0].name == "frame-000006.png"
    assert display.shown == KEEP_FRAMES + 5


def test_a_terminal_that_is_gone_is_logged_once_and_drawing_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class GoneTerminal(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            GoneTerminal.writes += 1
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    display = Display(
        "emulated",
        128,
        64,
        options={},
        state_dir=str(tmp_path),
        terminal=True,
        stream=GoneTerminal(),
    )
    for n in range(3):
        assert display.show(view(n)) is True
    assert GoneTerminal.writes == 1
    assert lines(caplog, "terminal") == [
        "display: can't draw in the terminal: [Errno 32] Broken pipe; terminal drawing off"
    ]
    assert len(display.frames) == 3


def test_the_service_builds_its_device_on_a_read_only_state_directory(
    tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    state = tmpfs("ro")
    device = DeviceOutput("emulated", state_dir=str(state / "phoned"), on_key=lambda _: None)
    try:
        device.show(snapshot())
        device.show(snapshot("primary", "green", "1001  primary"))
        state_now = device.state()
    finally:
        device.close()
    assert len(lines(caplog, "can't write frames")) == 1
    assert state_now["frames"] == 2
    assert state_now["last_frame"] is None
    assert state_now["leds"]["status"] == "green"
    assert state_now["faults"] == {}


# --- a missing display or GPIO chip on a real board


def board_without_display(tmp_path: Path, gpio: str) -> Path:
    """rpi-ssd1306 with its OLED on I2C bus 99, which no machine has."""
    text = (PROFILES / "rpi-ssd1306.toml").read_text()
    text = text.replace('gpio = "real"', f'gpio = "{gpio}"').replace("port = 1 ", "port = 99 ")
    assert "port = 99" in text
    path = tmp_path / "no-display.toml"
    path.write_text(text)
    return path


@pytest.fixture
def no_gpio_chip(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpiozero's default pin factory as on a board whose GPIO chip is missing."""

    def default_pin_factory() -> object:
        warnings.warn(
            PinFactoryFallback("Falling back from lgpio: can not open gpiochip"), stacklevel=1
        )
        warnings.warn(
            PinFactoryFallback("Falling back from native: unable to locate Pi revision"),
            stacklevel=1,
        )
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    monkeypatch.setattr(gpiozero.Device, "_default_pin_factory", staticmethod(default_pin_factory))


def test_a_missing_display_is_logged_once_and_the_picture_kept_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = board_without_display(tmp_path, gpio="mock")
    device = DeviceOutput(str(profile), state_dir=str(tmp_path / "state"), on_key=lambda _: None)
    try:
        device.show(snapshot())
        device.show(snapshot("primary", "green", "1001  primary"))
        state = device.state()
    finally:
        device.close()

    (line,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.getMessage().startswith("display: cannot open ssd1306 on i2c")
    assert "/dev/i2c-99" in line.getMessage()
    assert line.getMessage().endswith("; display off (its picture kept in memory)")
    assert line.exc_info is None  # one line, no traceback
    assert state["faults"]["display"].startswith("display: cannot open ssd1306")
    assert state["frames"] == 2
    assert state["last_frame"] is None
    assert not (tmp_path / "state" / "frames").exists()


def test_a_missing_gpio_chip_and_display_leave_the_phone_running_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_gpio_chip: None
) -> None:
    profile = board_without_display(tmp_path, gpio="real")
    device = DeviceOutput(str(profile), state_dir=str(tmp_path / "state"), on_key=lambda _: None)
    try:
        for _ in range(3):
            device.show(snapshot())
            device.show(snapshot("primary", "green", "1001  primary"))
        device.show(snapshot())
        state = device.state()
    finally:
        device.close()

    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned[0] == (
        "leds: can't claim the pins of board no-display: Unable to load any default pin "
        "factory! (lgpio: can not open gpiochip; native: unable to locate Pi revision); "
        "LEDs and keys off (their state kept in memory)"
    )
    assert warned[1].startswith("display: cannot open ssd1306 on i2c")
    assert len(warned) == 2
    assert set(state["faults"]) == {"leds", "display"}
    assert state["leds"]["status"] == "amber"  # what the LEDs would show
    assert state["leds"]["blf"] == ["red", "off"]
    assert state["frames"] == 7


def test_a_device_failing_while_showing_is_logged_once_and_the_other_part_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = DeviceOutput("emulated", state_dir=str(tmp_path), on_key=lambda _: None)
    failing = True

    def broken_show(shown: DeviceView) -> bool:
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        return True

    monkeypatch.setattr(device._display, "show", broken_show)
    try:
        device.show(snapshot())
        device.show(snapshot("primary", "green", "1001  primary"))
        leds = device.state()["leds"]["status"]
        failing = False
        device.show(snapshot())
    finally:
        device.close()

    assert leds == "green"  # the LEDs followed although the display failed
    assert lines(caplog, "device: the display") == [
        "device: the display can't show the state: [Errno 5] Input/output error",
        "device: the display shows the state again",
    ]
