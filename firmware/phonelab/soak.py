"""One phone for an hour: the soak run behind `scripts/soak` (issue 12 item 9).

Owns: one lab (namespaces), a primary and a backup Kamailio (presence on for BLF), a
capture of the OPTIONS the phone sends to the primary, one `phoned run` at a short
interval, a failover every `failover_every_s`, at a random phase of the cycle grid (the
primary dropped with nftables until the phone is registered on the backup, then restored
until it is registered back on the primary), and its resident memory and open
descriptors sampled from /proc.
Must not touch: anything outside the lab it builds (all of it goes at the end, on errors
and interrupts too); the judging is `phonelab.soakreport`'s.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from phonelab.capture import Capture
from phonelab.errors import LabError
from phonelab.netns import PBX1_IP
from phonelab.pbxpair import enter_lab_with_pbxs
from phonelab.pcap import read_packets, sip_summary
from phonelab.phone import SettingsTables, write_config
from phonelab.phoneproc import PhoneProcess
from phonelab.soakreport import Sample

START_TIMEOUT_S = 30.0
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SoakParams:
    """How long, how often, how fast."""

    duration_s: float = 3600.0
    failover_every_s: float = 300.0
    interval_s: int = 1  #: sip_keep_alive_interval
    blf_keys: int = 2
    sample_every_s: float = 10.0


@dataclass(frozen=True)
class Failover:
    """One failover and failback of the run."""

    at_s: float  #: when the primary was dropped, s since the phone started
    to_backup_s: float | None  #: drop -> registered on the backup; None: never
    to_primary_s: float | None  #: restore -> registered on the primary; None: never
    error: str = ""


@dataclass
class SoakRun:
    """Everything measured; the OPTIONS times are capture (CLOCK_REALTIME) times."""

    params: SoakParams
    samples: list[Sample] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    options_to_primary: list[float] = field(default_factory=list)
    ended_at: float = 0.0  #: CLOCK_REALTIME when the phone was asked to stop
    exit_code: int | None = None  #: the phone's, on SIGTERM
    dropped: int = 0  #: packets tcpdump lost


class _Soak:
    """The lab, PBXs, capture and phone (everything closes with `stack`)."""

    def __init__(self, stack: contextlib.ExitStack, params: SoakParams, workdir: Path) -> None:
        self.params, self.workdir = params, workdir
        self.lab, self.faults = enter_lab_with_pbxs(stack, workdir, presence=params.blf_keys > 0)
        bpf = f"udp and dst host {PBX1_IP} and dst port 5060"
        self.capture = Capture(self.lab.phone, workdir / "to-primary.pcap", bpf=bpf)
        stack.enter_context(self.capture)
        (workdir / "phone").mkdir()
        keys = [str(2001 + k) for k in range(params.blf_keys)]
        settings: SettingsTables = {"blf": {"keys": keys}}
        config = write_config(workdir / "phone", settings=settings, interval=params.interval_s)
        self.phone = PhoneProcess(self.lab, workdir / "phone", config)
        self.started = time.monotonic()
        stack.callback(self.phone.stop)

    def wait_registered(self, server: str, timeout_s: float) -> None:
        """Wait for one more `registration server=<server> state=registered` line."""
        self.phone.refresh()
        seen = self.phone.count("registration", server=server, state="registered")
        self.phone.wait_count(
            "registration", seen + 1, timeout_s, server=server, state="registered"
        )

    def sample(self) -> Sample:
        """The phone's footprint now."""
        self.phone.check_alive()
        at_s = time.monotonic() - self.started
        return Sample(at_s, self.phone.rss_kib(), self.phone.open_fds())

    def failover(self) -> Failover:
        """Drop the primary until the phone is on the backup; restore it until it is back."""
        limit_s = 2 * self.params.interval_s + 5.0
        at_s = time.monotonic() - self.started
        to_backup = to_primary = None
        dropped = time.monotonic()
        self.faults.blackhole(self.lab.pbx1)
        try:
            self.wait_registered("backup", limit_s)
            to_backup = time.monotonic() - dropped
        except LabError as exc:
            self.faults.unblackhole(self.lab.pbx1)
            return Failover(at_s, None, None, f"no failover: {exc}")
        restored = time.monotonic()
        self.faults.unblackhole(self.lab.pbx1)
        try:
            self.wait_registered("primary", limit_s)
            to_primary = time.monotonic() - restored
        except LabError as exc:
            return Failover(at_s, to_backup, None, f"no failback: {exc}")
        return Failover(at_s, to_backup, to_primary)


def _loop(soak: _Soak, result: SoakRun, progress: Progress) -> None:
    """Sample and fail over on schedule until the duration has passed."""
    params = soak.params
    end = soak.started + params.duration_s
    next_sample = time.monotonic()
    # Each drop at a random phase of the cycle grid (a multiple of the interval would
    # always hit the same phase): the k-th at k * failover_every_s + [0, interval_s).
    rng = random.Random()  # noqa: S311 - a test schedule, not a secret
    base = soak.started + params.failover_every_s
    next_failover = base + rng.uniform(0.0, params.interval_s)
    next_report = soak.started + 60.0
    while (now := time.monotonic()) < end:
        if now >= next_failover:
            result.failovers.append(soak.failover())
            base += params.failover_every_s
            next_failover = base + rng.uniform(0.0, params.interval_s)
        if now >= next_sample:
            result.samples.append(soak.sample())
            next_sample += params.sample_every_s
        if now >= next_report:
            progress(_progress_line(result, now - soak.started, params.duration_s))
            next_report += 60.0
        wake = min(next_sample, next_failover, next_report, end)
        time.sleep(max(0.0, wake - time.monotonic()))  # the sampling schedule's pace


def _progress_line(result: SoakRun, elapsed_s: float, duration_s: float) -> str:
    last = result.samples[-1]
    failed = sum(1 for f in result.failovers if f.error)
    return (
        f"soak: {elapsed_s / 60:.0f}/{duration_s / 60:.0f} min, RSS {last.rss_kib / 1024:.1f} "
        f"MiB, fds {last.fds}, failovers {len(result.failovers)} ({failed} failed)"
    )


def run_soak(params: SoakParams, workdir: Path, progress: Progress) -> SoakRun:
    """Run the soak and return what it measured (judged by `phonelab.soakreport`).

    Raises:
        LabError: the lab or the phone failed (the phone exited, never registered).
    """
    result = SoakRun(params)
    with contextlib.ExitStack() as stack:
        soak = _Soak(stack, params, workdir)
        soak.wait_registered("primary", START_TIMEOUT_S)
        if not soak.phone.is_phoned():
            raise LabError(f"pid {soak.phone.pid} is not phoned")
        progress(f"soak: phone registered on the primary, running {params.duration_s:g} s")
        _loop(soak, result, progress)
        soak.phone.check_alive()
        result.ended_at = time.time()
        result.exit_code = soak.phone.stop()
        soak.capture.stop()
        result.dropped = soak.capture.dropped()
    for packet in read_packets(workdir / "to-primary.pcap"):
        summary = sip_summary(packet.payload)
        if summary is not None and summary.method == "OPTIONS" and packet.dst == PBX1_IP:
            result.options_to_primary.append(packet.ts)
    result.options_to_primary.sort()
    return result
