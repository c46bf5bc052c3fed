"""A scripted stand-in PBX: OPTIONS answered late, twice or out of order, as a plan says.

Owns: one UDP socket bound to `host:port` inside a lab namespace, one thread that reads it
and sends every planned reply at its time, and the record of what came in and went out.
Each OPTIONS is numbered (cycle, attempt) the way the phone sends them: a new cycle when it
comes more than `new_cycle_after_s` after the current cycle's first one. The plan maps
(cycle, attempt) to the replies to send (delay from the request's arrival, status; none,
one, or several copies), so a test can make the replies to attempts 1 and 2 cross, or
send a copy of a reply into the next cycle. A REGISTER gets a 200 at once (the phone stays
registered); other requests are ignored.
Must not touch: other sockets or processes, the phone. sipp (`phonelab.sipp`) cannot do
this: its pause is one fixed or random delay per scenario, never one per attempt.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from phonelab.errors import LabError
from phonelab.netns import netns_socket
from phonelab.sipreq import split_message

_MAX_DATAGRAM = 65535
_WAKE_S = 0.05  #: the thread checks for `stop()` at least this often


@dataclass(frozen=True)
class Send:
    """One reply to send: `after_ms` after the request arrived, with `status`."""

    after_ms: float
    status: int = 200


#: (cycle, attempt), both from 1 for attempts and 0 for cycles -> the replies to send.
Plan = Callable[[int, int], Sequence[Send]]


@dataclass(frozen=True)
class Received:
    """An OPTIONS as the responder numbered it."""

    ts: float  #: epoch seconds
    cycle: int
    attempt: int
    call_id: str


_ORDER = itertools.count()


@dataclass(order=True)
class _Due:
    """A reply waiting for its time (ordered by time, then by when it was planned)."""

    at: float
    seq: int
    data: bytes = field(compare=False)
    address: tuple[str, int] = field(compare=False)
    status: int = field(compare=False)
    call_id: str = field(compare=False)


@dataclass
class _Numbering:
    cycle: int = -1
    attempt: int = 0
    started: float = float("-inf")


def response(request: bytes, status: int, reason: str = "Lab") -> bytes:
    """A response to `request`: every Via, From, To (tagged), Call-ID and CSeq echoed; a
    REGISTER's 2xx also carries its Contact with the expiry asked for."""
    start, _, _ = split_message(request)
    lines = request.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = ("via:", "v:", "from:", "f:", "to:", "t:", "call-id:", "i:", "cseq:")
    echoed = []
    for line in lines:
        lower = line.lower()
        untagged = lower.startswith(("to:", "t:")) and "tag=" not in lower
        if lower.startswith(keep):
            echoed.append(line + ";tag=labscripted" if untagged else line)
    headers = split_message(request)[1]
    if start.startswith("REGISTER ") and 200 <= status < 300 and "contact" in headers:
        expires = headers.get("expires", "300")
        echoed.append(f"Contact: {headers['contact']};expires={expires}")
    head = f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(echoed)
    return (head + "\r\nContent-Length: 0\r\n\r\n").encode()


@dataclass
class ScriptedResponder:
    """The stand-in PBX on UDP `host:port` in `netns` (module docstring); use with `with`."""

    netns: str | None
    host: str
    plan: Plan
    port: int = 5060
    new_cycle_after_s: float = 1.5
    received: list[Received] = field(default_factory=list)
    sent: list[tuple[float, int, str]] = field(default_factory=list)  #: (ts, status, call-id)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Bind the socket and start answering.

        Raises:
            LabError: the address is taken or cannot be bound.
        """
        sock = netns_socket(self.netns)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise LabError(f"responder: cannot bind udp {self.host}:{self.port}: {exc}") from exc
        sock.setblocking(False)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="scripted-responder", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _serve(self, sock: socket.socket) -> None:
        due: list[_Due] = []
        numbering = _Numbering()
        with sock:
            while not self._stop.is_set():
                wait = _WAKE_S if not due else min(_WAKE_S, max(0.0, due[0].at - time.time()))
                ready, _, _ = select.select([sock], [], [], wait)
                if ready:
                    due_next = self._read(sock, numbering)
                    for item in due_next:
                        heapq.heappush(due, item)
                while due and due[0].at <= time.time():
                    item = heapq.heappop(due)
                    with contextlib.suppress(OSError):  # e.g. the phone's link is down
                        sock.sendto(item.data, item.address)
                        self.sent.append((time.time(), item.status, item.call_id))

    def _read(self, sock: socket.socket, numbering: _Numbering) -> list[_Due]:
        """Read what is ready: REGISTERs answered at once, OPTIONS planned."""
        planned: list[_Due] = []
        while True:
            try:
                data, address = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return planned
            except OSError:  # e.g. an ICMP error for an earlier reply: nothing to read
                continue
            now = time.time()
            start, headers, _ = split_message(data)
            if start.startswith("REGISTER "):
                with contextlib.suppress(OSError):
                    sock.sendto(response(data, 200), address)
            elif start.startswith("OPTIONS "):
                if now - numbering.started > self.new_cycle_after_s:
                    numbering.cycle, numbering.attempt, numbering.started = (
                        numbering.cycle + 1, 0, now,
                    )  # fmt: skip
                numbering.attempt += 1
                call_id = headers.get("call-id", headers.get("i", ""))
                self.received.append(Received(now, numbering.cycle, numbering.attempt, call_id))
                for send in self.plan(numbering.cycle, numbering.attempt):
                    at = now + send.after_ms / 1000
                    reply = response(data, send.status)
                    planned.append(_Due(at, next(_ORDER), reply, address, send.status, call_id))

    def __enter__(self) -> ScriptedResponder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
