"""The control socket's wire format (SPEC §10, `control` rules 2 and 5): one JSON object per
line each way.

Owns: the longest request line, turning a request line into a request and a reply into
its line, the error replies (a refusal's message, or a bug logged and named), and the
one-shot sends and drains on a client's socket that refusing and closing need.
Must not touch: the listening socket, the loop and its clients (`control`), the socket
file (`control_socket_file`), and what a request means (the handler's).

Request:  {"cmd": "status"}\n      Reply: {"ok": true, "result": {...}}\n
          anything refused          Reply: {"ok": false, "error": "unknown command: x"}\n
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from typing import Any

from phoned.errors import PhonedError

# one logger for the whole control socket (`control`), whichever module speaks
log = logging.getLogger("phoned.service.control")

#: SPEC §10: the longest request line, newline included.
MAX_REQUEST_BYTES = 4096

Reply = dict[str, Any]


def decode(line: bytes) -> dict[str, Any]:
    """A request line as a JSON object with a string `cmd` (the handler checks the rest).

    Raises:
        ValueError: not UTF-8 JSON, nested too deeply to decode, or not such an object.
    """
    try:
        request = json.loads(line)
    except RecursionError:
        raise ValueError("a request is a flat JSON object, got one nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"a request is one line of JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError("a request is a JSON object with a string 'cmd'")
    return request


def error(message: str) -> Reply:
    """The error reply saying `message`."""
    return {"ok": False, "error": message}


def refusal(exc: Exception, what: str) -> Reply:
    """The error reply for `exc`: its message for a refusal, a logged bug otherwise."""
    if isinstance(exc, PhonedError | ValueError | KeyError):
        return error(str(exc))
    log.error("control: %s failed, service goes on", what, exc_info=exc)
    return error(f"internal error: {type(exc).__name__}: {ascii(str(exc))[1:-1][:200]}")


def encode(reply: Reply) -> bytes:
    """`reply` as one line of JSON; a reply that is not JSON becomes an internal error."""
    try:
        return json.dumps(reply).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("control: a reply cannot be sent as JSON: %s", type(exc).__name__)
        return encode(error("internal error: the reply is not JSON"))


def send_error(sock: socket.socket, message: str) -> None:
    """One try at sending an error reply (a client refused or dropped)."""
    with contextlib.suppress(OSError):
        sock.send(encode(error(message)))


def drain(sock: socket.socket, limit_bytes: int) -> None:
    """Read and drop what `sock` holds now, up to `limit_bytes`."""
    with contextlib.suppress(OSError):
        while limit_bytes > 0 and (chunk := sock.recv(min(limit_bytes, 16384))):
            limit_bytes -= len(chunk)
