"""The phone's control requests off the control loop (SPEC §10, issue 12): `status` is
answered at once while an app fetch, a resync or a call waits elsewhere.

Before the rework the app fetch ran on the control thread: a slow Phone App server stalled
`app` and `status` for 16 s.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from phoned.config.live import LiveSettings
from phoned.config.settings import AccountSettings, ServerSettings, Settings
from phoned.core.events import Server
from phoned.errors import PhonedError
from phoned.service.commands import CommandError
from phoned.service.control import ControlServer, SlowWork
from phoned.service.control_client import request
from phoned.service.handover import MainThreadWork
from phoned.service.requests import ControlRequests

if TYPE_CHECKING:
    from phoned.service.wiring import Phone

PROMPT_S = 0.2
PASSWORD = "s3cret-Pa55"  # noqa: S105 (a test password, never shown)
STATUS = {"registration": "registered"}


class FakeApps:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls

    def url(self, name: str) -> str | None:
        return self.urls.get(name)

    def names(self) -> list[str]:
        return list(self.urls)


class FakeSip:
    def call(self, ext: str) -> int:
        return 7 if ext == "1002" else 0

    def hangup(self, call_id: int | None) -> int:
        return 1


class Resync:
    """`phoned resync` as the supervisor does it: waits for the provisioning worker."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.refuse = ""

    def __call__(self) -> dict[str, Any]:
        self.started.set()
        self.release.wait(10)
        if self.refuse:
            raise PhonedError(self.refuse)
        return {"fetch": "fetched"}


class Rig:
    def __init__(self, path: Path, app_url: str) -> None:
        settings = Settings(
            account=AccountSettings(username="1001", password=PASSWORD),
            server=ServerSettings(address="203.0.113.10"),
        )
        self.work = MainThreadWork()
        self.resync = Resync()
        self.requests = ControlRequests(LiveSettings(settings), self.work, self.resync)
        phone = SimpleNamespace(
            board=SimpleNamespace(snapshot=lambda: dict(STATUS), active=Server.PRIMARY),
            apps=FakeApps({"contacts": app_url}),
            sip=FakeSip(),
        )
        self.requests.attach(cast("Phone", phone))
        self.path = str(path)
        self.server = ControlServer(self.path, self.requests.handle)

    def timed_status(self) -> float:
        started = time.monotonic()
        assert request(self.path, "status") == STATUS
        return time.monotonic() - started

    def send(self, line: bytes) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        sock.sendall(line)
        return sock


def read_reply(sock: socket.socket) -> dict[str, Any]:
    with sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    assert isinstance(reply, dict)
    return reply


@pytest.fixture
def silent_app_server() -> Iterator[socket.socket]:
    """A web server that takes connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5)
    with listener:
        yield listener


@pytest.fixture
def rig(tmp_path: Path, silent_app_server: socket.socket) -> Iterator[Rig]:
    port = silent_app_server.getsockname()[1]
    rig = Rig(tmp_path / "control.sock", f"http://127.0.0.1:{port}/contacts")
    rig.server.start()
    yield rig
    rig.resync.release.set()
    rig.server.stop()


# -- what runs where ---------------------------------------------------------------------------
def test_status_and_refusals_are_answered_on_the_loop(rig: Rig) -> None:
    assert rig.requests.handle({"cmd": "status"}) == STATUS
    with pytest.raises(CommandError, match=r"no app 'weather' \(apps: contacts\)"):
        rig.requests.handle({"cmd": "app", "name": "weather"})
    with pytest.raises(CommandError, match="call needs an extension"):
        rig.requests.handle({"cmd": "call"})


@pytest.mark.parametrize(
    "request_",
    [
        {"cmd": "app", "name": "contacts"},
        {"cmd": "resync"},
        {"cmd": "call", "ext": "1002"},
        {"cmd": "hangup"},
    ],
)
def test_everything_that_may_wait_is_handed_back_as_slow_work(
    rig: Rig, request_: dict[str, Any]
) -> None:
    work = rig.requests.handle(request_)
    assert isinstance(work, SlowWork)
    assert work.name == request_["cmd"]


# -- through the socket ------------------------------------------------------------------------
def test_a_silent_app_server_does_not_delay_status(
    rig: Rig, silent_app_server: socket.socket
) -> None:
    app = rig.send(b'{"cmd": "app", "name": "contacts"}\n')
    fetch, _ = silent_app_server.accept()  # the fetch is under way, and gets no answer
    took = [rig.timed_status() for _ in range(5)]
    fetch.close()  # the app server hangs up without a word
    reply = read_reply(app)

    assert max(took) < PROMPT_S, took
    assert reply["ok"] is False
    assert reply["error"].startswith("app contacts: cannot fetch http://127.0.0.1:")


def test_a_resync_waits_on_a_worker_and_status_answers_meanwhile(rig: Rig) -> None:
    resync = rig.send(b'{"cmd": "resync"}\n')
    assert rig.resync.started.wait(5)
    took = [rig.timed_status() for _ in range(5)]
    rig.resync.release.set()

    assert read_reply(resync) == {"ok": True, "result": {"fetch": "fetched"}}
    assert max(took) < PROMPT_S, took


def test_a_refused_resync_is_an_error_reply(rig: Rig) -> None:
    rig.resync.refuse = "provisioning.url answered 404"
    rig.resync.release.set()
    reply = read_reply(rig.send(b'{"cmd": "resync"}\n'))
    assert reply == {"ok": False, "error": "provisioning.url answered 404"}


def test_a_call_waits_for_the_main_thread_and_status_answers_meanwhile(rig: Rig) -> None:
    call = rig.send(b'{"cmd": "call", "ext": "1002"}\n')
    took = [rig.timed_status() for _ in range(3)]  # the main thread has not run it yet
    replied: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: replied.update(read_reply(call)))
    reader.start()
    while reader.is_alive():  # the main thread's loop: drain, then look again
        rig.work.drain()
        reader.join(0.01)

    assert replied == {"ok": True, "result": {"call_id": 7, "server": "primary"}}
    assert max(took) < PROMPT_S, took
