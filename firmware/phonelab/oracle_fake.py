"""Captures built by hand for the wire oracle's tests: the packets a phone's capture would
hold, with every time chosen by the caller.

Owns: `HandCapture`, which appends to a packet list the phone's OPTIONS (a fresh Call-ID,
CSeq and branch each, from one source port per server), the servers' replies to them (or
spoofed ones: another source, another branch), its REGISTERs and the servers' 2xx to
them, and whole cycles from a plan (attempt -> when its reply arrives). Pure: no IO.
Must not touch: real captures, sockets, the phone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from phonelab.oracle_wire import BACKUP, PRIMARY, Servers
from phonelab.pcap import Packet

PHONE = "192.0.2.2"
SERVERS: Servers = {PRIMARY: ("192.0.2.11", 5060), BACKUP: ("192.0.2.12", 5060)}
#: The phone's probe socket per server (one connected socket each).
SPORT = {PRIMARY: 40001, BACKUP: 40002}
OFFSETS_S = (0.0, 0.8, 1.2)

#: A server's plan in one cycle: attempt -> arrival of its reply from t0 (None: no reply).
Plan = Mapping[int, float | None]
UP: Plan = {1: 0.001}
DOWN: Plan = {1: None, 2: None, 3: None}


@dataclass(frozen=True)
class Sent:
    """One OPTIONS put in the capture."""

    server: str
    ts: float
    call_id: str
    cseq: int
    branch: str


@dataclass
class HandCapture:
    """Packets as the phone's capture would hold them (module docstring)."""

    packets: list[Packet] = field(default_factory=list)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def options(self, server: str, ts: float) -> Sent:
        """An OPTIONS from the phone to `server` at `ts`."""
        n = next(self.numbers)
        sent = Sent(server, ts, f"probe-{n}@{PHONE}", n, f"z9hG4bKp{n}")
        host, port = SERVERS[server]
        payload = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PHONE}:{SPORT[server]};branch={sent.branch};rport\r\n"
            f"Call-ID: {sent.call_id}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.packets.append(Packet(ts, PHONE, SPORT[server], host, port, payload.encode()))
        return sent

    def answer(
        self,
        sent: Sent,
        ts: float,
        status: int = 200,
        *,
        source: tuple[str, int] | None = None,
        branch: str | None = None,
    ) -> None:
        """A reply to `sent` arriving at `ts` (from `source`, with `branch` when given)."""
        host, port = source or SERVERS[sent.server]
        payload = (
            f"SIP/2.0 {status} Whatever\r\n"
            f"Via: SIP/2.0/UDP {PHONE}:{SPORT[sent.server]};branch={branch or sent.branch}\r\n"
            f"Call-ID: {sent.call_id}\r\nCSeq: {sent.cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.packets.append(Packet(ts, host, port, PHONE, SPORT[sent.server], payload.encode()))

    def cycle(self, t0: float, primary: Plan = UP, backup: Plan = UP) -> dict[str, list[Sent]]:
        """A cycle from t0: the attempts each plan names, at their offsets, and the replies
        at t0 + the plan's value."""
        sent: dict[str, list[Sent]] = {}
        for server, plan in ((PRIMARY, primary), (BACKUP, backup)):
            for attempt, arrival in plan.items():
                probe = self.options(server, t0 + OFFSETS_S[attempt - 1])
                sent.setdefault(server, []).append(probe)
                if arrival is not None:
                    self.answer(probe, t0 + arrival)
        return sent

    def register(
        self, server: str, ts: float, *, call_id: str | None = None, expires: int = 300
    ) -> int:
        """A REGISTER from the phone to `server` (Call-ID `reg-<server>` by default); its
        CSeq number."""
        n = next(self.numbers)
        host, port = SERVERS[server]
        payload = (
            f"REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bKr{n}\r\n"
            f"Call-ID: {call_id or f'reg-{server}'}\r\nCSeq: {n} REGISTER\r\n"
            f"Contact: <sip:1001@{PHONE}:5060>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
        )
        self.packets.append(Packet(ts, PHONE, 5060, host, port, payload.encode()))
        return n

    def registered(self, server: str, ts: float, call_id: str, cseq: int) -> None:
        """The 200 from `server` to the REGISTER with `call_id` and `cseq`, at `ts`."""
        ok = (
            f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bKr{cseq}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\r\n"
        )
        host, port = SERVERS[server]
        self.packets.append(Packet(ts, host, port, PHONE, 5060, ok.encode()))
