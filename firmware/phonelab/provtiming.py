"""Pure timing arithmetic for the provisioning benchmark (SPEC §7, §9; issue 11).

Owns: reading the phone's HTTP fetches out of `tcpdump -tt -n` text (SYN, the GET's first
segment, the response's status line and its last byte arriving); a Force Update's timing
from one capture (the check-sync NOTIFY arriving, the phone's 200 leaving, the fetch after
it); the first SIP request of a kind the phone sent after an instant (the SUBSCRIBE of an
added BLF key, the un-SUBSCRIBE of a removed one, the REGISTER to a moved server); a boot's
timing (the phone's first packet and first OPTIONS against the instant it was spawned);
and the wall-clock time of a `phoned` log line. Must not touch: files, sockets, processes
or clocks: every input is handed in, so `tests/unit/test_bench_provisioning.py` checks it
on packets and texts built by hand.

Clocks: tcpdump's timestamps are the kernel's CLOCK_REALTIME at capture; the benchmark's
`time.time()` and the phone's log times (`logging`'s `created`) read the same clock, so
they are compared directly, with no mapping. Log times are printed in local time and
truncated to the millisecond (`%(msecs)03d`): the instant a line stands for lies in
[its time, its time + 1 ms). Results are in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from phonelab.errors import LabError
from phonelab.pcap import Packet, sip_summary
from phonelab.timing import header, requests, response_to

HTTP_PORT = 80
#: The resolution of a `phoned` log time: `logging` truncates `created` to the ms.
LOG_RESOLUTION_S = 0.001

#: One IPv4 TCP line of `tcpdump -tt -n` with what tcpdump decoded of HTTP on port 80, e.g.
#: "1796538837.425083 eth0  Out IP 192.0.2.2.49166 > 192.0.2.40.80: Flags [P.], seq 1:92,
#: ack 1, win 63, options [nop,nop,TS val 1 ecr 2], length 91: HTTP: GET /x.toml HTTP/1.1"
_TCP_LINE = re.compile(
    r"^(?P<ts>\d+\.\d+) .*?\bIP (?P<src>[\d.]+)\.(?P<sport>\d+) > "
    r"(?P<dst>[\d.]+)\.(?P<dport>\d+): Flags \[(?P<flags>[^\]]*)\]"
    r"(?:, seq (?P<seq>\d+)(?::(?P<end>\d+))?)?.*?, length (?P<length>\d+)"
    r"(?:: HTTP(?:: (?P<http>.*))?)?$",
    re.MULTILINE,
)
#: A `phoned` log line's leading time (`logfmt.setup_logging`: "%H:%M:%S" + ".%03d" ms).
_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})\b")


@dataclass(frozen=True)
class HttpSegment:
    """One TCP segment as tcpdump printed it, with its HTTP first line if it had one."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: str  #: tcpdump's letters: "S" a SYN, "S." a SYN-ACK, "P." data, "F." a FIN
    end: int | None  #: the relative sequence number after its data (None: no data)
    length: int  #: payload bytes
    http: str  #: the request or status line tcpdump decoded ("" for none)

    @property
    def syn(self) -> bool:
        """A connection opening (SYN without ACK)."""
        return self.flags == "S"


def http_segments(text: str) -> list[HttpSegment]:
    """The IPv4 TCP segments in `tcpdump -tt -n` output, in order; other lines are skipped."""
    return [
        HttpSegment(
            ts=float(found["ts"]),
            src=found["src"],
            sport=int(found["sport"]),
            dst=found["dst"],
            dport=int(found["dport"]),
            flags=found["flags"],
            end=int(found["end"]) if found["end"] is not None else None,
            length=int(found["length"]),
            http=(found["http"] or "").strip(),
        )
        for found in _TCP_LINE.finditer(text)
    ]


@dataclass(frozen=True)
class Fetch:
    """One HTTP GET of the phone on the wire (one connection, one request: SPEC §7)."""

    syn_at: float  #: the phone's SYN to the server leaving
    get_at: float  #: the first segment of the GET request leaving
    status: int  #: the response's status code
    response_end_at: float  #: the segment carrying the response's last byte arriving


def fetch_after(
    segments: Sequence[HttpSegment],
    *,
    phone: str,
    server: str,
    since: float,
    port: int = HTTP_PORT,
) -> Fetch:
    """The phone's first HTTP fetch from `server:port` that opened a connection at or
    after `since`.

    The response is every data segment the server sent on that connection; its end is
    the first arrival of the segment reaching the highest sequence number (a retransmitted
    copy never moves it).

    Raises:
        LabError: no SYN after `since`, no GET on that connection, or no response.
    """
    opening = (phone, server, port)
    syns = [s for s in segments if s.syn and (s.src, s.dst, s.dport) == opening and s.ts >= since]
    if not syns:
        raise LabError(f"provtiming: no connection to {server}:{port} after {since:.6f}")
    syn = syns[0]
    out, back = (phone, syn.sport, server, port), (server, port, phone, syn.sport)
    data = [s for s in segments if s.ts >= syn.ts and s.length]
    gets = [s for s in data if _ends(s) == out and s.http.startswith("GET ")]
    if not gets:
        raise LabError(f"provtiming: no GET on the connection from port {syn.sport}")
    answer = [s for s in data if _ends(s) == back]
    status = [_STATUS_LINE.match(s.http) for s in answer]
    found = next((m for m in status if m is not None), None)
    if found is None:
        raise LabError(f"provtiming: no HTTP response on the connection from port {syn.sport}")
    last = max(s.end or 0 for s in answer)
    end_at = min(s.ts for s in answer if s.end == last)
    return Fetch(syn.ts, gets[0].ts, int(found.group(1)), end_at)


def _ends(segment: HttpSegment) -> tuple[str, int, str, int]:
    return segment.src, segment.sport, segment.dst, segment.dport


@dataclass(frozen=True)
class CheckSyncTiming:
    """One Force Update on the wire, seen from the phone (SPEC §7)."""

    notify_at: float  #: the check-sync NOTIFY (its first copy) arriving
    ok_after_s: float  #: the phone's 200 to it leaving, minus `notify_at`
    syn_after_s: float  #: the phone's SYN to the provisioning server, minus `notify_at`
    get_after_s: float  #: the first segment of its GET, minus `notify_at`
    status: int  #: the provisioning server's status code
    response_end_at: float  #: the response's last byte arriving


def check_sync_timing(
    packets: Sequence[Packet],
    segments: Sequence[HttpSegment],
    *,
    phone: str,
    pbx: str,
    prov: str,
) -> CheckSyncTiming:
    """Measure the first Force Update in a capture: `pbx`'s check-sync NOTIFY to `phone`,
    the phone's 200 to it and its fetch from `prov` after it.

    Raises:
        LabError: no check-sync NOTIFY, no 200 from the phone to it, or no fetch after it.
    """
    notifies = [p for p in requests(packets, pbx, phone, "NOTIFY") if _check_sync(p)]
    if not notifies:
        raise LabError(f"provtiming: no check-sync NOTIFY from {pbx}")
    notify = notifies[0]
    ok = response_to(packets, notify, 200)
    if ok is None:
        raise LabError("provtiming: the phone sent no 200 to the check-sync NOTIFY")
    fetch = fetch_after(segments, phone=phone, server=prov, since=notify.ts)
    return CheckSyncTiming(
        notify_at=notify.ts,
        ok_after_s=ok.ts - notify.ts,
        syn_after_s=fetch.syn_at - notify.ts,
        get_after_s=fetch.get_at - notify.ts,
        status=fetch.status,
        response_end_at=fetch.response_end_at,
    )


def _check_sync(packet: Packet) -> bool:
    """A NOTIFY's `Event` is check-sync (with or without `;reboot=true`)."""
    event = header(packet.payload, "event") or ""
    return event.split(";", 1)[0].strip().lower() == "check-sync"


def to_user(payload: bytes) -> str | None:
    """The user part of a SIP message's To URI (`To: <sip:1003@192.0.2.11>` -> "1003")."""
    found = re.match(r"<?sips?:([^@>;]+)@", header(payload, "to") or "")
    return found.group(1) if found else None


def first_request(
    packets: Sequence[Packet],
    *,
    src: str,
    dst: str,
    method: str,
    since: float,
    to: str | None = None,
    unsubscribe: bool | None = None,
) -> float:
    """When `src` first sent `method` to `dst` after `since`.

    Args:
        to: only requests whose To user is this (a BLF key's extension).
        unsubscribe: only requests with `Expires: 0` (True) or without (False).

    Raises:
        LabError: there is none.
    """
    for packet in requests(packets, src, dst, method):
        if packet.ts <= since or (to is not None and to_user(packet.payload) != to):
            continue
        expires_zero = (header(packet.payload, "expires") or "").strip() == "0"
        if unsubscribe is None or unsubscribe == expires_zero:
            return packet.ts
    what = f"{method}{f' to {to}' if to else ''}{' (Expires: 0)' if unsubscribe else ''}"
    raise LabError(f"provtiming: no {what} from {src} to {dst} after {since:.6f}")


@dataclass(frozen=True)
class BootTiming:
    """One `phoned run` from its spawn to its first OPTIONS on the wire (SPEC §7 Boot).

    SPEC §1 puts the first cycle at a random offset within the first interval after the
    service starts: the first REGISTER (sent as the core starts, on the primary) marks that
    start on the wire, the first OPTIONS comes that offset later.
    """

    first_packet_after_s: float  #: the phone's first packet of any kind, minus the spawn
    syn_after_s: float | None  #: its first SYN to the provisioning server (None: none)
    response_end_after_s: float | None  #: the boot fetch's response end (None: no answer)
    register_after_s: float  #: its first REGISTER, minus the spawn
    options_after_s: float  #: its first OPTIONS (to any server), minus the spawn


def boot_timing(
    packets: Sequence[Packet],
    segments: Sequence[HttpSegment],
    *,
    phone: str,
    prov: str,
    spawned_at: float,
) -> BootTiming:
    """Measure a boot captured from before the phone was spawned at `spawned_at`.

    Raises:
        LabError: the phone sent no REGISTER or no OPTIONS after `spawned_at`.
    """
    sent = [p for p in packets if p.src == phone and p.ts >= spawned_at]

    def first(method: str) -> float:
        times = [p.ts for p in sent if _method(p) == method]
        if not times:
            raise LabError(f"provtiming: the phone sent no {method} after it was spawned")
        return min(times) - spawned_at

    syns = [s.ts for s in segments if s.syn and (s.src, s.dst) == (phone, prov)]
    syns = [ts for ts in syns if ts >= spawned_at]
    try:
        fetch = fetch_after(segments, phone=phone, server=prov, since=spawned_at)
    except LabError:
        response_end = None
    else:
        response_end = fetch.response_end_at - spawned_at
    mine = [p.ts for p in sent] + [s.ts for s in segments if s.src == phone and s.ts >= spawned_at]
    return BootTiming(
        first_packet_after_s=min(mine) - spawned_at,
        syn_after_s=min(syns) - spawned_at if syns else None,
        response_end_after_s=response_end,
        register_after_s=first("REGISTER"),
        options_after_s=first("OPTIONS"),
    )


def _method(packet: Packet) -> str | None:
    summary = sip_summary(packet.payload)
    return summary.method if summary is not None else None


def log_time(line: str, near: float) -> float:
    """The instant (epoch seconds) a `phoned` log line was written, as it prints it.

    The line gives only the local time of day, truncated to the ms; the date is the one
    that puts it closest to `near` (a capture timestamp of the same run), so a run across
    midnight still reads right. The true instant lies in [result, result + 1 ms).

    Raises:
        LabError: the line does not start with a `phoned` log time.
    """
    found = _LOG_TIME.match(line)
    if found is None:
        raise LabError(f"provtiming: no log time at the start of {line[:40]!r}")
    hour, minute, second, millis = (int(part) for part in found.groups())
    day = datetime.fromtimestamp(near).replace(hour=0, minute=0, second=0, microsecond=0)
    stamp = timedelta(hours=hour, minutes=minute, seconds=second, milliseconds=millis)
    candidates = [(day + timedelta(days=shift) + stamp).timestamp() for shift in (-1, 0, 1)]
    return min(candidates, key=lambda when: abs(when - near))
