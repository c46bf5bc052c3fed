"""The pure pcap reader and SIP summaries, on pcap bytes built by hand."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from phonelab import pcap
from phonelab.errors import LabError
from phonelab.pcap import (
    Packet,
    SipSummary,
    parse_pcap,
    read_packets,
    sip_first_line,
    sip_summary,
)

OPTIONS = (
    b"OPTIONS sip:192.0.2.11:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKtop;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKlower\r\n"
    b"Call-ID: abc@192.0.2.2\r\n"
    b"CSeq: 2 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REPLY_503 = (
    b"SIP/2.0 503 Service Unavailable\r\n"
    b"v: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKtop\r\n"
    b"i: abc@192.0.2.2\r\n"
    b"CSeq: 2 OPTIONS\r\n\r\n"
)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, segment: bytes, *, proto: int = 17, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(segment),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + segment


def ipv6(src: str, dst: str, segment: bytes) -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(segment), 17, 64)
    src_b, dst_b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return header + src_b + dst_b + segment


def ether(ip: bytes, ethertype: int = 0x0800, *, vlan: bool = False) -> bytes:
    macs = b"\x02" * 6 + b"\x04" * 6
    if vlan:
        return macs + struct.pack("!HHH", 0x8100, 7, ethertype) + ip
    return macs + struct.pack("!H", ethertype) + ip


def sll(ip: bytes, ethertype: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, ethertype) + ip


def sll2(ip: bytes, ethertype: int = 0x0800) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, 3, 1, 0, 6, b"\x02" * 8) + ip


def pcap_file(
    linktype: int, frames: list[tuple[float, bytes]], *, order: str = "<", nano: bool = False
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    ticks = 1_000_000_000 if nano else 1_000_000
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for ts, frame in frames:
        sec = int(ts)
        frac = round((ts - sec) * ticks)
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def test_ethernet_ipv4_udp_round_trip(tmp_path: Path) -> None:
    frame = ether(ipv4("192.0.2.2", "192.0.2.11", udp(40000, 5060, OPTIONS)))
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap_file(pcap.LINKTYPE_EN10MB, [(1700000000.25, frame)]))

    assert read_packets(path) == [
        Packet(1700000000.25, "192.0.2.2", 40000, "192.0.2.11", 5060, OPTIONS)
    ]


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (pcap.LINKTYPE_LINUX_SLL, sll),
        (pcap.LINKTYPE_LINUX_SLL2, sll2),
        (pcap.LINKTYPE_EN10MB, lambda ip: ether(ip, vlan=True)),
        (pcap.LINKTYPE_RAW, lambda ip: ip),
    ],
)
def test_link_types_decode_to_the_same_datagram(
    linktype: int, wrap: Callable[[bytes], bytes]
) -> None:
    frame = wrap(ipv4("192.0.2.11", "192.0.2.2", udp(5060, 40000, REPLY_503)))

    (packet,) = parse_pcap(pcap_file(linktype, [(5.5, frame)]))

    assert (packet.src, packet.sport, packet.dst, packet.dport) == (
        "192.0.2.11",
        5060,
        "192.0.2.2",
        40000,
    )
    assert packet.payload == REPLY_503


def test_nanosecond_big_endian_timestamps_keep_their_precision() -> None:
    frame = sll2(ipv4("192.0.2.2", "192.0.2.12", udp(1, 2, b"x")))
    data = pcap_file(pcap.LINKTYPE_LINUX_SLL2, [(10.000000123, frame)], order=">", nano=True)

    (packet,) = parse_pcap(data)

    assert packet.ts == pytest.approx(10.000000123, abs=1e-9)


def test_non_udp_fragments_and_short_frames_are_skipped() -> None:
    good = sll2(ipv4("192.0.2.2", "192.0.2.11", udp(1, 5060, b"ok")))
    icmp = sll2(ipv4("192.0.2.11", "192.0.2.2", b"\x03\x03\x00\x00" * 4, proto=1))
    fragment = sll2(ipv4("192.0.2.2", "192.0.2.11", udp(1, 5060, b"frag"), frag=0x2000))
    arp = sll2(b"\x00" * 28, ethertype=0x0806)
    frames = [(1.0, icmp), (2.0, fragment), (3.0, arp), (4.0, b"\x00\x01"), (5.0, good)]

    packets = parse_pcap(pcap_file(pcap.LINKTYPE_LINUX_SLL2, frames))

    assert [(p.ts, p.payload) for p in packets] == [(5.0, b"ok")]


def test_ipv6_udp_is_read() -> None:
    frame = ether(ipv6("2001:db8::2", "2001:db8::11", udp(5060, 5060, OPTIONS)), 0x86DD)

    (packet,) = parse_pcap(pcap_file(pcap.LINKTYPE_EN10MB, [(1.0, frame)]))

    assert (packet.src, packet.dst, packet.payload) == ("2001:db8::2", "2001:db8::11", OPTIONS)


def test_a_record_cut_short_by_a_live_capture_is_ignored() -> None:
    frame = sll2(ipv4("192.0.2.2", "192.0.2.11", udp(1, 5060, b"whole")))
    data = pcap_file(pcap.LINKTYPE_LINUX_SLL2, [(1.0, frame), (2.0, frame)])

    assert [p.ts for p in parse_pcap(data[:-3])] == [1.0]


def test_pcapng_and_unknown_link_types_are_refused() -> None:
    with pytest.raises(LabError, match="pcapng"):
        parse_pcap(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40)
    with pytest.raises(LabError, match="link type 147"):
        parse_pcap(pcap_file(147, []))


def test_sip_summary_of_a_request_uses_the_top_via() -> None:
    assert sip_summary(OPTIONS) == SipSummary(
        method="OPTIONS",
        status=None,
        cseq="2 OPTIONS",
        call_id="abc@192.0.2.2",
        branch="z9hG4bKtop",
    )


def test_sip_summary_of_a_response_reads_compact_headers() -> None:
    summary = sip_summary(REPLY_503)

    assert summary is not None
    assert (summary.status, summary.method, summary.kind) == (503, None, "503")
    assert (summary.call_id, summary.cseq, summary.branch) == (
        "abc@192.0.2.2",
        "2 OPTIONS",
        "z9hG4bKtop",
    )


def test_sip_first_line_and_non_sip_payloads() -> None:
    assert sip_first_line(REPLY_503) == "SIP/2.0 503 Service Unavailable"
    assert sip_first_line(b"\r\n\r\n") is None  # a keep-alive is not a SIP message
    assert sip_first_line(b"HTTP/1.1 200 OK\r\n\r\n") is None
    assert sip_summary(b"\x00\x01garbage") is None
