"""Server names to addresses (SPEC §1): A/AAAA, DNS SRV, and the SRV target's name.

Owns: the lookups that turn a configured server (`ProbeTarget` with an IP or a name, port
0 = DNS SRV) into an IP literal and port, and what SRV answered (which target gave which
address). Must not touch: when lookups run or on which thread (`resolve`), sockets of the
probers, the schedule, pjsua2.

Rule 1: SRV (`port = 0`) queries `_sip._udp.`, `_sip._tcp.` or `_sips._tcp.` + name per
transport, with a timeout under one second; records are tried lowest priority first
(then highest weight), each target through getaddrinfo (A/AAAA, /etc/hosts honoured).
Rule 2 (issue 12): an address found through SRV keeps the name of its SRV target
(`ProbeTarget.name`, e.g. `pbx1.lab` for `_sips._tcp.voip.lab`): TLS verifies the
server's certificate against that name, never against the IP. The SIP stack can only
verify the name it connects to, and it connects to the SRV target (`srv_target_name`
tells the shell which one gave an address), so the probe checks the very same name and
its verdict says whether the registration can succeed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver

from phoned.errors import PhonedError
from phoned.probe.matching import ProbeTarget

#: Seconds before a cycle start at which its lookups begin (SRV timeout + margin).
LEAD_S = 1.0
#: SRV query lifetime, under one second so that the result is in before t = 0.
SRV_TIMEOUT_S = 0.8
_SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
_DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: Rule 2: (configured name, transport, (ip, port)) -> SRV target; written by the lookup
#: threads, read by the shell at a switch. A few entries per server at most.
_srv_names: dict[tuple[str, str, tuple[str, int]], str] = {}
_srv_names_lock = threading.Lock()
_SRV_NAMES_KEPT = 64


class ResolveError(PhonedError, LookupError):
    """A server name has no usable address."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One DNS SRV answer (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str  #: host name, without the final dot; "." or "" = service not offered


AddressLookup = Callable[[str], Sequence[str]]
SrvLookup = Callable[[str, float], Sequence[SrvRecord]]


def srv_name(name: str, transport: str) -> str:
    """The SRV owner name for `name` over `transport` (RFC 3263 §4.1)."""
    return _SRV_PREFIX[transport] + name.rstrip(".")


def lookup_addresses(host: str) -> list[str]:
    """IP literals of `host` via getaddrinfo, in its order of preference.

    Raises:
        ResolveError: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveError(f"{host}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(addresses))  # unique, order kept


def lookup_srv(qname: str, timeout_s: float) -> list[SrvRecord]:
    """The SRV records of `qname`, from the resolvers of /etc/resolv.conf (re-read).

    Raises:
        ResolveError: no such name or record, no answer within `timeout_s`.
    """
    try:
        answer = dns.resolver.Resolver().resolve(qname, "SRV", lifetime=timeout_s, search=False)
    except dns.exception.DNSException as exc:
        raise ResolveError(f"{qname}: {exc}") from exc
    return [
        SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
        for r in answer
    ]


def resolve_target(
    target: ProbeTarget,
    transport: str,
    *,
    addresses: AddressLookup = lookup_addresses,
    srv: SrvLookup = lookup_srv,
    srv_timeout_s: float = SRV_TIMEOUT_S,
) -> ProbeTarget:
    """An IP literal and port for a configured target; `name` keeps the configured name.

    Raises:
        ResolveError: the name (or every SRV target) does not resolve.
    """
    if target.is_literal:
        return ProbeTarget(target.host, target.port or _DEFAULT_PORT[transport], target.name)
    name = target.host
    if target.port:
        return ProbeTarget(_first_address(name, addresses), target.port, name)
    qname = srv_name(name, transport)
    records = sorted(
        (r for r in srv(qname, srv_timeout_s) if r.target not in {"", "."}),
        key=lambda r: (r.priority, -r.weight),
    )
    failures: list[str] = []
    for record in records:
        try:
            address = _first_address(record.target, addresses)
        except ResolveError as exc:
            failures.append(str(exc))
            continue
        _remember_srv_target(name, transport, (address, record.port), record.target)
        return ProbeTarget(address, record.port, record.target)  # Rule 2
    raise ResolveError(
        f"{qname}: no usable SRV target" + (f" ({'; '.join(failures)})" if failures else "")
    )


def srv_target_name(name: str, transport: str, address: tuple[str, int]) -> str | None:
    """Rule 2: the SRV target through which `name` over `transport` last resolved to
    `address`; None when no SRV lookup of this process gave that address."""
    with _srv_names_lock:
        return _srv_names.get((name.rstrip(".").lower(), transport, address))


def _remember_srv_target(name: str, transport: str, address: tuple[str, int], target: str) -> None:
    with _srv_names_lock:
        if len(_srv_names) >= _SRV_NAMES_KEPT:
            _srv_names.pop(next(iter(_srv_names)))  # the oldest: a server long gone
        _srv_names[(name.rstrip(".").lower(), transport, address)] = target


def _first_address(host: str, addresses: AddressLookup) -> str:
    found = list(addresses(host))
    if not found:
        raise ResolveError(f"{host}: no address")
    return found[0]
