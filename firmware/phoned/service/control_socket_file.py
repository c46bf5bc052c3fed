"""The control socket's file (SPEC §10, `control` rule 1): making room for it and fencing it.

Owns: what may be at the socket's path before the service binds it (nothing, or a crashed
service's socket, which goes), and the file's mode 0660 and group `phoned` once bound.
Must not touch: the listening socket and its clients (`control`), the wire format
(`control_wire`), and any file that is not a socket or whose service still answers on it.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
from pathlib import Path

from phoned.errors import ControlError

# one logger for the whole control socket (`control`), whichever module speaks
log = logging.getLogger("phoned.service.control")

#: SPEC §10: the group whose members may use the socket (the image creates it).
SOCKET_GROUP = "phoned"
_SOCKET_MODE = 0o660


def remove_stale(path: Path) -> None:
    """Remove a socket a crashed service left behind; never a live service's socket, never
    a file that is not a socket.

    Raises:
        ControlError: `path` is not a socket, or a service answers on it.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket: not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # nobody listens: a crash's leftover
            return
        except OSError as exc:
            raise ControlError(f"{path}: cannot tell whether phoned runs: {exc}") from exc
    raise ControlError(f"phoned is already running (its control socket {path} answers)")


def restrict(path: Path, group: str) -> None:
    """Rule 1: mode 0660, and group `group` when this machine has it (a dev machine may
    not: the socket then keeps the process's group)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.info("control: no group %r here: %s keeps group %d, mode 0660",
                 group, path, os.getegid())  # fmt: skip
    else:
        try:
            os.chown(path, -1, gid, follow_symlinks=False)
        except PermissionError as exc:  # a user outside the group: still usable by its own
            log.warning("control: cannot give %s to group %r: %s", path, group, exc.strerror)
    os.chmod(path, _SOCKET_MODE)
