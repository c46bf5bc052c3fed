"""One TCP or TLS connection that never blocks: connect, handshake, write, read, frame.

Owns: a non-blocking stream socket through its life (CONNECTING -> [HANDSHAKING] -> OPEN
-> DEAD), the bytes waiting to be written, and cutting what arrives into SIP messages
(`sipmsg.StreamFramer`). Must not touch: which request goes on which connection, SIP
matching, timing (`stream.StreamProber` decides those), name resolution.

Rule 1: nothing here waits. The owner selects on `sock` for reading when `wants_read`
and for writing when `wants_write`, then calls `on_readable()` / `on_writable()`.
Rule 2: every failure (refused, reset, closed, certificate rejected, unframeable stream)
closes the connection and is returned as a short reason for logs and the core
("connection refused", "TLS certificate rejected: Hostname mismatch, ..."); only `open()`
raises (`StreamError`). Messages read before a failure are returned with it.
Rule 3: TLS verifies the server certificate against the client context's CAs and the
name given (`server_hostname`: a DNS name or an IP literal, matched to the SAN).
"""

from __future__ import annotations

import enum
import errno
import socket
import ssl

from phoned.errors import PhonedError, ProbeError
from phoned.probe.framing import FramingError, StreamFramer
from phoned.probe.udp import network_reason

_READ_CHUNK = 16384
#: Reads per `on_readable` call at most, so a flood cannot starve the monitor loop.
_MAX_READS = 64
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK})
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class StreamError(PhonedError, OSError):
    """A stream connection failed; `reason` says how, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnState(enum.Enum):
    """Where a `StreamConnection` is in its life."""

    #: TCP SYN sent, waiting for the socket to become writable.
    CONNECTING = "connecting"
    #: TLS handshake running.
    HANDSHAKING = "handshaking"
    #: Bytes can be written and messages read.
    OPEN = "open"
    #: Failed or closed; the socket is closed.
    DEAD = "dead"


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that verifies the server certificate and its name.

    Args:
        ca_file: PEM bundle the certificate must chain to; "" = the system's CAs.

    Raises:
        ProbeError: the CA file cannot be read or holds no certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"probe: cannot load TLS CA file {ca_file!r}: {exc}") from exc
    return context


class StreamConnection:
    """A non-blocking TCP connection, optionally TLS; use `open()`.

    Attributes:
        sock: the socket to select on (replaced by its TLS wrapper after the connect).
        local: the local (host, port) the kernel chose, for a Via header.
    """

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLContext | None, server_hostname: str
    ) -> None:
        self.sock = sock
        self.state = ConnState.CONNECTING
        host, port = sock.getsockname()[:2]
        self.local: tuple[str, int] = (host.partition("%")[0], port)  # no IPv6 zone in a Via
        self._tls, self._server_hostname = tls, server_hostname
        self._outbox = bytearray()
        self._framer = StreamFramer()
        self._handshake_wants_write = True

    @classmethod
    def open(
        cls, address: tuple[str, int], tls: ssl.SSLContext | None, server_hostname: str = ""
    ) -> StreamConnection:
        """Start connecting to `address` (an IP literal); returns at once.

        Raises:
            StreamError: the connect failed at once (no route, refused, no socket).
        """
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise StreamError(network_reason(exc)) from exc
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code not in (0, *_IN_PROGRESS):
                raise OSError(code, errno.errorcode.get(code, "?"))
            # Even a connect done at once waits for `on_writable()`: one path for all.
            return cls(sock, tls, server_hostname or address[0])
        except OSError as exc:
            sock.close()
            raise StreamError(stream_reason(exc)) from exc

    @property
    def busy(self) -> bool:
        """Whether the connect or the TLS handshake is still running."""
        return self.state in (ConnState.CONNECTING, ConnState.HANDSHAKING)

    @property
    def wants_read(self) -> bool:
        """Select `sock` for reading."""
        handshake_reads = self.state is ConnState.HANDSHAKING and not self._handshake_wants_write
        return self.state is ConnState.OPEN or handshake_reads

    @property
    def wants_write(self) -> bool:
        """Select `sock` for writing."""
        if self.state is ConnState.HANDSHAKING:
            return self._handshake_wants_write
        return self.state is ConnState.CONNECTING or (
            self.state is ConnState.OPEN and bool(self._outbox)
        )

    def send(self, data: bytes) -> str | None:
        """Queue `data`; written at once when open, else once the connection is up.

        Returns:
            Why the connection failed while writing (it is closed then), else None.
        """
        self._outbox += data
        try:
            if self.state is ConnState.OPEN:
                self._flush()
        except StreamError as exc:
            return exc.reason
        return None

    def on_writable(self) -> str | None:
        """`sock` is writable: finish the connect, go on with the handshake, or write.

        Returns:
            Why the connect, handshake or write failed (closed then), else None.
        """
        try:
            if self.state is ConnState.CONNECTING:
                self._connected()
            elif self.state is ConnState.HANDSHAKING:
                self._handshake()
            elif self.state is ConnState.OPEN:
                self._flush()
        except StreamError as exc:
            return exc.reason
        return None

    def on_readable(self) -> tuple[list[bytes], str | None]:
        """`sock` is readable: go on with the handshake, or read whole messages.

        Returns:
            The messages read, and why the connection failed (reset, closed by the
            server, unframeable, TLS error; closed then) or None.
        """
        messages: list[bytes] = []
        try:
            if self.state is ConnState.HANDSHAKING:
                self._handshake()
            elif self.state is ConnState.OPEN:
                self._read(messages)
                self._flush()
        except StreamError as exc:
            return messages, exc.reason
        return messages, None

    def close(self) -> None:
        """Close the socket (idempotent); nothing queued is sent any more."""
        self.state = ConnState.DEAD
        self._outbox.clear()
        self.sock.close()

    # -- steps ----------------------------------------------------------------------
    def _fail(self, reason: str, exc: BaseException | None = None) -> StreamError:
        self.close()
        error = StreamError(reason)
        error.__cause__ = exc
        return error

    def _connected(self) -> None:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in _IN_PROGRESS:
            return
        if code:
            raise self._fail(stream_reason(OSError(code, errno.errorcode.get(code, "?"))))
        if self._tls is None:
            self.state = ConnState.OPEN
            self._flush()
            return
        try:
            self.sock = self._tls.wrap_socket(
                self.sock, server_hostname=self._server_hostname, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            raise self._fail(f"TLS setup failed: {exc}", exc) from exc
        self.state = ConnState.HANDSHAKING
        self._handshake()

    def _handshake(self) -> None:
        if not isinstance(self.sock, ssl.SSLSocket):
            raise self._fail("TLS setup failed: not a TLS socket")
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants_write = False
            return
        except ssl.SSLWantWriteError:
            self._handshake_wants_write = True
            return
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise self._fail(handshake_reason(exc), exc) from exc
        self.state = ConnState.OPEN
        self._flush()

    def _flush(self) -> None:
        while self._outbox:
            try:
                written = self.sock.send(self._outbox)
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                raise self._fail(stream_reason(exc), exc) from exc
            del self._outbox[:written]

    def _read(self, messages: list[bytes]) -> None:
        """Append every whole message that arrived to `messages`."""
        for _ in range(_MAX_READS):
            try:
                data = self.sock.recv(_READ_CHUNK)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                raise self._fail(stream_reason(exc), exc) from exc
            if not data:
                raise self._fail("connection closed by server")
            try:
                messages += self._framer.feed(data)
            except FramingError as exc:
                raise self._fail(f"bad stream: {exc}", exc) from exc


def handshake_reason(exc: OSError) -> str:
    """Why a TLS handshake failed, e.g. "TLS certificate rejected: Hostname mismatch"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return stream_reason(exc)


def stream_reason(exc: OSError) -> str:
    """`probe.network_reason` in the words of a stream ("connection refused")."""
    # OpenSSL reports a reset under TLS as an unexpected EOF.
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return "connection closed by server"
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the kernel's
        return f"TLS error: {exc.reason or exc}"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    return network_reason(exc)
