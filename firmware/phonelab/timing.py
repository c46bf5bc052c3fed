"""Pure timing arithmetic for the failover benchmark (SPEC §9), on captured packets.

Owns: finding the failing cycle in a capture of the phone's traffic (the primary's and the
backup's first OPTIONS of one cycle, the primary's 2nd and 3rd attempts, the first REGISTER
to the backup and its 200 OK); the BLF subscriptions confirmed on the backup after it (the
200 OK to each authenticated SUBSCRIBE and each subscription's first NOTIFY); the same
attempts over TCP and TLS (`stream_timing`); with the VPN on,
when the phone's traffic to the `routes` network and its first app fetch reached the
backup; medians and worst
deviations of repeated measurements; and reading CPU ticks and resident memory out of
`/proc/<pid>/stat` and `/proc/<pid>/status` text. Must not touch: files, sockets,
processes or clocks: every input is handed in, so `tests/unit/test_timing.py` checks it on
packets and texts built by hand.

Timestamps are the capture's kernel timestamps (seconds); results are in seconds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from phonelab.errors import LabError
from phonelab.pcap import Packet, SipSummary, sip_summary
from phonelab.sipreq import split_message

if TYPE_CHECKING:  # only in annotations: stream_timing imports this module's constants
    from phonelab.stream_timing import Segment

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
    #: its 200 OK from the backup (or its authenticated retry's, after a 401) minus (t0 + 1.6 s)
    registered_after_deadline_s: float
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
    ok = _registered(packets, registers)
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


def _registered(packets: Sequence[Packet], registers: Sequence[Packet]) -> Packet | None:
    """The first 200 OK to the first REGISTER or to a retry of it (same Call-ID: the
    authenticated REGISTER after a 401 challenge); None when there is none."""
    first = sip_summary(registers[0].payload)
    call_id = first.call_id if first is not None else None
    retries = [r for r in registers if (s := sip_summary(r.payload)) and s.call_id == call_id]
    oks = [ok for r in retries if (ok := response_to(packets, r)) is not None]
    return min(oks, key=lambda ok: ok.ts, default=None)


def _cycle_start(to_primary: Sequence[float], to_backup: Sequence[float]) -> tuple[float, float]:
    """The last primary OPTIONS that has a backup OPTIONS as partner, and their skew."""
    for sent in reversed(to_primary):
        partners = [other - sent for other in to_backup if abs(other - sent) <= PAIR_WINDOW_S]
        if partners:
            return sent, min(partners, key=abs)
    raise LabError("timing: no cycle start (OPTIONS to both servers together) before failover")


# --------------------------------------------------------------------------- BLF


@dataclass(frozen=True)
class BlfTiming:
    """BLF subscriptions re-established on the backup after one failover."""

    subscriptions: int  #: dialog subscriptions the backup confirmed (200 OK), one per key
    confirmed_after_deadline_s: float  #: the last of their 200 OKs minus the deadline
    notified_after_deadline_s: float  #: the last of their first NOTIFYs minus the deadline


def header(payload: bytes, name: str) -> str | None:
    """The value of header `name` (lower case; `event` also matches compact `o`), or None."""
    headers = split_message(payload)[1]
    found = headers.get(name)
    if found is None and name == "event":
        found = headers.get("o")
    return found


def _dialog_subscribe(packet: Packet) -> bool:
    """A SUBSCRIBE to the dialog package that asks for a subscription (not Expires: 0)."""
    event = (header(packet.payload, "event") or "").split(";", 1)[0].strip().lower()
    return event == "dialog" and (header(packet.payload, "expires") or "").strip() != "0"


#: A response's (source port, destination port, Call-ID, CSeq) -> its first capture time.
_Answers = dict[tuple[int, int, str, str], float]


def _blf_messages(
    packets: Sequence[Packet], phone: str, backup: str, since: float
) -> tuple[_Answers, dict[str, float], list[tuple[Packet, SipSummary]]]:
    """The backup's 200s to the phone, its first NOTIFY per Call-ID, and the phone's dialog
    SUBSCRIBEs to it from `since` on, in one pass."""
    oks: _Answers = {}
    notified: dict[str, float] = {}
    subscribes: list[tuple[Packet, SipSummary]] = []
    for packet in packets:
        summary = sip_summary(packet.payload)
        if summary is None:
            continue
        if (packet.src, packet.dst) == (backup, phone) and summary.status == 200:
            key = (packet.sport, packet.dport, summary.call_id or "", summary.cseq or "")
            oks.setdefault(key, packet.ts)
        elif (packet.src, packet.dst) == (backup, phone) and summary.method == "NOTIFY":
            notified.setdefault(summary.call_id or "", packet.ts)
        elif (
            (packet.src, packet.dst) == (phone, backup)
            and summary.method == "SUBSCRIBE"
            and packet.ts >= since
            and _dialog_subscribe(packet)
        ):
            subscribes.append((packet, summary))
    return oks, notified, subscribes


def blf_timing(
    packets: Sequence[Packet], *, phone: str, backup: str, deadline: float, keys: int
) -> BlfTiming:
    """Measure the re-subscription of `keys` BLF keys on `backup` after `deadline`.

    A subscription is confirmed by the first 200 OK to one of its SUBSCRIBEs (matched as
    `response_to` does: Call-ID, CSeq and reversed addresses; the first SUBSCRIBE gets 407,
    its authenticated retry the 200); the subscription (its Call-ID) then gets its first
    NOTIFY from the backup. One pass over the packets: a 50-key capture holds hundreds.

    Raises:
        LabError: fewer than `keys` subscriptions confirmed, or one without a NOTIFY.
    """
    oks, notified, subscribes = _blf_messages(packets, phone, backup, deadline)
    confirmed: dict[str, float] = {}
    for request, asked in subscribes:
        key = (request.dport, request.sport, asked.call_id or "", asked.cseq or "")
        if key in oks:
            call_id = asked.call_id or ""
            confirmed[call_id] = min(oks[key], confirmed.get(call_id, oks[key]))
    if len(confirmed) < keys:
        raise LabError(f"timing: {len(confirmed)} of {keys} BLF subscriptions confirmed")
    first_notify = [notified[c] for c in confirmed if c in notified]
    if len(first_notify) < len(confirmed):
        raise LabError(f"timing: {len(first_notify)} of {len(confirmed)} subscriptions notified")
    return BlfTiming(
        subscriptions=len(confirmed),
        confirmed_after_deadline_s=max(confirmed.values()) - deadline,
        notified_after_deadline_s=max(first_notify) - deadline,
    )


# --------------------------------------------------------------------------- VPN


@dataclass(frozen=True)
class VpnTiming:
    """How the phone's other traffic followed one failover, seen arriving at the backup."""

    routes_after_deadline_s: float  #: first datagram to the `routes` network there, - deadline
    app_after_deadline_s: float  #: first connection to its app server there, - deadline


def vpn_timing(
    datagrams: Sequence[Packet],
    segments: Sequence[Segment],
    *,
    phone: str,
    shared: str,
    app: tuple[str, int],
    deadline: float,
) -> VpnTiming:
    """Measure, in a capture taken in the backup's namespace, when routes and apps moved.

    Routes moved: the first datagram from `phone` to the shared address `shared` (held by
    both PBXs; the bench sends one every few ms around the deadline) that reached the
    backup. App fetched: the first SYN from `phone` to the backup's app server `app`
    (host, port). Both against `deadline`; a negative value means before it.

    Raises:
        LabError: nothing to `shared`, or no connection to `app`, reached the backup.
    """
    routed = [p.ts for p in datagrams if (p.src, p.dst) == (phone, shared)]
    fetched = [s.ts for s in segments if s.syn and (s.src, (s.dst, s.dport)) == (phone, app)]
    if not routed:
        raise LabError(f"timing: nothing to the routes network ({shared}) reached the backup")
    if not fetched:
        raise LabError(f"timing: no app fetch reached the backup at {app[0]}:{app[1]}")
    return VpnTiming(min(routed) - deadline, min(fetched) - deadline)


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
