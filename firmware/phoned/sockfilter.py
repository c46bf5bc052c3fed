"""Kernel socket filters: which datagrams and connections reach a socket (SPEC §10 junk).

Owns: building classic BPF programs that admit IPv4 packets by source (address, or
address and UDP port), attaching one to a socket or a descriptor, and turning on the
kernel's count of what a socket dropped (`SO_RXQ_OVFL`: filtered out or no room) and
reading it from a datagram's control messages. Must not touch: which sources are
admitted (the probe's and the SIP endpoint's call), or any socket it is not handed.

A filter runs in the kernel before a packet is queued, so a flood from elsewhere costs
the service nothing: measured with one process flooding every port of the phone
(tests/integration/test_faults_flood.py), the probe sockets read about 50,000 junk
datagrams a second and fell 50-100 ms behind §9 until the filter; none since.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

#: include/uapi/asm-generic/socket.h (the same on x86_64 and arm64).
SO_ATTACH_FILTER = 26
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
#: Control-message room for the drop count (a __u32).
DROPS_SPACE = socket.CMSG_SPACE(4)
#: Classic BPF (include/uapi/linux/filter.h): load word/half absolute, jump if equal, return.
_LD_W_ABS, _LD_H_ABS, _JEQ_K, _RET_K = 0x20, 0x28, 0x15, 0x06
_SKF_NET_OFF = -0x100000  #: offsets from the network header, whatever the socket sees
_IPV4_SOURCE = (_SKF_NET_OFF + 12) & 0xFFFFFFFF
_UDP_SOURCE_PORT = 0  #: a UDP socket's filter sees the packet from its UDP header
_DROP, _ACCEPT = (_RET_K, 0, 0, 0), (_RET_K, 0, 0, 0xFFFF)  #: keep at most 64 KiB: all
MAX_SOURCES = 64  #: a jump offset is one byte; far more than servers and proxies

Instruction = tuple[int, int, int, int]


def _ipv4(host: str) -> int:
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"not an IPv4 address: {host!r}") from None


def _program(instructions: list[Instruction]) -> bytes:
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)


def ipv4_sources_filter(sources: tuple[str, ...]) -> bytes:
    """Admit IPv4 packets from `sources` (IPv4 literals) only; none: admit nothing.

    Raises:
        ValueError: more than `MAX_SOURCES`, or not IPv4 literals.
    """
    if len(sources) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources, got {len(sources)}")
    count = len(sources)
    program = [(_LD_W_ABS, 0, 0, _IPV4_SOURCE)]
    for index, source in enumerate(sources):  # equal: jump past the rest and the drop
        program.append((_JEQ_K, count - index, 0, _ipv4(source)))
    return _program([*program, _DROP, _ACCEPT])


def udp_peer_filter(host: str, port: int) -> bytes:
    """Admit UDP datagrams from IPv4 `host`:`port` only.

    Raises:
        ValueError: `host` is not an IPv4 literal, or `port` out of range.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    return _program([
        (_LD_W_ABS, 0, 0, _IPV4_SOURCE),
        (_JEQ_K, 0, 2, _ipv4(host)),  # another host: drop
        (_LD_H_ABS, 0, 0, _UDP_SOURCE_PORT),
        (_JEQ_K, 1, 0, port),
        _DROP,
        _ACCEPT,
    ])  # fmt: skip


def attach(sock: socket.socket | int, program: bytes) -> None:
    """Attach `program` to `sock` (or to the socket behind a descriptor, through a
    duplicate that is closed again; the socket keeps the filter). Replaces any filter.

    Raises:
        OSError: not a socket, or the kernel refused the program.
    """
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        return
    with socket.socket(fileno=os.dup(sock)) as duplicate:
        duplicate.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def count_drops(sock: socket.socket) -> bool:
    """Ask the kernel to report `sock`'s drop count with each datagram; False if not."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except OSError:
        return False
    return True


def drops(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The socket's drops so far, from one datagram's control messages; None: not told
    (none dropped yet, or not asked)."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(payload) >= 4:
            return int(struct.unpack_from("=I", payload)[0])
    return None
