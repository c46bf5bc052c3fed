"""One HTTP/1.1 GET under a deadline (SPEC §7: the phone never waits longer than 5 s).

Owns: the connection (TCP, and TLS with a context made by `tls_context`), the request, and
reading a bounded body, with every socket operation bounded by one `Deadline` for the whole
fetch. A socket timeout alone bounds each read, so a server that trickles a byte a second
would hold the phone for ever; here each read may only wait for what is left of the deadline.
Must not touch: policy (redirects, credentials, which status is an error, how large is too
large: `phoned.provision.fetch`) and messages for a person.

Raises only the standard library's exceptions, for `fetch` to translate: `OSError` (with
`TimeoutError`, `ssl.SSLError`, `ConnectionRefusedError`...), `http.client.HTTPException`
and `ValueError` (a header value http.client refuses). A body that fails once the status
has arrived (cut short: `IncompleteRead`) is reported in `Answer.problem` instead.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from urllib.parse import SplitResult

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

#: Sent with every request: says who asks, in server logs.
USER_AGENT = "phoned-provisioning"


@dataclass(frozen=True)
class Deadline:
    """The `time.monotonic()` instant after which no socket operation may wait any more."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left before the deadline.

        Raises:
            TimeoutError: none left.
        """
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline has passed")
        return left


def _arm(sock: socket.socket, deadline: Deadline | None) -> None:
    """Let the next operation on `sock` wait only for what is left of `deadline`."""
    if deadline is not None:
        sock.settimeout(deadline.remaining())


class _PlainSocket(socket.socket):
    """A TCP socket whose reads and writes all end by its `deadline`."""

    deadline: Deadline | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Read like `socket.recv_into`, waiting at most until the deadline."""
        _arm(self, self.deadline)
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0, /) -> None:
        """Send like `socket.sendall`, waiting at most until the deadline."""
        _arm(self, self.deadline)
        super().sendall(data, flags)


class _TlsSocket(ssl.SSLSocket):
    """A TLS socket whose reads and writes all end by its `deadline`.

    `tls_context` makes `wrap_socket` return this class (`SSLContext.sslsocket_class`).
    """

    deadline: Deadline | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        """Read like `SSLSocket.recv_into`, waiting at most until the deadline."""
        _arm(self, self.deadline)
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        """Send like `SSLSocket.sendall`, waiting at most until the deadline."""
        _arm(self, self.deadline)
        super().sendall(data, flags)


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and its name, always.

    Args:
        ca_file: PEM bundle the certificate must chain to; "" = the system's CAs. When
            given, only this bundle is trusted.

    Raises:
        OSError: the CA file cannot be read (`ssl.SSLError` when it holds no certificate).
    """
    context = ssl.create_default_context(cafile=ca_file or None)  # CERT_REQUIRED + hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _TlsSocket
    return context


class _Connection(http.client.HTTPConnection):
    """An HTTP or HTTPS connection whose every socket operation ends by `deadline`."""

    def __init__(
        self, host: str, port: int | None, *, tls: ssl.SSLContext | None, deadline: Deadline
    ) -> None:
        self.default_port = 443 if tls is not None else 80  # read by the base's __init__
        super().__init__(host, port)
        self._tls = tls
        self._deadline = deadline

    def connect(self) -> None:
        """Open the TCP connection (and the TLS session) before the deadline."""
        plain = _connect(self.host, self.port, self._deadline)
        if self._tls is None:
            plain.deadline = self._deadline
            self.sock = plain
            return
        try:
            plain.settimeout(self._deadline.remaining())  # the whole handshake
            # tls_context() set sslsocket_class: wrap_socket makes a _TlsSocket
            tls = cast(_TlsSocket, self._tls.wrap_socket(plain, server_hostname=self.host))
        finally:
            plain.close()  # a no-op once wrapped (the TLS socket took it over)
        tls.deadline = self._deadline
        self.sock = tls


def _connect(host: str, port: int, deadline: Deadline) -> _PlainSocket:
    """A TCP connection to the first address of `host` that answers before the deadline.

    Unlike `socket.create_connection`, whose timeout applies to each address in turn, all
    the attempts share the deadline. (Resolving `host` is not bounded: getaddrinfo blocks.)
    """
    failure: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = _PlainSocket(family, kind, proto)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise  # the deadline has passed: no time for the next address
        except OSError as exc:
            sock.close()
            failure = exc
        else:
            return sock
    raise failure


@dataclass(frozen=True)
class Answer:
    """What a server answered to one GET."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    #: The body of a 200 answer, at most `max_bytes + 1` bytes; b"" for any other status or
    #: when `length` is already more than `max_bytes` (it is then not read at all).
    body: bytes = field(repr=False)
    #: Content-Length, None when the server did not say (chunked, or until it closes).
    length: int | None
    #: Why the body could not be read whole (`IncompleteRead` when cut short,
    #: `TimeoutError`...), None when it was. The status arrived all the same.
    problem: OSError | http.client.HTTPException | None = None


def request_target(url: SplitResult) -> str:
    """The request-target of `url`: its path (at least "/") and query."""
    path = url.path or "/"
    return f"{path}?{url.query}" if url.query else path


def get(
    url: SplitResult,
    headers: Mapping[str, str],
    *,
    tls: ssl.SSLContext | None,
    deadline: Deadline,
    max_bytes: int,
) -> Answer:
    """GET `url` with `headers` on a new connection, closed before returning.

    Args:
        url: an http or https URL, already checked (host, port).
        headers: extra request headers (conditional GET, Authorization).
        tls: the context for an https URL (`tls_context`), None for http.
        deadline: when every socket operation, the body included, must have ended.
        max_bytes: read at most `max_bytes + 1` bytes of a 200 body, so that the caller
            can tell "exactly the limit" from "more".

    Returns:
        The answer; its body is read only for a 200. A failure while reading the body is
        in `problem`, not raised: the status is known by then.

    Raises:
        OSError: unreachable, refused, reset, TLS refused, or `TimeoutError` at the deadline,
            before the status line arrived.
        http.client.HTTPException: not an HTTP answer.
        ValueError: a header value http.client refuses to send.
    """
    connection = _Connection(url.hostname or "", url.port, tls=tls, deadline=deadline)
    try:
        connection.request(
            "GET",
            request_target(url),
            headers={"User-Agent": USER_AGENT, "Connection": "close", **headers},
        )
        response = connection.getresponse()
        length = response.length
        body, problem = b"", None
        if response.status == 200 and (length is None or length <= max_bytes):
            try:
                body = _read_body(response, max_bytes)
            except (OSError, http.client.HTTPException) as exc:
                problem = exc
        return Answer(response.status, response.reason, response.msg, body, length, problem)
    finally:
        connection.close()


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """Up to `max_bytes + 1` bytes of the body.

    Raises:
        http.client.IncompleteRead: the connection closed before the Content-Length.
        OSError: `TimeoutError` at the deadline, or the connection failed.
    """
    body = response.read(max_bytes + 1)
    # read(amt) returns what arrived when the server closes early; length is what is missing
    if len(body) <= max_bytes and response.length:
        raise http.client.IncompleteRead(body, response.length)
    return body
