"""When a datagram reached the phone: the kernel's receive timestamp (SPEC §10).

Owns: turning on `SO_TIMESTAMPNS` on a probe socket and reading a datagram with the
kernel's timestamp of its arrival, converted to the shell's monotonic clock. A reply then
counts by when it arrived, not by when the service got round to reading it (a stalled or
starved process, a busy loop). Must not touch: matching, decisions, or any socket but the
one handed in.

The kernel stamps with CLOCK_REALTIME; the age of a datagram is that stamp's distance to
the wall clock read right after `recvmsg`, taken off the monotonic `now` read with it.
A wall-clock step between the two readings (NTP at boot) is clamped: a datagram is never
older than `MAX_AGE_S` nor younger than now.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import NamedTuple

from phoned import sockfilter
from phoned.clock import Clock

#: Linux's SO_TIMESTAMPNS (asm-generic and x86: 35); Python 3.11 has no constant for it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
#: The control message carrying it has the option's number.
_SCM_TIMESTAMPNS = SO_TIMESTAMPNS
#: struct timespec: two native longs (64-bit on x86_64 and arm64).
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) + sockfilter.DROPS_SPACE
#: Older than this, a stamp is taken for a wall-clock jump, not for a stall.
MAX_AGE_S = 3600.0


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to stamp every datagram `sock` receives; False if it can't."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


class Arrival(NamedTuple):
    """One datagram as `receive` read it."""

    data: bytes
    source: tuple[str, int]
    at: float  #: when it reached the phone, on the clock's monotonic scale
    drops: int | None  #: the socket's kernel drops so far (`sockfilter.drops`)


def receive(sock: socket.socket, bufsize: int, clock: Clock) -> Arrival:
    """One datagram, its source, when it arrived (on `clock`'s monotonic scale) and the
    socket's drop count, when the kernel gives it.

    Raises:
        BlockingIOError: nothing to read. OSError: as `recvmsg` does (ICMP errors).
    """
    data, ancillary, _flags, source = sock.recvmsg(bufsize, _ANCILLARY_BYTES)
    now = clock.now()
    wall = time.time()
    arrived_at = now - age_s(ancillary, wall)
    return Arrival(data, (source[0], source[1]), arrived_at, sockfilter.drops(ancillary))


def age_s(ancillary: list[tuple[int, int, bytes]], wall_now: float) -> float:
    """How long ago the kernel stamped the datagram; 0 without a stamp."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
            if len(payload) < _TIMESPEC.size:
                return 0.0
            seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
            stamped_at = float(seconds) + float(nanoseconds) / 1e9
            return min(MAX_AGE_S, max(0.0, wall_now - stamped_at))
    return 0.0
