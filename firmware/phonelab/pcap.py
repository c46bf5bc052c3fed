"""A pure reader of pcap files and small SIP summaries of UDP payloads (SPEC §8, §9).

Owns: decoding classic pcap (micro- and nanosecond, either byte order) with link types
EN10MB (1), RAW (101), LINUX_SLL (113), IPV4 (228) and LINUX_SLL2 (276), down to IPv4 or
IPv6 UDP datagrams; and reading the first line, CSeq, Call-ID and top Via branch of SIP.
Must not touch: files other than the one it is handed, sockets, processes. No IO beyond
`read_packets(path)` reading its file. Not handled (skipped, never guessed): pcapng, IP
fragments, IPv6 extension headers, TCP.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from phonelab.errors import LabError

LINKTYPE_EN10MB = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

_MAGIC = {  # magic -> (byte order, ticks per second)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, 0x8100
_UDP = 17


@dataclass(frozen=True)
class Packet:
    """One UDP datagram as captured."""

    ts: float  #: capture time, seconds since the epoch (kernel timestamp)
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True)
class SipSummary:
    """What identifies a SIP message: a request's method or a response's status."""

    method: str | None  #: request method, None for a response
    status: int | None  #: response status, None for a request
    cseq: str | None  #: CSeq value as sent, e.g. "2 OPTIONS"
    call_id: str | None
    branch: str | None  #: branch parameter of the top Via

    @property
    def kind(self) -> str:
        """The method of a request or the status code (as text) of a response."""
        return self.method if self.method is not None else str(self.status)


def read_packets(path: Path) -> list[Packet]:
    """Every UDP datagram in the pcap file at `path`, in file order.

    A record cut short at the end (capture still being written) is ignored.

    Raises:
        LabError: not a pcap file, or an unsupported link type.
    """
    return parse_pcap(Path(path).read_bytes())


def parse_pcap(data: bytes) -> list[Packet]:
    """`read_packets` on bytes already in memory."""
    if len(data) < 24 or data[:4] not in _MAGIC:
        raise LabError("pcap: not a classic pcap file (pcapng is not supported)")
    order, ticks = _MAGIC[data[:4]]
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype not in _LINK_DECODERS:
        raise LabError(f"pcap: link type {linktype} is not supported")
    packets: list[Packet] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(order + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < caplen:
            break
        packet = _decode_frame(linktype, frame, sec + frac / ticks)
        if packet is not None:
            packets.append(packet)
    return packets


def _ethernet(frame: bytes) -> tuple[int, bytes] | None:
    if len(frame) < 14:
        return None
    ethertype, rest = struct.unpack("!H", frame[12:14])[0], frame[14:]
    if ethertype == _ETH_VLAN and len(rest) >= 4:
        ethertype, rest = struct.unpack("!H", rest[2:4])[0], rest[4:]
    return ethertype, rest


def _sll(frame: bytes) -> tuple[int, bytes] | None:
    return (struct.unpack("!H", frame[14:16])[0], frame[16:]) if len(frame) >= 16 else None


def _sll2(frame: bytes) -> tuple[int, bytes] | None:
    return (struct.unpack("!H", frame[0:2])[0], frame[20:]) if len(frame) >= 20 else None


def _raw(frame: bytes) -> tuple[int, bytes] | None:
    if not frame:
        return None
    return (_ETH_IPV4 if frame[0] >> 4 == 4 else _ETH_IPV6), frame


_LINK_DECODERS = {
    LINKTYPE_EN10MB: _ethernet,
    LINKTYPE_RAW: _raw,
    LINKTYPE_LINUX_SLL: _sll,
    LINKTYPE_IPV4: _raw,
    LINKTYPE_LINUX_SLL2: _sll2,
}


def _decode_frame(linktype: int, frame: bytes, ts: float) -> Packet | None:
    link = _LINK_DECODERS[linktype](frame)
    if link is None:
        return None
    ethertype, ip = link
    if ethertype == _ETH_IPV4:
        return _ipv4(ip, ts)
    if ethertype == _ETH_IPV6:
        return _ipv6(ip, ts)
    return None


def _ipv4(ip: bytes, ts: float) -> Packet | None:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != _UDP:
        return None
    header_len = (ip[0] & 0x0F) * 4
    total_len = struct.unpack("!H", ip[2:4])[0]
    flags_fragment = struct.unpack("!H", ip[6:8])[0]
    if flags_fragment & 0x3FFF:  # MF set or a non-zero offset: a fragment
        return None
    src = str(ipaddress.IPv4Address(ip[12:16]))
    dst = str(ipaddress.IPv4Address(ip[16:20]))
    return _udp(ip[header_len:total_len], src, dst, ts)


def _ipv6(ip: bytes, ts: float) -> Packet | None:
    if len(ip) < 40 or ip[0] >> 4 != 6 or ip[6] != _UDP:
        return None
    payload_len = struct.unpack("!H", ip[4:6])[0]
    src = str(ipaddress.IPv6Address(ip[8:24]))
    dst = str(ipaddress.IPv6Address(ip[24:40]))
    return _udp(ip[40 : 40 + payload_len], src, dst, ts)


def _udp(segment: bytes, src: str, dst: str, ts: float) -> Packet | None:
    if len(segment) < 8:
        return None
    sport, dport, length = struct.unpack("!HHH", segment[:6])
    if length < 8:
        return None
    return Packet(ts, src, sport, dst, dport, segment[8:length])


# --------------------------------------------------------------------------- SIP

_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6]\d\d)(?: .*)?")
_REQUEST_LINE = re.compile(r"([A-Za-z]+) \S+ SIP/2\.0")
_COMPACT = {"i": "call-id", "v": "via"}


def sip_first_line(payload: bytes) -> str | None:
    """The start line of a SIP message, or None when `payload` is not SIP."""
    line = payload.split(b"\r\n", 1)[0].decode("utf-8", errors="replace").strip()
    if _STATUS_LINE.fullmatch(line) or _REQUEST_LINE.fullmatch(line):
        return line
    return None


def _first_headers(payload: bytes) -> dict[str, str]:
    head = payload.split(b"\r\n\r\n", 1)[0].decode("utf-8", errors="replace")
    found: dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = _COMPACT.get(name.strip().lower(), name.strip().lower())
        found.setdefault(key, value.strip())  # the first one: the top Via
    return found


def sip_summary(payload: bytes) -> SipSummary | None:
    """Method or status, CSeq, Call-ID and top Via branch of a SIP message, or None."""
    first = sip_first_line(payload)
    if first is None:
        return None
    headers = _first_headers(payload)
    status = _STATUS_LINE.fullmatch(first)
    branch = re.search(r";\s*branch=([^;,\s]+)", headers.get("via", ""))
    return SipSummary(
        method=None if status else first.split(" ", 1)[0],
        status=int(status.group(1)) if status else None,
        cseq=headers.get("cseq"),
        call_id=headers.get("call-id"),
        branch=branch.group(1) if branch else None,
    )
