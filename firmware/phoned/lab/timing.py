"""Pure timing arithmetic for the failover benchmark (SPEC §9), on captured packets.

Owns: finding the failing cycle in a capture of the phone's traffic (the primary's and the
backup's first OPTIONS of one cycle, the primary's 2nd and 3rd attempts, the first REGISTER
to the backup and its 200 OK), medians and worst deviations of repeated measurements, and
reading CPU ticks and resident memory out of `/proc/<pid>/stat` and `/proc/<pid>/status`
text. Must not touch: files, sockets, processes or clocks: every input is handed in, so
`tests/unit/test_timing.py` checks it on packets and texts built by hand.

Timestamps are the capture's kernel timestamps (seconds); results are in seconds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from phoned.errors import LabError
from phoned.lab.pcap import Packet, sip_summary

#: SPEC §1: no reply by t = 1600 ms and the server is down for the cycle.
DEADLINE_S = 1.6
#: The backup's first OPTIONS of a cycle goes out with the primary's (SPEC §1: t = 0);
#: anything closer than this to a primary attempt is its partner. Attempt 2 is 800 ms later.
PAIR_WINDOW_S = 0.3


@dataclass(frozen=True)
class FailoverTiming:
    """What one failover looked like on the wire."""

    cycle_start: float  #: t0: the primary's first OPTIONS of the failing cycle
    backup_skew_s: float  #: the backup's first OPTIONS of that cycle minus t0
    attempt_offsets_s: tuple[float, ...]  #: every OPTIONS to the primary from t0, from t0
    register_after_deadline_s: float  #: first REGISTER to the backup minus (t0 + 1.6 s)
    registered_after_deadline_s: float  #: its 200 OK from the backup minus (t0 + 1.6 s)
    registered_at: float  #: capture time of that 200 OK


@dataclass(frozen=True)
class Summary:
    """Median and worst case of repeated measurements of one metric."""

    median: float
    worst: float  #: the value farthest from `reference`
    count: int


def requests(packets: Sequence[Packet], src: str, dst: str, method: str) -> list[Packet]:
    """SIP requests `method` from `src` to `dst`, in capture order."""
    found = []
    for packet in packets:
        if packet.src != src or packet.dst != dst:
            continue
        summary = sip_summary(packet.payload)
        if summary is not None and summary.method == method:
            found.append(packet)
    return found


def response_to(packets: Sequence[Packet], request: Packet, status: int = 200) -> Packet | None:
    """The first `status` response to `request`: from its destination address and port to
    its source, same Call-ID and CSeq; None when there is none."""
    asked = sip_summary(request.payload)
    if asked is None:
        return None
    for packet in packets:
        if (packet.src, packet.sport, packet.dst, packet.dport) != (
            request.dst,
            request.dport,
            request.src,
            request.sport,
        ):
            continue
        answer = sip_summary(packet.payload)
        if answer is not None and (answer.status, answer.call_id, answer.cseq) == (
            status,
            asked.call_id,
            asked.cseq,
        ):
            return packet
    return None


def failover_timing(
    packets: Sequence[Packet], *, phone: str, primary: str, backup: str
) -> FailoverTiming:
    """Measure the failover in a capture that holds one switch from `primary` to `backup`.

    The failing cycle is the last one that started before the first REGISTER to the
    backup; a cycle starts with an OPTIONS to the primary paired with one to the backup.

    Raises:
        LabError: the capture lacks the REGISTER, its 200 OK or the failing cycle.
    """
    registers = requests(packets, phone, backup, "REGISTER")
    if not registers:
        raise LabError("timing: no REGISTER to the backup in the capture")
    register = registers[0]
    ok = response_to(packets, register)
    if ok is None:
        raise LabError("timing: the first REGISTER to the backup got no 200 OK")
    to_primary = [p.ts for p in requests(packets, phone, primary, "OPTIONS") if p.ts < register.ts]
    to_backup = [p.ts for p in requests(packets, phone, backup, "OPTIONS") if p.ts < register.ts]
    t0, skew = _cycle_start(to_primary, to_backup)
    deadline = t0 + DEADLINE_S
    return FailoverTiming(
        cycle_start=t0,
        backup_skew_s=skew,
        attempt_offsets_s=tuple(t - t0 for t in to_primary if t >= t0),
        register_after_deadline_s=register.ts - deadline,
        registered_after_deadline_s=ok.ts - deadline,
        registered_at=ok.ts,
    )


def _cycle_start(to_primary: Sequence[float], to_backup: Sequence[float]) -> tuple[float, float]:
    """The last primary OPTIONS that has a backup OPTIONS as partner, and their skew."""
    for sent in reversed(to_primary):
        partners = [other - sent for other in to_backup if abs(other - sent) <= PAIR_WINDOW_S]
        if partners:
            return sent, min(partners, key=abs)
    raise LabError("timing: no cycle start (OPTIONS to both servers together) before failover")


def summarize(values: Sequence[float], reference: float = 0.0) -> Summary:
    """Median of `values` and the one farthest from `reference`.

    Raises:
        ValueError: `values` is empty.
    """
    if not values:
        raise ValueError("summarize: no values")
    worst = max(values, key=lambda value: abs(value - reference))
    return Summary(median=statistics.median(values), worst=worst, count=len(values))


def cpu_ticks(proc_stat: str) -> int:
    """utime + stime (clock ticks, every thread) from the text of `/proc/<pid>/stat`.

    Raises:
        ValueError: the text is not a stat line.
    """
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    _, sep, rest = proc_stat.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 13:
        raise ValueError(f"not a /proc/<pid>/stat line: {proc_stat[:60]!r}")
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_percent(ticks_used: int, wall_s: float, clk_tck: int) -> float:
    """CPU time `ticks_used` over `wall_s` seconds, in percent of one core."""
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    return 100.0 * ticks_used / clk_tck / wall_s


def vm_rss_kib(proc_status: str) -> int:
    """Resident memory (kiB) from the text of `/proc/<pid>/status`.

    Raises:
        ValueError: no VmRSS line (e.g. a zombie).
    """
    for line in proc_status.splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            return int(value.split()[0])
    raise ValueError("no VmRSS line in /proc/<pid>/status")
