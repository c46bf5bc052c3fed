"""What a crash of the service leaves behind (SPEC §10: no secret in crash output).

Owns: the process's crash settings, made once at the start of `phoned run`: no core
file, ever (`RLIMIT_CORE` 0 and not dumpable: a core would hold the SIP password, the
provisioning password and the VPN private key in plain memory), and on a fatal signal
(pjsip's own assertions abort, SIGSEGV, SIGBUS...) the Python stack of every thread on
stderr, i.e. the journal (`faulthandler`: file, line and function names, never a value).
Must not touch: logging, the service's threads, anything but this process's settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import resource
import sys

_PR_SET_DUMPABLE = 4  # include/uapi/linux/prctl.h


def prepare_for_crashes() -> None:
    """No core dumps; fatal signals print every thread's Python stack to stderr."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the limit above stays
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    faulthandler.enable(file=sys.stderr, all_threads=True)
