"""`phonelab.follow` on loopback: datagrams paced until stopped, app fetches until a server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoned.service.control import ControlServer
from phonelab.errors import LabError
from phonelab.follow import PAYLOAD, Datagrams, fetch_until


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        yield sock


def test_datagrams_go_out_until_the_block_ends(receiver: socket.socket) -> None:
    host, port = receiver.getsockname()
    with Datagrams(None, host, port, every_s=0.001) as sending:
        got = [receiver.recv(64) for _ in range(5)]
    sent_at_exit = sending.sent

    assert got == [PAYLOAD] * 5
    assert not sending.running
    # the thread was joined: what is left to read is exactly what it sent, nothing later
    assert 5 + drain(receiver) == sent_at_exit == sending.sent


def drain(sock: socket.socket) -> int:
    """Datagrams waiting on `sock` (none more within 50 ms)."""
    sock.settimeout(0.05)
    count = 0
    try:
        while sock.recv(64):
            count += 1
    except TimeoutError:
        return count
    return count


class FakePhone:
    """A control socket whose app pages come from pbx1 until `switch_after` fetches."""

    def __init__(self, path: Path, switch_after: int, refuse: int = -1) -> None:
        self.fetches: list[str] = []
        self.switch_after, self.refuse = switch_after, refuse
        self.lock = threading.Lock()
        self.server = ControlServer(str(path), self.answer)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.fetches.append(str(request.get("name")))
            count = len(self.fetches)
        if count == self.refuse:
            raise ValueError("app contacts: cannot fetch (moving)")
        served_by = "pbx2" if count > self.switch_after else "pbx1"
        return {"content": f"{served_by} /contacts\n"}


@pytest.fixture
def fake_phone(tmp_path: Path) -> Iterator[FakePhone]:
    phone = FakePhone(tmp_path / "control.sock", switch_after=3, refuse=2)
    phone.server.start()
    yield phone
    phone.server.stop()


def test_fetch_until_counts_fetches_up_to_the_first_page_of_that_server(
    fake_phone: FakePhone, tmp_path: Path
) -> None:
    count = fetch_until(str(tmp_path / "control.sock"), "contacts", "pbx2 ", timeout_s=2.0)

    assert count == 4  # pbx1, refused, pbx1, pbx2
    assert fake_phone.fetches == ["contacts"] * 4


def test_fetch_until_gives_up_after_its_timeout(fake_phone: FakePhone, tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no 'contacts' page from 'pbx3'"):
        fetch_until(str(tmp_path / "control.sock"), "contacts", "pbx3 ", timeout_s=0.2)
