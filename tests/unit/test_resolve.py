"""resolve: names turned into probe targets at each cycle (SPEC §1), with injected lookups.

The lookups run on the ResolvingProber's real worker threads; the tests wait for them on
its wake socket (`select` with a deadline), and hold a lookup back with an Event when
they need it slow. The transport prober is a recording fake.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from phoned.clock import MonotonicClock
from phoned.core.events import Event, ProbeFailed, Server
from phoned.probe.matching import ProbeTarget
from phoned.probe.resolve import (
    LOOKUP_LATE,
    NO_NAME,
    ResolveError,
    ResolvingProber,
    SrvRecord,
    lookup_addresses,
    make_prober,
    resolve_target,
    srv_name,
    srv_target_name,
)
from phoned.probe.stream import StreamProber
from phoned.probe.udp import UdpProber

P, B = Server.PRIMARY, Server.BACKUP
WAIT_S = 3.0


# ------------------------------------------------------------------ resolve_target


def hosts(table: Mapping[str, Sequence[str]]) -> Callable[[str], Sequence[str]]:
    def lookup(host: str) -> Sequence[str]:
        if host not in table:
            raise ResolveError(f"{host}: Name or service not known")
        return table[host]

    return lookup


def srv_table(
    table: Mapping[str, Sequence[SrvRecord]], seen: list[tuple[str, float]] | None = None
) -> Callable[[str, float], Sequence[SrvRecord]]:
    def lookup(qname: str, timeout_s: float) -> Sequence[SrvRecord]:
        if seen is not None:
            seen.append((qname, timeout_s))
        if qname not in table:
            raise ResolveError(f"{qname}: NXDOMAIN")
        return table[qname]

    return lookup


@pytest.mark.parametrize(
    ("transport", "expected"),
    [("udp", "_sip._udp.pbx.lab"), ("tcp", "_sip._tcp.pbx.lab"), ("tls", "_sips._tcp.pbx.lab")],
)
def test_srv_name_per_transport(transport: str, expected: str) -> None:
    assert srv_name("pbx.lab.", transport) == expected


def test_a_literal_is_kept_and_port_0_gets_the_transports_default() -> None:
    no_lookup = hosts({})
    assert resolve_target(ProbeTarget("192.0.2.11", 5070), "udp", addresses=no_lookup) == (
        ProbeTarget("192.0.2.11", 5070)
    )
    assert resolve_target(ProbeTarget("192.0.2.11", 0), "tls", addresses=no_lookup).port == 5061
    assert resolve_target(ProbeTarget("2001:db8::1", 0), "tcp", addresses=no_lookup).port == 5060


def test_a_name_with_a_port_takes_the_first_address_and_keeps_the_name() -> None:
    lookup = hosts({"pbx1.lab": ["192.0.2.11", "192.0.2.99"]})
    resolved = resolve_target(ProbeTarget("pbx1.lab", 5060), "udp", addresses=lookup)
    assert resolved == ProbeTarget("192.0.2.11", 5060, name="pbx1.lab")


def test_a_name_that_does_not_resolve_raises() -> None:
    with pytest.raises(ResolveError, match=r"gone\.lab"):
        resolve_target(ProbeTarget("gone.lab", 5060), "udp", addresses=hosts({}))
    with pytest.raises(ResolveError, match="no address"):
        resolve_target(ProbeTarget("empty.lab", 5060), "udp", addresses=hosts({"empty.lab": []}))


def test_srv_lowest_priority_first_then_highest_weight_with_a_short_timeout() -> None:
    seen: list[tuple[str, float]] = []
    records = [
        SrvRecord(20, 100, 5090, "late.lab"),
        SrvRecord(10, 1, 5070, "light.lab"),
        SrvRecord(10, 50, 5080, "heavy.lab"),
    ]
    resolved = resolve_target(
        ProbeTarget("pbx.lab", 0),
        "tcp",
        addresses=hosts(
            {"late.lab": ["192.0.2.3"], "light.lab": ["192.0.2.1"], "heavy.lab": ["192.0.2.2"]}
        ),
        srv=srv_table({"_sip._tcp.pbx.lab": records}, seen),
    )
    assert resolved == ProbeTarget("192.0.2.2", 5080, name="heavy.lab")  # the SRV target
    assert seen == [("_sip._tcp.pbx.lab", seen[0][1])]
    assert 0 < seen[0][1] < 1.0  # SPEC §1: the answer must be in before t = 0


def test_srv_skips_targets_that_do_not_resolve_and_the_dot() -> None:
    records = [
        SrvRecord(1, 0, 5060, "."),
        SrvRecord(2, 0, 5061, "gone.lab"),
        SrvRecord(3, 0, 5062, "ok.lab"),
    ]
    resolved = resolve_target(
        ProbeTarget("pbx.lab", 0),
        "tls",
        addresses=hosts({"ok.lab": ["192.0.2.12"]}),
        srv=srv_table({"_sips._tcp.pbx.lab": records}),
    )
    assert resolved == ProbeTarget("192.0.2.12", 5062, name="ok.lab")


def test_srv_remembers_which_target_gave_an_address_for_the_sip_stack() -> None:
    """Issue 12: TLS verifies the SRV target's name; the shell gets the address that
    answered a probe and asks which target that was."""
    records = [SrvRecord(1, 0, 5061, "pbx1.voip.lab"), SrvRecord(2, 0, 5061, "pbx2.voip.lab")]
    lookup = srv_table({"_sips._tcp.voip.lab": records})
    addresses = hosts({"pbx1.voip.lab": ["192.0.2.11"], "pbx2.voip.lab": ["192.0.2.12"]})
    resolve_target(ProbeTarget("voip.lab", 0), "tls", addresses=addresses, srv=lookup)

    assert srv_target_name("voip.lab", "tls", ("192.0.2.11", 5061)) == "pbx1.voip.lab"
    assert srv_target_name("VOIP.lab.", "tls", ("192.0.2.11", 5061)) == "pbx1.voip.lab"
    assert srv_target_name("voip.lab", "tls", ("192.0.2.12", 5061)) is None  # never used
    assert srv_target_name("voip.lab", "tcp", ("192.0.2.11", 5061)) is None
    assert srv_target_name("other.lab", "tls", ("192.0.2.11", 5061)) is None


def test_srv_with_no_usable_record_raises() -> None:
    lookup = srv_table({"_sip._udp.pbx.lab": [SrvRecord(1, 0, 5060, "gone.lab")]})
    with pytest.raises(ResolveError, match=r"no usable SRV target.*gone\.lab"):
        resolve_target(ProbeTarget("pbx.lab", 0), "udp", addresses=hosts({}), srv=lookup)
    with pytest.raises(ResolveError, match="NXDOMAIN"):
        resolve_target(ProbeTarget("none.lab", 0), "udp", addresses=hosts({}), srv=lookup)


def test_getaddrinfo_resolves_localhost() -> None:
    addresses = lookup_addresses("localhost")
    assert addresses
    assert set(addresses) <= {"127.0.0.1", "::1"}
    assert len(addresses) == len(set(addresses))


# ----------------------------------------------------------------- ResolvingProber


class FakeTransport:
    """Records what the ResolvingProber asks of the transport prober."""

    def __init__(self) -> None:
        self.targets: dict[Server, ProbeTarget] = {}
        self.retargets: list[dict[Server, ProbeTarget]] = []
        self.sent: list[tuple[Server, int, int, ProbeTarget]] = []
        self.closed = False
        self.unmatched = 0

    def sockets(self) -> list[socket.socket]:
        return []

    def writers(self) -> list[socket.socket]:
        return []

    def send(self, server: Server, cycle: int, attempt: int) -> list[Event]:
        self.sent.append((server, cycle, attempt, self.targets[server]))
        return []

    def receive(self, _sock: socket.socket) -> list[Event]:
        return []

    def writable(self, _sock: socket.socket) -> list[Event]:
        return []

    def retarget(self, targets: Mapping[Server, ProbeTarget]) -> None:
        self.targets = dict(targets)
        self.retargets.append(dict(targets))

    def close(self) -> None:
        self.closed = True


class Names:
    """A resolve function over a mutable table; `hold` blocks lookups until released."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.hold: dict[str, threading.Event] = {}
        self.calls: list[str] = []

    def __call__(self, target: ProbeTarget) -> ProbeTarget:
        self.calls.append(target.host)
        gate = self.hold.get(target.host)
        if gate is not None:
            assert gate.wait(WAIT_S), "test never released the lookup"
        if target.host not in self.table:
            raise ResolveError(f"{target.host}: NXDOMAIN")
        return ProbeTarget(self.table[target.host], target.port or 5060, target.host)


def settle(prober: ResolvingProber, running: int = 0) -> None:
    """Wait, on the prober's wake socket, until at most `running` lookups run; then let
    it log what finished."""
    deadline = time.monotonic() + WAIT_S
    wake = prober.sockets()[-1]
    while prober.lookups_running > running:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{prober.lookups_running} lookups still running"
        select.select([wake], [], [], remaining)
        prober.receive(wake)
    prober.receive(wake)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def names() -> Names:
    return Names({"pbx1.lab": "192.0.2.11", "pbx2.lab": "192.0.2.12"})


@pytest.fixture
def prober(transport: FakeTransport, names: Names) -> Iterator[ResolvingProber]:
    configured = {P: ProbeTarget("pbx1.lab", 5060), B: ProbeTarget("pbx2.lab", 0)}
    subject = ResolvingProber(configured, transport, names, lead_s=1.0)
    settle(subject)  # the lookups started at once, for the first cycle
    yield subject
    subject.close()


def test_names_are_resolved_before_the_first_cycle_and_used(
    prober: ResolvingProber, transport: FakeTransport
) -> None:
    assert prober.send(P, 0, 1) == []
    assert prober.send(B, 0, 1) == []
    assert [sent[3] for sent in transport.sent] == [
        ProbeTarget("192.0.2.11", 5060, "pbx1.lab"),
        ProbeTarget("192.0.2.12", 5060, "pbx2.lab"),
    ]
    assert prober.resolved(P) == ("192.0.2.11", 5060)
    assert prober.resolved(B) == ("192.0.2.12", 5060)


def test_lookups_start_lead_s_before_each_cycle(prober: ResolvingProber, names: Names) -> None:
    names.calls.clear()
    assert prober.prepare(100.0, now=98.5) == 99.0  # too early: call me at 99.0
    assert names.calls == []
    assert prober.prepare(100.0, now=99.0) is None
    settle(prober)
    assert sorted(names.calls) == ["pbx1.lab", "pbx2.lab"]
    assert prober.prepare(100.0, now=99.5) is None  # once per cycle start
    assert prober.prepare(None, now=99.5) is None  # keep-alive off: nothing to do
    assert len(names.calls) == 2


def test_a_name_that_stops_resolving_is_down_for_that_cycle_and_back_after(
    prober: ResolvingProber, transport: FakeTransport, names: Names
) -> None:
    prober.send(P, 0, 1)
    del names.table["pbx1.lab"]
    prober.prepare(15.0, now=14.0)
    settle(prober)
    failures = [prober.send(P, 1, attempt) for attempt in (1, 2, 3)]
    assert failures == [[ProbeFailed(P, 1, attempt, NO_NAME)] for attempt in (1, 2, 3)]
    assert prober.resolved(P) is None
    assert P not in transport.targets  # its transport link is gone, not left stale
    assert prober.send(B, 1, 1) == []  # the other server is not affected
    names.table["pbx1.lab"] = "192.0.2.21"
    prober.prepare(30.0, now=29.0)
    settle(prober)
    assert prober.send(P, 2, 1) == []
    assert transport.sent[-1] == (P, 2, 1, ProbeTarget("192.0.2.21", 5060, "pbx1.lab"))


def test_a_cycle_binds_to_its_own_lookup_not_a_later_one(
    prober: ResolvingProber, transport: FakeTransport, names: Names
) -> None:
    prober.send(P, 0, 1)
    names.table["pbx1.lab"] = "192.0.2.31"
    prober.prepare(15.0, now=14.0)  # lookups for cycle 1 start while cycle 0 runs
    settle(prober)
    prober.send(P, 0, 2)  # still cycle 0: its address
    prober.send(P, 1, 1)  # cycle 1: the new one
    assert [sent[3].host for sent in transport.sent] == ["192.0.2.11", "192.0.2.11", "192.0.2.31"]


def test_unchanged_addresses_do_not_retarget(
    prober: ResolvingProber, transport: FakeTransport
) -> None:
    prober.send(P, 0, 1)
    count = len(transport.retargets)
    prober.prepare(15.0, now=14.0)
    settle(prober)
    prober.send(P, 1, 1)
    assert len(transport.retargets) == count


def test_a_lookup_still_running_at_t0_is_a_miss_until_it_answers(
    transport: FakeTransport, names: Names
) -> None:
    gate = names.hold["pbx1.lab"] = threading.Event()
    subject = ResolvingProber({P: ProbeTarget("pbx1.lab", 5060)}, transport, names)
    try:
        assert subject.send(P, 0, 1) == [ProbeFailed(P, 0, 1, LOOKUP_LATE)]
        gate.set()
        settle(subject)
        assert subject.send(P, 0, 2) == []
        assert transport.sent == [(P, 0, 2, ProbeTarget("192.0.2.11", 5060, "pbx1.lab"))]
    finally:
        subject.close()


def test_a_slow_name_does_not_delay_the_other_server(
    transport: FakeTransport, names: Names
) -> None:
    gate = names.hold["pbx1.lab"] = threading.Event()
    configured = {P: ProbeTarget("pbx1.lab", 5060), B: ProbeTarget("pbx2.lab", 5060)}
    subject = ResolvingProber(configured, transport, names)
    try:
        settle(subject, running=1)  # the backup's lookup finished, the primary's hangs
        assert subject.send(B, 0, 1) == []
        assert subject.send(P, 0, 1) == [ProbeFailed(P, 0, 1, LOOKUP_LATE)]
        subject.prepare(15.0, now=14.0)  # the primary's lookup is still in flight
        assert names.calls.count("pbx1.lab") == 1
        gate.set()
        settle(subject)
    finally:
        subject.close()


def test_close_does_not_wait_for_a_stuck_lookup(transport: FakeTransport, names: Names) -> None:
    gate = names.hold["pbx1.lab"] = threading.Event()
    subject = ResolvingProber({P: ProbeTarget("pbx1.lab", 5060)}, transport, names)
    started = time.monotonic()
    subject.close()
    assert time.monotonic() - started < 0.1
    assert transport.closed
    assert subject.lookups_running == 1
    gate.set()  # let the worker thread end


def test_literal_servers_bypass_resolution(transport: FakeTransport, names: Names) -> None:
    configured = {P: ProbeTarget("192.0.2.11", 5060), B: ProbeTarget("pbx2.lab", 5060)}
    subject = ResolvingProber(configured, transport, names)
    try:
        settle(subject)
        assert names.calls == ["pbx2.lab"]
        subject.send(P, 0, 1)
        assert transport.sent[0] == (P, 0, 1, ProbeTarget("192.0.2.11", 5060))
        assert subject.resolved(P) == ("192.0.2.11", 5060)
    finally:
        subject.close()
    assert transport.closed


def test_results_are_logged_once_per_change(
    prober: ResolvingProber, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phoned.resolve")
    for start in (15.0, 30.0):
        prober.prepare(start, now=start - 1)
        settle(prober)
    assert caplog.messages == []  # logged at start already, unchanged since
    del names.table["pbx2.lab"]
    for start in (45.0, 60.0):
        prober.prepare(start, now=start - 1)
        settle(prober)
    assert caplog.messages == [
        "resolve: backup pbx2.lab does not resolve (pbx2.lab: NXDOMAIN) -> down this cycle"
    ]


# --------------------------------------------------------------------- make_prober


def build(
    targets: dict[Server, ProbeTarget], transport: str
) -> UdpProber | StreamProber | ResolvingProber:
    return make_prober(
        targets,
        transport=transport,
        tls_ca_file="",
        from_user="1001",
        domain="pbx.lab",
        user_agent="t/1",
        clock=MonotonicClock(),
    )


def test_make_prober_picks_the_stack() -> None:
    literal = {P: ProbeTarget("127.0.0.1", 5060)}
    with build(literal, "udp") as udp:
        assert isinstance(udp, UdpProber)
    with build(literal, "tcp") as tcp:
        assert isinstance(tcp, StreamProber)
    with build({P: ProbeTarget("localhost", 5060)}, "udp") as named:
        assert isinstance(named, ResolvingProber)
        settle(named)
        assert named.send(P, 0, 1) == []
        assert named.resolved(P) in {("127.0.0.1", 5060), ("::1", 5060)}
