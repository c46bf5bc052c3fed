"""The screen drawn for each SPEC §5 state, compared pixel for pixel with golden PNGs.

The golden images live in `tests/golden/<state>-<width>x<height>.png`. A test never writes
them: after a deliberate change of the layout, regenerate them with
`.venv/bin/python scripts/regen-golden`, look at them, and commit them with the change.
`GOLDEN_VIEWS` and `GOLDEN_SIZES` below are what that script draws.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from phoned.device.screen import fit, font, render, top_text, wrap
from phoned.device.view import DeviceView
from phoned.service.status import LedState

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
REGEN = ".venv/bin/python scripts/regen-golden"

#: (width, height) -> PIL mode: the ST7735 colour LCD and the SSD1306 mono OLED.
GOLDEN_SIZES: dict[tuple[int, int], str] = {(128, 160): "RGB", (128, 64): "1"}

_ALL_LAMPS = (("1002", "idle"), ("1003", "busy"), ("1004", "ringing"), ("1005", "unknown"))
_UNKNOWN = tuple((ext, "unknown") for ext, _ in _ALL_LAMPS)
_PRIMARY = DeviceView(
    top_line="1001  primary",
    status_led=LedState("green"),
    server="primary",
    server_address="192.0.2.11",
    registration="registered",
    vpn_up=True,
    blf=_ALL_LAMPS,
    last_event="failback: primary answered 1 cycle in a row",
)
_BACKUP = DeviceView(
    top_line="1001  BACKUP",
    status_led=LedState("amber"),
    server="backup",
    server_address="192.0.2.12",
    registration="registered",
    vpn_up=True,
    blf=(("1002", "busy"), ("1003", "idle"), ("1004", "idle"), ("1005", "ringing")),
    last_event="failover: primary missed 3 probes, backup answered in 4 ms",
)
_REGISTERING = DeviceView(
    top_line="1001  registering",
    status_led=LedState("green", blinking=True),
    server="primary",
    server_address="192.0.2.11",
    registration="registering",
    vpn_up=None,
    blf=_UNKNOWN,
    last_event="",
)
_NO_SERVICE = DeviceView(
    top_line="NO SERVICE",
    status_led=LedState("red", blinking=True),
    server="primary",
    server_address="192.0.2.11",
    registration="failed",
    vpn_up=False,
    blf=_UNKNOWN,
    last_event="no service: primary missed 3 probes, backup missed 3 probes",
)

#: One view per SPEC §5 row; together they show every BLF lamp and VPN up/down/absent.
GOLDEN_VIEWS: dict[str, DeviceView] = {
    "primary": _PRIMARY,
    "backup": _BACKUP,
    "registering": _REGISTERING,
    "no-service": _NO_SERVICE,
    "config-applied": replace(_PRIMARY, flash="applied", last_event="config: applied"),
    "config-rejected": replace(
        _BACKUP, flash="rejected", vpn_up=None, last_event="config: line 14: bad interval"
    ),
}


def golden_path(state: str, size: tuple[int, int]) -> Path:
    """Where the golden image of `state` at `size` lives."""
    return GOLDEN_DIR / f"{state}-{size[0]}x{size[1]}.png"


@pytest.mark.parametrize("size", list(GOLDEN_SIZES), ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", list(GOLDEN_VIEWS))
def test_each_state_matches_its_golden_image(
    state: str, size: tuple[int, int], tmp_path: Path
) -> None:
    golden = golden_path(state, size)
    assert golden.exists(), f"{golden} is missing: run {REGEN}"
    actual = render(GOLDEN_VIEWS[state], size, GOLDEN_SIZES[size])

    with Image.open(golden) as expected:
        assert (expected.mode, expected.size) == (actual.mode, actual.size)
        bbox = ImageChops.difference(actual.convert("RGB"), expected.convert("RGB")).getbbox()
    if bbox is not None:
        saved = tmp_path / golden.name
        actual.save(saved)
        pytest.fail(
            f"{state} at {size[0]}x{size[1]} differs from {golden} in {bbox}; actual image: "
            f"{saved}. If the change is deliberate, run {REGEN} and look at the result."
        )


def test_the_states_look_different_from_each_other() -> None:
    for size, mode in GOLDEN_SIZES.items():
        images = [render(view, size, mode).tobytes() for view in GOLDEN_VIEWS.values()]
        assert len(set(images)) == len(images)


def test_same_view_same_bytes() -> None:
    first = render(_BACKUP, (128, 160))
    second = render(replace(_BACKUP), (128, 160))
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("mode", ["RGB", "1", "L"])
def test_image_has_the_size_and_mode_asked(mode: str) -> None:
    image = render(_PRIMARY, (160, 128), mode)
    assert (image.size, image.mode) == ((160, 128), mode)


def test_mono_pixels_are_only_on_or_off() -> None:
    image = render(_BACKUP, (128, 64), "1")
    assert {value for _, value in image.convert("L").getcolors() or ()} == {0, 255}


@pytest.mark.parametrize(
    ("view", "rgb"),
    [
        (_PRIMARY, (30, 160, 70)),
        (_BACKUP, (245, 160, 0)),
        (_REGISTERING, (30, 160, 70)),
        (_NO_SERVICE, (210, 35, 35)),
        (replace(_PRIMARY, flash="applied"), (245, 160, 0)),
        (replace(_PRIMARY, flash="rejected"), (210, 35, 35)),
    ],
)
def test_top_bar_has_the_colour_of_the_status_led(
    view: DeviceView, rgb: tuple[int, int, int]
) -> None:
    image = render(view, (128, 160)).convert("RGB")
    assert image.getpixel((126, 1)) == rgb  # the bar's right end: never text


def test_a_flash_replaces_the_top_line() -> None:
    assert top_text(replace(_BACKUP, flash="applied")) == ("config applied", "amber")
    assert top_text(replace(_BACKUP, flash="rejected")) == ("config rejected", "red")
    assert top_text(_BACKUP) == ("1001  BACKUP", "amber")


def test_the_vpn_icon_is_absent_without_a_vpn() -> None:
    with_vpn = render(_PRIMARY, (128, 160))
    without = render(replace(_PRIMARY, vpn_up=None), (128, 160))
    bbox = ImageChops.difference(with_vpn, without).getbbox()
    assert bbox is not None
    assert bbox[0] > 64  # only the right-hand side (the icon and its label) changed


def test_fit_cuts_long_text_with_an_ellipsis() -> None:
    face = font(10)
    text = "failover: primary missed 3 probes, backup answered in 4 ms"
    cut = fit(text, face, 60)
    assert cut.endswith("…")
    assert face.getlength(cut) <= 60
    assert text.startswith(cut[:-1])
    assert fit("short", face, 60) == "short"
    assert fit("anything", face, 0) == ""


def test_wrap_fills_lines_and_cuts_the_last() -> None:
    face = font(10)
    lines = wrap("failover: primary missed 3 probes, backup answered in 4 ms", face, 60, 2)
    assert len(lines) == 2
    assert all(face.getlength(line) <= 60 for line in lines)
    assert lines[0] == "failover:"
    assert lines[1].endswith("…")
    assert wrap("", face, 60, 2) == []


def test_more_blf_keys_than_fit_are_summed_up() -> None:
    keys = tuple((str(1100 + n), "idle") for n in range(30))
    many = replace(_PRIMARY, blf=keys)
    event_top = {(128, 160): 123, (128, 64): 52}  # the last event's rows
    for size, mode in GOLDEN_SIZES.items():
        image = render(many, size, mode)
        no_keys = render(replace(many, blf=()), size, mode)
        one_less = render(replace(many, blf=keys[:-1]), size, mode)
        area = (0, event_top[size], size[0], size[1])
        # the lamps stop above the last event; the "+N" counts the keys left out
        assert image.crop(area).tobytes() == no_keys.crop(area).tobytes()
        assert image.tobytes() != one_less.tobytes()


def test_a_long_address_and_top_line_stay_inside_the_screen() -> None:
    view = replace(
        _NO_SERVICE,
        top_line="1001234567  registering",
        server_address="pbx-primary.very-long-domain.example.com",
    )
    image = render(view, (128, 64), "1")
    assert image.size == (128, 64)


def test_a_size_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="0x64"):
        render(_PRIMARY, (0, 64))
