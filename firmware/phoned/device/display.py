"""The display adapter (SPEC §5): shows a `DeviceView` on the board's panel through luma.

Owns: the luma device (the only importer of luma), the emulated panel's drawing in a
terminal, and handing its frames to `phoned.device.frames` (PNGs under `<state_dir>/frames/`).
Must not touch: the layout (that is `phoned.device.screen`), GPIO other than the panel's own
bus pins, or any file outside `frames/`.

Rules:
1. Only a frame that differs from the last one shown reaches the panel (and, emulated, the
   disk and the terminal): the supervisor may call `show()` as often as it likes.
2. Real panels (ST7735 on SPI, SSD1306 on I2C or SPI) are imported lazily, so the emulated
   board needs no bus; a missing bus or library is a `DisplayError` saying which.
3. SPEC §10: the emulated panel's disk and terminal are extras. A folder that cannot be
   written or a terminal that is gone is logged once and never raises from `show()`: the
   picture is still kept (`image`) and counted (`shown`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from PIL import Image, ImageChops

from phoned.device.frames import KEEP_FRAMES, FrameStore
from phoned.device.screen import render
from phoned.device.view import DeviceView
from phoned.errors import PhonedError

if TYPE_CHECKING:
    from phoned.device.board import DisplaySpec

log = logging.getLogger("phoned.device")

DRIVERS = ("emulated", "st7735", "ssd1306")
#: Options that go to luma's serial interface; every other option goes to the device.
_SPI_OPTIONS = frozenset(
    {"port", "device", "bus_speed_hz", "gpio_DC", "gpio_RST", "spi_mode", "transfer_size"}
)
_I2C_OPTIONS = frozenset({"port", "address"})
#: Board profile option names (`[display.options]`) -> luma's argument names.
_LUMA_NAMES = {"dc": "gpio_DC", "rst": "gpio_RST", "backlight": "gpio_LIGHT"}


class DisplayError(PhonedError, OSError):
    """The display cannot be opened or driven (no such bus, unknown driver...)."""


def to_ansi(image: Image.Image) -> str:
    """The image as terminal text: one line per two pixel rows, 24-bit colour half blocks.

    Each character is an upper half block whose foreground is the upper pixel and whose
    background the lower one; an odd last row leaves the background as it is. A colour is
    only sent when it changes along the line (a 128x160 frame is ~60 kB, not ~400 kB).
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    data = rgb.tobytes()

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        offset = (y * width + x) * 3
        return data[offset], data[offset + 1], data[offset + 2]

    lines = []
    for top in range(0, height, 2):
        cells: list[str] = []
        fg: tuple[int, int, int] | None = None
        bg: tuple[int, int, int] | None = None
        for x in range(width):
            if pixel(x, top) != fg:
                fg = pixel(x, top)
                cells.append("\x1b[38;2;{};{};{}m".format(*fg))
            if top + 1 < height and pixel(x, top + 1) != bg:
                bg = pixel(x, top + 1)
                cells.append("\x1b[48;2;{};{};{}m".format(*bg))
            cells.append("▀")
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines)


class Display:
    """The board's panel: real (luma.lcd / luma.oled) or emulated (luma's dummy + PNGs)."""

    def __init__(
        self,
        driver: str,
        width: int,
        height: int,
        *,
        options: Mapping[str, object],
        state_dir: str,
        terminal: bool = False,
        interface: str | None = None,
        stream: TextIO | None = None,
        keep_frames: int = KEEP_FRAMES,
    ) -> None:
        """Open the panel.

        Args:
            driver: "emulated", "st7735" or "ssd1306" (the board profile's display).
            width, height: the picture's size in pixels as the user sees it (a 128x160
                ST7735 is driven as 160x128 rotated).
            options: `[display.options]` of the board profile: serial ones (port, device,
                address, dc, rst, bus_speed_hz) and panel ones (backlight, rotate, bgr,
                h_offset, v_offset), any other luma argument by its luma name; emulated:
                "mode" ("RGB" default, "1" for a mono panel).
            state_dir: the service's state directory; emulated frames go to `frames/`.
            terminal: emulated only: also draw each new frame in the terminal.
            interface: "spi" or "i2c"; default: SPI for st7735, I2C for ssd1306.
            stream: where the terminal frames go (default stdout).
            keep_frames: emulated only: how many of the newest PNG frames stay on disk;
                0 writes none (an in-memory panel).

        Raises:
            DisplayError: unknown driver, or the panel's bus or library is missing.
        """
        if driver not in DRIVERS:
            raise DisplayError(f"display: unknown driver {driver!r}, expected one of {DRIVERS}")
        self.driver = driver
        self.size = (width, height)
        self._terminal = terminal and driver == "emulated"
        self._stream = stream if stream is not None else sys.stdout
        self._frames_dir = Path(state_dir) / "frames"
        self._last: Image.Image | None = None
        self._shown = 0
        self._device: Any = _open_device(driver, width, height, dict(options), interface)
        self.mode: str = self._device.mode
        self._store = FrameStore(self._frames_dir, keep_frames) if driver == "emulated" else None

    @classmethod
    def in_memory(cls, spec: DisplaySpec, *, state_dir: str) -> Display:
        """A panel of the profile's size and colours that only keeps its picture: what the
        phone shows when its real panel is missing (SPEC §10)."""
        mode = "1" if spec.driver == "ssd1306" else str(spec.options.get("mode", "RGB"))
        return cls(
            "emulated",
            spec.width,
            spec.height,
            options={"mode": mode},
            state_dir=state_dir,
            keep_frames=0,
        )

    @classmethod
    def from_spec(
        cls,
        spec: DisplaySpec,
        *,
        state_dir: str,
        terminal: bool = False,
        stream: TextIO | None = None,
    ) -> Display:
        """Open the display a board profile describes (`BoardProfile.display`)."""
        return cls(
            spec.driver,
            spec.width,
            spec.height,
            options=spec.options,
            state_dir=state_dir,
            terminal=terminal,
            interface=None if spec.interface == "none" else spec.interface,
            stream=stream,
        )

    def show(self, view: DeviceView) -> bool:
        """Draw `view`; returns whether it changed the picture (rule 1)."""
        image = render(view, self.size, self.mode)
        if self._last is not None and ImageChops.difference(image, self._last).getbbox() is None:
            return False
        self._last = image
        self._device.display(image)
        self._shown += 1
        if self._store is not None:
            self._store.save(image)
        if self._terminal:
            self._draw_in_terminal(image)
        return True

    def _draw_in_terminal(self, image: Image.Image) -> None:
        """Rule 3: a terminal that is gone (closed stdout, EPIPE) ends the drawing, once."""
        try:
            self._stream.write(to_ansi(image) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            self._terminal = False
            log.warning("display: can't draw in the terminal: %s; terminal drawing off", exc)

    @property
    def image(self) -> Image.Image | None:
        """The picture shown now (None before the first `show()`)."""
        return self._last

    @property
    def shown(self) -> int:
        """How many different pictures were shown since the panel was opened."""
        return self._shown

    @property
    def frames(self) -> list[Path]:
        """Emulated: the newest PNGs on disk, oldest first (empty for real panels)."""
        return self._store.frames if self._store is not None else []

    @property
    def last_frame(self) -> Path | None:
        """Emulated: the PNG of the picture shown now; None if it is not on disk."""
        return self._store.latest if self._store is not None else None

    @property
    def frames_dir(self) -> Path:
        """Emulated: where the PNG frames go."""
        return self._frames_dir

    def close(self) -> None:
        """Release the panel (a real one is cleared and its bus closed)."""
        device, self._device = self._device, None
        if device is not None:
            device.cleanup()


def _open_device(
    driver: str, width: int, height: int, options: dict[str, object], interface: str | None
) -> Any:  # noqa: ANN401 (a luma device: luma ships no types)
    if driver == "emulated":
        from luma.core.device import dummy  # noqa: PLC0415 (rule 2: lazy)

        mode = str(options.get("mode", "RGB"))
        return dummy(width=width, height=height, mode=mode)
    options = {_LUMA_NAMES.get(key, key): value for key, value in options.items()}
    bus = interface or ("spi" if driver == "st7735" else "i2c")
    keys = _SPI_OPTIONS if bus == "spi" else _I2C_OPTIONS
    serial_args = {k: v for k, v in options.items() if k in keys}
    device_args = {k: v for k, v in options.items() if k not in keys}
    try:
        serial = _open_serial(bus, serial_args)
        device = _open_panel(driver, serial, width, height, device_args)
    except PhonedError:
        raise
    except Exception as exc:  # luma raises its own errors, ImportError, OSError, asserts
        where = f"{bus} {serial_args}" if serial_args else bus
        raise DisplayError(f"display: cannot open {driver} on {where}: {exc!r}") from exc
    if device.size != (width, height):
        raise DisplayError(
            f"display: {driver} opened as {device.size[0]}x{device.size[1]}, "
            f"the board profile says {width}x{height} (check options.rotate)"
        )
    return device


def _open_serial(bus: str, args: dict[str, object]) -> Any:  # noqa: ANN401 (luma: untyped)
    from luma.core.interface import serial  # noqa: PLC0415 (rule 2: lazy)

    if bus == "spi":
        return serial.spi(**args)
    if bus == "i2c":
        return serial.i2c(**args)
    raise DisplayError(f"display: unknown interface {bus!r}, expected 'spi' or 'i2c'")


def _open_panel(
    driver: str, serial: object, width: int, height: int, args: dict[str, object]
) -> Any:  # noqa: ANN401 (luma: untyped)
    if driver == "st7735":
        from luma.lcd.device import st7735  # noqa: PLC0415 (rule 2: lazy)

        # luma drives the ST7735 as landscape (160x128, 160x80); a portrait panel is
        # the same panel rotated a quarter turn.
        portrait = height > width
        args.setdefault("rotate", 1 if portrait else 0)
        panel_w, panel_h = (height, width) if portrait else (width, height)
        return st7735(serial, width=panel_w, height=panel_h, **args)
    from luma.oled.device import ssd1306  # noqa: PLC0415 (rule 2: lazy)

    return ssd1306(serial, width=width, height=height, **args)
