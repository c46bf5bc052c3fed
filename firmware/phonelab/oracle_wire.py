"""What a capture of the phone's traffic says it did: probes, replies, REGISTERs (SPEC §1).

Owns: picking out of captured packets the OPTIONS the phone sent to each server (with the
Call-ID, CSeq, top Via branch and its source port), every SIP response that reached the
phone, the REGISTERs it sent (binding or un-binding, first transmissions), and the
bindings the servers hold for it over time (from a 2xx to a binding REGISTER until an
un-REGISTER is sent there or it expires). Pure: no IO, no clock; the oracle
(`phonelab.oracle`) judges what this module finds.
Must not touch: captures, sockets or processes; anything but the packets handed in.

A reply *matches* a probe only when its Call-ID, CSeq (number and method), top Via branch
all equal the probe's, it comes from the address and port probed and it goes to the port
the probe left from (SPEC §1): `Reply.answers(probe)`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from phonelab.pcap import Packet, SipSummary, sip_summary
from phonelab.sipreq import split_message

#: A server's name ("primary", "backup") -> the address and port it is probed at.
Servers = Mapping[str, tuple[str, int]]
PRIMARY, BACKUP = "primary", "backup"


@dataclass(frozen=True)
class Probe:
    """One OPTIONS the phone sent to a server."""

    server: str
    ts: float  #: capture time (kernel timestamp, epoch seconds)
    target: tuple[str, int]  #: the address and port probed
    sport: int  #: the phone's source port
    call_id: str
    cseq: int
    branch: str


@dataclass(frozen=True)
class Reply:
    """One SIP response that reached the phone (from anyone)."""

    ts: float
    source: tuple[str, int]
    dport: int
    status: int
    call_id: str | None
    cseq: str | None  #: as sent, e.g. "3 OPTIONS"
    branch: str | None

    def answers(self, probe: Probe) -> bool:
        """Whether this is a response to `probe` by the SPEC §1 rule (module docstring)."""
        return (
            self.source == probe.target
            and self.dport == probe.sport
            and self.call_id == probe.call_id
            and self.cseq is not None
            and self.cseq.split() == [str(probe.cseq), "OPTIONS"]
            and self.branch == probe.branch
        )

    @property
    def counts_as_up(self) -> bool:
        """A final response other than 503 (SPEC §1: 503 counts as no reply; 1xx is not final)."""
        return self.status >= 200 and self.status != 503


@dataclass(frozen=True)
class Register:
    """One REGISTER the phone sent to a server (retransmissions included)."""

    server: str
    ts: float
    call_id: str
    cseq: str
    branch: str
    unregister: bool  #: `Expires: 0` or `expires=0` on the Contact
    expires_s: int = 3600  #: the `Expires` asked for (RFC 3261's default when absent)


@dataclass(frozen=True)
class Switch:
    """The phone moved to `server`: a REGISTER to it, or (`silent`) a move to a server
    that still held its binding, which needs nothing on the wire."""

    ts: float
    server: str
    silent: bool = False


@dataclass(frozen=True)
class Binding:
    """A server holding the phone's contact, as the wire shows it."""

    server: str
    start: float  #: the 2xx to the binding REGISTER
    end: float  #: an un-REGISTER sent there, or the expiry


@dataclass(frozen=True)
class Wire:
    """Everything of the capture the oracle needs, each list in capture order."""

    probes: tuple[Probe, ...]
    replies: tuple[Reply, ...]
    registers: tuple[Register, ...]


def unregisters(payload: bytes) -> bool:
    """Whether a REGISTER removes its binding (`Expires: 0`, or `expires=0` on the Contact)."""
    _, headers, _ = split_message(payload)
    contact = headers.get("contact", headers.get("m", ""))
    return headers.get("expires") == "0" or re.search(r";\s*expires=0\b", contact) is not None


def _expires_s(payload: bytes) -> int:
    value = split_message(payload)[1].get("expires", "")
    return int(value) if value.isdigit() else 3600


def extract(packets: Iterable[Packet], *, phone: str, servers: Servers) -> Wire:
    """The probes, replies and REGISTERs in `packets`.

    Args:
        packets: the capture (any order; sorted by time here).
        phone: the phone's address.
        servers: where each server is probed; REGISTERs are recognised at the same address.
    """
    by_address = {address: name for name, address in servers.items()}
    probes: list[Probe] = []
    replies: list[Reply] = []
    registers: list[Register] = []
    for packet in sorted(packets, key=lambda p: p.ts):
        summary = sip_summary(packet.payload)
        if summary is None:
            continue
        if packet.dst == phone and summary.status is not None:
            replies.append(_reply(packet, summary))
            continue
        server = by_address.get((packet.dst, packet.dport))
        if packet.src != phone or server is None:
            continue
        if summary.method == "OPTIONS" and (probe := _probe(packet, summary, server)):
            probes.append(probe)
        elif summary.method == "REGISTER" and summary.call_id and summary.branch:
            unbind, cseq = unregisters(packet.payload), summary.cseq or ""
            expires_s = _expires_s(packet.payload)
            sent = Register(server, packet.ts, summary.call_id, cseq, summary.branch, unbind)
            registers.append(dataclasses.replace(sent, expires_s=expires_s))
    return Wire(tuple(probes), tuple(replies), tuple(registers))


def _probe(packet: Packet, summary: SipSummary, server: str) -> Probe | None:
    number, _, method = (summary.cseq or "").partition(" ")
    if not (summary.call_id and summary.branch and number.isdigit() and method == "OPTIONS"):
        return None
    target = (packet.dst, packet.dport)
    return Probe(
        server, packet.ts, target, packet.sport, summary.call_id, int(number), summary.branch
    )


def _reply(packet: Packet, summary: SipSummary) -> Reply:
    return Reply(
        packet.ts,
        (packet.src, packet.sport),
        packet.dport,
        summary.status or 0,
        summary.call_id,
        summary.cseq,
        summary.branch,
    )


def first_sends(registers: Sequence[Register]) -> list[Register]:
    """The binding REGISTERs, first transmissions only (a retransmission keeps its branch)."""
    seen: set[str] = set()
    found = []
    for register in registers:
        if register.branch not in seen and not register.unregister:
            found.append(register)
        seen.add(register.branch)
    return found


def bindings(wire: Wire, servers: Servers) -> list[Binding]:
    """Every binding a server held for the phone: from the 2xx to a binding REGISTER until
    the phone sent an un-REGISTER there (it gave the binding up) or it expired."""
    asked = {(r.call_id, r.cseq): r for r in wire.registers if not r.unregister}
    found = []
    for reply in wire.replies:
        register = asked.get((reply.call_id or "", reply.cseq or ""))
        if register is None or not 200 <= reply.status < 300:
            continue
        if reply.source != servers.get(register.server):
            continue
        ends = [r.ts for r in wire.registers if r.unregister and r.server == register.server]
        end = min([t for t in ends if t > reply.ts], default=reply.ts + register.expires_s)
        found.append(Binding(register.server, reply.ts, min(end, reply.ts + register.expires_s)))
    return found


def registered(wire: Wire, servers: Servers, server: str, after: float) -> float | None:
    """When a binding REGISTER sent to `server` at or after `after` got a 2xx from it."""
    asked = {
        (r.call_id, r.cseq)
        for r in wire.registers
        if r.server == server and not r.unregister and r.ts >= after
    }
    for reply in wire.replies:
        ok = reply.source == servers[server] and 200 <= reply.status < 300
        if ok and (reply.call_id, reply.cseq) in asked and reply.ts >= after:
            return reply.ts
    return None


def registrations_per_stay(
    registers: Sequence[Register], moves: Sequence[Switch], start: str = PRIMARY
) -> list[tuple[float, str, int]]:
    """For each stay on one server (from the start or a move to the next move): its start,
    the server and how many registrations (distinct Call-IDs of binding REGISTERs sent to
    it) it took. SPEC §10: one per switch, plus pjsip's own refreshes and retransmissions
    (which keep the Call-ID): a registration begun before the stay (a REGISTER still
    being retransmitted when the phone had moved on) is not the stay's."""
    bounds = [(float("-inf"), start), *((m.ts, m.server) for m in moves)]
    first_sent: dict[str, float] = {}
    for r in registers:
        if not r.unregister:
            first_sent[r.call_id] = min(r.ts, first_sent.get(r.call_id, r.ts))
    stays: list[tuple[float, str, int]] = []
    for index, (begin, server) in enumerate(bounds):
        until = bounds[index + 1][0] if index + 1 < len(bounds) else float("inf")
        call_ids = {
            r.call_id
            for r in registers
            if r.server == server
            and not r.unregister
            and begin <= r.ts < until
            and first_sent[r.call_id] >= begin
        }
        stays.append((begin, server, len(call_ids)))
    return stays
