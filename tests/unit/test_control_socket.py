"""Tests of phoned.service.control's socket file: a live service's socket and files that
are not sockets are never removed (issue 12: a second `phoned run` deleted the first's),
and only its user and group may use it (SPEC §10: mode 0660, group `phoned`)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoned.errors import ControlError
from phoned.service.control import ControlServer
from phoned.service.control_client import request


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


# -- who may use the socket (SPEC §10: mode 0660, group phoned) -------------------------------
def other_group() -> grp.struct_group:
    """A group of this machine that is not the test process's own (Debian has several)."""
    return next(group for group in grp.getgrall() if group.gr_gid != os.getegid())


def test_the_socket_is_mode_0660(running: ControlServer, tmp_path: Path) -> None:
    mode = (tmp_path / "control.sock").stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_the_socket_is_given_to_its_group(tmp_path: Path) -> None:
    group = other_group()
    path = tmp_path / "control.sock"
    server = ControlServer(str(path), answer, group=group.gr_name)
    try:
        assert path.stat().st_gid == group.gr_gid
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        server.stop()


def test_the_group_is_phoned_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without touching this machine's groups: `phoned` is looked up and used."""
    group, real_getgrnam, asked = other_group(), grp.getgrnam, []

    def getgrnam(name: str) -> grp.struct_group:
        asked.append(name)
        return group if name == "phoned" else real_getgrnam(name)

    monkeypatch.setattr(grp, "getgrnam", getgrnam)
    path = tmp_path / "control.sock"
    server = ControlServer(str(path), answer)
    try:
        assert path.stat().st_gid == group.gr_gid
    finally:
        server.stop()
    assert asked == ["phoned"]


def test_without_the_group_the_socket_keeps_the_process_group_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phoned.service.control")
    path = tmp_path / "control.sock"
    server = ControlServer(str(path), answer, group="phoned-no-such-group")
    try:
        assert path.stat().st_gid == os.getegid()
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        server.stop()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.INFO,
            f"control: no group 'phoned-no-such-group' here: {path} keeps group "
            f"{os.getegid()}, mode 0660",
        )
    ]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may search (pytest's own tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="phoned-control-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def ask_as(path: Path, uid: int, gid: int) -> tuple[str, bytes]:
    """Ask `status` from a forked child running as `uid`:`gid` (no other groups): how its
    connect went ("ok" or the error's name) and the reply it read."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain system calls only, then _exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                try:
                    sock.connect(str(path))
                except OSError as exc:
                    os.write(write_end, type(exc).__name__.encode() + b"\n")
                else:
                    sock.sendall(b'{"cmd": "status"}\n')
                    os.write(write_end, b"ok\n" + sock.recv(4096))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        told = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    outcome, _, reply = told.partition(b"\n")
    return outcome.decode(), reply


def test_a_member_of_the_group_may_ask_and_another_user_may_not(open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    group = next(g for g in grp.getgrall() if g.gr_gid not in {os.getegid(), nobody.pw_gid})
    path = open_dir / "control.sock"
    server = ControlServer(str(path), answer, group=group.gr_name)
    server.start()
    try:
        member = ask_as(path, nobody.pw_uid, group.gr_gid)
        stranger = ask_as(path, nobody.pw_uid, nobody.pw_gid)
    finally:
        server.stop()

    assert member == ("ok", b'{"ok": true, "result": {"who": "first"}}\n')
    assert stranger == ("PermissionError", b"")
