"""UdpProber against real sockets on loopback (SPEC §1 matching rules, ICMP errors).

A small responder thread plays the PBX: it records every OPTIONS it receives and answers
as each test tells it (200, 503, garbage, a wrong id, from another port, late, or not at
all). Every wait is a `select` with a deadline, never a sleep.
"""

from __future__ import annotations

import queue
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from phoned.clock import Clock, MonotonicClock
from phoned.core.events import Event, ProbeAnswered, ProbeFailed, Server
from phoned.errors import ProbeError
from phoned.probe.matching import AttemptBook, ProbeTarget
from phoned.probe.sipmsg import parse_response
from phoned.probe.udp import UdpProber
from phonelab.kamailio import KamailioPbx, free_udp_port

P, B = Server.PRIMARY, Server.BACKUP
WAIT_S = 3.0


class SteppedClock:
    """A clock the test moves by hand, so round-trip times are exact."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t


@dataclass
class Request:
    """An OPTIONS the responder received."""

    data: bytes
    source: tuple[str, int]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int]) -> Request:
        lines = data.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return cls(data, source, headers)

    @property
    def request_line(self) -> str:
        return self.data.decode().split("\r\n", 1)[0]

    @property
    def branch(self) -> str:
        found = re.search(r";branch=([^;]+)", self.headers["via"])
        assert found is not None
        return found.group(1)


Behaviour = Callable[["Responder", Request], None]


class Responder:
    """A UDP peer on loopback that answers OPTIONS as told; `side` is a second socket
    on another port of the same host."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.side = socket.socket(family, socket.SOCK_DGRAM)
        self.side.bind((host, 0))
        self.behaviour: Behaviour = lambda r, req: r.reply(req, 200)
        self.requests: queue.Queue[Request] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="responder", daemon=True)
        self._thread.start()

    @property
    def target(self) -> ProbeTarget:
        host, port = self.sock.getsockname()[:2]
        return ProbeTarget(host, port)

    def next_request(self) -> Request:
        return self.requests.get(timeout=WAIT_S)

    def reply(
        self,
        req: Request,
        status: int,
        *,
        branch: str | None = None,
        call_id: str | None = None,
        cseq: str | None = None,
        from_side: bool = False,
    ) -> None:
        via = req.headers["via"]
        if branch is not None:
            via = via.replace(req.branch, branch)
        text = (
            f"SIP/2.0 {status} Whatever\r\nVia: {via};received={req.source[0]}\r\n"
            f"From: {req.headers['from']}\r\nTo: {req.headers['to']};tag=srv\r\n"
            f"Call-ID: {call_id or req.headers['call-id']}\r\n"
            f"CSeq: {cseq or req.headers['cseq']}\r\nContent-Length: 0\r\n\r\n"
        )
        self.send_raw(req, text.encode(), from_side=from_side)

    def send_raw(self, req: Request, data: bytes, *, from_side: bool = False) -> None:
        (self.side if from_side else self.sock).sendto(data, req.source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        assert not self._thread.is_alive(), "responder thread did not stop"
        self.sock.close()
        self.side.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                data, source = self.sock.recvfrom(65535)
                req = Request.parse(data, source[:2])
                self.requests.put(req)
                self.behaviour(self, req)


@pytest.fixture
def responder() -> Iterator[Responder]:
    peer = Responder()
    yield peer
    peer.close()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


def make_prober(targets: dict[Server, ProbeTarget], clock: Clock) -> UdpProber:
    return UdpProber(
        targets,
        from_user="1001",
        domain="pbx.example.com",
        user_agent="phoned-test/1",
        clock=clock,
    )


@pytest.fixture
def prober(responder: Responder, clock: SteppedClock) -> Iterator[UdpProber]:
    with make_prober({P: responder.target}, clock) as subject:
        yield subject


def collect(prober: UdpProber, until: Callable[[list[Event]], bool]) -> list[Event]:
    """Feed the prober's readable sockets until `until(events)` holds (or fail)."""
    deadline = time.monotonic() + WAIT_S
    events: list[Event] = []
    while not until(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out waiting; got {events}, unmatched={prober.unmatched}")
        readable, _, _ = select.select(prober.sockets(), [], [], remaining)
        for sock in readable:
            events.extend(prober.receive(sock))
    return events


def answers(count: int) -> Callable[[list[Event]], bool]:
    return lambda events: sum(isinstance(e, ProbeAnswered) for e in events) >= count


def failures(count: int) -> Callable[[list[Event]], bool]:
    return lambda events: sum(isinstance(e, ProbeFailed) for e in events) >= count


def closed_port_target() -> ProbeTarget:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return ProbeTarget("127.0.0.1", sock.getsockname()[1])


# ---------------------------------------------------------------- what goes out


def test_options_on_the_wire(prober: UdpProber, responder: Responder) -> None:
    assert prober.send(P, cycle=1, attempt=1) == []
    req = responder.next_request()
    local_host, local_port = prober.sockets()[0].getsockname()
    assert req.source == (local_host, local_port)
    assert req.request_line == f"OPTIONS sip:127.0.0.1:{responder.target.port} SIP/2.0"
    assert req.headers["via"] == f"SIP/2.0/UDP {local_host}:{local_port};branch={req.branch};rport"
    assert req.branch.startswith("z9hG4bK")
    assert re.fullmatch(r"<sip:1001@pbx\.example\.com>;tag=\w+", req.headers["from"])
    assert req.headers["cseq"] == "1 OPTIONS"
    assert req.headers["user-agent"] == "phoned-test/1"


def test_each_attempt_is_a_new_request_with_a_rising_cseq(
    prober: UdpProber, responder: Responder
) -> None:
    responder.behaviour = lambda r, req: None
    for cycle, attempt in [(1, 1), (1, 2), (1, 3), (2, 1)]:
        assert prober.send(P, cycle, attempt) == []
    sent = [responder.next_request() for _ in range(4)]
    assert len({r.branch for r in sent}) == 4
    assert len({r.headers["call-id"] for r in sent}) == 4
    assert [r.headers["cseq"] for r in sent] == [f"{n} OPTIONS" for n in (1, 2, 3, 4)]


# ------------------------------------------------------------------ what counts


def test_200_is_an_answer_with_rtt_from_the_clock(
    prober: UdpProber, responder: Responder, clock: SteppedClock
) -> None:
    prober.send(P, cycle=7, attempt=1)
    responder.next_request()
    clock.t += 0.25
    [answer] = collect(prober, answers(1))
    assert isinstance(answer, ProbeAnswered)
    assert answer == ProbeAnswered(P, 7, 1, 200, answer.rtt_ms)
    assert answer.rtt_ms == pytest.approx(250.0, abs=20.0)
    # the kernel's stamp is a little older than the read: never newer
    assert answer.arrived_at is not None
    assert 100.23 <= answer.arrived_at <= 100.25
    assert prober.unmatched == 0


def test_rtt_on_a_real_clock_is_small(responder: Responder) -> None:
    with make_prober({P: responder.target}, MonotonicClock()) as prober:
        prober.send(P, cycle=1, attempt=1)
        [answer] = collect(prober, answers(1))
    assert isinstance(answer, ProbeAnswered)
    assert 0.0 <= answer.rtt_ms < 1000.0


def test_503_is_reported_for_the_core_to_judge(prober: UdpProber, responder: Responder) -> None:
    responder.behaviour = lambda r, req: r.reply(req, 503)
    prober.send(P, cycle=1, attempt=1)
    [answer] = collect(prober, answers(1))
    assert isinstance(answer, ProbeAnswered)
    assert answer.status_code == 503


def test_provisional_and_final_are_both_reported(prober: UdpProber, responder: Responder) -> None:
    def trying_then_ok(r: Responder, req: Request) -> None:
        r.reply(req, 100)
        r.reply(req, 200)

    responder.behaviour = trying_then_ok
    prober.send(P, cycle=1, attempt=1)
    events = collect(prober, answers(2))
    assert [e.status_code for e in events if isinstance(e, ProbeAnswered)] == [100, 200]


def test_duplicate_final_answer_is_unmatched(prober: UdpProber, responder: Responder) -> None:
    def twice_then_marker(r: Responder, req: Request) -> None:
        r.reply(req, 200)
        r.reply(req, 200)

    responder.behaviour = twice_then_marker
    prober.send(P, cycle=1, attempt=1)
    assert len(collect(prober, answers(1))) == 1
    # The duplicate was sent after the first, on the same path: wait until it is read.
    assert collect(prober, lambda _: prober.unmatched == 1) == []


@pytest.mark.parametrize(
    "wrong",
    [
        {"branch": "z9hG4bKnotours"},
        {"call_id": "someone-else@198.51.100.1"},
        {"cseq": "999 OPTIONS"},
        {"cseq": "1 REGISTER"},
    ],
    ids=["branch", "call-id", "cseq-number", "cseq-method"],
)
def test_a_reply_with_a_wrong_id_is_unmatched(
    prober: UdpProber, responder: Responder, wrong: dict[str, str]
) -> None:
    def wrong_then_right(r: Responder, req: Request) -> None:
        r.reply(
            req,
            200,
            branch=wrong.get("branch"),
            call_id=wrong.get("call_id"),
            cseq=wrong.get("cseq"),
        )
        r.reply(req, 486)  # same path, so it arrives after the wrong one

    responder.behaviour = wrong_then_right
    prober.send(P, cycle=1, attempt=1)
    assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 486, 0.0)]
    assert prober.unmatched == 1


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x01garbage", b"", b"OPTIONS sip:x SIP/2.0\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"],
    ids=["bytes", "empty", "a-request", "no-headers"],
)
def test_garbage_is_unmatched(prober: UdpProber, responder: Responder, garbage: bytes) -> None:
    def garbage_then_right(r: Responder, req: Request) -> None:
        r.send_raw(req, garbage)
        r.reply(req, 200)

    responder.behaviour = garbage_then_right
    prober.send(P, cycle=1, attempt=1)
    assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 200, 0.0)]
    assert prober.unmatched == 1


def test_a_reply_from_another_port_is_not_an_answer(
    prober: UdpProber, responder: Responder
) -> None:
    def side_then_main(r: Responder, req: Request) -> None:
        r.reply(req, 200, from_side=True)  # perfect ids, wrong source port
        r.reply(req, 486)

    responder.behaviour = side_then_main
    prober.send(P, cycle=1, attempt=1)
    # Had the side reply counted, 200 would come first and 486 would be a duplicate.
    assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 486, 0.0)]
    assert prober.unmatched == 1  # SPEC §10: the spoof reached the phone and is counted


def test_a_flood_from_elsewhere_never_reaches_the_prober_and_is_counted(
    prober: UdpProber, responder: Responder
) -> None:
    """SPEC §10 junk: the kernel filter keeps out what is not from the target's address
    and port; its drops come back as `unmatched` with the next datagram read."""
    responder.behaviour = lambda r, req: None
    prober.send(P, cycle=1, attempt=1)
    request = responder.next_request()
    [probe_socket] = prober.sockets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        for _ in range(500):
            stranger.sendto(b"SIP/2.0 200 OK\r\n\r\n", probe_socket.getsockname())
    assert select.select([probe_socket], [], [], 0.2)[0] == []  # nothing to read
    responder.reply(request, 200)
    assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 200, 0.0)]
    assert prober.unmatched == 500


def test_late_answer_to_attempt_1_counts_as_attempt_1(
    prober: UdpProber, responder: Responder, clock: SteppedClock
) -> None:
    responder.behaviour = lambda r, req: None
    prober.send(P, cycle=3, attempt=1)
    first = responder.next_request()
    clock.t += 0.75
    prober.send(P, cycle=3, attempt=2)
    responder.next_request()
    clock.t += 0.125
    responder.reply(first, 200)
    [answer] = collect(prober, answers(1))
    assert isinstance(answer, ProbeAnswered)
    assert answer == ProbeAnswered(P, 3, 1, 200, answer.rtt_ms)
    assert answer.rtt_ms == pytest.approx(875.0, abs=20.0)


def test_attempts_of_the_last_two_cycles_are_remembered(
    prober: UdpProber, responder: Responder
) -> None:
    responder.behaviour = lambda r, req: None
    held = {}
    for cycle in (1, 2, 3):
        prober.send(P, cycle, attempt=1)
        held[cycle] = responder.next_request()
    responder.reply(held[1], 200)  # cycle 1 is forgotten once cycle 3 is sent
    responder.reply(held[2], 200)  # cycle 2 is still the previous cycle
    assert collect(prober, answers(1)) == [ProbeAnswered(P, 2, 1, 200, 0.0)]
    assert prober.unmatched == 1


# ------------------------------------------------------------------ failures


def test_closed_port_fails_fast_as_port_unreachable(clock: SteppedClock) -> None:
    with make_prober({P: closed_port_target()}, clock) as prober:
        started = time.monotonic()
        assert prober.send(P, cycle=5, attempt=2) == []
        assert collect(prober, failures(1)) == [ProbeFailed(P, 5, 2, "port unreachable")]
        assert time.monotonic() - started < 0.5


def test_icmp_error_surfacing_on_send_is_reported_and_the_send_retried(
    clock: SteppedClock,
) -> None:
    with make_prober({P: closed_port_target()}, clock) as prober:
        prober.send(P, cycle=1, attempt=1)
        readable, _, _ = select.select(prober.sockets(), [], [], WAIT_S)
        assert readable, "no ICMP error within the deadline"
        # Not received: the pending error fails the next send, which must still go out.
        assert prober.send(P, cycle=1, attempt=2) == [ProbeFailed(P, 1, 1, "port unreachable")]
        assert collect(prober, failures(1)) == [ProbeFailed(P, 1, 2, "port unreachable")]


def test_no_target_for_a_server_is_a_failed_attempt(prober: UdpProber) -> None:
    assert prober.send(B, cycle=1, attempt=1) == [ProbeFailed(B, 1, 1, "no target")]


@pytest.mark.parametrize(
    ("target", "user_agent"),
    [
        (ProbeTarget("pbx.example.com", 5060), "ua"),  # FQDN: resolved by the caller
        (ProbeTarget("127.0.0.1", 0), "ua"),
        (ProbeTarget("127.0.0.1", 5060), "ua\r\nX-Injected: 1"),
    ],
)
def test_bad_settings_raise_probe_error(target: ProbeTarget, user_agent: str) -> None:
    with pytest.raises(ProbeError, match="primary"):
        UdpProber(
            {P: target},
            from_user="1001",
            domain="pbx.example.com",
            user_agent=user_agent,
            clock=SteppedClock(),
        )


# --------------------------------------------------------------- several servers


def test_servers_are_probed_and_judged_separately(clock: SteppedClock) -> None:
    primary, backup = Responder(), Responder()
    backup.behaviour = lambda r, req: r.reply(req, 503)
    try:
        with make_prober({P: primary.target, B: backup.target}, clock) as prober:
            assert len(prober.sockets()) == 2
            prober.send(P, 1, 1)
            prober.send(B, 1, 1)
            events = collect(prober, answers(2))
    finally:
        primary.close()
        backup.close()
    assert sorted(events, key=repr) == [
        ProbeAnswered(B, 1, 1, 503, 0.0),
        ProbeAnswered(P, 1, 1, 200, 0.0),
    ]


def test_retarget_moves_only_the_changed_server(
    prober: UdpProber, responder: Responder, clock: SteppedClock
) -> None:
    other = Responder()
    try:
        old_primary = prober.sockets()[0]
        prober.retarget({P: responder.target, B: other.target})
        assert prober.sockets()[0] is old_primary  # unchanged target keeps its socket
        prober.retarget({P: other.target})
        assert old_primary.fileno() == -1  # closed
        assert len(prober.sockets()) == 1
        prober.send(P, 1, 1)
        other.next_request()
        assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 200, 0.0)]
        assert responder.requests.empty()
    finally:
        other.close()


def test_failed_retarget_keeps_the_old_targets(prober: UdpProber) -> None:
    before = prober.sockets()
    with pytest.raises(ProbeError):
        prober.retarget({P: ProbeTarget("not-an-ip", 5060)})
    assert prober.sockets() == before
    assert before[0].fileno() != -1


def test_receive_on_an_unknown_socket_gives_nothing(prober: UdpProber) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        assert prober.receive(stranger) == []


def test_close_is_idempotent(responder: Responder, clock: SteppedClock) -> None:
    prober = make_prober({P: responder.target}, clock)
    sock = prober.sockets()[0]
    prober.close()
    prober.close()
    assert sock.fileno() == -1
    assert prober.sockets() == []


def test_ipv6_loopback(clock: SteppedClock) -> None:
    peer = Responder("::1")
    try:
        with make_prober({P: peer.target}, clock) as prober:
            prober.send(P, 1, 1)
            req = peer.next_request()
            assert req.request_line == f"OPTIONS sip:[::1]:{peer.target.port} SIP/2.0"
            assert req.headers["via"].startswith("SIP/2.0/UDP [::1]:")
            assert collect(prober, answers(1)) == [ProbeAnswered(P, 1, 1, 200, 0.0)]
    finally:
        peer.close()


# ------------------------------------------------- AttemptBook (pure matching rules)


def _reply(branch: str, call_id: str = "c@h", cseq: str = "5 OPTIONS") -> bytes:
    return (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch={branch}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\n\r\n"
    ).encode()


def _book() -> AttemptBook:
    book = AttemptBook(P, ("192.0.2.10", 5060))
    book.record("z9hG4bKone", cycle=4, attempt=1, call_id="c@h", cseq=5, sent_at=1.0)
    return book


def test_book_requires_the_exact_source_address_and_port() -> None:
    book = _book()
    response = parse_response(_reply("z9hG4bKone"))
    assert book.match(response, ("192.0.2.10", 5061), 1.5) is None
    assert book.match(response, ("192.0.2.11", 5060), 1.5) is None
    assert book.match(response, ("192.0.2.10", 5060), 1.5) == ProbeAnswered(P, 4, 1, 200, 500.0)


def test_book_rejects_non_responses_and_missing_ids() -> None:
    book = _book()
    source = ("192.0.2.10", 5060)
    assert book.match(None, source, 2.0) is None
    assert book.match(parse_response(b"SIP/2.0 200 OK\r\n\r\n"), source, 2.0) is None
    assert book.match(parse_response(_reply("z9hG4bKone", cseq="x")), source, 2.0) is None
    assert book.latest == (4, 1)


# ------------------------------------------------------------ against a real Kamailio


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[KamailioPbx]:
    host = "127.0.0.98"  # any 127.x answers on loopback; keeps clear of other tests' ports
    with KamailioPbx("probe", host, free_udp_port(None, host), workdir=tmp_path) as pbx:
        yield pbx


def test_kamailio_answers_then_its_death_is_port_unreachable(kamailio: KamailioPbx) -> None:
    target = ProbeTarget(kamailio.host, kamailio.port)
    with make_prober({P: target}, MonotonicClock()) as prober:
        prober.send(P, cycle=1, attempt=1)
        [answer] = collect(prober, answers(1))
        assert isinstance(answer, ProbeAnswered)
        assert (answer.cycle, answer.attempt, answer.status_code) == (1, 1, 200)
        assert prober.unmatched == 0

        kamailio.stop()
        prober.send(P, cycle=2, attempt=1)
        assert collect(prober, failures(1)) == [ProbeFailed(P, 2, 1, "port unreachable")]


def test_frozen_kamailio_is_silent_then_its_late_answer_counts(kamailio: KamailioPbx) -> None:
    target = ProbeTarget(kamailio.host, kamailio.port)
    with make_prober({P: target}, MonotonicClock()) as prober:
        kamailio.freeze()
        prober.send(P, cycle=1, attempt=1)
        prober.send(P, cycle=1, attempt=2)
        readable, _, _ = select.select(prober.sockets(), [], [], 0.2)
        assert readable == []  # port bound, nobody answering: no ICMP, no reply
        kamailio.thaw()
        events = collect(prober, answers(2))
    assert sorted((e.attempt, e.status_code) for e in events if isinstance(e, ProbeAnswered)) == [
        (1, 200),
        (2, 200),
    ]


def test_a_reply_read_late_counts_by_its_kernel_arrival_time(responder: Responder) -> None:
    """SPEC §10: a busy or stalled service reads a reply late; its round trip (and the
    instant the core judges it at) is when the kernel received it, not when it was read."""
    with make_prober({P: responder.target}, MonotonicClock()) as subject:
        subject.send(P, cycle=1, attempt=1)
        responder.next_request()
        readable, _, _ = select.select(subject.sockets(), [], [], WAIT_S)
        assert readable  # the reply is in the kernel now
        read_late_at = time.monotonic() + 0.3
        time.sleep(0.3)  # the scenario: the service is busy elsewhere for 300 ms
        [answer] = subject.receive(readable[0])
    assert isinstance(answer, ProbeAnswered)
    assert answer.rtt_ms < 100.0
    assert answer.arrived_at is not None
    assert answer.arrived_at < read_late_at - 0.2
