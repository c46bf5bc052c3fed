"""Who may open a TCP or TLS connection to the phone's SIP ports (SPEC §10 half-open TCP).

Owns: finding the process's own listening sockets on a port (`/proc/self/net/tcp` and
the descriptors in `/proc/self/fd`) and which hosts can be admitted (IPv4 literals); the
filter itself is `phoned.sockfilter`'s. Must not touch: pjsua2 (the endpoint decides
which ports and sources and attaches), accounts, the probe's sockets.

Why (measured, tests/integration/test_faults_flood.py): pjsip serves every socket of the
stack from one select() ioqueue of 64 handles, as the wheel is built, and asserts when it
has none left: about 60 connections held open to the SIP ports from any host of the LAN
aborted the whole service (`pj_ioqueue_register_sock2: Assertion ... free_list` failed,
SIGABRT). SPEC §2 already refuses calls and check-sync from anyone but the configured
servers and proxies; the listeners now admit connections from those hosts only, in the kernel:
a SYN from elsewhere is dropped before pjsip sees a connection. Connections the phone
opens itself (its registration over TCP or TLS) are not listeners' and are not filtered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

#: The TCP socket table of the process's own network namespace, and its descriptors.
TCP_TABLE = Path("/proc/self/net/tcp")
FD_DIR = Path("/proc/self/fd")
#: How often the endpoint looks for listeners pjsua made anew (after a link change).
CHECK_EVERY_S = 2.0
_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10


def ipv4_sources(hosts: Iterable[str]) -> tuple[str, ...]:
    """The IPv4 literals among `hosts`, sorted and without repeats (names are skipped)."""
    found = set()
    for host in hosts:
        with contextlib.suppress(ValueError):
            found.add(ipaddress.IPv4Address(host))
    return tuple(str(address) for address in sorted(found))


def listening_fds(port: int) -> dict[str, int]:
    """This process's TCP sockets listening on `port` (any address): socket inode ->
    descriptor."""
    inodes = set()
    for line in TCP_TABLE.read_text().splitlines()[1:]:  # the first line is a header
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if fields[3] == _LISTEN and local_port == port:
            inodes.add(f"socket:[{fields[9]}]")
    fds = {}
    for entry in FD_DIR.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if (link := os.readlink(entry)) in inodes:
                fds[link] = int(entry.name)
    return fds
