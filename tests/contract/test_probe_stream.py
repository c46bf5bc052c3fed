"""StreamProber against real TCP and TLS peers on loopback (SPEC §1 over streams).

A responder thread plays the PBX: it accepts connections (TLS with a lab CA's certificate
when asked), frames what it reads by Content-Length, and answers each OPTIONS at once
(`auto`) or when the test says: reply, reset the connection, close it, or send garbage.
The test thread drives the prober the way the monitor does, through `select` on its
`sockets()` and `writers()` with a deadline; nothing waits on a sleep.
"""

from __future__ import annotations

import queue
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from phoned.clock import MonotonicClock
from phoned.core.events import CycleJudged, Event, ProbeAnswered, ProbeFailed, SendProbe, Server
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.errors import ProbeError
from phoned.probe.connection import tls_context
from phoned.probe.framing import StreamFramer
from phoned.probe.matching import ProbeTarget
from phoned.probe.stream import StreamProber
from phoned.service.monitor import KeepaliveMonitor
from phonelab.tls import CertAuthority, TlsFiles, self_signed

P, B = Server.PRIMARY, Server.BACKUP
WAIT_S = 3.0
E = TypeVar("E", ProbeAnswered, ProbeFailed)


@dataclass
class Request:
    """An OPTIONS the responder read, and the connection it came on."""

    data: bytes
    conn: int  #: accept order, from 1
    peer: tuple[str, int]

    def header(self, name: str) -> str:
        found = re.search(rf"^{name}:\s*(.*?)\r$", self.data.decode(), re.MULTILINE | re.I)
        assert found is not None, f"no {name} in {self.data!r}"
        return found.group(1)


class StreamResponder:
    """A TCP (or TLS) SIP peer on 127.0.0.1; replies go out on its own thread."""

    def __init__(self, tls: TlsFiles | None = None, *, auto: bool = True) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.auto = auto
        self.accepted = 0
        self.handshake_errors: list[str] = []
        self.requests: queue.Queue[Request] = queue.Queue()
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(tls.cert, tls.key)
        self._conns: dict[int, socket.socket] = {}
        self._framers: dict[int, StreamFramer] = {}
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stream-responder", daemon=True)
        self._thread.start()

    def target(self, name: str | None = None) -> ProbeTarget:
        return ProbeTarget("127.0.0.1", self.port, name)

    def next_request(self) -> Request:
        return self.requests.get(timeout=WAIT_S)

    # -- what the test asks for (done on the responder thread) -------------------
    def reply(self, req: Request, status: int = 200, *, branch: str | None = None) -> None:
        self.send_raw(req, response_to(req, status, branch=branch))

    def send_raw(self, req: Request, data: bytes) -> None:
        self._run(lambda: self._conns[req.conn].sendall(data))

    def reset(self, req: Request) -> None:
        def reset_now() -> None:
            sock = self._conns.pop(req.conn)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        self._run(reset_now)

    def close_conn(self, req: Request) -> None:
        self._run(lambda: self._conns.pop(req.conn).close())

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"\0")
        self._thread.join(timeout=WAIT_S)
        assert not self._thread.is_alive(), "responder thread did not stop"
        for sock in (*self._conns.values(), self.listener, self._wake_r, self._wake_w):
            sock.close()

    def _run(self, job: Callable[[], None]) -> None:
        done = threading.Event()

        def wrapped() -> None:
            job()
            done.set()

        self._jobs.put(wrapped)
        self._wake_w.send(b"\0")
        assert done.wait(WAIT_S), "responder did not run the job"

    # -- the thread ---------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            readers = [self.listener, self._wake_r, *self._conns.values()]
            readable, _, _ = select.select(readers, [], [], WAIT_S)
            for sock in readable:
                if sock is self.listener:
                    self._accept()
                elif sock is self._wake_r:
                    self._wake_r.recv(64)
                    while not self._jobs.empty():
                        self._jobs.get_nowait()()
                else:
                    self._read(sock)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        if self._context is not None:
            sock.settimeout(WAIT_S)
            try:
                sock = self._context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(str(exc))
                sock.close()
                return
        self.accepted += 1
        sock.setblocking(False)
        self._conns[self.accepted] = sock
        self._framers[self.accepted] = StreamFramer()

    def _read(self, sock: socket.socket) -> None:
        number = next(n for n, s in self._conns.items() if s is sock)
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except OSError:
                data = b""
            if not data:
                self._conns.pop(number).close()
                return
            for message in self._framers[number].feed(data):
                req = Request(message, number, sock.getpeername()[:2])
                self.requests.put(req)
                if self.auto:
                    sock.sendall(response_to(req, 200))


def response_to(req: Request, status: int, *, branch: str | None = None) -> bytes:
    via = req.header("via")
    if branch is not None:
        via = re.sub(r"branch=[^;]+", f"branch={branch}", via)
    return (
        f"SIP/2.0 {status} Whatever\r\nVia: {via};received={req.peer[0]}\r\n"
        f"From: {req.header('from')}\r\nTo: {req.header('to')};tag=srv\r\n"
        f"Call-ID: {req.header('call-id')}\r\nCSeq: {req.header('cseq')}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def make_prober(
    targets: dict[Server, ProbeTarget], transport: str = "tcp", ca: Path | None = None
) -> StreamProber:
    return StreamProber(
        targets,
        transport=transport,
        from_user="1001",
        domain="pbx.example.com",
        user_agent="phoned-test/1",
        clock=MonotonicClock(),
        tls=tls_context(str(ca)) if ca is not None else None,
    )


def pump(prober: StreamProber, until: Callable[[list[Event]], bool]) -> list[Event]:
    """Drive the prober like the monitor does until `until(events)` holds (or fail)."""
    deadline = time.monotonic() + WAIT_S
    events: list[Event] = _backlog.pop(id(prober), [])
    while not until(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out waiting; got {events}")
        readable, writable, _ = select.select(prober.sockets(), prober.writers(), [], remaining)
        for sock in readable:
            events += prober.receive(sock)
        for sock in writable:
            events += prober.writable(sock)
    return events


#: Events `send` saw while driving a prober; the next `pump` of that prober starts with them.
_backlog: dict[int, list[Event]] = {}


def send(prober: StreamProber, server: Server, cycle: int, attempt: int) -> list[Event]:
    """`prober.send`, then drive it until every connect, handshake and write is done.

    Returns the events of the send itself; every event seen is kept for the next `pump`.
    """
    events = prober.send(server, cycle, attempt)
    _backlog[id(prober)] = [*_backlog.get(id(prober), []), *events]
    _backlog[id(prober)] = pump(prober, lambda _: not prober.writers() and not prober.connecting)
    return events


def answered(attempt: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(isinstance(e, ProbeAnswered) and e.attempt == attempt for e in evs)


def failed(attempt: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(isinstance(e, ProbeFailed) and e.attempt == attempt for e in evs)


def only(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def responder() -> Iterator[StreamResponder]:
    peer = StreamResponder()
    yield peer
    peer.close()


@pytest.fixture
def held() -> Iterator[StreamResponder]:
    """A responder that answers only when the test says so."""
    peer = StreamResponder(auto=False)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority.create(tmp_path_factory.mktemp("ca"))


def tls_responder(files: TlsFiles) -> StreamResponder:
    return StreamResponder(files)


# ------------------------------------------------------------------------- TCP


def test_tcp_answer_with_a_tcp_via_on_the_connections_address(
    responder: StreamResponder,
) -> None:
    with make_prober({P: responder.target()}) as prober:
        assert send(prober, P, 0, 1) == []
        events = pump(prober, answered(1))
    req = responder.next_request()
    assert req.data.startswith(b"OPTIONS sip:127.0.0.1:")
    assert req.header("via").startswith(f"SIP/2.0/TCP {req.peer[0]}:{req.peer[1]};branch=z9hG4bK")
    [answer] = only(events, ProbeAnswered)
    assert answer == ProbeAnswered(P, 0, 1, 200, answer.rtt_ms)
    assert 0 <= answer.rtt_ms < 1000


def test_a_healthy_connection_is_kept_across_cycles(responder: StreamResponder) -> None:
    with make_prober({P: responder.target()}) as prober:
        for cycle in range(3):
            send(prober, P, cycle, 1)
            pump(prober, answered(1))
            responder.next_request()
    assert responder.accepted == 1


def test_refused_connect_is_a_miss_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as bound:
        port = bound.getsockname()[1]  # closed below: nothing listens there any more
    started = time.monotonic()
    with make_prober({P: ProbeTarget("127.0.0.1", port)}) as prober:
        events = prober.send(P, 0, 1) or pump(prober, failed(1))
    assert time.monotonic() - started < 0.5
    assert only(events, ProbeFailed) == [ProbeFailed(P, 0, 1, "connection refused")]


def test_reset_mid_cycle_is_a_miss_and_the_next_attempt_reconnects(
    held: StreamResponder,
) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        held.reset(held.next_request())
        events = pump(prober, failed(1))
        assert only(events, ProbeFailed) == [ProbeFailed(P, 0, 1, "connection reset")]
        send(prober, P, 0, 2)
        req = held.next_request()
        held.reply(req)
        events = pump(prober, answered(2))
    assert (req.conn, held.accepted) == (2, 2)
    assert [e.attempt for e in only(events, ProbeAnswered)] == [2]


def test_server_closing_the_connection_is_a_miss(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        held.close_conn(held.next_request())
        events = pump(prober, failed(1))
    assert only(events, ProbeFailed) == [ProbeFailed(P, 0, 1, "connection closed by server")]


def test_late_answer_on_the_first_connection_still_counts(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        first = held.next_request()
        send(prober, P, 0, 2)  # attempt 1 unanswered: a fresh connection (Rule 1)
        second = held.next_request()
        held.reply(first)
        events = pump(prober, answered(1))
    assert (first.conn, second.conn) == (1, 2)
    assert [e.attempt for e in only(events, ProbeAnswered)] == [1]


def test_next_cycle_keeps_only_a_healthy_connection(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        held.next_request()  # never answered
        send(prober, P, 0, 2)
        held.reply(held.next_request())
        pump(prober, answered(2))
        send(prober, P, 1, 1)  # cycle 1: connection 2 was healthy, connection 1 goes
        assert held.next_request().conn == 2
        assert len(prober.sockets()) == 1


def test_silent_connect_gets_a_fresh_connect_per_attempt() -> None:
    # A listener that never accepts, its queue full: further SYNs are dropped and the
    # connects stay pending, as against a blackholed server.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(2)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        with make_prober({P: ProbeTarget("127.0.0.1", port)}) as prober:
            for attempt in (1, 2, 3):
                assert prober.send(P, 0, attempt) == []
                _, writable, _ = select.select([], prober.writers(), [], 0.05)
                assert writable == []  # still connecting
                assert len(prober.writers()) == attempt  # one pending connect each
            prober.send(P, 1, 1)  # next cycle: the pending ones are dropped
            assert len(prober.writers()) == 1
        for filler in fillers:
            filler.close()


def test_replies_split_and_batched_are_framed(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        first = held.next_request()
        send(prober, P, 0, 2)
        second = held.next_request()
        data = response_to(first, 100) + response_to(first, 200)
        held.send_raw(first, data[:30])
        held.send_raw(first, data[30:])
        held.send_raw(second, b"\r\n\r\n" + response_to(second, 200))
        events = pump(prober, lambda evs: len(only(evs, ProbeAnswered)) == 3)
    codes = sorted((e.attempt, e.status_code) for e in only(events, ProbeAnswered))
    assert codes == [(1, 100), (1, 200), (2, 200)]


def test_unmatched_reply_is_counted_and_ignored(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        req = held.next_request()
        held.reply(req, branch="z9hG4bKnotours")
        held.reply(req)
        events = pump(prober, answered(1))
        assert prober.unmatched == 1
    assert len(only(events, ProbeAnswered)) == 1


def test_a_stream_without_content_length_is_dropped(held: StreamResponder) -> None:
    with make_prober({P: held.target()}) as prober:
        send(prober, P, 0, 1)
        req = held.next_request()
        held.send_raw(req, response_to(req, 200).replace(b"Content-Length: 0\r\n", b""))
        events = pump(prober, failed(1))
    [failure] = only(events, ProbeFailed)
    assert failure.reason.startswith("bad stream: no Content-Length")


def test_servers_are_probed_on_their_own_connections(responder: StreamResponder) -> None:
    other = StreamResponder()
    try:
        with make_prober({P: responder.target(), B: other.target()}) as prober:
            prober.send(P, 0, 1)
            prober.send(B, 0, 1)
            events = pump(prober, lambda evs: len(only(evs, ProbeAnswered)) == 2)
        assert {e.server for e in only(events, ProbeAnswered)} == {P, B}
        assert (responder.accepted, other.accepted) == (1, 1)
    finally:
        other.close()


def test_retarget_keeps_unchanged_servers_and_resolved_reports_the_address(
    responder: StreamResponder,
) -> None:
    with make_prober({P: responder.target()}) as prober:
        send(prober, P, 0, 1)
        pump(prober, answered(1))
        prober.retarget({P: responder.target(), B: ProbeTarget("127.0.0.1", 9)})
        assert prober.resolved(P) == ("127.0.0.1", responder.port)
        assert prober.resolved(B) == ("127.0.0.1", 9)
        send(prober, P, 1, 1)
        pump(prober, answered(1))
        prober.retarget({})
        assert prober.resolved(P) is None
        assert prober.sockets() == []
    assert responder.accepted == 1


def test_no_target_and_bad_targets() -> None:
    with make_prober({}) as prober:
        assert prober.send(P, 0, 1) == [ProbeFailed(P, 0, 1, "no target")]
    with pytest.raises(ProbeError, match="not an IP address"):
        make_prober({P: ProbeTarget("pbx.example.com", 5060)})
    with pytest.raises(ProbeError, match="tcp or tls"):
        StreamProber(
            {}, transport="udp", from_user="u", domain="d", user_agent="a", clock=MonotonicClock()
        )
    with pytest.raises(ProbeError, match="CA file"):
        tls_context("/nonexistent/ca.pem")


# ------------------------------------------------------------------------- TLS


def test_tls_with_a_good_certificate_answers(lab_ca: CertAuthority) -> None:
    server = tls_responder(lab_ca.issue("good", ["127.0.0.1"]))
    try:
        with make_prober({P: server.target()}, "tls", lab_ca.cert) as prober:
            send(prober, P, 0, 1)
            pump(prober, answered(1))
            send(prober, P, 1, 1)
            pump(prober, answered(1))
        req = server.next_request()
        assert req.header("via").startswith("SIP/2.0/TLS 127.0.0.1:")
        assert server.accepted == 1  # the TLS session is kept across cycles
    finally:
        server.close()


def test_tls_checks_the_configured_name(lab_ca: CertAuthority) -> None:
    server = tls_responder(lab_ca.issue("named", ["pbx1.lab.example"]))
    try:
        with make_prober({P: server.target("pbx1.lab.example")}, "tls", lab_ca.cert) as prober:
            send(prober, P, 0, 1)
            pump(prober, answered(1))
    finally:
        server.close()


def test_tls_with_an_unknown_ca_is_rejected(lab_ca: CertAuthority, tmp_path: Path) -> None:
    server = tls_responder(self_signed(tmp_path, "rogue", ["127.0.0.1"]))
    try:
        with make_prober({P: server.target()}, "tls", lab_ca.cert) as prober:
            send(prober, P, 0, 1)
            [failure] = only(pump(prober, failed(1)), ProbeFailed)
        assert failure.reason == (
            "TLS certificate rejected: unable to get local issuer certificate"
        )
        assert server.accepted == 0
    finally:
        server.close()


@pytest.mark.parametrize(
    ("sans", "name", "problem"),
    [
        (["192.0.2.99"], None, "IP address mismatch"),
        (["pbx2.lab.example"], "pbx1.lab.example", "Hostname mismatch"),
    ],
)
def test_tls_name_mismatch_is_rejected(
    lab_ca: CertAuthority, sans: list[str], name: str | None, problem: str
) -> None:
    server = tls_responder(lab_ca.issue(f"wrong-{len(sans[0])}", sans))
    try:
        with make_prober({P: server.target(name)}, "tls", lab_ca.cert) as prober:
            send(prober, P, 0, 1)
            [failure] = only(pump(prober, failed(1)), ProbeFailed)
            send(prober, P, 0, 2)  # the next attempt tries again (and fails the same way)
            [again] = only(pump(prober, failed(2)), ProbeFailed)
        reason = failure.reason
        assert reason.startswith(f"TLS certificate rejected: {problem}")
        assert again.reason == reason
    finally:
        server.close()


def test_tls_reset_then_reconnect(lab_ca: CertAuthority) -> None:
    server = StreamResponder(lab_ca.issue("reset", ["127.0.0.1"]), auto=False)
    try:
        with make_prober({P: server.target()}, "tls", lab_ca.cert) as prober:
            send(prober, P, 0, 1)
            server.reset(server.next_request())
            [failure] = only(pump(prober, failed(1)), ProbeFailed)
            send(prober, P, 0, 2)
            server.reply(server.next_request())
            pump(prober, answered(2))
        # OpenSSL reports a reset under TLS as an unexpected EOF: same miss, other words.
        assert failure.reason == "connection closed by server"
        assert server.accepted == 2
    finally:
        server.close()


# ---------------------------------------------------------- through the monitor thread


def test_a_stalled_handshake_never_delays_the_other_server(lab_ca: CertAuthority) -> None:
    """The monitor thread drives both servers' connections from one select loop: the
    primary accepts TCP and then never speaks TLS, the backup answers at once."""
    good = tls_responder(lab_ca.issue("monitor-good", ["127.0.0.1"]))
    stalled = socket.create_server(("127.0.0.1", 0))  # never accepts: handshake stalls
    seen: list[tuple[Event | SendProbe, float]] = []
    judged: queue.Queue[CycleJudged] = queue.Queue()
    clock = MonotonicClock()
    targets = {P: ProbeTarget("127.0.0.1", stalled.getsockname()[1]), B: good.target()}
    policy = FailoverPolicy(PolicySettings(interval_s=5.0, backup_enabled=True), clock.now(), 0.05)
    monitor = KeepaliveMonitor(
        policy,
        make_prober(targets, "tls", lab_ca.cert),
        clock,
        on_action=lambda a: judged.put(a) if isinstance(a, CycleJudged) else None,
        observe=lambda item, now: seen.append((item, now)),
    )
    monitor.start()
    try:
        cycle = judged.get(timeout=WAIT_S)
    finally:
        monitor.stop()
        good.close()
        stalled.close()
    verdicts = {v.server: v for v in cycle.verdicts}
    assert verdicts[P].reason == "missed 3 probes"
    backup_rtt_ms = verdicts[B].rtt_ms
    assert verdicts[B].up
    assert backup_rtt_ms is not None
    assert backup_rtt_ms < 300  # not held up behind the primary's handshake
    firsts = {i.server: t for i, t in seen if isinstance(i, SendProbe) and i.attempt == 1}
    assert abs(firsts[P] - firsts[B]) < 0.05  # both at t = 0
    sends = [t - firsts[P] for i, t in seen if isinstance(i, SendProbe) and i.server is P]
    assert sends == [0.0, pytest.approx(0.8, abs=0.05), pytest.approx(1.2, abs=0.05)]
