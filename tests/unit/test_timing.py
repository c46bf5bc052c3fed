"""The benchmark's pure timing arithmetic, on packets and /proc texts built by hand."""

from __future__ import annotations

import pytest

from phonelab.errors import LabError
from phonelab.pcap import Packet
from phonelab.stream_timing import (
    Segment,
    attempt_starts,
    first_sends,
    stream_failover_timing,
    tcp_segments,
)
from phonelab.timing import (
    blf_timing,
    cpu_percent,
    cpu_ticks,
    failover_timing,
    header,
    requests,
    response_to,
    summarize,
    vm_rss_kib,
    vpn_timing,
)

PHONE, PRIMARY, BACKUP = "192.0.2.2", "192.0.2.11", "192.0.2.12"
T0 = 1000.0  # the failing cycle's start


def request(
    ts: float, dst: str, method: str, call_id: str, cseq: int, extra: str = "", src: str = PHONE
) -> Packet:
    payload = (
        f"{method} sip:{dst}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bK{call_id}{cseq}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return Packet(ts, src, 5060, dst, 5060, payload)


def response(
    ts: float, src: str, status: int, call_id: str, cseq: str, dport: int = 5060
) -> Packet:
    payload = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bKx\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return Packet(ts, src, 5060, PHONE, dport, payload)


def cycle(start: float, primary_attempts: int, skew: float = 0.0002) -> list[Packet]:
    """OPTIONS of one cycle: the primary's attempts at 0/0.8/1.2 s, the backup's at t=0."""
    offsets = (0.0, 0.8, 1.2)[:primary_attempts]
    sent = [request(start + o, PRIMARY, "OPTIONS", f"p{start}", k) for k, o in enumerate(offsets)]
    return [*sent, request(start + skew, BACKUP, "OPTIONS", f"b{start}", 1)]


def failover_capture(register_delay_s: float = 0.004, ok_delay_s: float = 0.0006) -> list[Packet]:
    """A steady cycle at T0-2, the failing one at T0, REGISTER to the backup and its 200."""
    register = request(T0 + 1.6 + register_delay_s, BACKUP, "REGISTER", "reg", 7)
    packets = [*cycle(T0 - 2, 1), *cycle(T0, 3), register]
    packets.append(response(register.ts + ok_delay_s, BACKUP, 200, "reg", "7 REGISTER"))
    packets.sort(key=lambda p: p.ts)
    return packets


def test_failover_timing_finds_the_failing_cycle_and_measures_from_its_deadline() -> None:
    timing = failover_timing(failover_capture(), phone=PHONE, primary=PRIMARY, backup=BACKUP)

    assert timing.cycle_start == T0
    assert timing.backup_skew_s == pytest.approx(0.0002)
    assert timing.attempt_offsets_s == pytest.approx((0.0, 0.8, 1.2))
    assert timing.register_after_deadline_s == pytest.approx(0.004)
    assert timing.registered_after_deadline_s == pytest.approx(0.0046)
    assert timing.registered_at == pytest.approx(T0 + 1.6046)


def test_after_a_401_the_200_to_the_authenticated_retry_counts() -> None:
    packets = [p for p in failover_capture() if not p.payload.startswith(b"SIP/2.0 200")]
    register = T0 + 1.604
    packets += [
        response(register + 0.0005, BACKUP, 401, "reg", "7 REGISTER"),
        request(register + 0.001, BACKUP, "REGISTER", "reg", 8),
        response(register + 0.0016, BACKUP, 200, "reg", "8 REGISTER"),
        request(register + 0.002, BACKUP, "REGISTER", "other", 1),  # another registration
        response(register + 0.0021, BACKUP, 200, "other", "1 REGISTER"),
    ]

    timing = failover_timing(packets, phone=PHONE, primary=PRIMARY, backup=BACKUP)

    assert timing.register_after_deadline_s == pytest.approx(0.004)
    assert timing.registered_after_deadline_s == pytest.approx(0.0056)


def test_a_register_sent_before_the_deadline_gives_a_negative_delay() -> None:
    packets = failover_capture(register_delay_s=-0.1)

    timing = failover_timing(packets, phone=PHONE, primary=PRIMARY, backup=BACKUP)

    assert timing.register_after_deadline_s == pytest.approx(-0.1)
    assert timing.attempt_offsets_s == pytest.approx((0.0, 0.8, 1.2))


def test_without_a_200_to_the_first_register_there_is_no_timing() -> None:
    packets = [p for p in failover_capture() if not p.payload.startswith(b"SIP/2.0 200")]

    with pytest.raises(LabError, match="no 200 OK"):
        failover_timing(packets, phone=PHONE, primary=PRIMARY, backup=BACKUP)


def test_without_a_register_to_the_backup_there_is_no_timing() -> None:
    with pytest.raises(LabError, match="no REGISTER"):
        failover_timing(cycle(T0, 3), phone=PHONE, primary=PRIMARY, backup=BACKUP)


def test_without_a_backup_probe_there_is_no_cycle_start() -> None:
    packets = [p for p in failover_capture() if not (p.dst == BACKUP and b"OPTIONS" in p.payload)]

    with pytest.raises(LabError, match="no cycle start"):
        failover_timing(packets, phone=PHONE, primary=PRIMARY, backup=BACKUP)


def test_response_to_needs_the_same_call_id_cseq_and_the_reversed_addresses() -> None:
    register = request(T0, BACKUP, "REGISTER", "reg", 7)
    decoys = [
        response(T0 + 0.01, BACKUP, 200, "other", "7 REGISTER"),  # another Call-ID
        response(T0 + 0.02, BACKUP, 200, "reg", "6 REGISTER"),  # an earlier CSeq
        response(T0 + 0.03, PRIMARY, 200, "reg", "7 REGISTER"),  # from another server
        response(T0 + 0.04, BACKUP, 200, "reg", "7 REGISTER", dport=5070),  # another port
        response(T0 + 0.05, BACKUP, 401, "reg", "7 REGISTER"),  # not the status asked
    ]
    wanted = response(T0 + 0.06, BACKUP, 200, "reg", "7 REGISTER")

    assert response_to(decoys, register) is None
    assert response_to([*decoys, wanted], register) == wanted
    assert response_to([*decoys, wanted], register, status=401) == decoys[-1]


def test_requests_keeps_only_that_method_from_that_source_to_that_destination() -> None:
    packets = [*cycle(T0, 3), response(T0 + 0.001, PRIMARY, 200, "pT0", "0 OPTIONS")]

    found = requests(packets, PHONE, PRIMARY, "OPTIONS")

    assert [p.ts - T0 for p in found] == pytest.approx([0.0, 0.8, 1.2])
    assert requests(packets, PHONE, PRIMARY, "REGISTER") == []
    assert requests(packets, PRIMARY, PHONE, "OPTIONS") == []


def test_summarize_gives_the_median_and_the_value_farthest_from_the_reference() -> None:
    summary = summarize([800.5, 799.0, 800.2, 812.0, 790.5], reference=800)

    assert (summary.median, summary.worst, summary.count) == (800.2, 812.0, 5)
    assert summarize([-3.0, 2.0], reference=0).worst == -3.0
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_cpu_ticks_adds_utime_and_stime_even_when_the_name_has_spaces_and_parens() -> None:
    stat = "4242 (py (x) thon) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 5 0 77"

    assert cpu_ticks(stat) == 168
    with pytest.raises(ValueError, match="stat"):
        cpu_ticks("4242 python S 1")


def test_cpu_percent_is_ticks_over_wall_time_in_percent_of_one_core() -> None:
    assert cpu_percent(30, 60.0, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        cpu_percent(1, 0.0, 100)


def test_vm_rss_kib_reads_the_vmrss_line() -> None:
    status = "Name:\tpython\nVmHWM:\t   40000 kB\nVmRSS:\t   35916 kB\nThreads:\t5\n"

    assert vm_rss_kib(status) == 35916
    with pytest.raises(ValueError, match="VmRSS"):
        vm_rss_kib("Name:\tpython\nState:\tZ (zombie)\n")


# --------------------------------------------------------------------------- BLF

DEADLINE = T0 + 1.6
DIALOG = "Event: dialog\r\nExpires: 3600\r\n"


def resubscription(key: int, sent: float, ok_after: float, notify_after: float) -> list[Packet]:
    """One key's SUBSCRIBE to the backup: 407, the authenticated retry, 200, first NOTIFY."""
    call_id = f"blf{key}"
    first = request(sent, BACKUP, "SUBSCRIBE", call_id, 1, DIALOG)
    retry = request(sent + 0.001, BACKUP, "SUBSCRIBE", call_id, 2, DIALOG)
    ok_at = retry.ts + ok_after
    return [
        first,
        response(sent + 0.0005, BACKUP, 407, call_id, "1 SUBSCRIBE"),
        retry,
        response(ok_at, BACKUP, 200, call_id, "2 SUBSCRIBE"),
        request(ok_at + notify_after, PHONE, "NOTIFY", call_id, 1, src=BACKUP),
    ]


def blf_capture(keys: int) -> list[Packet]:
    """`keys` re-subscriptions, key k sent 2 ms after key k-1, starting at deadline + 5 ms."""
    packets = [
        p
        for k in range(keys)
        for p in resubscription(k, DEADLINE + 0.005 + 0.002 * k, 0.0004, 0.0003)
    ]
    return sorted(packets, key=lambda p: p.ts)


def test_blf_timing_measures_the_last_200_and_the_last_first_notify_after_the_deadline() -> None:
    timing = blf_timing(blf_capture(10), phone=PHONE, backup=BACKUP, deadline=DEADLINE, keys=10)

    assert timing.subscriptions == 10
    last_retry = 0.005 + 0.002 * 9 + 0.001
    assert timing.confirmed_after_deadline_s == pytest.approx(last_retry + 0.0004)
    assert timing.notified_after_deadline_s == pytest.approx(last_retry + 0.0007)


def test_blf_timing_counts_only_200s_to_dialog_subscriptions_on_the_backup() -> None:
    packets = blf_capture(2)
    decoys = [
        # before the deadline (on the primary in a real run): not a re-subscription
        *resubscription(7, DEADLINE - 1.0, 0.0004, 0.0003),
        # presence, not BLF
        request(DEADLINE + 0.5, BACKUP, "SUBSCRIBE", "pres", 1, "Event: presence\r\n"),
        response(DEADLINE + 0.501, BACKUP, 200, "pres", "1 SUBSCRIBE"),
        # an un-SUBSCRIBE
        request(DEADLINE + 0.6, BACKUP, "SUBSCRIBE", "bye", 3, "Event: dialog\r\nExpires: 0\r\n"),
        response(DEADLINE + 0.601, BACKUP, 200, "bye", "3 SUBSCRIBE"),
    ]

    timing = blf_timing([*packets, *decoys], phone=PHONE, backup=BACKUP, deadline=DEADLINE, keys=2)

    assert timing.subscriptions == 2
    assert timing.confirmed_after_deadline_s == pytest.approx(0.005 + 0.002 + 0.001 + 0.0004)


def test_blf_timing_refuses_a_key_answered_only_with_407() -> None:
    packets = [p for p in blf_capture(3) if not (p.payload.startswith(b"SIP/2.0 200") and
                                                   b"Call-ID: blf2" in p.payload)]  # fmt: skip

    with pytest.raises(LabError, match="2 of 3 BLF subscriptions confirmed"):
        blf_timing(packets, phone=PHONE, backup=BACKUP, deadline=DEADLINE, keys=3)


def test_blf_timing_refuses_a_subscription_without_its_notify() -> None:
    packets = [p for p in blf_capture(3) if not p.payload.startswith(b"NOTIFY")]

    with pytest.raises(LabError, match="0 of 3 subscriptions notified"):
        blf_timing(packets, phone=PHONE, backup=BACKUP, deadline=DEADLINE, keys=3)


def test_header_reads_a_header_and_the_compact_event() -> None:
    packet = request(T0, BACKUP, "SUBSCRIBE", "x", 1, "o: dialog;id=4\r\nExpires: 60\r\n")

    assert header(packet.payload, "event") == "dialog;id=4"
    assert header(packet.payload, "expires") == "60"
    assert header(packet.payload, "accept") is None


# --------------------------------------------------------------------------- TCP and TLS

PORT = 5061


def tcp_line(ts: float, src: str, sport: int, dst: str, flags: str, seq: str, length: int) -> str:
    """A line as `tcpdump -tt -n -r` prints it for a capture on `any`."""
    seq_part = f", seq {seq}" if seq else ""
    return (
        f"{ts:.6f} eth0  Out IP {src}.{sport} > {dst}.{PORT}: Flags [{flags}]{seq_part}, "
        f"ack 1, win 502, options [nop,nop,TS val 1 ecr 2], length {length}"
    )


def test_tcp_segments_reads_syns_data_and_acks_and_skips_other_lines() -> None:
    text = "\n".join([
        tcp_line(T0, PHONE, 40001, PRIMARY, "S", "3115637881", 0),
        tcp_line(T0 + 0.1, PHONE, 40001, PRIMARY, "P.", "1:520", 519) + ": SIP: OPTIONS sip:x",
        tcp_line(T0 + 0.2, PHONE, 40001, PRIMARY, ".", "", 0),
        f"{T0:.6f} eth0  Out IP6 2001:db8::2.40001 > 2001:db8::11.5061: Flags [S], length 0",
        "reading from file x.pcap, link-type LINUX_SLL2",
    ])  # fmt: skip

    syn, data, ack = tcp_segments(text)

    assert (syn.ts, syn.src, syn.sport, syn.dst, syn.dport) == (T0, PHONE, 40001, PRIMARY, PORT)
    assert (syn.syn, syn.seq, syn.length) == (True, "3115637881", 0)
    assert (data.syn, data.flags, data.seq, data.length) == (False, "P.", "1:520", 519)
    assert (ack.seq, ack.length) == ("", 0)


def test_first_sends_leaves_out_retransmissions_keepalives_and_other_peers() -> None:
    text = "\n".join([
        tcp_line(T0 - 5, PHONE, 40001, PRIMARY, "S", "76", 0),  # opens the kept connection
        tcp_line(T0, PHONE, 40001, PRIMARY, "P.", "1:520", 519),  # a probe on it
        tcp_line(T0 + 0.1, PHONE, 39999, PRIMARY, "P.", "9:530", 521),  # opened before capture
        tcp_line(T0 + 0.2, PHONE, 40001, PRIMARY, "P.", "1:520", 519),  # its retransmission
        tcp_line(T0 + 0.3, PHONE, 40001, PRIMARY, "P.", "520:546", 26),  # a TLS keep-alive
        tcp_line(T0 + 0.8, PHONE, 40002, PRIMARY, "S", "77", 0),  # a new connection
        tcp_line(T0 + 1.8, PHONE, 40002, PRIMARY, "S", "77", 0),  # its SYN again
        tcp_line(T0 + 0.9, PHONE, 40003, BACKUP, "S", "78", 0),  # another server
        tcp_line(T0 + 1.0, PRIMARY, 5061, PHONE, "P.", "1:400", 399),  # the other direction
    ])  # fmt: skip

    sent = first_sends(tcp_segments(text), src=PHONE, dst=PRIMARY, dport=PORT)

    assert sent == pytest.approx([T0 - 5, T0, T0 + 0.8])


def test_attempt_starts_takes_the_first_send_of_each_burst() -> None:
    times = [T0 + 1.2, T0, T0 + 0.8, T0 + 0.801, T0 + 0.85, T0 + 1.35]

    assert attempt_starts(times) == pytest.approx([T0, T0 + 0.8, T0 + 1.2, T0 + 1.35])
    assert attempt_starts([]) == []


def failing_stream_cycle(connect_delay_s: float = 0.003) -> str:
    """An answered cycle at T0-2, silence, the failing cycle at T0 and the next at T0+2."""
    return "\n".join([
        tcp_line(T0 - 3, PHONE, 40001, PRIMARY, "S", "50", 0),
        tcp_line(T0 - 3, PHONE, 40009, BACKUP, "S", "51", 0),
        tcp_line(T0 - 2, PHONE, 40001, PRIMARY, "P.", "1:520", 519),
        tcp_line(T0 - 2 + 0.0002, PHONE, 40009, BACKUP, "P.", "1:520", 519),
        tcp_line(T0 - 1.7, PHONE, 39999, PRIMARY, "P.", "9:530", 521),  # a stray, see first_sends
        tcp_line(T0, PHONE, 40001, PRIMARY, "P.", "520:1039", 519),
        tcp_line(T0 + 0.0003, PHONE, 40009, BACKUP, "P.", "520:1039", 519),
        tcp_line(T0 + 0.21, PHONE, 40001, PRIMARY, "P.", "520:1039", 519),  # retransmitted
        tcp_line(T0 + 0.8012, PHONE, 40002, PRIMARY, "S", "55", 0),
        tcp_line(T0 + 1.2004, PHONE, 40003, PRIMARY, "S", "56", 0),
        tcp_line(T0 + 1.6 + connect_delay_s, PHONE, 40010, BACKUP, "S", "57", 0),  # pjsua
        tcp_line(T0 + 1.8, PHONE, 40002, PRIMARY, "S", "55", 0),  # SYN retransmitted
        tcp_line(T0 + 2, PHONE, 40004, PRIMARY, "S", "58", 0),  # the next cycle
        tcp_line(T0 + 2.0002, PHONE, 40009, BACKUP, "P.", "1039:1558", 519),
    ])  # fmt: skip


def test_stream_failover_timing_measures_the_attempts_from_the_first_send_after_silence() -> None:
    segments = tcp_segments(failing_stream_cycle())

    timing = stream_failover_timing(
        segments, phone=PHONE, primary=PRIMARY, backup=BACKUP, port=PORT, silenced_at=T0 - 1.9
    )

    assert timing.cycle_start == T0
    assert timing.backup_skew_s == pytest.approx(0.0003)
    assert timing.attempt_offsets_s == pytest.approx((0.0, 0.8012, 1.2004))
    assert timing.connect_after_deadline_s == pytest.approx(0.003)


def test_stream_failover_timing_needs_sends_after_silence_and_a_new_backup_connection() -> None:
    segments = tcp_segments(failing_stream_cycle())

    def measure(kept: list[Segment], silenced_at: float = T0 - 1.9) -> None:
        stream_failover_timing(
            kept, phone=PHONE, primary=PRIMARY, backup=BACKUP, port=PORT, silenced_at=silenced_at
        )

    with pytest.raises(LabError, match="nothing sent to the primary"):
        measure(segments, silenced_at=T0 + 5)
    with pytest.raises(LabError, match="no probe to the backup"):
        measure([s for s in segments if s.dst != BACKUP])
    with pytest.raises(LabError, match="no new connection to the backup"):
        measure([s for s in segments if not (s.dst == BACKUP and s.syn and s.ts > T0)])


# --------------------------------------------------------------------------- VPN

TUNNEL_PHONE, SHARED, BACKUP_TUNNEL = "198.18.0.2", "198.18.100.1", "198.18.2.1"
DEADLINE = T0 + 1.6


def datagram(ts: float, src: str = TUNNEL_PHONE, dst: str = SHARED) -> Packet:
    return Packet(ts, src, 40000, dst, 9, b"bench-failover")


def at_backup(syn_at: float = DEADLINE + 0.020) -> str:
    """`tcpdump -tt -n -i any` lines in the backup's namespace: the app fetch's connection
    (SYN, then the backup's SYN-ACK and the GET), a later one, and another port."""
    return "\n".join([
        f"{syn_at - 0.5:.6f} wl9n2pbx In  IP {TUNNEL_PHONE}.40000 > {BACKUP_TUNNEL}.5060: "
        "Flags [S], seq 7, win 64240, length 0",
        f"{syn_at:.6f} wl9n2pbx In  IP {TUNNEL_PHONE}.40312 > {BACKUP_TUNNEL}.80: "
        "Flags [S], seq 1, win 64240, options [mss 1380], length 0",
        f"{syn_at + 0.0002:.6f} wl9n2pbx Out IP {BACKUP_TUNNEL}.80 > {TUNNEL_PHONE}.40312: "
        "Flags [S.], seq 9, ack 2, win 65160, length 0",
        f"{syn_at + 0.0004:.6f} wl9n2pbx In  IP {TUNNEL_PHONE}.40312 > {BACKUP_TUNNEL}.80: "
        "Flags [P.], seq 1:80, ack 1, win 502, length 79: HTTP: GET /contacts HTTP/1.1",
        f"{syn_at + 0.010:.6f} wl9n2pbx In  IP {TUNNEL_PHONE}.40314 > {BACKUP_TUNNEL}.80: "
        "Flags [S], seq 3, win 64240, length 0",
    ])  # fmt: skip


def test_vpn_timing_takes_the_first_datagram_and_the_first_app_connection_at_the_backup() -> None:
    datagrams = [
        datagram(DEADLINE + 0.002, src="198.18.0.9"),  # someone else
        datagram(DEADLINE + 0.003, dst=BACKUP_TUNNEL),  # not the routes network
        datagram(DEADLINE + 0.006),
        datagram(DEADLINE + 0.004),  # out of file order: the earliest counts
        datagram(DEADLINE + 0.008),
    ]

    timing = vpn_timing(
        datagrams, tcp_segments(at_backup()), phone=TUNNEL_PHONE, shared=SHARED,
        app=(BACKUP_TUNNEL, 80), deadline=DEADLINE,
    )  # fmt: skip

    assert timing.routes_after_deadline_s == pytest.approx(0.004)
    assert timing.app_after_deadline_s == pytest.approx(0.020)


def test_vpn_timing_before_the_deadline_is_negative() -> None:
    timing = vpn_timing(
        [datagram(DEADLINE - 0.1)], tcp_segments(at_backup(syn_at=DEADLINE - 0.05)),
        phone=TUNNEL_PHONE, shared=SHARED, app=(BACKUP_TUNNEL, 80), deadline=DEADLINE,
    )  # fmt: skip

    assert timing.routes_after_deadline_s == pytest.approx(-0.1)
    assert timing.app_after_deadline_s == pytest.approx(-0.05)


def test_vpn_timing_needs_a_datagram_and_an_app_connection_at_the_backup() -> None:
    segments = tcp_segments(at_backup())

    def measure(datagrams: list[Packet], kept: list[Segment]) -> None:
        vpn_timing(
            datagrams, kept, phone=TUNNEL_PHONE, shared=SHARED, app=(BACKUP_TUNNEL, 80),
            deadline=DEADLINE,
        )  # fmt: skip

    with pytest.raises(LabError, match="nothing to the routes network"):
        measure([datagram(DEADLINE, dst=BACKUP_TUNNEL)], segments)
    with pytest.raises(LabError, match="no app fetch reached the backup"):
        measure([datagram(DEADLINE)], [s for s in segments if s.dport != 80])
    with pytest.raises(LabError, match="no app fetch"):  # a SYN-ACK or data is no fetch
        measure([datagram(DEADLINE)], [s for s in segments if not s.syn])
