"""Force Update from the PBX: `NOTIFY` with `Event: check-sync` (SPEC §7), decided purely.

Owns: recognising a check-sync NOTIFY (`check_sync_reboot`), the answer it gets, the
memory of recent ones that keeps a retransmission from being reported twice, the count of
refused ones, and the text of the warning about a refused source (`CheckSyncInbox`).
Imports nothing that does IO; time is an input (`now`, monotonic seconds).
Must not touch: sockets, pjsua2 and pjsip (`pjsip_hooks` answers, `features` logs and
queues the report), the clock, and what is fetched or restarted: the service decides.

Rule 1 (SPEC §7): a NOTIFY is a check-sync when its Event header's package is
`check-sync` (any case; the header by any name case or its compact form `o`, already
folded by `IncomingRequest.header`); `reboot=true` (any case, quoted or not) among its
parameters asks for a restart. Every other request is not ours (`handle` returns None).
Rule 2 (SPEC §7): answered 200 when the source IP is one of the allowed addresses (the
configured servers and outbound proxies, `allow_from`), 403 otherwise. Only a 200 is
reported (`CheckSyncReceived`); a 403 is counted (`refused`) and warned about once per
source (the last `WARNED_MAX` sources are remembered).
Rule 3 (SPEC §7): a retransmission (same Call-ID, CSeq and source as one seen in the last
`MEMORY_S`) gets the same answer again and is neither reported nor counted again. At most
`MEMORY_MAX` are remembered, the oldest forgotten first: under a flood of distinct
NOTIFYs a late retransmission of a forgotten one is reported again (memory stays bounded).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: Rule 2: the answer to an allowed check-sync, and to any other.
OK, FORBIDDEN = 200, 403
#: Rule 3: 64 * T1, pjsip's Timer J: how long a UDP NOTIFY may come again.
MEMORY_S = 64.0
#: Rule 3: NOTIFYs remembered at most.
MEMORY_MAX = 64
#: Rule 2: refused sources remembered for the once-per-source warning.
WARNED_MAX = 64
PACKAGE = "check-sync"

_Key = tuple[str, str, tuple[str, int]]  # (Call-ID, CSeq, source)


@dataclass(frozen=True, slots=True)
class CheckSyncReceived:
    """A check-sync NOTIFY from a configured server, answered 200 (reported once)."""

    source: tuple[str, int]  #: (ip, port) it came from
    reboot: bool  #: `Event: check-sync;reboot=true`: restart instead of fetching
    call_id: str  #: its Call-ID, to tie the log line to the wire


@dataclass(frozen=True, slots=True)
class CheckSyncAnswer:
    """What to do with one check-sync NOTIFY."""

    status: int  #: the final response to send: 200 or 403
    report: CheckSyncReceived | None  #: to hand to the service; None: refused or repeated
    warning: str | None  #: a log line to write (the first refusal from this source)


class RequestView(Protocol):
    """The parts of an incoming request read here (`pjsip_hooks.IncomingRequest`)."""

    @property
    def method(self) -> str:
        """As received, e.g. "NOTIFY"."""

    @property
    def source(self) -> tuple[str, int]:
        """(ip, port) it came from."""

    def header(self, name: str) -> str | None:
        """The value of header `name` (any case, compact form accepted), or None."""


def check_sync_reboot(event: str | None) -> bool | None:
    """Rule 1: for an Event header value, whether it asks for a reboot; None when it is
    not check-sync (or absent).

    >>> check_sync_reboot("Check-Sync ; Reboot=TRUE"), check_sync_reboot("dialog")
    (True, None)
    """
    if event is None:
        return None
    package, *params = event.split(",", 1)[0].split(";")
    if package.strip().lower() != PACKAGE:
        return None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "reboot" and value.strip().strip('"').lower() == "true":
            return True
    return False


def normal_ip(host: str) -> str:
    """`host` as a canonical IP string (IPv4-mapped IPv6 unwrapped); names lower-cased."""
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return host.strip().lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def format_source(source: tuple[str, int]) -> str:
    """`ip:port`, or `[ip]:port` for IPv6, as log lines show it."""
    host, port = source
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CheckSyncInbox:
    """Decides the answer to each check-sync NOTIFY and what is reported (Rules 1-3).

    Not thread-safe: one owner (the pjsua2 thread) calls `allow_from` and `handle`.
    """

    def __init__(self, *, memory_s: float = MEMORY_S, memory_max: int = MEMORY_MAX) -> None:
        """Args:
        memory_s: how long a NOTIFY is remembered for retransmissions (Rule 3).
        memory_max: how many are remembered at most (Rule 3), >= 1.

        Raises:
            ValueError: `memory_s` negative or `memory_max` below 1.
        """
        if memory_s < 0 or memory_max < 1:
            raise ValueError(
                f"check-sync memory must be >= 0 s and >= 1 entry, got {memory_s} s, {memory_max}"
            )
        self._memory_s = memory_s
        self._memory_max = memory_max
        self._allowed: frozenset[str] = frozenset()
        self._seen: OrderedDict[_Key, tuple[float, int]] = OrderedDict()  # -> (at, status)
        self._warned: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.refused = 0  #: check-sync NOTIFYs answered 403 (retransmissions not counted)

    @property
    def allowed(self) -> frozenset[str]:
        """The source IPs answered 200 (canonical form)."""
        return self._allowed

    @property
    def remembered(self) -> int:
        """How many NOTIFYs are remembered now (at most `memory_max`)."""
        return len(self._seen)

    def allow_from(self, hosts: Iterable[str]) -> None:
        """Set the addresses check-syncs are accepted from (replaces the previous set).

        Names that are not IP literals never match a source: resolve them first.
        """
        self._allowed = frozenset(normal_ip(host) for host in hosts if host)

    def handle(self, request: RequestView, now: float) -> CheckSyncAnswer | None:
        """The answer to `request` at monotonic time `now`, or None when it is not a
        check-sync NOTIFY (Rule 1: left to whoever else handles it)."""
        if request.method.upper() != "NOTIFY":
            return None
        reboot = check_sync_reboot(request.header("event"))
        if reboot is None:
            return None
        self._forget_before(now - self._memory_s)
        call_id = (request.header("call-id") or "").strip()
        cseq = " ".join((request.header("cseq") or "").split()).upper()
        key = (call_id, cseq, request.source)
        remembered = self._seen.get(key)
        if remembered is not None:  # Rule 3: the same answer, nothing reported
            return CheckSyncAnswer(remembered[1], None, None)
        status = OK if normal_ip(request.source[0]) in self._allowed else FORBIDDEN
        self._remember(key, now, status)
        if status == OK:
            return CheckSyncAnswer(OK, CheckSyncReceived(request.source, reboot, call_id), None)
        self.refused += 1
        return CheckSyncAnswer(FORBIDDEN, None, self._warning(request.source))

    def _forget_before(self, oldest: float) -> None:
        while self._seen:
            key, (at, _) = next(iter(self._seen.items()))
            if at > oldest:
                return
            del self._seen[key]

    def _remember(self, key: _Key, now: float, status: int) -> None:
        while len(self._seen) >= self._memory_max:
            self._seen.popitem(last=False)
        self._seen[key] = (now, status)

    def _warning(self, source: tuple[str, int]) -> str | None:
        if source in self._warned:
            return None
        while len(self._warned) >= WARNED_MAX:
            self._warned.popitem(last=False)
        self._warned[source] = None
        return (
            f"sip: check-sync from {format_source(source)} refused (not a configured server) "
            f"-> {FORBIDDEN}"
        )
