"""An in-process HTTP(S) provisioning server for the fetch tests (SPEC §7).

A `ProvServer` serves on 127.0.0.1, port 0, in a thread; each test gives it routes (path ->
function of the request handler). The route makers below build the answers the phone must
cope with: a file with ETag and Last-Modified, basic and digest gates, redirects, and the
faults (truncated, trickling, stalled). Every request is recorded in `seen`, so tests can
assert what the phone sent (and what it did not: credentials).

The digest check is written here from RFC 7616, independently of `phoned.provision.auth`,
so that a client bug cannot be mirrored by the server.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

REALM = "phoned-test"
OPAQUE = "0paque-value"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    path: str
    #: Header names lower case.
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a trickling handler must not hold up server_close()

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    """Dispatches a GET to the route registered for its path; 404 for the others."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        """Record the request, then let its route answer."""
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.seen.append(Seen(self.path, headers))
        route = self.server.routes.get(urlsplit(self.path).path)
        if route is None:
            reply(self, 404, b"no such file\n")
        else:
            route(self)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on `seen`, not on a log."""


Route = Callable[[Handler], None]


@dataclass
class ProvServer:
    """A provisioning server in a thread; use `serving()` so that it always stops."""

    tls: ssl.SSLContext | None = None
    _server: _Server = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._server = _Server()
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        # poll_interval: how long shutdown() may wait for the loop to notice
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """`http(s)://127.0.0.1:<port>`."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        """The full URL of `path` on this server."""
        return self.base_url + path

    def route(self, path: str, answer: Route) -> None:
        """Answer GETs of `path` with `answer`."""
        self._server.routes[path] = answer

    @property
    def seen(self) -> list[Seen]:
        """Every request received so far, in order."""
        return list(self._server.seen)

    @property
    def stopping(self) -> threading.Event:
        """Set when the server stops: trickling and stalled routes wait on it."""
        return self._server.stopping

    def close(self) -> None:
        """Stop serving, release the port, end the threads."""
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[ProvServer]:
    """A `ProvServer` for the duration of the block, always shut down."""
    server = ProvServer(tls)
    try:
        yield server
    finally:
        server.close()


# ------------------------------------------------------------------------ answers


def reply(
    handler: Handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    """Send a complete answer; a client that went away is not an error here."""
    try:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if status != 304:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if status != 304:
            handler.wfile.write(body)
    except OSError:
        handler.close_connection = True


def file_route(body: bytes, etag: str, last_modified: str) -> Route:
    """200 with ETag and Last-Modified; 304 on a matching If-None-Match or If-Modified-Since."""

    def answer(handler: Handler) -> None:
        validators = {"ETag": etag, "Last-Modified": last_modified}
        if_none_match = handler.headers.get("If-None-Match")
        if if_none_match is not None:  # RFC 9110 §13.1.3: it wins over If-Modified-Since
            not_modified = if_none_match == etag
        else:
            not_modified = handler.headers.get("If-Modified-Since") == last_modified
        reply(handler, 304 if not_modified else 200, body, validators)

    return answer


def redirect_route(location: str, status: int = 302) -> Route:
    """A redirect to `location`."""
    return lambda handler: reply(handler, status, b"", {"Location": location})


def basic_route(user: str, password: str, inner: Route) -> Route:
    """`inner` behind basic authentication."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    def answer(handler: Handler) -> None:
        if handler.headers.get("Authorization") == f"Basic {token}":
            inner(handler)
        else:
            reply(handler, 401, b"", {"WWW-Authenticate": f'Basic realm="{REALM}"'})

    return answer


_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')
_DIGEST_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@dataclass
class DigestGate:
    """A route: `inner` behind digest authentication (RFC 7616, qop=auth).

    One challenge per algorithm in `offered`, in that order. `accepted` lists the algorithm
    of every request let through.
    """

    user: str
    password: str
    inner: Route
    offered: tuple[str, ...] = ("SHA-256",)
    accepted: list[str] = field(default_factory=list)
    _nonces: set[str] = field(default_factory=set)

    def __call__(self, handler: Handler) -> None:
        """Let a request with a right answer through; challenge the others."""
        given = handler.headers.get("Authorization", "")
        if given.startswith("Digest "):
            params = {m[0]: m[1] or m[2] for m in _DIGEST_PARAM.findall(given[7:])}
            if self._right(params, handler.path):
                self.accepted.append(params["algorithm"])
                self.inner(handler)
                return
        challenges = []
        for algorithm in self.offered:
            nonce = secrets.token_hex(16)
            self._nonces.add(nonce)
            challenges.append(
                f'Digest realm="{REALM}", qop="auth", algorithm={algorithm}, '
                f'nonce="{nonce}", opaque="{OPAQUE}"'
            )
        handler.send_response(401)
        for challenge in challenges:
            handler.send_header("WWW-Authenticate", challenge)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _right(self, params: dict[str, str], path: str) -> bool:
        algorithm = params.get("algorithm", "")
        if algorithm not in self.offered or params.get("nonce") not in self._nonces:
            return False
        fixed = {"username": self.user, "realm": REALM, "uri": path, "qop": "auth"}
        if any(params.get(name) != value for name, value in fixed.items()):
            return False
        if params.get("opaque") != OPAQUE or not params.get("cnonce") or not params.get("nc"):
            return False

        def h(text: str) -> str:
            return _DIGEST_HASHES[algorithm](text.encode()).hexdigest()

        ha1 = h(f"{self.user}:{REALM}:{self.password}")
        ha2 = h(f"GET:{path}")
        expected = h(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
        return params.get("response") == expected


def raw_route(head: bytes, body: bytes) -> Route:
    """Send `head` (status line and headers, as given) and `body`, then close."""

    def answer(handler: Handler) -> None:
        handler.close_connection = True
        try:
            handler.wfile.write(head + body)
        except OSError:
            return

    return answer


def trickle_route(stopping: threading.Event, head: bytes, body: bytes, period_s: float) -> Route:
    """Send `head` at once, then `body` one byte every `period_s` (the slow server)."""

    def answer(handler: Handler) -> None:
        handler.close_connection = True
        try:
            handler.wfile.write(head)
            for byte in body:
                if stopping.wait(period_s):  # the scenario's pace; stops with the server
                    return
                handler.wfile.write(bytes([byte]))
        except OSError:
            return

    return answer


def slow_route(stopping: threading.Event, delay_s: float, then: Route) -> Route:
    """Answer with `then` after `delay_s` (a server slow to answer; stops with the server)."""

    def answer(handler: Handler) -> None:
        if not stopping.wait(delay_s):
            then(handler)
        else:
            handler.close_connection = True

    return answer
