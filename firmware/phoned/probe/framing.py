"""SIP over a stream (RFC 3261 §18.3): a TCP/TLS byte stream cut into whole messages.

Owns: the framer of the stream prober's connections: message boundaries by the blank
line and Content-Length, CR/LF keep-alives between messages, and the bounds that keep a
hostile peer's bytes linear and limited (SPEC §10). Must not touch: sockets (`connection`),
what a message means (`sipmsg.parse_response`), matching or timing (`stream`).

Rule: a stream that cannot be framed (no or a bad Content-Length, a message or head over
the limits) raises `FramingError`: the boundary of the next message is lost, so the only
way on is a new connection.
"""

from __future__ import annotations

import re

from phoned.errors import PhonedError
from phoned.probe.sipmsg import MAX_HEAD_BYTES, MAX_HEADER_LINES, head_headers

#: Largest message accepted on a stream. A probe answer is well under 2 KiB; a peer that
#: sends more than this without a message boundary is broken (or hostile).
MAX_STREAM_MESSAGE = 65535
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_LEADING_CRLF_RE = re.compile(rb"[\r\n]*")


class FramingError(PhonedError, ValueError):
    """A stream's bytes cannot be cut into SIP messages; the connection must be dropped."""


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole SIP messages (RFC 3261 §18.3).

    A message is its head (up to the blank line) plus exactly `Content-Length` body
    bytes; the header is mandatory on streams. CR/LF between messages (RFC 5626 §3.5.1
    keep-alive pings and pongs) is skipped.

    Args:
        max_message: bytes a single message may take, head and body together.
    """

    def __init__(self, max_message: int = MAX_STREAM_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max_message = max_message
        #: How far the buffer was searched for the end of the head: each byte is searched
        #: once however small the pieces it arrives in (no quadratic rescans).
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes received that do not make a whole message yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return every message now complete, in order.

        Raises:
            FramingError: no or a malformed Content-Length, or a message over the limit.
                The framer is unusable afterwards (drop the connection).
        """
        self._buffer += data
        messages: list[bytes] = []
        while (message := self._next_message()) is not None:
            messages.append(message)
        return messages

    def _next_message(self) -> bytes | None:
        if self._scanned == 0 and (skip := _LEADING_CRLF_RE.match(self._buffer)) is not None:
            del self._buffer[: skip.end()]  # CR/LF keep-alives between messages
        # The end marker is at most 4 bytes: resume 3 bytes back so a split one is found.
        head_end = _HEAD_END_RE.search(self._buffer, max(0, self._scanned - 3))
        if head_end is None:
            self._scanned = len(self._buffer)
            limit = min(self._max_message, MAX_HEAD_BYTES)
            if len(self._buffer) > limit:
                raise FramingError(f"no end of headers within {limit} bytes")
            return None
        self._scanned = head_end.start()  # the head is complete; wait for the body here
        if head_end.start() > MAX_HEAD_BYTES:
            raise FramingError(f"message head of {head_end.start()} bytes is over {MAX_HEAD_BYTES}")
        head = bytes(self._buffer[: head_end.start()])
        total = head_end.end() + content_length(head)
        if total > self._max_message:
            raise FramingError(f"message of {total} bytes is over {self._max_message}")
        if len(self._buffer) < total:
            return None
        message = bytes(self._buffer[:total])
        del self._buffer[:total]
        self._scanned = 0
        return message


def content_length(head: bytes) -> int:
    """The Content-Length of a message head (`l` accepted), required on streams.

    Raises:
        FramingError: missing, not a number, or given twice with different values.
    """
    headers = head_headers(head)
    if headers is None:
        raise FramingError(f"more than {MAX_HEADER_LINES} header lines")
    values = {v.strip() for v in headers.get("content-length", ())}
    if not values:
        raise FramingError("no Content-Length on a stream")
    if len(values) > 1:
        raise FramingError(f"conflicting Content-Length values {sorted(values)}")
    value = values.pop()
    if not _DIGITS_RE.fullmatch(value):
        raise FramingError(f"bad Content-Length {value!r}")
    return int(value)
