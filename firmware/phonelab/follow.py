"""Traffic that shows when a failover moved the phone's VPN routes and apps (SPEC §2, §9).

Owns: `Datagrams`, a thread sending one small UDP datagram from a namespace to an address
every few milliseconds until it is stopped (a capture where the datagrams arrive tells
when routes moved), and `fetch_until()`, asking a running phone for one of its apps over
the control socket (what `phoned app NAME` sends, without the CLI's start-up) until the
page comes from the expected server. Must not touch: the phone's settings, routes or VPN,
and captures (the benchmark reads them).
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

from phoned.errors import ControlError
from phoned.service import control_client
from phonelab.errors import LabError
from phonelab.netns import netns_socket
from phonelab.procs import poll_until

__all__ = ["Datagrams", "fetch_until"]

PAYLOAD = b"bench-failover"


class Datagrams:
    """Sends `PAYLOAD` from `netns` to `host:port` every `every_s` while entered."""

    def __init__(self, netns: str | None, host: str, port: int, every_s: float = 0.002) -> None:
        self.netns, self.address, self.every_s = netns, (host, port), every_s
        self.sent = 0  #: datagrams the kernel accepted so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name="datagrams", daemon=True)

    @property
    def running(self) -> bool:
        """Whether the sending thread is alive."""
        return self._thread.is_alive()

    def _send(self) -> None:
        with netns_socket(self.netns) as sock:
            while not self._stop.wait(self.every_s):
                with contextlib.suppress(OSError):  # e.g. no route yet, or a full queue
                    sock.sendto(PAYLOAD, self.address)
                    self.sent += 1

    def __enter__(self) -> Datagrams:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def fetch_until(control_socket: str, app: str, prefix: str, timeout_s: float) -> int:
    """Fetch `app` through the phone until a page starts with `prefix` (the lab's app
    servers answer `<pbx name> <path>`); how many fetches it took, that one included.

    A refused fetch (e.g. while the service moves its app URLs) counts and is retried.

    Raises:
        LabError: no such page within `timeout_s`.
    """
    pages: list[str] = []

    def served() -> bool:
        page = ""
        with contextlib.suppress(ControlError):
            page = str(control_client.request(control_socket, "app", {"name": app}).get("content"))
        pages.append(page)
        return page.startswith(prefix)

    try:
        poll_until(served, timeout_s=timeout_s, interval_s=0.001)
    except TimeoutError:
        raise LabError(f"follow: no {app!r} page from {prefix.strip()!r} in {timeout_s} s; "
                       f"last {pages[-1:]}") from None  # fmt: skip
    return len(pages)
