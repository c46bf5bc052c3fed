"""The last good provisioning file (SPEC §7): its format, atomic writes, and power loss."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from phoned.errors import ProvisioningError
from phoned.provision.lastgood import (
    LastGood,
    last_good_path,
    load_last_good,
    save_last_good,
    write_atomically,
)

KEPT = LastGood(
    body=b'[account]\r\npassword = "hunter2"\n# \xff not UTF-8, no final newline',
    url="http://192.0.2.40/b827eb12ab34.toml",
    etag='"v1"',
    last_modified="Wed, 01 Jan 2025 00:00:00 GMT",
    fetched_at=1735689600.25,
)


# --------------------------------------------------------------------- the format


def test_a_saved_file_loads_back_exactly(tmp_path: Path) -> None:
    save_last_good(str(tmp_path), KEPT)

    assert load_last_good(str(tmp_path)) == KEPT


def test_the_file_is_a_comment_line_then_the_body_as_fetched_mode_0600(tmp_path: Path) -> None:
    save_last_good(str(tmp_path), KEPT)

    path = tmp_path / "provisioned.toml"
    header, _, body = path.read_bytes().partition(b"\n")
    assert header.startswith(b"# phoned-provisioned: {")
    assert body == KEPT.body  # line 1 of `body` is line 1 of the file as served
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert last_good_path(str(tmp_path)) == path


def test_a_missing_file_is_none(tmp_path: Path) -> None:
    assert load_last_good(str(tmp_path)) is None
    assert load_last_good(str(tmp_path / "no-such-dir")) is None


def test_the_body_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(KEPT)


def _header(meta: str) -> bytes:
    return b"# phoned-provisioned: " + meta.encode() + b"\n"


_GOOD_META = (
    '{"url": "u", "etag": "", "last_modified": "", "fetched_at": 1, '
    '"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}'
)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "line 1 is not a '# phoned-provisioned:' header"),
        (b'[account]\nuser = "201"\n', "line 1 is not a '# phoned-provisioned:' header"),
        (_header(_GOOD_META)[:-1], "line 1 is not a '# phoned-provisioned:' header"),
        (_header("{not json"), "its header is not valid JSON"),
        (_header("[1, 2]"), "its header needs the texts url, etag, last_modified, sha256"),
        (_header(_GOOD_META.replace('"etag": ""', '"etag": 3')), "needs the texts"),
        (_header(_GOOD_META.replace('"fetched_at": 1', '"fetched_at": "1"')), "fetched_at"),
        (_header(_GOOD_META.replace('"fetched_at": 1', '"fetched_at": true')), "fetched_at"),
        (_header(_GOOD_META) + b"x", "the body does not match its header's sha256"),
    ],
)
def test_a_broken_file_is_a_clear_error(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "provisioned.toml"
    path.write_bytes(content)

    with pytest.raises(ProvisioningError) as caught:
        load_last_good(str(tmp_path))

    assert str(caught.value).startswith(f"provisioning: {path}: broken last good file: ")
    assert why in str(caught.value)


def test_the_header_validated_an_empty_body(tmp_path: Path) -> None:
    (tmp_path / "provisioned.toml").write_bytes(_header(_GOOD_META))

    assert load_last_good(str(tmp_path)) == LastGood(b"", "u", "", "", 1.0)


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "provisioned.toml").mkdir()  # root reads any file: a directory it cannot

    with pytest.raises(ProvisioningError, match=r"^provisioning: cannot read .*: Is a directory"):
        load_last_good(str(tmp_path))


# ------------------------------------------------------------------ atomic writes


def test_write_atomically_replaces_the_file_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomically(path, b"new", mode=0o640)
    finally:
        os.umask(old_umask)

    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(tmp_path.iterdir()) == [path]


def _recording(calls: list[tuple[str, Any]], name: str, real: Callable[..., Any]) -> Any:
    def record(*args: Any) -> Any:
        result = real(*args)
        if name == "fsync":
            kind = "dir" if stat.S_ISDIR(os.fstat(args[0]).st_mode) else "file"
            calls.append((name, kind))
        else:
            calls.append((name, args))
        return result

    return record


def test_temp_file_0600_exclusive_fsynced_renamed_then_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []
    for name in ("open", "fsync", "replace"):
        monkeypatch.setattr(os, name, _recording(calls, name, getattr(os, name)))

    write_atomically(tmp_path / "f", b"data")

    monkeypatch.undo()
    (_, (temp, flags, mode)), *rest = calls
    assert Path(temp).parent == tmp_path
    assert (flags & os.O_EXCL, flags & os.O_CREAT, mode) == (os.O_EXCL, os.O_CREAT, 0o600)
    assert [(name, arg) for name, arg in rest if name != "open"] == [
        ("fsync", "file"),
        ("replace", (temp, tmp_path / "f")),
        ("fsync", "dir"),
    ]


def _failing(error: int, when: Callable[[tuple[Any, ...]], bool], real: Any) -> Any:
    def fail(*args: Any) -> Any:
        if when(args):
            raise OSError(error, os.strerror(error))
        return real(*args)

    return fail


@pytest.mark.parametrize(
    ("call", "error", "when"),
    [
        ("fsync", errno.ENOSPC, lambda args: True),  # the disk filled up
        ("open", errno.EROFS, lambda args: str(args[0]).endswith(".tmp")),  # read-only
        ("replace", errno.EBUSY, lambda args: True),
    ],
)
def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    error: int,
    when: Callable[[tuple[Any, ...]], bool],
) -> None:
    save_last_good(str(tmp_path), KEPT)
    before = (tmp_path / "provisioned.toml").read_bytes()
    monkeypatch.setattr(os, call, _failing(error, when, getattr(os, call)))

    with pytest.raises(ProvisioningError) as caught:
        save_last_good(str(tmp_path), LastGood(b"new", "u", "", "", 2.0))

    monkeypatch.undo()
    path = tmp_path / "provisioned.toml"
    assert str(caught.value) == f"provisioning: cannot write {path}: {os.strerror(error)}"
    assert "hunter2" not in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_missing_state_dir_is_created_0700(tmp_path: Path) -> None:
    save_last_good(str(tmp_path / "var" / "phoned"), KEPT)

    assert load_last_good(str(tmp_path / "var" / "phoned")) == KEPT
    assert stat.S_IMODE((tmp_path / "var" / "phoned").stat().st_mode) == 0o700


def test_a_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(ProvisioningError) as caught:
        save_last_good(str(tmp_path / "file" / "phoned"), KEPT)

    assert (
        str(caught.value) == f"provisioning: cannot create {tmp_path}/file/phoned: Not a directory"
    )


def test_a_write_removes_temp_files_a_crash_left_and_nothing_else(tmp_path: Path) -> None:
    stale = tmp_path / "provisioned.toml.0123456789ab.tmp"
    stale.write_bytes(b"half a fi")
    others = [tmp_path / "provisioned.toml.notes.tmp", tmp_path / "other.0123456789ab.tmp"]
    for other in others:
        other.write_bytes(b"keep")

    assert load_last_good(str(tmp_path)) is None  # reading ignores temp files
    save_last_good(str(tmp_path), KEPT)

    assert not stale.exists()
    assert all(other.read_bytes() == b"keep" for other in others)
    assert load_last_good(str(tmp_path)) == KEPT


# ------------------------------------------------------------------- power loss

# The writer forks one child per round; the child saves A and B alternately for ever,
# printing "begin" before each save, until the test kills it with SIGKILL.
_WRITER = """
import os, sys
from phoned.provision.lastgood import LastGood, save_last_good
KEPT = (
    LastGood(b"a = 1\\n" * 500, "http://192.0.2.40/a.toml", '"a"', "", 1.0),
    LastGood(b"b = 2\\n" * 900, "http://192.0.2.40/b.toml", "", "Wed, 01 Jan 2025", 2.0),
)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.write(1, b"pid %d\\n" % os.getpid())  # one write each: a kill cuts no line
        turn = int(line)
        while True:
            os.write(1, b"begin\\n")
            save_last_good(sys.argv[1], KEPT[turn % 2])
            turn += 1
    os.write(1, b"reaped %d\\n" % os.waitpid(pid, 0)[1])
"""
_A = LastGood(b"a = 1\n" * 500, "http://192.0.2.40/a.toml", '"a"', "", 1.0)
_B = LastGood(b"b = 2\n" * 900, "http://192.0.2.40/b.toml", "", "Wed, 01 Jan 2025", 2.0)
KILLS = 200


class _Lines:
    """Lines from a pipe, each awaited with a timeout (a silent writer fails the test)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def next(self, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, "writer silent"
            assert select.select([self.fd], [], [], left)[0], "writer silent"
            chunk = os.read(self.fd, 65536)
            assert chunk, "writer exited"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], _Lines, list[int]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "state")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    live: list[int] = []  # the child being written by, until reaped
    try:
        yield proc, _Lines(proc.stdout.fileno()), live
    finally:
        for pid in live:
            with contextlib.suppress(ProcessLookupError):  # it died by itself
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)


def _round(
    proc: subprocess.Popen[bytes], lines: _Lines, live: list[int], rng: random.Random
) -> None:
    """Start a writing child, kill it at a random instant, wait until it is reaped."""
    assert proc.stdin is not None
    proc.stdin.write(f"{rng.randrange(2)}\n".encode())
    proc.stdin.flush()
    kind, pid = lines.next().split()
    assert kind == "pid"
    live.append(int(pid))
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0, 0.030))  # the instant of the power cut, not a wait
    else:
        for _ in range(rng.randint(1, 20)):  # just after the n-th save began
            assert lines.next() == "begin"
    os.kill(int(pid), signal.SIGKILL)
    while (line := lines.next()) == "begin":
        pass
    live.clear()
    kind, status = line.split()
    assert kind == "reaped"
    assert os.WIFSIGNALED(int(status)), "the writer died by itself"
    assert os.WTERMSIG(int(status)) == signal.SIGKILL


def test_a_kill_at_any_instant_leaves_the_old_or_the_new_file(
    tmp_path: Path, writer: tuple[subprocess.Popen[bytes], _Lines, list[int]]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    files: dict[bytes, LastGood] = {}  # each whole file, as a save writes it
    for name, kept in (("a", _A), ("b", _B)):
        (tmp_path / name).mkdir()
        save_last_good(str(tmp_path / name), kept)
        files[(tmp_path / name / "provisioned.toml").read_bytes()] = kept
    seed = random.randrange(1 << 32)  # noqa: S311 - kill instants, not secrets
    rng, found, cut_mid_write = random.Random(seed), set[LastGood](), 0  # noqa: S311
    for kill in range(KILLS):
        _round(*writer, rng)
        temps = [path.name for path in state.iterdir() if path.name != "provisioned.toml"]
        assert len(temps) <= 1, f"seed {seed}, kill {kill}: temp files pile up: {temps}"
        cut_mid_write += len(temps)
        path = state / "provisioned.toml"
        if not found and not path.exists():
            continue  # killed before the first save completed
        assert path.exists(), f"seed {seed}, kill {kill}: the file vanished"
        assert path.read_bytes() in files, f"seed {seed}, kill {kill}: a broken file"
        loaded = load_last_good(str(state))
        assert loaded is not None
        assert files[path.read_bytes()] == loaded
        found.add(loaded)
    assert found == {_A, _B}
    assert cut_mid_write > 0, "no kill landed inside a write: the test proves nothing"
