"""The phone's screen as a picture (SPEC §5): a `DeviceView` drawn into a PIL image.

Owns: the layout (top bar, server, registration, VPN icon, BLF lamps, last event) at the
sizes the boards use (128x160 colour ST7735, 128x64 mono SSD1306), the colours and the
glyphs. Must not touch: luma, the display hardware, files or any state: the same view and
size always give the same pixels (the golden images in `tests/golden` rely on it).

Rules:
1. Fonts come from `ImageFont.load_default()` only (the FreeType face bundled with the
   pinned Pillow), so a frame is identical on every machine.
2. Mode "1" (mono panels) gets its own palette and lamp glyphs: shapes, not colours, tell
   the BLF states apart. It is drawn antialiased in "L" and thresholded (`MONO_THRESHOLD`):
   FreeType's own 1-bit rendering drops the dots of "192.0.2.12" at these sizes. Every
   other mode is drawn in RGB and converted.
3. Text never spills: each line is cut to fit, ending in an ellipsis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from phoned.device.view import DeviceView

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]
#: a colour as the image mode takes it: RGB for colour panels, 0/255 for mono ones
Ink = RGB | int
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Below this height the compact (SSD1306 128x64) layout is used.
TALL_MIN_PX = 120
#: Grey level from which an antialiased mono pixel is lit (measured: keeps "." and "3").
MONO_THRESHOLD = 100
_MONO_LUT = [0] * MONO_THRESHOLD + [255] * (256 - MONO_THRESHOLD)

_BLACK: RGB = (0, 0, 0)
_WHITE: RGB = (255, 255, 255)
#: SPEC §5 status colours, as close to the status LED as an LCD gets.
_STATUS: dict[str, RGB] = {
    "green": (30, 160, 70),
    "amber": (245, 160, 0),
    "red": (210, 35, 35),
    "off": (70, 70, 70),
}
#: SPEC §5: "config applied" flashes amber, "config rejected" red.
_FLASH_COLOR = {"applied": "amber", "rejected": "red"}
_REGISTRATION_COLOR = {"registered": "green", "failed": "red", "unregistered": "red"}


@dataclass(frozen=True, slots=True)
class _Palette:
    background: Ink
    text: Ink
    dim: Ink  #: secondary text: labels, the last event
    mono: bool

    def status(self, color: str) -> Ink:
        return self.text if self.mono else _STATUS.get(color, _STATUS["off"])

    def on(self, color: str) -> Ink:
        """Text colour on a bar of `color`: dark on amber, light on the others."""
        if self.mono:
            return self.background
        return _BLACK if color == "amber" else _WHITE


_COLOR = _Palette(background=_BLACK, text=(235, 235, 235), dim=(150, 150, 150), mono=False)
_MONO = _Palette(background=0, text=255, dim=255, mono=True)


@dataclass(frozen=True, slots=True)
class _Layout:
    bar_px: int  #: height of the top bar
    bar_font: int  #: font sizes, in pixels
    body_font: int
    small_font: int
    blf_font: int
    row_px: int  #: height of a body row
    lamp_px: int  #: diameter of a BLF lamp
    event_lines: int  #: lines given to the last event
    event_row_px: int
    tall: bool


_TALL = _Layout(22, 13, 11, 10, 11, 15, 10, event_lines=3, event_row_px=12, tall=True)
_COMPACT = _Layout(13, 11, 10, 10, 9, 11, 7, event_lines=1, event_row_px=11, tall=False)


def render(view: DeviceView, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Draw `view` as the phone's screen.

    Args:
        view: what the device shows (`phoned.device.view.view_from_snapshot`).
        size: (width, height) of the panel in pixels, e.g. (128, 160) or (128, 64).
        mode: PIL mode of the panel: "1" for mono OLEDs, "RGB" for colour LCDs; other
            modes ("L", "RGBA"...) are drawn in colour and converted.

    Returns:
        A new image of exactly `size` and `mode`.

    Raises:
        ValueError: `size` is not positive or `mode` is not a PIL mode.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"screen size must be positive, got {width}x{height}")
    mono = mode == "1"
    palette = _MONO if mono else _COLOR
    layout = _TALL if height >= TALL_MIN_PX else _COMPACT
    image = Image.new("L" if mono else "RGB", size, palette.background)
    draw = ImageDraw.Draw(image)
    y = _draw_bar(draw, view, width, layout, palette)
    y = _draw_server(draw, view, (y, width), layout, palette)
    event_top = height - layout.event_lines * layout.event_row_px - 1
    _draw_blf(draw, view.blf, (0, y + 2, width, event_top - 2), layout, palette)
    _draw_event(draw, view.last_event, (event_top, width), layout, palette)
    if mono:
        return image.point(_MONO_LUT, "1")
    return image if mode == "RGB" else image.convert(mode)


@cache
def font(size_px: int) -> Font:
    """The bundled font at `size_px` (cached: loading it costs a millisecond)."""
    return ImageFont.load_default(size_px)


def top_text(view: DeviceView) -> tuple[str, str]:
    """SPEC §5: the top line and its colour; a provisioning flash wins over the state."""
    if view.flash is not None:
        return f"config {view.flash}", _FLASH_COLOR.get(view.flash, "amber")
    return view.top_line, view.status_led.color


def fit(text: str, face: Font, width_px: float) -> str:
    """`text`, cut and ended with an ellipsis when wider than `width_px`."""
    if face.getlength(text) <= width_px:
        return text
    while text and face.getlength(text.rstrip() + "…") > width_px:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""


def wrap(text: str, face: Font, width_px: float, max_lines: int) -> list[str]:
    """Greedy word wrap into at most `max_lines`; the last line is cut to fit."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines - 1:
        line = words.pop(0)
        while words and face.getlength(f"{line} {words[0]}") <= width_px:
            line = f"{line} {words.pop(0)}"
        lines.append(fit(line, face, width_px))
    if words:
        lines.append(fit(" ".join(words), face, width_px))
    return lines


def _draw_bar(
    draw: ImageDraw.ImageDraw, view: DeviceView, width: int, layout: _Layout, palette: _Palette
) -> int:
    text, color = top_text(view)
    draw.rectangle((0, 0, width - 1, layout.bar_px - 1), fill=palette.status(color))
    face = font(layout.bar_font)
    draw.text(
        (3, layout.bar_px // 2),
        fit(text, face, width - 6),
        font=face,
        fill=palette.on(color),
        anchor="lm",
    )
    return layout.bar_px + 1


def _draw_server(
    draw: ImageDraw.ImageDraw,
    view: DeviceView,
    top_width: tuple[int, int],
    layout: _Layout,
    palette: _Palette,
) -> int:
    """Server and address on one row; registration and the VPN icon on the next."""
    y, width = top_width
    face = font(layout.body_font)
    mid = y + layout.row_px // 2
    label = view.server
    draw.text((3, mid), label, font=face, fill=palette.dim, anchor="lm")
    x = 3 + int(face.getlength(label + " ")) + 2
    address = fit(view.server_address, face, width - x - 2)
    draw.text((x, mid), address, font=face, fill=palette.text, anchor="lm")
    mid += layout.row_px
    dot = layout.lamp_px // 2 + 1
    color = palette.status(_REGISTRATION_COLOR.get(view.registration, "off"))
    draw.ellipse((3, mid - dot // 2, 3 + dot, mid - dot // 2 + dot), fill=color)
    vpn_px = _draw_vpn(draw, view.vpn_up, (width - 3, mid), layout, palette)
    text = fit(view.registration, face, width - 8 - dot - vpn_px)
    draw.text((6 + dot, mid), text, font=face, fill=palette.text, anchor="lm")
    return y + 2 * layout.row_px


def _draw_vpn(
    draw: ImageDraw.ImageDraw,
    vpn_up: bool | None,
    right_mid: tuple[int, int],
    layout: _Layout,
    palette: _Palette,
) -> int:
    """The VPN label and padlock, right-aligned; returns the width used (0 when no VPN)."""
    if vpn_up is None:
        return 0
    right, mid = right_mid
    lock_w, lock_h = (9, 11) if layout.tall else (7, 9)
    left, top = right - lock_w, mid - lock_h // 2
    body = (left, top + lock_h // 2 - 1, right, top + lock_h)
    shackle = (left + 2, top, right - 2, top + lock_h // 2 + 2)
    color = palette.status("green" if vpn_up else "red")
    draw.arc(shackle, 180, 360, fill=color, width=1)
    draw.line((shackle[0], top + lock_h // 4, shackle[0], body[1]), fill=color)
    draw.line((shackle[2], top + lock_h // 4, shackle[2], body[1]), fill=color)
    draw.rectangle(body, fill=color if vpn_up else None, outline=color)
    if not vpn_up:  # crossed out: the tunnel in use is down
        draw.line((left - 2, top - 1, right + 2, top + lock_h + 1), fill=color, width=2)
    face = font(layout.small_font)
    label_x = left - 3 - int(face.getlength("VPN"))
    draw.text((label_x, mid), "VPN", font=face, fill=palette.dim, anchor="lm")
    return right - label_x + 4


def _draw_blf(
    draw: ImageDraw.ImageDraw,
    keys: tuple[tuple[str, str], ...],
    box: Box,
    layout: _Layout,
    palette: _Palette,
) -> None:
    """BLF keys as labelled lamps: one per row with its state when they all fit, else a
    grid of lamps; keys beyond the box are summed up as "+N"."""
    left, top, right, bottom = box
    if not keys:
        return
    draw.line((left, top - 2, right, top - 2), fill=palette.dim if palette.mono else (60, 60, 60))
    rows = max(1, (bottom - top) // layout.row_px)
    one_per_row = layout.tall and len(keys) <= rows
    columns = 1 if one_per_row else max(1, (right - left) // (48 if layout.tall else 32))
    slots = rows * columns
    shown = keys if len(keys) <= slots else keys[: slots - 1]
    width = (right - left) // columns
    face = font(layout.blf_font)
    state_x = max(int(face.getlength(ext)) for ext, _ in shown) + 6
    for index, (ext, state) in enumerate(shown):
        x = left + 1 + (index % columns) * width
        mid = top + (index // columns) * layout.row_px + layout.row_px // 2
        _draw_lamp(draw, state, (x + 2, mid), layout.lamp_px, palette)
        x_text = x + layout.lamp_px + 3
        label = fit(ext, face, width - (x_text - x) - 2)
        draw.text((x_text, mid), label, font=face, fill=palette.text, anchor="lm")
        if one_per_row:
            draw.text((x_text + state_x, mid), state, font=face, fill=palette.dim, anchor="lm")
    if len(shown) < len(keys):
        x = left + 3 + (slots - 1) % columns * width
        mid = top + (slots - 1) // columns * layout.row_px + layout.row_px // 2
        more = f"+{len(keys) - len(shown)}"
        draw.text((x, mid), more, font=face, fill=palette.dim, anchor="lm")


def _draw_lamp(
    draw: ImageDraw.ImageDraw, state: str, left_mid: tuple[int, int], size_px: int, p: _Palette
) -> None:
    """SPEC §5 BLF lamp: off = unknown, green = idle, red = busy, red blinking = ringing.

    A screen cannot blink between frames it is not asked to draw, so ringing is a red ring
    (thick outline); on mono panels idle is a hollow ring, busy a filled disc, ringing a
    ring around a dot and unknown a dotted outline.
    """
    x, mid = left_mid
    box = (x, mid - size_px // 2, x + size_px - 1, mid - size_px // 2 + size_px - 1)
    if state == "idle":
        draw.ellipse(box, fill=None if p.mono else p.status("green"), outline=p.status("green"))
    elif state == "busy":
        draw.ellipse(box, fill=p.status("red"))
    elif state == "ringing":
        draw.ellipse(box, outline=p.status("red"), width=1 if p.mono else 2)
        if p.mono:
            centre = (x + size_px // 2 - 1, mid - 1, x + size_px // 2, mid)
            draw.rectangle(centre, fill=p.text)
    elif p.mono:
        for dx, dy in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            half = size_px // 2
            draw.point((x + half + dx * half, mid + dy * half), fill=p.text)
    else:
        draw.ellipse(box, fill=(35, 35, 35), outline=(90, 90, 90))


def _draw_event(
    draw: ImageDraw.ImageDraw,
    text: str,
    top_width: tuple[int, int],
    layout: _Layout,
    palette: _Palette,
) -> None:
    top, width = top_width
    if not text:
        return
    draw.line((0, top, width - 1, top), fill=palette.dim if palette.mono else (60, 60, 60))
    face = font(layout.small_font)
    for index, line in enumerate(wrap(text, face, width - 6, layout.event_lines)):
        mid = top + 1 + index * layout.event_row_px + layout.event_row_px // 2
        draw.text((3, mid), line, font=face, fill=palette.dim, anchor="lm")
