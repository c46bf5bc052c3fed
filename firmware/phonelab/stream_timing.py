"""Pure timing arithmetic for the benchmark's TCP and TLS runs (SPEC §9), on tcpdump text.

Owns: reading `tcpdump -tt -n` TCP lines into segments, the SYNs of new connections and
the first copies of data segments (TLS payloads cannot be read), the attempts they make,
and the failing cycle's offsets and the first connection to the backup after it. Must not
touch: files, sockets, processes or clocks: `tests/unit/test_timing.py` checks it on text
built by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from phonelab.errors import LabError
from phonelab.timing import DEADLINE_S, PAIR_WINDOW_S

#: Sends to one server closer together than this belong to one attempt (a TLS handshake's
#: records after its SYN); attempts are 400 ms or more apart (SPEC §1).
ATTEMPT_GAP_S = 0.1
#: Data segments this short are keep-alives (pjsip's CRLFCRLF: 4 bytes, 26 to 33 as an AEAD
#: TLS record) or TLS alerts, never a probe: an OPTIONS is hundreds of bytes.
KEEPALIVE_MAX_BYTES = 64

#: One IPv4 TCP line of `tcpdump -tt -n` (on `any`: "eth0  Out" after the time), e.g.
#: "1732551234.123456 eth0  Out IP 192.0.2.2.40312 > 192.0.2.11.5060: Flags [P.],
#: seq 1:520, ack 1, win 502, options [nop,nop,TS val 1 ecr 2], length 519: SIP: OPTIONS"
_TCP_LINE = re.compile(
    r"^(?P<ts>\d+\.\d+) .*?\bIP (?P<src>[\d.]+)\.(?P<sport>\d+) > "
    r"(?P<dst>[\d.]+)\.(?P<dport>\d+): Flags \[(?P<flags>[^\]]*)\]"
    r"(?:, seq (?P<seq>\d+(?::\d+)?))?.*?, length (?P<length>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Segment:
    """One TCP segment as tcpdump printed it."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: str  #: tcpdump's letters: "S" a SYN, "S." a SYN-ACK, "P." data, "." an ACK
    seq: str  #: "first:next" for data, "n" for a SYN, "" for a pure ACK
    length: int  #: payload bytes

    @property
    def syn(self) -> bool:
        """A connection opening (SYN without ACK)."""
        return self.flags == "S"


@dataclass(frozen=True)
class StreamTiming:
    """What one failover over TCP or TLS looked like on the wire."""

    cycle_start: float  #: t0: the first send to the primary after it went silent
    backup_skew_s: float  #: the backup's send of that cycle minus t0
    attempt_offsets_s: tuple[float, ...]  #: each attempt to the primary before the deadline
    connect_after_deadline_s: float  #: the first new connection to the backup minus deadline


def tcp_segments(text: str) -> list[Segment]:
    """The IPv4 TCP segments in `tcpdump -tt -n` output, in order; other lines are skipped."""
    return [
        Segment(
            ts=float(found["ts"]),
            src=found["src"],
            sport=int(found["sport"]),
            dst=found["dst"],
            dport=int(found["dport"]),
            flags=found["flags"],
            seq=found["seq"] or "",
            length=int(found["length"]),
        )
        for found in _TCP_LINE.finditer(text)
    ]


def first_sends(segments: Iterable[Segment], *, src: str, dst: str, dport: int) -> list[float]:
    """When `src` opened a connection to `dst:dport` or sent data on one, in capture order.

    Kernel retransmissions never count: a SYN counts once per source port, a data segment
    once per (source port, sequence range). Keep-alives (`KEEPALIVE_MAX_BYTES`) are left out,
    and so is data on a connection opened before the capture: measured, the orphaned socket
    of a phone stopped while its server was silent went on retransmitting its last OPTIONS
    into the next run.
    """
    seen: set[tuple[int, str]] = set()
    opened: set[int] = set()
    times = []
    for seg in segments:
        if (seg.src, seg.dst, seg.dport) != (src, dst, dport):
            continue
        if seg.syn:
            key = (seg.sport, "SYN")
            opened.add(seg.sport)
        elif seg.length > KEEPALIVE_MAX_BYTES and seg.seq and seg.sport in opened:
            key = (seg.sport, seg.seq)
        else:
            continue
        if key not in seen:
            seen.add(key)
            times.append(seg.ts)
    return times


def attempt_starts(times: Sequence[float], gap_s: float = ATTEMPT_GAP_S) -> list[float]:
    """The first of each run of sends less than `gap_s` apart: one attempt each."""
    starts: list[float] = []
    previous: float | None = None
    for when in sorted(times):
        if previous is None or when - previous >= gap_s:
            starts.append(when)
        previous = when
    return starts


def stream_failover_timing(
    segments: Sequence[Segment],
    *,
    phone: str,
    primary: str,
    backup: str,
    port: int,
    silenced_at: float,
) -> StreamTiming:
    """Measure a failover over TCP/TLS to `port` whose primary went silent at `silenced_at`.

    The failing cycle is the first to send to the primary after `silenced_at` (the bench
    silences it just after an answered cycle). Its attempts are the attempt starts before
    its deadline: attempt 1 on the kept connection, the next ones on fresh connections.
    The first SYN to the backup after t0 is pjsua's connection for the REGISTER (the
    prober keeps its own connection to the backup open).

    Raises:
        LabError: no send to the primary after `silenced_at`, no backup probe paired with
            t0, or no new connection to the backup.
    """
    sent = first_sends(segments, src=phone, dst=primary, dport=port)
    starts = attempt_starts([t for t in sent if t >= silenced_at])
    if not starts:
        raise LabError("timing: nothing sent to the primary after it went silent")
    t0 = starts[0]
    to_backup = first_sends(segments, src=phone, dst=backup, dport=port)
    partners = [t - t0 for t in to_backup if abs(t - t0) <= PAIR_WINDOW_S]
    if not partners:
        raise LabError("timing: no probe to the backup in the failing cycle")
    connects = [
        s.ts for s in segments if s.syn and (s.src, s.dst, s.dport) == (phone, backup, port)
    ]
    after_t0 = [t for t in connects if t > t0]
    if not after_t0:
        raise LabError("timing: no new connection to the backup after the failing cycle")
    return StreamTiming(
        cycle_start=t0,
        backup_skew_s=min(partners, key=abs),
        attempt_offsets_s=tuple(t - t0 for t in starts if t < t0 + DEADLINE_S),
        connect_after_deadline_s=after_t0[0] - (t0 + DEADLINE_S),
    )
