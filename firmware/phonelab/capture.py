"""A tcpdump capture in a lab namespace, judged later from kernel timestamps (SPEC §9).

Owns: one tcpdump process (own process group, optionally in a namespace) writing a pcap
file packet by packet (`-U`), started only once tcpdump says it is listening, and stopped
with SIGINT so it flushes. Reading the file is `pcap.py`'s job.
Must not touch: other tcpdump processes; the capture never changes any interface.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

from phonelab.errors import LabError
from phonelab.netns import poll_until
from phonelab.pcap import Packet, read_packets
from phonelab.procs import LabProcess

DEFAULT_BPF = "udp port 5060 or icmp"


class Capture(LabProcess):
    """tcpdump on `iface` in `netns`, writing packets matching `bpf` to `path`."""

    def __init__(
        self, netns: str | None, path: Path, *, iface: str = "any", bpf: str = DEFAULT_BPF
    ) -> None:
        """Args:
        netns: namespace to capture in; None for the current one.
        path: pcap file to write (its directory must exist); `<path>.log` gets stderr.
        iface: interface, "any" for all of the namespace's.
        bpf: capture filter.
        """
        self.netns, self.iface, self.bpf = netns, iface, bpf
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".log")

    def start(self, timeout_s: float = 5.0) -> None:
        """Start tcpdump and wait until it reports "listening on".

        Raises:
            LabError: already running, tcpdump exited, or it did not listen in time.
        """
        if self.running:
            raise LabError(f"capture {self.path.name}: already running")
        # -Z root: Debian's tcpdump otherwise drops to user tcpdump and cannot write here.
        argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root"]
        # Measured: with the defaults (256 KiB snapshots, 2 MiB buffer) a burst of 50
        # SUBSCRIBEs, 407s, 200s and NOTIFYs lost 24 of 137 packets ("dropped by kernel");
        # 16 KiB snapshots (SIP here stays under 4 KiB) and a 16 MiB buffer lost none.
        argv += ["-s", "16384", "-B", "16384"]
        argv += ["-i", self.iface, "-w", str(self.path), self.bpf]
        self._spawn(argv, log_mode="wb")  # a fresh log for each capture
        try:
            poll_until(self._listening, timeout_s=timeout_s, interval_s=0.005)
        except (TimeoutError, LabError) as exc:
            self.stop()
            raise LabError(f"capture {self.path.name}: not listening: {self._log_text()}") from exc

    def _listening(self) -> bool:
        if not self.running:
            raise LabError("tcpdump exited")
        return "listening on" in self._log_text()

    def stop(self, timeout_s: float = 3.0) -> int | None:
        """Stop tcpdump with SIGINT (it flushes the file) and wait; idempotent.

        Returns:
            tcpdump's exit status, or None when it was not started.
        """
        return self._stop_child(timeout_s, signum=signal.SIGINT)

    def dropped(self) -> int:
        """Packets tcpdump reported "dropped by kernel" (known once it has stopped)."""
        found = re.search(r"(\d+) packets? dropped by kernel", self._log_text())
        return int(found.group(1)) if found else 0

    def packets(self) -> list[Packet]:
        """The UDP packets captured so far (tcpdump writes each one at once, `-U`)."""
        return read_packets(self.path) if self.path.exists() else []

    def wait_packets(
        self, predicate: Callable[[list[Packet]], bool], timeout_s: float = 2.0
    ) -> list[Packet]:
        """Poll the file until `predicate(packets)` holds; the packets then.

        Raises:
            LabError: the predicate did not hold within `timeout_s`.
        """

        def matched() -> list[Packet] | None:
            packets = self.packets()
            return packets if predicate(packets) else None

        try:
            return poll_until(matched, timeout_s=timeout_s, interval_s=0.002)
        except TimeoutError as exc:
            raise LabError(f"capture {self.path.name}: expected packets not seen") from exc
