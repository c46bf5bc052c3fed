"""The lab's Phone Apps servers: a tiny HTTP server per PBX namespace (SPEC §2 step 3, §4).

Owns: one `python -m phonelab.apps` process per `AppServer` (its own process group,
stopped by PID) that answers every GET with `<name> <path>\\n`, so a test tells which
PBX served a fetch; its log of requests (`requests()`), and `http_get()`, a plain HTTP/1.0
GET from inside a namespace. The lab PBXs listen on their tunnel address and on the
shared `routes` address (198.18.100.1), i.e. the phone reaches them only through the VPN.
Must not touch: the service's app fetching (`phoned.net.apps`); other HTTP servers.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from phonelab.errors import LabError
from phonelab.netns import netns_socket
from phonelab.procs import LabProcess, poll_until

__all__ = ["AppRequest", "AppServer", "http_get", "main"]

_LOG_LINE = re.compile(r"^request: GET (\S+) from (\S+) to (\S+) -> 200$")
_READY_PATH = "/lab-ready"


@dataclass(frozen=True)
class AppRequest:
    """One GET an `AppServer` answered."""

    path: str
    client: str  #: the source address it came from (198.18.0.2 through the tunnel)
    local: str  #: the address it was sent to (tunnel or shared address)


def http_get(netns: str | None, host: str, port: int, path: str, timeout_s: float = 2.0) -> str:
    """GET `http://host:port/path` from a socket in `netns`; the body of a 200 answer.

    Raises:
        LabError: no connection, no answer in time, or not a 200.
        OSError: raised by the connection itself (refused, unreachable), unchanged.
    """
    request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split()[1:2] != [b"200"]:
        raise LabError(f"http: GET {host}:{port}{path} -> {status.decode(errors='replace')!r}")
    return body.decode(errors="replace")


class AppServer(LabProcess):
    """`python -m phonelab.apps` in `netns`, answering GETs on each of `hosts` at `port`."""

    def __init__(
        self,
        name: str,
        netns: str | None,
        host: str,
        port: int = 80,
        *,
        workdir: Path,
        also: Sequence[str] = (),
    ) -> None:
        """Args:
        name: what every answer starts with ("pbx1"), and the log's name.
        netns: namespace to run in; None for the current one.
        host: the main address to listen on (the PBX's tunnel address).
        port: TCP port, on every address.
        workdir: where `<name>-apps.log` goes (must exist).
        also: more addresses to listen on (the shared address 198.18.100.1).
        """
        self.name, self.netns, self.port = name, netns, port
        self.hosts = (host, *also)
        self.log_path = Path(workdir) / f"{name}-apps.log"

    @property
    def host(self) -> str:
        """The main address (the first one given)."""
        return self.hosts[0]

    def url(self, path: str, host: str | None = None) -> str:
        """`http://<host>[:port]<path>` on this server (default: its main address)."""
        port = "" if self.port == 80 else f":{self.port}"
        return f"http://{host or self.host}{port}{path}"

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the server and wait until every address answers a GET.

        Raises:
            LabError: already running, it exited (address not local, port taken) or no
                answer in time.
        """
        if self.running:
            raise LabError(f"apps {self.name}: already running")
        argv = [sys.executable, "-m", "phonelab.apps", "--name", self.name]
        argv += ["--port", str(self.port), *self.hosts]
        self._spawn(argv)
        try:
            poll_until(self._all_answer, timeout_s=timeout_s, interval_s=0.01)
        except TimeoutError as exc:
            self.stop()
            raise LabError(f"apps {self.name}: no answer in {timeout_s} s: {self._tail()}") from exc
        except BaseException:
            self.stop()
            raise

    def _all_answer(self) -> bool:
        if not self.running:
            raise LabError(f"apps {self.name}: exited at start: {self._tail()}")
        try:
            return all(
                http_get(self.netns, host, self.port, _READY_PATH, 0.2).startswith(self.name)
                for host in self.hosts
            )
        except (OSError, LabError):
            return False

    def requests(self, *, include_lab: bool = False) -> list[AppRequest]:
        """GETs answered so far, oldest first (readiness GETs only with `include_lab`)."""
        if not self.log_path.exists():
            return []
        found = map(_LOG_LINE.match, self.log_path.read_text(errors="replace").splitlines())
        answered = [AppRequest(m.group(1), m.group(2), m.group(3)) for m in found if m]
        return [r for r in answered if include_lab or r.path != _READY_PATH]


# --------------------------------------------------------------------- the server process


class _NamedHandler(BaseHTTPRequestHandler):
    """Answers every GET with `<server_name> <path>\\n` and logs one parseable line."""

    server_name_text: ClassVar[str] = "lab"

    def do_GET(self) -> None:
        body = f"{self.server_name_text} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        local = self.connection.getsockname()[0]
        client = self.client_address[0]
        sys.stderr.write(f"request: GET {self.path} from {client} to {local} -> 200\n")
        sys.stderr.flush()

    def log_message(self, format: str, *args: object) -> None:
        """Silence http.server's own access log (`do_GET` writes ours)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM: `python -m phonelab.apps --name pbx1 [--port 80] HOST...`."""
    parser = argparse.ArgumentParser(prog="phonelab.apps")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("hosts", nargs="+")
    args = parser.parse_args(argv)
    # Block them before any thread starts, so every thread inherits the mask and sigwait
    # below is the one place they arrive.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    handler = type("Handler", (_NamedHandler,), {"server_name_text": args.name})
    servers = [ThreadingHTTPServer((host, args.port), handler) for host in args.hosts]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
