"""A provisioned settings file laid over the local one (SPEC §7 "The file").

Owns: the layering rule and the one validation of its result. The fetched file (the
overlay) has the schema of SPEC §3 and is laid over the local file key by key: a key it
leaves out keeps the local value, tables merge recursively (`[apps]` by app name,
`[vpn.primary]`, `[vpn.backup]`), arrays and other values replace the local ones whole.
Must not touch: the network (the caller fetched the text), the last good file, the running
phone. Reads the local file and, through the loader's rules, the files the merged settings
name (password files, the VPN key), nothing else.

Rule 1: `[service]` and `[board]` are local to the device; an overlay that sets either is
refused at that line of the overlay.
Rule 2: each text is parsed on its own, within the bounds of `phoned.config.parsing` (a
syntax error or a value out of bounds names its own source and line); the
merged whole is validated by the same rules as one local file, and every problem names the
text and line where its value was written. A missing key is reported against the local
file, at its table there, unless that table was written by the overlay alone.
Rule 3: every problem is reported at once, as one `SettingsError`.
"""

from __future__ import annotations

import os

from phoned.config.check import Checker, KeyPath, Overlay, Table, scan_lines
from phoned.config.loader import SettingsError, read_settings_text, settings_from
from phoned.config.parsing import parse_toml
from phoned.config.settings import Settings

__all__ = ["LOCAL_ONLY", "lay_over", "load_layered", "parse_layered"]

#: Tables local to the device, which a provisioned file must not set (SPEC §7).
LOCAL_ONLY = ("service", "board")


def load_layered(
    local_path: str | os.PathLike[str], overlay_text: str, overlay_source: str
) -> Settings:
    """Read the local settings file and lay the provisioned text over it.

    Args:
        local_path: The local settings file (read as `load_settings` reads it).
        overlay_text: The provisioned file's text.
        overlay_source: Its name in messages, e.g. the URL it was fetched from.

    Returns:
        The merged, valid settings; their `source` is the local file's path.

    Raises:
        SettingsError: (a ConfigError) the local file is unreadable, either text is not
            TOML, the overlay sets a table local to the device, or the merged settings
            break a rule; every problem at once.
    """
    source = os.fspath(local_path)
    return parse_layered(read_settings_text(source), source, overlay_text, overlay_source)


def parse_layered(
    local_text: str, local_source: str, overlay_text: str, overlay_source: str
) -> Settings:
    """Lay the provisioned text over the local text and validate the whole.

    Args:
        local_text: The local settings file's text.
        local_source: Its name in messages and the result's `source`.
        overlay_text: The provisioned file's text.
        overlay_source: Its name in messages.

    Returns:
        The merged, valid settings.

    Raises:
        SettingsError: (a ConfigError) either text is not TOML, the overlay sets a table
            local to the device, or the merged settings break a rule; every problem at once.
    """
    syntax: list[str] = []
    local = _parse(local_text, local_source, syntax)
    overlay = _parse(overlay_text, overlay_source, syntax)
    if local is None or overlay is None:
        raise SettingsError(syntax)
    refused = [name for name in LOCAL_ONLY if name in overlay]
    merged, given = lay_over(local, {k: v for k, v in overlay.items() if k not in refused})
    check = Checker(
        local_source,
        scan_lines(local_text),
        Overlay(overlay_source, scan_lines(overlay_text), frozenset(given)),
    )
    for name in refused:
        check.fail_in_overlay((name,), f"[{name}] cannot be provisioned (local to the device)")
    return settings_from(check, merged, local_source)


def lay_over(base: Table, top: Table, path: KeyPath = ()) -> tuple[Table, set[KeyPath]]:
    """`top` laid over `base` key by key (neither is changed).

    Args:
        base: The lower tables (the local file).
        top: The upper tables (the provisioned file).
        path: Where `base` and `top` sit in the whole (for the paths returned).

    Returns:
        The merged tables, and the paths whose whole value `top` gave: every key of `top`
        except the tables that were merged into one of `base`.
    """
    merged = dict(base)
    given: set[KeyPath] = set()
    for key, value in top.items():
        here = (*path, key)
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key], deeper = lay_over(below, value, here)
            given |= deeper
        else:
            merged[key] = value
            given.add(here)
    return merged, given


def _parse(text: str, source: str, errors: list[str]) -> Table | None:
    """The tables of `text`, or None with its syntax or bounds errors added to `errors`."""
    try:
        return parse_toml(text, source)
    except SettingsError as exc:
        errors.extend(exc.errors)
        return None
