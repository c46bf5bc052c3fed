"""The CLI's side of the control socket: one request, one reply (SPEC §4, §10).

Owns: `request()`, which `phoned status`, `call`, `hangup`, `app` and `resync` (and the lab)
use to ask the running service, and the reading of its one-line reply. Must not touch: the
server side (`phoned.service.control`), or any phone state.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Mapping
from typing import Any

from phoned.errors import ControlError
from phoned.service.control_socket_file import SOCKET_GROUP
from phoned.service.control_wire import MAX_REQUEST_BYTES

#: A reply may carry an app page (up to 1 MiB) and the status: far below this.
_MAX_REPLY_BYTES = 8 << 20


def request(
    path: str, cmd: str, args: Mapping[str, object] | None = None, timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one command to the running service and return its result.

    Raises:
        ControlError: the service is not running, not answering, or refused the command.
    """
    line = json.dumps({"cmd": cmd, **(args or {})}).encode() + b"\n"
    if len(line) > MAX_REQUEST_BYTES:
        raise ControlError(f"{cmd}: the request is {len(line)} bytes, at most {MAX_REQUEST_BYTES}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            with contextlib.suppress(BrokenPipeError):  # refused at once: read why
                sock.sendall(line)
            raw = _read_line(sock, timeout_s)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(
            f"phoned is not running (no control socket at {path}: {exc.strerror})"
        ) from exc
    except PermissionError as exc:
        raise ControlError(
            f"cannot use {path}: {exc.strerror} (run as root or a member of group {SOCKET_GROUP})"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ControlError(f"phoned at {path} did not answer: {exc}") from exc
    return _result(path, cmd, raw)


def _result(path: str, cmd: str, raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ControlError(f"phoned at {path} closed the connection without answering {cmd!r}")
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"phoned at {path} answered {cmd!r} with something not a reply")
    if reply["ok"] is not True:
        error = reply.get("error")
        reason = error if isinstance(error, str) and error else "no reason given"
        raise ControlError(f"phoned refused {cmd!r}: {reason}")
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


def _read_line(conn: socket.socket, within_s: float) -> bytes:
    """One reply line (without its newline), read within `within_s` in all.

    Raises:
        TimeoutError: no whole line in time.
        ValueError: the line is longer than a reply can be.
    """
    deadline = time.monotonic() + within_s
    data = bytearray()
    while True:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError(f"no whole reply within {within_s:g} s")
        conn.settimeout(remaining_s)
        chunk = conn.recv(64 * 1024)
        end = chunk.find(b"\n")
        if not chunk or end >= 0:
            return bytes(data + chunk[: end if end >= 0 else len(chunk)])
        data += chunk
        if len(data) > _MAX_REPLY_BYTES:
            raise ValueError(f"reply longer than {_MAX_REPLY_BYTES} bytes")
