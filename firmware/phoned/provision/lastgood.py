"""The last good provisioning file (SPEC §7 "Last good"): `<state_dir>/provisioned.toml`.

Owns: that file's format, writing it atomically (`write_atomically`), reading it back, and
removing the temp files a crash left behind.
Must not touch: whether a file is good (the caller keeps only files it accepted), parsing
the TOML (`phoned.config`), the network.

The format: line 1 is a TOML comment holding the metadata as JSON (one line), then the body
exactly as fetched, byte for byte:

    # phoned-provisioned: {"url": "...", "etag": "...", "last_modified": "...",
    #     "fetched_at": ..., "sha256": "..."}   <- one line in the file
    [account]
    ...

The metadata lives in the same file so that one rename replaces body and metadata at once,
and the file stays valid TOML for a person reading it. `LastGood.body` excludes the header
line and the caller parses `body`, so line numbers in its error messages are those of the
file as served, not of this file. `sha256` (of the body) catches a file changed by hand.

Rule 1: power lost at any instant leaves the old file or the new one, never a broken one:
a temp file in the same directory (0600 and O_EXCL from the start), written, fsynced,
renamed over the file, then the directory fsynced.
Rule 2: one writer at a time (the service). A crash may leave a temp file
`provisioned.toml.<12 hex>.tmp`; every write first removes such leftovers, so there is never
more than one, and reading ignores them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoned.errors import ProvisioningError

#: The last good file's name in `[service] state_dir` (SPEC §7).
FILE_NAME = "provisioned.toml"
#: How line 1 starts: a TOML comment, then the JSON metadata.
HEADER_MARK = b"# phoned-provisioned: "


@dataclass(frozen=True)
class LastGood:
    """A provisioning file that was accepted, with what a conditional GET needs."""

    #: The file exactly as fetched (without the header line). Not in the repr: it may
    #: hold passwords.
    body: bytes = field(repr=False)
    #: The URL it was fetched from (never with credentials).
    url: str
    #: Its ETag, "" if the server sent none.
    etag: str
    #: Its Last-Modified, "" if the server sent none.
    last_modified: str
    #: When it was fetched: unix time (`time.time()`).
    fetched_at: float


def last_good_path(state_dir: str) -> Path:
    """Where the last good file lives: `<state_dir>/provisioned.toml`."""
    return Path(state_dir) / FILE_NAME


def save_last_good(state_dir: str, kept: LastGood) -> None:
    """Keep `kept` as the last good file, atomically (Rule 1).

    `state_dir` is created (mode 0700) when missing, as systemd's StateDirectory= would.

    Raises:
        ProvisioningError: it could not be written (full disk, read-only directory...); the
            previous file is then untouched.
    """
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ProvisioningError(f"provisioning: cannot create {state_dir}: {_why(exc)}") from exc
    meta = {
        "url": kept.url,
        "etag": kept.etag,
        "last_modified": kept.last_modified,
        "fetched_at": kept.fetched_at,
        "sha256": hashlib.sha256(kept.body).hexdigest(),
    }
    # ensure_ascii: the header is one line of ASCII whatever the strings hold
    header = HEADER_MARK + json.dumps(meta, ensure_ascii=True).encode("ascii") + b"\n"
    write_atomically(last_good_path(state_dir), header + kept.body)


def load_last_good(state_dir: str) -> LastGood | None:
    """The last good file, or None when there is none yet.

    Raises:
        ProvisioningError: it exists but cannot be read, or its header is missing, broken
            or does not match its body.
    """
    path = last_good_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisioningError(f"provisioning: cannot read {path}: {_why(exc)}") from exc
    return _parse(path, data)


def _parse(path: Path, data: bytes) -> LastGood:
    first, newline, body = data.partition(b"\n")
    if not newline or not first.startswith(HEADER_MARK):
        raise _broken(path, f"line 1 is not a '{HEADER_MARK.decode().strip()}' header")
    try:
        meta: Any = json.loads(first[len(HEADER_MARK) :])
    except ValueError:
        raise _broken(path, "its header is not valid JSON") from None
    texts = ("url", "etag", "last_modified", "sha256")
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in texts):
        raise _broken(path, f"its header needs the texts {', '.join(texts)}")
    fetched_at = meta.get("fetched_at")
    if isinstance(fetched_at, bool) or not isinstance(fetched_at, int | float):
        raise _broken(path, "its header needs fetched_at, a number")
    if hashlib.sha256(body).hexdigest() != meta["sha256"]:
        raise _broken(path, "the body does not match its header's sha256 (changed or cut)")
    return LastGood(body, meta["url"], meta["etag"], meta["last_modified"], float(fetched_at))


def _broken(path: Path, why: str) -> ProvisioningError:
    return ProvisioningError(f"provisioning: {path}: broken last good file: {why}")


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash at any instant leaves old or new (Rule 1).

    Leftover temp files of `path` from an earlier crash are removed first (Rule 2: one
    writer per path).

    Args:
        path: the file to replace (or create); its directory must exist.
        data: the whole new content.
        mode: the new file's permissions (the temp file is 0600 until it is complete).

    Raises:
        ProvisioningError: not written (full disk, read-only or missing directory...); the
            temp file is removed and `path` is untouched, except when only the final fsync
            of the directory failed (the message says so).
    """
    _remove_stale_temps(path)
    temp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProvisioningError(f"provisioning: cannot write {path}: {_why(exc)}") from exc
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            os.fsync(fd)  # the data is on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise ProvisioningError(f"provisioning: cannot write {path}: {_why(exc)}") from exc
    try:
        _fsync_directory(path.parent)  # the rename itself is on disk
    except OSError as exc:
        reason = f"written, but its directory could not be synced: {_why(exc)}"
        raise ProvisioningError(f"provisioning: {path}: {reason}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of `path` a crash left (Rule 2); leave anything else alone."""
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return  # the write itself will say what is wrong with the directory
    for name in names:
        if pattern.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
