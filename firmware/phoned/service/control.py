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
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from phoned.errors import ControlError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
_MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    """Answers control requests on a thread of its own until `stop()`."""

    def __init__(self, path: str, handler: Handler) -> None:
        self._path = Path(path)
        self._handler = handler
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()  # stop() wakes the idle thread
        self._sock = self._listen()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def _listen(self) -> socket.socket:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()  # a stale socket from a crash
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self._path))
            os.chmod(self._path, 0o660)
            sock.listen(8)
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
            self._path.unlink()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._sock, self._wake_r], [], [])
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
            request = json.loads(_read_line(conn))
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("a request is a JSON object with a string 'cmd'")
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


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
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
            reply = json.loads(_read_line(sock) or b"null")
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
