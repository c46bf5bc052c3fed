"""The benchmark's pure timing arithmetic, on packets and /proc texts built by hand."""

from __future__ import annotations

import pytest

from phoned.errors import LabError
from phoned.lab.pcap import Packet
from phoned.lab.timing import (
    cpu_percent,
    cpu_ticks,
    failover_timing,
    requests,
    response_to,
    summarize,
    vm_rss_kib,
)

PHONE, PRIMARY, BACKUP = "192.0.2.2", "192.0.2.11", "192.0.2.12"
T0 = 1000.0  # the failing cycle's start


def request(ts: float, dst: str, method: str, call_id: str, cseq: int) -> Packet:
    payload = (
        f"{method} sip:{dst}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bK{call_id}{cseq}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return Packet(ts, PHONE, 5060, dst, 5060, payload)


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
