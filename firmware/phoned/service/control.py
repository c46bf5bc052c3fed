"""The control socket: how `phoned status` (and later `call`, `app`) talk to the service.

Owns: a Unix stream socket speaking one JSON object per line each way, the server thread
that answers it and the client used by the CLI. Must not touch: phone state (the server
calls a handler the supervisor gives it; that handler only reads the status board).

Request:  {"cmd": "status"}\n      Reply: {"ok": true, "result": {...}}\n
          anything unknown          Reply: {"ok": false, "error": "unknown command: x"}\n
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from phoned.errors import ControlError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
_MAX_REQUEST_BYTES = 64 * 1024
#: How long one client may take to send its request line, in all.
_READ_DEADLINE_S = 2.0
#: The longest idle wait between two heartbeats.
_BEAT_S = 1.0


class ControlServer:
    """Answers control requests on a thread of its own until `stop()`."""

    def __init__(
        self, path: str, handler: Handler, on_beat: Callable[[], None] | None = None
    ) -> None:
        """Args:
        path: the socket file.
        handler: answers one decoded request (on this server's thread).
        on_beat: called at least every second while the thread is healthy (the
            watchdog's heartbeat); a request holds it for at most its read deadline plus
            the handler's own time.
        """
        self._path = Path(path)
        self._handler = handler
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()  # stop() wakes the idle thread
        self._inode = 0
        self._sock = self._listen()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def _listen(self) -> socket.socket:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(self._path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self._path))
            os.chmod(self._path, 0o660)
            sock.listen(8)
            self._inode = self._path.stat().st_ino  # stop() removes this file, no other
        except OSError as exc:
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
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            if self._path.stat().st_ino == self._inode:  # another service's: not ours
                self._path.unlink()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._on_beat is not None:
                self._on_beat()
            readable, _, _ = select.select([self._sock, self._wake_r], [], [], _BEAT_S)
            if self._sock not in readable:
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                raise
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            request = _decode(_read_line(conn))
            reply = {"ok": True, "result": self._handler(request)}
        except (ValueError, KeyError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except OSError as exc:
            log.warning("control: client went away: %s", exc)
            return
        except Exception as exc:  # a bug must not kill the control thread
            log.exception("control: handler failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")


def _remove_stale(path: Path) -> None:
    """Remove a socket a crashed service left behind; never a live service's socket, never
    a file that is not a socket.

    Raises:
        ControlError: `path` is not a socket, or a service answers on it.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket: not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # nobody listens: a crash's leftover
            return
        except OSError as exc:
            raise ControlError(f"{path}: cannot tell whether phoned runs: {exc}") from exc
    raise ControlError(f"phoned is already running (its control socket {path} answers)")


def _decode(line: bytes) -> dict[str, Any]:
    """A request line as a JSON object with a string `cmd` (the handler checks the rest).

    Raises:
        ValueError: not UTF-8 JSON, nested too deeply to decode, or not such an object.
    """
    try:
        request = json.loads(line)
    except RecursionError:
        raise ValueError("a request is a flat JSON object, got one nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError("a request is a JSON object with a string 'cmd'")
    return request


def _read_line(conn: socket.socket, within_s: float = _READ_DEADLINE_S) -> bytes:
    """One line, read within `within_s` in all (not per byte: a client that trickles
    bytes cannot hold the control thread longer than that)."""
    deadline = time.monotonic() + within_s
    data = b""
    while b"\n" not in data:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError(f"no whole line within {within_s:.0f} s")
        conn.settimeout(remaining_s)
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return data.split(b"\n", 1)[0]


def request(
    path: str, cmd: str, args: Mapping[str, object] | None = None, timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one command to the running service and return its result.

    Raises:
        ControlError: the service is not running, not answering, or refused the command.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(json.dumps({"cmd": cmd, **(args or {})}).encode() + b"\n")
            reply = json.loads(_read_line(sock, timeout_s) or b"null")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(
            f"phoned is not running (no control socket at {path}: {exc.strerror})"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ControlError(f"phoned at {path} did not answer: {exc}") from exc
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else "malformed reply"
        raise ControlError(f"phoned refused {cmd!r}: {error}")
    result = reply.get("result")
    return result if isinstance(result, dict) else {}
