"""Tests of phoned.service.control's socket file: a live service's socket and files that
are not sockets are never removed (issue 12: a second `phoned run` deleted the first's)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoned.errors import ControlError
from phoned.service.control import ControlServer, request


def answer(_request: dict[str, Any]) -> dict[str, Any]:
    return {"who": "first"}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[ControlServer]:
    server = ControlServer(str(tmp_path / "control.sock"), answer)
    server.start()
    yield server
    server.stop()


def test_a_second_service_refuses_to_start_and_the_first_keeps_its_socket(
    running: ControlServer, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(ControlError, match=r"phoned is already running \(its control socket"):
        ControlServer(str(path), answer)
    assert request(str(path), "status") == {"who": "first"}


def test_a_regular_file_in_the_way_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket: not removing it"):
        ControlServer(str(path), answer)
    assert path.read_text() == "precious"


def test_a_socket_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # bound, never listening, file left behind: what a crash leaves
    server = ControlServer(str(path), answer)
    server.start()
    try:
        assert request(str(path), "status") == {"who": "first"}
    finally:
        server.stop()
    assert not path.exists()


def test_stop_leaves_a_socket_that_is_no_longer_its_own(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    first = ControlServer(str(path), answer)
    path.unlink()  # e.g. removed by hand, then another service took the name
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        first.stop()
        assert path.exists()
    finally:
        other.close()
