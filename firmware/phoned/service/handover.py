"""Work other threads hand to the pjsua2 thread, and its outcome (STACK-NOTES: one owner).

Owns: the queue through which the control thread and gpiozero's key thread ask the
pjsua2-owning main thread to act (place or end a call), the wait for the answer, and the
rule that no exception from such work ends the service (`commands.run_safely`).
Must not touch: pjsua2 itself (the work does, on the main thread, inside `drain()`), or
what the work is (the caller's closures).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phoned.service.commands import CommandError, run_safely

Work = Callable[[], dict[str, Any]]


@dataclass
class _Item:
    name: str
    run: Work
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class MainThreadWork:
    """A queue of work for the main thread; `drain()` runs it there."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[_Item] = queue.SimpleQueue()

    def submit(self, name: str, run: Work, timeout_s: float = 3.0) -> dict[str, Any]:
        """Run `run` on the main thread and return its result (from another thread).

        Raises:
            CommandError: the work failed (its message), or the main thread did not get to
                it within `timeout_s`.
        """
        item = _Item(name, run)
        self._items.put(item)
        if not item.done.wait(timeout_s):
            raise CommandError(f"the SIP stack did not answer within {timeout_s:.0f} s")
        if item.error:
            raise CommandError(item.error)
        return item.result

    def post(self, name: str, run: Work) -> None:
        """Queue `run` without waiting (a line key's call): its outcome is only logged."""
        self._items.put(_Item(name, run))

    def drain(self) -> None:
        """Run everything queued (on the main thread); nothing raised here escapes."""
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                return
            try:
                item.result, item.error = run_safely(item.name, item.run)
            finally:
                item.done.set()
