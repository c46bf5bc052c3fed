"""Lab processes: start them in a namespace, signal, stop and reap them by PID (SPEC §8).

Owns: the argv that runs a program under `ip netns exec`, starting a program in its own
session (process group), stopping that group (TERM, wait, KILL, reap every member), and
`poll_until`, the lab's one way to wait for a condition with a deadline.
Must not touch: any process it was not handed (no lookups by name, no broad kills).
`phoned.lab.netns` re-exports these names for older imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import IO, TypeVar

from phoned.errors import LabError

T = TypeVar("T")


def ns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside `netns` (unchanged when `netns` is None)."""
    return [*(["ip", "netns", "exec", netns] if netns else []), *argv]


def spawn(
    argv: Sequence[str], *, netns: str | None = None, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in `netns` in a new session (its own process group).

    stdout and stderr go to `log` (or nowhere); stdin is closed.

    Raises:
        LabError: the program cannot be started.
    """
    sink: IO[bytes] | int = log if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            ns_argv(netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    except OSError as exc:
        raise LabError(f"lab: cannot start {argv[0]}: {exc}") from exc


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum` to the process group `proc` leads (no-op once it has exited)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


def stop_process(
    proc: subprocess.Popen[bytes],
    *,
    timeout_s: float = 3.0,
    signum: int = signal.SIGTERM,
    resend: Callable[[], bool] | None = None,
    resend_s: float = 0.25,
) -> int:
    """Stop the process group led by `proc`: `signum` to it, wait, then SIGKILL the group.

    Only the leader gets `signum` (Kamailio's main process stops its children). While it
    lives, every `resend_s` it gets `signum` again if `resend()` says the first was lost.
    A frozen group must be continued by its owner first.

    Returns:
        The leader's exit status (negative: killed by that signal).
    """
    deadline = time.monotonic() + timeout_s
    try:
        if proc.poll() is None:
            proc.send_signal(signum)
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(resend_s, max(0.0, deadline - time.monotonic())))
            if proc.poll() is None and resend is not None and resend():
                proc.send_signal(signum)
        if proc.poll() is None:
            signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=timeout_s)
    finally:
        _reap_group(proc.pid, timeout_s)


def _reap_group(pgid: int, timeout_s: float) -> None:
    """Kill children the leader left behind and wait until the group is empty.

    Until then they may still hold the leader's ports (a quick restart would collide).
    The group id cannot be reused while any member, even a zombie, still exists.
    """

    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    try:
        poll_until(gone, timeout_s=timeout_s, interval_s=0.002)
    except TimeoutError as exc:
        raise LabError(f"lab: process group {pgid} still alive after SIGKILL") from exc


def poll_until(
    predicate: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.01
) -> T:
    """Call `predicate` until it returns something truthy or `timeout_s` passes.

    Returns:
        The first truthy result.

    Raises:
        TimeoutError: nothing truthy before the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)  # polling interval with a deadline, not synchronization
