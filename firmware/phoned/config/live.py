"""The settings in force while the phone runs: one owner, read by everyone (SPEC §7).

Owns: the one reference to the `Settings` in force and the swap to a new one. Components
that need a value at the moment they use it read `LiveSettings.get()`; none keeps its own
copy of a value this object owns, so a swap can never leave one of them stale.
Must not touch: parsing or validating (the loader's) and applying a change to an adapter
(the wiring's `Phone.apply`): a swap here only changes what the next `get()` returns.
"""

from __future__ import annotations

import threading

from phoned.config.settings import Settings


class LiveSettings:
    """The `Settings` in force; `get()` from any thread, `swap()` from the wiring's."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()

    def get(self) -> Settings:
        """The settings in force now (frozen: safe to keep for the length of one task)."""
        return self._settings  # one reference read: atomic

    def swap(self, new: Settings) -> Settings:
        """Put `new` in force; return the settings it replaces."""
        with self._lock:
            old, self._settings = self._settings, new
        return old
