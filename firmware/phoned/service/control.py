"""The control socket: how `phoned status`, `call`, `hangup`, `app` and `resync` talk to
the service (SPEC §4, §10).

Owns: a Unix stream socket speaking one JSON object per line each way, the thread whose
non-blocking loop serves every client at once and the worker threads that run slow
requests (the CLI's side is `control_client`; the socket file's checks, mode and group are
`control_socket_file`'s, the lines and error replies `control_wire`'s). Must not touch:
phone state (the server calls a handler the supervisor gives it; the handler reads the
status board or hands back slow work).

Rules (SPEC §10):
1. The socket file is mode 0660, group `phoned` when that group exists; a live service's
   socket and a file that is not a socket are never removed.
2. A request is one line of at most 4096 bytes, newline included, sent within
   `deadline_s` of connecting; one request per connection: the reply, then close.
3. No client waits on another: the loop never blocks on a client, and work that may take
   long (`SlowWork`: a fetch, a resync, a wait on the pjsua2 thread) runs on a worker
   thread of its own, at most `max_jobs` at once, answered when done. `status` is
   answered on the loop at once. The loop beats at least every second (the watchdog).
4. At most `max_clients` connections: one more closes the longest-idle client still
   sending its request, or is refused when there is none.
5. Bad input gets an error reply, never a traceback; a traceback is logged only for a bug.

Request:  {"cmd": "status"}\n      Reply: {"ok": true, "result": {...}}\n
          anything refused          Reply: {"ok": false, "error": "unknown command: x"}\n
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from phoned.errors import ControlError
from phoned.service import control_socket_file as socket_file
from phoned.service import control_wire as wire
from phoned.service.control_socket_file import SOCKET_GROUP
from phoned.service.control_wire import MAX_REQUEST_BYTES, Reply

log = logging.getLogger(__name__)

#: The longest wait between two heartbeats.
_BEAT_S = 1.0
_WAKE_BYTES = 1 << 20


@dataclass(frozen=True)
class SlowWork:
    """Work a request needs that may take long: the handler returns it instead of a
    result, a worker thread runs it, and what it returns is the reply's result."""

    #: the command's name, for messages ("app")
    name: str
    #: the work; raises `PhonedError` or `ValueError` to refuse with its message
    run: Callable[[], dict[str, Any]]


#: Answers one decoded request on the control loop, at once: a result, or `SlowWork`.
Handler = Callable[[dict[str, Any]], dict[str, Any] | SlowWork]


@dataclass(frozen=True)
class ControlLimits:
    """How long and how many (SPEC §10: no client blocks the service or another)."""

    #: how long a client may take to send its request line, and to take its reply
    deadline_s: float = 2.0
    #: how long slow work may run before its client is told it did not finish
    job_deadline_s: float = 30.0
    #: connections at once (rule 4)
    max_clients: int = 32
    #: slow requests running at once; one more is refused as busy
    max_jobs: int = 8


class _Phase(Enum):
    READING = "reading"  #: waiting for the request line
    WORKING = "working"  #: its slow work runs on a worker thread
    WRITING = "writing"  #: sending the reply


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    active_at: float  #: when it last sent a byte (rule 4: the longest idle goes first)
    phase: _Phase = _Phase.READING
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    sent: int = 0
    events: int = 0  #: what the selector watches for
    work: str = ""


class ControlServer:
    """Answers control requests on a thread of its own until `stop()`."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        on_beat: Callable[[], None] | None = None,
        limits: ControlLimits | None = None,
        group: str = SOCKET_GROUP,
    ) -> None:
        """Args:
        path: the socket file.
        handler: answers one decoded request on the loop; must not wait (rule 3).
        on_beat: called at least every second while the loop is healthy (the watchdog's
            heartbeat); a handler that hangs stops it.
        limits: deadlines and bounds (rules 2-4).
        group: the group given the socket file, when it exists (rule 1).

        Raises:
            ControlError: the socket cannot be opened, or a service already answers on it.
        """
        self._path = Path(path)
        self._handler = handler
        self._on_beat = on_beat
        self._limits = limits or ControlLimits()
        self._inode = 0
        self._sock = self._listen(group)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()  # workers and stop() wake the loop
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: queue.SimpleQueue[tuple[_Client, Reply]] = queue.SimpleQueue()
        self._clients: dict[_Client, None] = {}  # in order of arrival (rule 4)
        self._jobs = 0  # worker threads running (loop thread only)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def _listen(self, group: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            socket_file.remove_stale(self._path)
            sock.bind(str(self._path))
            self._inode = self._path.stat().st_ino  # stop() removes this file, no other
            socket_file.restrict(self._path, group)  # before listen(): nobody connects until then
            sock.listen(64)
            sock.setblocking(False)
        except (OSError, ControlError) as exc:
            sock.close()
            if self._inode:
                self._path.unlink(missing_ok=True)
            if isinstance(exc, ControlError):
                raise
            raise ControlError(f"cannot open control socket {self._path}: {exc}") from exc
        return sock

    def start(self) -> None:
        """Start answering."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the answering thread runs (for the watchdog)."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop answering, join the thread and remove the socket file."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._selector.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            if self._path.stat().st_ino == self._inode:  # another service's: not ours
                self._path.unlink()

    # -- the loop (control thread) -------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self._on_beat is not None:
                    self._on_beat()
                for key, mask in self._selector.select(self._wait_s()):
                    self._dispatch(key, mask)
                self._collect_jobs()
                self._expire(time.monotonic())
        finally:
            for client in list(self._clients):
                self._close(client)
            self._selector.close()

    def _wait_s(self) -> float:
        first = min((client.deadline for client in self._clients), default=float("inf"))
        return max(0.0, min(_BEAT_S, first - time.monotonic()))

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.fileobj is self._sock:
            self._accept_all()
        elif key.fileobj is self._wake_r:
            wire.drain(self._wake_r, _WAKE_BYTES)
        elif key.data in self._clients:  # not one closed earlier in this turn
            if mask & selectors.EVENT_READ:
                self._read(key.data)
            else:
                self._write(key.data)

    def _accept_all(self) -> None:
        for _ in range(self._limits.max_clients):  # bounded: a flood cannot stop the beat
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: the next turn tries again
                log.warning("control: cannot accept a client: %s", exc)
                return
            conn.setblocking(False)
            if len(self._clients) >= self._limits.max_clients and not self._evict_one():
                wire.send_error(conn, f"busy: {len(self._clients)} control clients, try again")
                wire.drain(conn, MAX_REQUEST_BYTES * 4)
                conn.close()
                continue
            now = time.monotonic()
            client = _Client(conn, now + self._limits.deadline_s, now)
            self._clients[client] = None
            self._watch(client, selectors.EVENT_READ)

    def _evict_one(self) -> bool:
        """Rule 4: close the longest-idle client still sending; False when none is."""
        reading = [client for client in self._clients if client.phase is _Phase.READING]
        if not reading:
            return False
        idlest = min(reading, key=lambda client: client.active_at)
        limit = self._limits.max_clients
        self._refuse(idlest, f"too many control clients ({limit}): closing the longest idle")
        return True

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(MAX_REQUEST_BYTES + 1 - len(client.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.active_at = time.monotonic()
        if not chunk:  # the client shut its side: what it sent is its request
            if client.inbox:
                self._answer(client, bytes(client.inbox))
            else:
                self._close(client)
            return
        client.inbox += chunk
        end = client.inbox.find(b"\n")
        if end >= MAX_REQUEST_BYTES or (end < 0 and len(client.inbox) >= MAX_REQUEST_BYTES):
            self._refuse(client, f"request longer than {MAX_REQUEST_BYTES} bytes")
        elif end >= 0:
            self._answer(client, bytes(client.inbox[:end]))

    def _answer(self, client: _Client, line: bytes) -> None:
        self._watch(client, 0)  # rule 2: nothing more is read
        try:
            answer = self._handler(wire.decode(line))
        except Exception as exc:  # rule 5: bad input is refused, a bug is logged
            self._reply(client, wire.refusal(exc, "request"))
            return
        if isinstance(answer, SlowWork):
            self._start(client, answer)
        else:
            self._reply(client, {"ok": True, "result": answer})

    def _start(self, client: _Client, work: SlowWork) -> None:
        if self._jobs >= self._limits.max_jobs:
            running = self._jobs
            self._reply(client, wire.error(f"busy: {running} slow requests running, try again"))
            return
        client.phase, client.work = _Phase.WORKING, work.name
        client.deadline = time.monotonic() + self._limits.job_deadline_s
        worker = threading.Thread(
            target=self._work_on, args=(client, work), name=f"control-{work.name}", daemon=True
        )
        try:
            worker.start()
        except RuntimeError as exc:  # no thread to be had
            self._reply(client, wire.error(f"busy: cannot start {work.name}: {exc}"))
            return
        self._jobs += 1

    def _work_on(self, client: _Client, work: SlowWork) -> None:
        """On a worker thread: run the work and hand its reply back to the loop."""
        reply = wire.error(f"{work.name} was interrupted")
        try:
            reply = {"ok": True, "result": work.run()}
        except Exception as exc:  # rule 5
            reply = wire.refusal(exc, work.name)
        finally:
            self._done.put((client, reply))
            with contextlib.suppress(OSError):  # full: already woken; closed: stopped
                self._wake_w.send(b"\0")

    def _collect_jobs(self) -> None:
        while True:
            try:
                client, reply = self._done.get_nowait()
            except queue.Empty:
                return
            self._jobs -= 1
            if client in self._clients and client.phase is _Phase.WORKING:
                self._reply(client, reply)

    def _reply(self, client: _Client, reply: Reply) -> None:
        client.phase, client.outbox, client.sent = _Phase.WRITING, wire.encode(reply), 0
        client.deadline = time.monotonic() + self._limits.deadline_s
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            client.sent += client.sock.send(memoryview(client.outbox)[client.sent :])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # gone: nobody to answer
            self._close(client)
            return
        if client.sent < len(client.outbox):
            self._watch(client, selectors.EVENT_WRITE)
        else:
            self._close(client)

    def _expire(self, now: float) -> None:
        for client in [client for client in self._clients if client.deadline <= now]:
            if client.phase is _Phase.READING:
                self._refuse(client, f"no whole request line within {self._limits.deadline_s:g} s")
            elif client.phase is _Phase.WORKING:  # its worker goes on, still counted
                limit_s = self._limits.job_deadline_s
                self._refuse(client, f"{client.work} did not finish within {limit_s:g} s")
            else:
                self._close(client)  # did not take its reply in time

    def _refuse(self, client: _Client, error: str) -> None:
        """Send `error` if the client's socket takes it now, and close it."""
        log.debug("control: client refused: %s", error)
        wire.send_error(client.sock, error)
        self._close(client)

    def _close(self, client: _Client) -> None:
        self._watch(client, 0)
        self._clients.pop(client, None)
        wire.drain(client.sock, MAX_REQUEST_BYTES * 4)  # what it sent unread would reset its read
        client.sock.close()

    def _watch(self, client: _Client, events: int) -> None:
        if events == client.events:
            return
        if not client.events:
            self._selector.register(client.sock, events, client)
        elif not events:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, events, client)
        client.events = events
