"""A `phoned run` for long or many-phone lab runs: quiet, its log read as it grows.

Owns: one service process in a lab namespace (its own session, stdout discarded so an
emulated display never draws on the terminal, stderr to `<workdir>/phoned.log`), reading
that log incrementally (each line parsed once, however long the run), waiting for counts
of structured events, and sampling the process from /proc (VmRSS, open descriptors).
Must not touch: the service's internals or any process but its own child.
`phonelab.phone.RunningPhone` stays the short tests' phone; this one serves
`scripts/sim-fleet --real` (20 at once) and `scripts/soak` (one for an hour).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from phoned.logfmt import parse
from phonelab.errors import LabError
from phonelab.netns import Lab
from phonelab.procs import poll_until
from phonelab.timing import vm_rss_kib


class PhoneProcess:
    """One `phoned run --config <config>` in the lab's phone namespace."""

    def __init__(self, lab: Lab, workdir: Path, config: Path, *, log_level: str = "info") -> None:
        """Start the service; it runs until `stop()` (or the lab's teardown kills it)."""
        self.workdir, self.config = workdir, config
        self.log_path = workdir / "phoned.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "phoned", "run", "--config", str(config)]
        argv += ["--log-level", log_level]
        self.proc = lab.popen(
            lab.phone, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log, start_new_session=True,
        )  # fmt: skip
        self._offset = 0
        self._partial = b""
        self.records: list[dict[str, str]] = []

    @property
    def pid(self) -> int:
        """The service's PID (`ip netns exec` exec()s: the child is the service)."""
        return self.proc.pid

    def refresh(self) -> list[dict[str, str]]:
        """Parse the log lines written since the last call; return the new records."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        fresh = [parse(line.decode(errors="replace")) for line in lines]
        self.records += fresh
        return fresh

    def count(self, name: str, **fields: str) -> int:
        """Records `event=name` with these field values seen so far (after `refresh`)."""
        return sum(
            1
            for r in self.records
            if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())
        )

    def wait_count(self, name: str, count: int, timeout_s: float, **fields: str) -> None:
        """Wait until `count` records `event=name` with these fields exist.

        Raises:
            LabError: the service exited, or too few records within `timeout_s`.
        """

        def enough() -> bool:
            self.check_alive()
            self.refresh()
            return self.count(name, **fields) >= count

        try:
            poll_until(enough, timeout_s=timeout_s, interval_s=0.05)
        except TimeoutError:
            found = self.count(name, **fields)
            raise LabError(
                f"{self.workdir.name}: {found} of {count} event={name} {fields} in {timeout_s:g} s"
            ) from None

    def check_alive(self) -> None:
        """Raise `LabError` with the log's tail when the service has exited."""
        if self.proc.poll() is not None:
            raise LabError(
                f"{self.workdir.name}: phoned exited {self.proc.returncode}:\n{self.tail()}"
            )

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS of /proc/<pid>/status), kiB."""
        return vm_rss_kib(Path(f"/proc/{self.pid}/status").read_text())

    def open_fds(self) -> int:
        """Open file descriptors now (entries of /proc/<pid>/fd)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def is_phoned(self) -> bool:
        """Whether our PID runs phoned (and not `ip netns exec` or something reused)."""
        try:
            return b"phoned" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False

    def terminate(self) -> None:
        """Send SIGTERM (the service un-REGISTERs and exits); `stop()` waits for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; the exit status."""
        self.terminate()
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def tail(self, count: int = 20) -> str:
        """The last log lines, for error messages."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-count:])
