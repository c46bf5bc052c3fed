"""A real building in miniature: N `phoned` processes against one Kamailio pair (issue 12).

Owns: the lab run behind `scripts/sim-fleet --real N`: one lab (namespaces), a primary and
a backup Kamailio (presence on for the BLF keys), N services in the phone namespace (each
its own account 1001.., SIP port, state directory and control socket), a capture in the
backup's namespace, the primary silenced (nftables drop) at a random instant once every
phone is settled on it, and what reached the backup afterwards, read from that capture.
Must not touch: anything outside the lab it builds (all of it goes at the end, on errors
too) and the service's internals (phones are judged by their logs and the wire).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phonelab.capture import Capture
from phonelab.errors import LabError
from phonelab.netns import PBX2_IP
from phonelab.pbxpair import enter_lab_with_pbxs
from phonelab.pcap import Packet, read_packets, sip_summary
from phonelab.phone import SettingsTables, write_config
from phonelab.phoneproc import PhoneProcess

FIRST_EXT = 1001
FIRST_PORT = 5060
#: pjsua binds UDP and TCP on `local_port` and TLS on `local_port + 1`: two ports a phone.
PORT_STEP = 2
START_S_PER_PHONE = 3.0  #: start-up allowance per phone on a busy 2-core machine


@dataclass(frozen=True)
class RealFleetParams:
    """One real run: how many phones, their interval and BLF keys."""

    phones: int = 20
    interval_s: int = 5
    blf_keys: int = 2


@dataclass
class RealFleetRun:
    """What the backup saw after the primary went silent; times in s after the drop."""

    params: RealFleetParams
    registers: list[float] = field(default_factory=list)  #: REGISTER arrivals (no retransmits)
    subscribes: list[float] = field(default_factory=list)  #: SUBSCRIBE arrivals
    switches: dict[int, float] = field(default_factory=dict)  #: phone's port -> first REGISTER
    rss_kib: list[int] = field(default_factory=list)  #: each service's VmRSS on the backup
    fds: list[int] = field(default_factory=list)  #: each service's open descriptors
    ready_s: float = 0.0  #: from the first start to every phone settled on the primary
    kill_after_s: float = 0.0  #: the random wait between settled and the drop
    dropped: int = 0  #: packets tcpdump lost


def phone_config(workdir: Path, index: int, params: RealFleetParams) -> Path:
    """Phone `index` (0-based): account 1001 + index, its own port; BLF on its neighbours."""
    ext = FIRST_EXT + index
    watched = [str(FIRST_EXT + (index + k) % params.phones) for k in range(1, params.blf_keys + 1)]
    settings: SettingsTables = {
        "account": {"username": str(ext), "password": f"fleet-{ext}"},
        "sip": {"local_port": FIRST_PORT + PORT_STEP * index},
        "blf": {"keys": watched},
    }
    return write_config(workdir, settings=settings, interval=params.interval_s)


def backup_arrivals(
    packets: Sequence[Packet], method: str, since: float
) -> list[tuple[float, int]]:
    """(s after `since`, source port) of each `method` request that reached the backup.

    A retransmission (same Call-ID and CSeq) counts once, at its first arrival.
    """
    seen: set[tuple[str | None, str | None]] = set()
    found = []
    for packet in packets:
        if packet.dst != PBX2_IP or packet.dport != 5060 or packet.ts < since:
            continue
        summary = sip_summary(packet.payload)
        if summary is None or summary.method != method:
            continue
        key = (summary.call_id, summary.cseq)
        if key not in seen:
            seen.add(key)
            found.append((packet.ts - since, packet.sport))
    return found


class _FleetLab:
    """The lab, PBXs, capture and phones of one run (everything closes with `stack`)."""

    def __init__(self, stack: contextlib.ExitStack, params: RealFleetParams, workdir: Path) -> None:
        self.params, self.workdir = params, workdir
        self.lab, self.faults = enter_lab_with_pbxs(stack, workdir, presence=params.blf_keys > 0)
        # Requests only (dst port 5060 at the backup): OPTIONS, REGISTER, SUBSCRIBE.
        self.capture = Capture(self.lab.pbx2, workdir / "backup.pcap", bpf="udp dst port 5060")
        stack.enter_context(self.capture)
        self.phones: list[PhoneProcess] = []
        stack.callback(self._stop_phones)

    def start_phones(self) -> float:
        """Start every phone; wait until each is registered, probing and lit on the primary.

        Returns:
            How long that took, s.
        """
        started = time.monotonic()
        for index in range(self.params.phones):
            workdir = self.workdir / f"phone{index + 1:02d}"
            workdir.mkdir()
            config = phone_config(workdir, index, self.params)
            self.phones.append(PhoneProcess(self.lab, workdir, config))
        budget = 10 + START_S_PER_PHONE * self.params.phones + self.params.interval_s
        for phone in self.phones:
            left = max(1.0, budget - (time.monotonic() - started))
            phone.wait_count("registration", 1, left, server="primary", state="registered")
            phone.wait_count("cycle", 1, left, server="primary", up="true")
            phone.wait_count("blf", self.params.blf_keys, left, state="idle")
        return time.monotonic() - started

    def fail_primary(self) -> float:
        """Drop everything to the primary's SIP port; when (CLOCK_REALTIME, as pcaps)."""
        silenced_at = time.time()
        self.faults.blackhole(self.lab.pbx1)
        return silenced_at

    def wait_moved(self) -> None:
        """Wait until every phone is registered on the backup with every lamp back."""
        keys, limit = self.params.blf_keys, self.params.interval_s + 10.0
        deadline = time.monotonic() + limit
        for phone in self.phones:
            left = max(1.0, deadline - time.monotonic())
            phone.wait_count("use_server", 1, left, server="backup")
            phone.wait_count("registration", 1, left, server="backup", state="registered")
            phone.wait_count("blf", 2 * keys, left, state="idle")

    def _stop_phones(self) -> None:
        for phone in self.phones:  # all at once: each un-REGISTERs within 2 s (SPEC §4)
            phone.terminate()
        for phone in self.phones:
            phone.stop()


def run_real_fleet(params: RealFleetParams, workdir: Path, rng: random.Random) -> RealFleetRun:
    """Build the lab, run the phones, silence the primary at random, read the backup.

    Raises:
        LabError: a PBX, the capture or a phone did not do its part in time.
    """
    result = RealFleetRun(params)
    with contextlib.ExitStack() as stack:
        fleet = _FleetLab(stack, params, workdir)
        result.ready_s = fleet.start_phones()
        # A random instant within one interval: any phase of the phones' cycles.
        result.kill_after_s = rng.uniform(0.0, params.interval_s)
        time.sleep(result.kill_after_s)  # the scenario's random instant, not a synchronisation
        silenced_at = fleet.fail_primary()
        fleet.wait_moved()
        time.sleep(0.5)  # let the last NOTIFY answers land in the capture
        fleet.capture.stop()
        result.dropped = fleet.capture.dropped()
        result.rss_kib = [phone.rss_kib() for phone in fleet.phones]
        result.fds = [phone.open_fds() for phone in fleet.phones]
    packets = read_packets(workdir / "backup.pcap")
    registers = backup_arrivals(packets, "REGISTER", silenced_at)
    result.registers = [at for at, _ in registers]
    result.subscribes = [at for at, _ in backup_arrivals(packets, "SUBSCRIBE", silenced_at)]
    for at, port in registers:
        result.switches.setdefault(port, at)
    if len(result.switches) != params.phones:
        moved = len(result.switches)
        raise LabError(f"{moved} of {params.phones} phones sent a REGISTER to the backup")
    return result


def median_mib(values_kib: Sequence[int]) -> float:
    """The median of kiB values, in MiB."""
    return statistics.median(values_kib) / 1024
