"""What changed between two settings, key by key (SPEC §7 "Applied live" and "Reported").

Owns: `Change` (one leaf key, its old and new value), `setting_changes` (every leaf key that
differs between two `Settings`, in the file's order of SPEC §3) and how a change is told in
the one log line of an apply: `redundancy.sip_keep_alive_interval 2 -> 4`.
Must not touch: files, logging, the running phone: pure functions of two settings objects;
what to do about a change is the wiring's business.

Rule 1: a secret (`account.password`, `provisioning.password`) is `***` on both sides, in
`describe()` and in `repr()`; that it changed is still reported.
Rule 2: `source` is where settings came from, not a setting: it never makes a change.
Rule 3: apps are compared by name and VPN peers key by key; an app or a peer that appears
or disappears is one change whose missing side is `(none)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import Field, dataclass, fields, is_dataclass
from typing import Any

from phoned.config.settings import REDACTED, AppLink, Settings

__all__ = ["NONE", "SECRET_KEYS", "Change", "describe_changes", "setting_changes"]

#: The dotted keys whose values are secrets (SPEC §10).
SECRET_KEYS = frozenset({"account.password", "provisioning.password"})
#: How the missing side of an app or VPN peer that appears or disappears is shown.
NONE = "(none)"


@dataclass(frozen=True, slots=True, repr=False)
class Change:
    """One leaf setting whose value differs."""

    #: Dotted key: "redundancy.sip_keep_alive_interval", "apps.contacts.url", "vpn.backup".
    key: str
    #: The value before (None: the app or VPN peer did not exist).
    old: object
    #: The value after (None: the app or VPN peer no longer exists).
    new: object
    #: True for a password: its values are never shown.
    secret: bool = False

    @property
    def table(self) -> str:
        """The TOML table the key lives in: "redundancy", "apps", "vpn"..."""
        return self.key.split(".", 1)[0]

    def describe(self) -> str:
        """The change for a person: `blf.keys ["1002"] -> ["1002", "1003"]`.

        Returns:
            "<key> <old> -> <new>", values as TOML writes them, secrets as `***`.
        """
        if self.secret:
            return f"{self.key} {REDACTED} -> {REDACTED}"
        return f"{self.key} {render(self.old)} -> {render(self.new)}"

    def __repr__(self) -> str:
        old, new = (REDACTED, REDACTED) if self.secret else (repr(self.old), repr(self.new))
        return f"Change(key={self.key!r}, old={old}, new={new}, secret={self.secret})"


def setting_changes(old: Settings, new: Settings) -> list[Change]:
    """Every leaf key whose value differs between `old` and `new`.

    Args:
        old: The settings in force.
        new: The settings about to replace them.

    Returns:
        One `Change` per differing key, in the order of the settings' fields (the file's
        order of SPEC §3); apps in `old`'s order, then the apps `new` adds.
    """
    changes: list[Change] = []
    for table in fields(Settings):
        if table.name == "source":
            continue
        if table.name == "apps":
            changes += _app_changes(old.apps, new.apps)
        else:
            changes += _diff(table.name, getattr(old, table.name), getattr(new, table.name))
    return changes


def describe_changes(changes: Sequence[Change]) -> str:
    """The changes for one log line.

    Args:
        changes: As `setting_changes` returns them.

    Returns:
        "no change", or each change's `describe()` joined with ", ".
    """
    return ", ".join(change.describe() for change in changes) or "no change"


def render(value: object) -> str:
    """A setting's value as TOML writes it; None (a missing app or peer) as "(none)".

    Args:
        value: A leaf value, an `AppLink`, a `VpnPeer` or None.

    Returns:
        `2`, `true`, `""`, `["1002", "1003"]`, `{ url = "http://..." }`, `(none)`.
    """
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    if is_dataclass(value) and not isinstance(value, type):
        shown = (f"{f.name} = {render(getattr(value, f.name))}" for f in _leaves(value))
        return "{ " + ", ".join(shown) + " }"
    return str(value)


def _leaves(table: object) -> list[Field[Any]]:
    """The fields of a settings dataclass that are settings (an app's `name` is its key)."""
    if not is_dataclass(table):
        return []
    return [f for f in fields(table) if not (isinstance(table, AppLink) and f.name == "name")]


def _diff(key: str, old: object, new: object) -> list[Change]:
    """The changes below `key`: recursive through tables present on both sides."""
    if old == new:
        return []
    if is_dataclass(old) and type(old) is type(new):
        return [
            change
            for f in _leaves(old)
            for change in _diff(f"{key}.{f.name}", getattr(old, f.name), getattr(new, f.name))
        ]
    return [Change(key, old, new, secret=key in SECRET_KEYS)]


def _app_changes(old: tuple[AppLink, ...], new: tuple[AppLink, ...]) -> list[Change]:
    """Apps compared by name: old's order (changed or removed), then the added ones."""
    before = {app.name: app for app in old}
    after = {app.name: app for app in new}
    names = list(before) + [name for name in after if name not in before]
    return [
        change
        for name in names
        for change in _diff(f"apps.{name}", before.get(name), after.get(name))
    ]
