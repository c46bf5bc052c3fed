"""Lab processes: start them in a namespace, signal, stop and reap them by PID (SPEC §8).

Owns: the argv that runs a program under `ip netns exec`, starting a program in its own
session (process group), stopping that group (TERM, wait, KILL, reap every member), and
`poll_until`, the lab's one way to wait for a condition with a deadline, and `LabProcess`,
the life cycle every lab peer shares (its child, its log file, stop by PID, `with`).
Must not touch: any process it was not handed (no lookups by name, no broad kills).
`phonelab.netns` re-exports these names for older imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from phonelab.errors import LabError

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


class LabProcess:
    """A lab peer run as one child process (Kamailio, sipp, dnsmasq, tcpdump, ...).

    Subclasses set `netns` and `log_path` and write `start()`, launching their program
    with `_spawn()`; everything else (PID, stop by PID, log file, `with`) is here.
    """

    netns: str | None
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running child (its process group id), or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the peer and wait until it serves (each subclass says how)."""
        raise NotImplementedError

    def _spawn(self, argv: Sequence[str], *, log_mode: str = "ab") -> None:
        """Start `argv` in `netns`, its output appended to (or, "wb", replacing) the log."""
        self._log = self.log_path.open(log_mode)
        self._proc = spawn(argv, netns=self.netns, log=self._log)

    def stop(self, timeout_s: float = 3.0) -> int | None:
        """Stop the child by PID (TERM, wait, KILL); idempotent.

        Returns:
            Its exit status, or None when it was not started.
        """
        return self._stop_child(timeout_s)

    def _stop_child(self, timeout_s: float, **stop_kw: Any) -> int | None:  # noqa: ANN401
        proc, self._proc = self._proc, None
        status = stop_process(proc, timeout_s=timeout_s, **stop_kw) if proc else None
        self._close_log()
        return status

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _tail(self, lines: int = 8) -> str:
        """The log's last lines on one line, for error messages."""
        return " | ".join(self._log_text().splitlines()[-lines:]) or "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
