"""Reading a file the settings are, or name, without trusting what sits at its path (SPEC §10).

Owns: opening a path for reading so that nothing planted there can hang, exhaust or trick
the service: only regular files are read (a FIFO would block `open()` or `read()` forever,
`/dev/zero` never ends), symbolic links are refused where asked, and at most `max_bytes`
(+1, to tell "too large") are read whatever the file claims. The caller says what else the
file must be (mode, owner) through `vet`, which sees the `stat` of the very file opened.
Must not touch: what the content means, settings, messages beyond the reason (the callers
name the key and the file), logging.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

#: The kind of a file that is not a regular one, as a person says it, by `S_IFMT` bits.
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


class FileRefused(Exception):  # noqa: N818 (a verdict on a path, like rules.Invalid)
    """The file at a path cannot or must not be read; `reason` says why in a few words."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        #: Why, e.g. "a FIFO, not a regular file" or "5000 bytes, more than 4096".
        self.reason = reason
        #: True when the only fault is its size (the caller may name its limit).
        self.too_large = too_large


def _refuse_unless_regular(info: os.stat_result, follow_symlinks: bool) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISLNK(info.st_mode) and not follow_symlinks:
        raise FileRefused("a symbolic link; name the file itself")
    kind = _KINDS.get(stat.S_IFMT(info.st_mode), "a special file")
    raise FileRefused(f"{kind}, not a regular file")


def read_regular(
    path: str,
    max_bytes: int,
    *,
    follow_symlinks: bool = True,
    vet: Callable[[os.stat_result], None] | None = None,
) -> bytes:
    """The content of the regular file at `path`, refused when it holds more than `max_bytes`.

    The path is checked before it is opened (so no device or FIFO is ever opened) and the
    file opened is checked again (so nothing swapped in between is read).

    Args:
        path: The file.
        max_bytes: The most it may hold.
        follow_symlinks: False: a symbolic link at `path` is refused (secret files).
        vet: Called with the open file's `stat` before anything is read; raises
            `FileRefused` (or another exception of the caller's) to refuse it.

    Returns:
        The file's bytes, at most `max_bytes` of them.

    Raises:
        FileRefused: it cannot be opened, is not a regular file, is a symbolic link when
            `follow_symlinks` is False, is larger than `max_bytes`, or `vet` refused it.
    """
    try:
        _refuse_unless_regular(os.stat(path, follow_symlinks=follow_symlinks), follow_symlinks)
        # O_NONBLOCK: a FIFO swapped in after the stat must not block open(); O_NOCTTY: a
        # terminal must not become ours; O_NOFOLLOW: nor a symbolic link swapped in.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        descriptor = os.open(path, flags | (0 if follow_symlinks else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise FileRefused("a symbolic link; name the file itself") from exc
        raise FileRefused(exc.strerror or str(exc)) from exc
    with os.fdopen(descriptor, "rb", buffering=0) as file:
        try:
            info = os.fstat(file.fileno())
            _refuse_unless_regular(info, follow_symlinks)
            if info.st_size > max_bytes:
                raise FileRefused(f"{info.st_size} bytes, more than {max_bytes}", too_large=True)
            if vet is not None:
                vet(info)
            content = _read_at_most(file.fileno(), max_bytes + 1)
        except OSError as exc:
            raise FileRefused(exc.strerror or str(exc)) from exc
    if len(content) > max_bytes:  # it grew after the fstat, or its size lied (/proc)
        raise FileRefused(f"more than {max_bytes} bytes", too_large=True)
    return content


def _read_at_most(descriptor: int, count: int) -> bytes:
    """Up to `count` bytes from `descriptor`, until end of file."""
    chunks: list[bytes] = []
    left = count
    while left > 0:
        chunk = os.read(descriptor, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
