"""The provisioning benchmark's pure arithmetic, on tcpdump text, packets and log lines
built by hand (`phonelab.provtiming`, `phonelab.provreport`)."""

from __future__ import annotations

from datetime import datetime

import pytest

from phonelab.errors import LabError
from phonelab.pcap import Packet
from phonelab.provreport import BlfUpdate, BootRun, ProvResults, sections
from phonelab.provtiming import (
    BootTiming,
    boot_timing,
    check_sync_timing,
    fetch_after,
    first_request,
    http_segments,
    log_time,
)

PHONE, PBX, PROV = "192.0.2.2", "192.0.2.11", "192.0.2.40"
T0 = 1796538837.0
_OPTS = "options [nop,nop,TS val 1 ecr 2]"


def us(expected: object) -> object:
    """Equal to the microsecond: epoch-sized floats carry about 0.2 us of rounding."""
    return pytest.approx(expected, abs=1e-6)


def tcp(ts: float, src: str, sport: int, dst: str, dport: int, flags: str, rest: str) -> str:
    """One line as `tcpdump -tt -n -r` prints it for a capture on `any`."""
    way = "Out" if src == PHONE else "In "
    return f"{ts:.6f} eth0  {way} IP {src}.{sport} > {dst}.{dport}: Flags [{flags}], {rest}"


def fetch_text(start: float, port: int = 40400, *, split: bool = False) -> str:
    """A GET of the phone's file from `start` on: handshake, request, 200 OK, close."""
    lines = [
        tcp(start, PHONE, port, PROV, 80, "S", f"seq 4038882943, win 64240, {_OPTS}, length 0"),
        tcp(start + 0.0001, PROV, 80, PHONE, port, "S.", f"seq 1, ack 1, {_OPTS}, length 0"),
        tcp(start + 0.0002, PHONE, port, PROV, 80, ".", f"ack 1, win 63, {_OPTS}, length 0"),
        tcp(start + 0.0003, PHONE, port, PROV, 80, "P.", f"seq 1:133, ack 1, win 63, {_OPTS}, "
            "length 132: HTTP: GET /b827eb12ab34.toml HTTP/1.1"),
    ]  # fmt: skip
    if split:  # headers, then the body in a second segment, then a retransmitted copy
        lines += [
            tcp(start + 0.0005, PROV, 80, PHONE, port, "P.", f"seq 1:200, ack 133, {_OPTS}, "
                "length 199: HTTP: HTTP/1.1 200 OK"),
            tcp(start + 0.0007, PROV, 80, PHONE, port, "P.", f"seq 200:281, ack 133, {_OPTS}, "
                "length 81: HTTP"),
            tcp(start + 0.2, PROV, 80, PHONE, port, "P.", f"seq 200:281, ack 133, {_OPTS}, "
                "length 81: HTTP"),
        ]  # fmt: skip
    else:
        lines.append(
            tcp(start + 0.0007, PROV, 80, PHONE, port, "P.", f"seq 1:281, ack 133, win 64, "
                f"{_OPTS}, length 280: HTTP: HTTP/1.1 200 OK")
        )  # fmt: skip
    lines += [
        tcp(start + 0.0008, PROV, 80, PHONE, port, "F.", f"seq 281, ack 133, {_OPTS}, length 0"),
        tcp(start + 0.0009, PHONE, port, PROV, 80, "F.", f"seq 133, ack 282, {_OPTS}, length 0"),
    ]
    return "\n".join(lines) + "\n"


def sip(ts: float, src: str, dst: str, first: str, headers: str) -> Packet:
    payload = f"{first}\r\n{headers}Content-Length: 0\r\n\r\n".encode()
    return Packet(ts, src, 5060, dst, 5060, payload)


def notify(ts: float, call_id: str = "lab-check-sync.2000.x", event: str = "check-sync") -> Packet:
    headers = f"Call-ID: {call_id}\r\nCSeq: 10 NOTIFY\r\nEvent: {event}\r\n"
    return sip(ts, PBX, PHONE, f"NOTIFY sip:1001@{PHONE}:5060 SIP/2.0", headers)


def ok(ts: float, call_id: str = "lab-check-sync.2000.x") -> Packet:
    headers = f"Call-ID: {call_id}\r\nCSeq: 10 NOTIFY\r\n"
    return sip(ts, PHONE, PBX, "SIP/2.0 200 OK", headers)


def request(ts: float, method: str, to: str = "1001", extra: str = "", dst: str = PBX) -> Packet:
    headers = f"To: <sip:{to}@{dst}>\r\nCall-ID: {method}{ts}\r\nCSeq: 1 {method}\r\n{extra}"
    return sip(ts, PHONE, dst, f"{method} sip:{dst}:5060 SIP/2.0", headers)


def test_http_segments_read_flags_sequence_ends_and_the_decoded_http_line() -> None:
    segments = http_segments("reading from file x.pcap\n" + fetch_text(T0))

    assert [s.flags for s in segments] == ["S", "S.", ".", "P.", "P.", "F.", "F."]
    get, answer = segments[3], segments[4]
    assert (get.src, get.sport, get.dst, get.dport) == (PHONE, 40400, PROV, 80)
    assert get.http == "GET /b827eb12ab34.toml HTTP/1.1"
    assert (get.end, get.length) == (133, 132)
    assert answer.http == "HTTP/1.1 200 OK"
    assert answer.ts == us(T0 + 0.0007)
    assert segments[0].syn
    assert segments[0].end is None  # a SYN carries no data
    assert segments[2].http == ""


def test_the_response_ends_at_the_first_copy_of_its_last_segment() -> None:
    segments = http_segments(fetch_text(T0, split=True))

    fetch = fetch_after(segments, phone=PHONE, server=PROV, since=T0)

    assert fetch.syn_at == T0
    assert fetch.get_at == us(T0 + 0.0003)
    assert fetch.status == 200
    assert fetch.response_end_at == us(T0 + 0.0007)  # not the retransmission


def test_a_fetch_is_the_first_connection_opened_since_the_instant_given() -> None:
    segments = http_segments(fetch_text(T0 - 5, port=40000) + fetch_text(T0, port=41000))

    assert fetch_after(segments, phone=PHONE, server=PROV, since=T0 - 1).syn_at == T0
    with pytest.raises(LabError, match="no connection"):
        fetch_after(segments, phone=PHONE, server=PROV, since=T0 + 1)


def test_check_sync_timing_measures_the_200_and_the_fetch_from_the_notify_arriving() -> None:
    packets = [
        notify(T0 - 3, call_id="older", event="presence"),  # not a check-sync
        notify(T0),
        ok(T0 + 0.0008),
    ]
    segments = http_segments(fetch_text(T0 + 0.003))

    timing = check_sync_timing(packets, segments, phone=PHONE, pbx=PBX, prov=PROV)

    assert timing.notify_at == T0
    assert timing.ok_after_s == us(0.0008)
    assert timing.syn_after_s == us(0.003)
    assert timing.get_after_s == us(0.0033)
    assert timing.status == 200
    assert timing.response_end_at == us(T0 + 0.0037)


def test_without_the_phones_200_there_is_no_check_sync_timing() -> None:
    segments = http_segments(fetch_text(T0 + 0.003))

    with pytest.raises(LabError, match="no 200"):
        check_sync_timing([notify(T0)], segments, phone=PHONE, pbx=PBX, prov=PROV)


def test_first_request_filters_by_to_user_and_expires_zero() -> None:
    packets = [
        request(T0 - 1, "SUBSCRIBE", to="1003"),  # before the instant
        request(T0 + 0.001, "SUBSCRIBE", to="1002", extra="Expires: 0\r\n"),
        request(T0 + 0.002, "SUBSCRIBE", to="1003", extra="Expires: 600\r\n"),
        request(T0 + 0.003, "REGISTER", dst="192.0.2.21"),
    ]

    def first(**kw: object) -> float:
        return first_request(packets, src=PHONE, since=T0, **kw) - T0  # type: ignore[arg-type]

    assert first(dst=PBX, method="SUBSCRIBE", to="1003", unsubscribe=False) == us(0.002)
    assert first(dst=PBX, method="SUBSCRIBE", to="1002", unsubscribe=True) == us(0.001)
    assert first(dst=PBX, method="SUBSCRIBE") == us(0.001)
    assert first(dst="192.0.2.21", method="REGISTER") == us(0.003)
    with pytest.raises(LabError, match="no SUBSCRIBE to 1003 \\(Expires: 0\\)"):
        first(dst=PBX, method="SUBSCRIBE", to="1003", unsubscribe=True)


def test_boot_timing_from_the_spawn_to_the_syn_the_register_and_the_first_options() -> None:
    spawned = T0
    packets = [
        request(T0 - 0.5, "OPTIONS"),  # an earlier phone's
        request(T0 + 0.9, "REGISTER"),
        request(T0 + 1.7, "OPTIONS"),
        request(T0 + 1.7001, "OPTIONS", dst="192.0.2.12"),
    ]
    segments = http_segments(fetch_text(T0 + 0.2))

    timing = boot_timing(packets, segments, phone=PHONE, prov=PROV, spawned_at=spawned)

    assert timing.first_packet_after_s == us(0.2)
    assert timing.syn_after_s == us(0.2)
    assert timing.response_end_after_s == us(0.2007)
    assert timing.register_after_s == us(0.9)
    assert timing.options_after_s == us(1.7)


def test_a_boot_with_the_server_blackholed_has_syns_but_no_response() -> None:
    syns = "".join(
        tcp(T0 + 0.2 + k, PHONE, 40400, PROV, 80, "S", f"seq 7, win 64240, {_OPTS}, length 0")
        + "\n"
        for k in range(5)
    )
    packets = [request(T0 + 5.8, "REGISTER"), request(T0 + 6.5, "OPTIONS")]

    timing = boot_timing(packets, http_segments(syns), phone=PHONE, prov=PROV, spawned_at=T0)

    assert timing.syn_after_s == us(0.2)
    assert timing.response_end_after_s is None
    assert timing.options_after_s == us(6.5)
    with pytest.raises(LabError, match="no OPTIONS"):
        boot_timing(packets[:1], [], phone=PHONE, prov=PROV, spawned_at=T0)


def test_log_time_reads_the_local_time_of_day_on_the_date_nearest_the_capture() -> None:
    near = datetime(2026, 12, 5, 6, 35, 58, 500000).timestamp()
    line = "06:35:58.122 INFO phoned: config: ... applied event=config result=applied"

    assert log_time(line, near) == us(datetime(2026, 12, 5, 6, 35, 58, 122000).timestamp())
    just_after_midnight = datetime(2026, 12, 6, 0, 0, 0, 20000).timestamp()
    assert log_time("23:59:59.990 INFO x", just_after_midnight) == us(
        datetime(2026, 12, 5, 23, 59, 59, 990000).timestamp()
    )
    with pytest.raises(LabError, match="no log time"):
        log_time("Traceback (most recent call last):", near)


def test_the_table_judges_medians_against_issue_11s_targets() -> None:
    timing = check_sync_timing(
        [notify(T0), ok(T0 + 0.001)],
        http_segments(fetch_text(T0 + 0.004)),
        phone=PHONE, pbx=PBX, prov=PROV,
    )  # fmt: skip
    slow_apply = BlfUpdate("1003", "1002", timing, 0.099, 0.0985, 0.1)
    fast_apply = BlfUpdate("1002", "1003", timing, 0.004, 0.0035, 0.005)
    boot = BootTiming(0.2, 0.2, 0.201, 0.9, 1.7)
    boots = [BootRun(True, boot, first_cycle_offset_s=0.4), BootRun(False, boot, 0.6)]
    results = ProvResults(blf=[slow_apply, fast_apply, fast_apply], boots=boots)

    table = dict(sections(results))

    blf = {row.name: row for row in next(rows for t, rows in table.items() if "blf" in t)}
    assert blf["NOTIFY -> its 200"].verdict() == "pass"
    assert blf["response -> SUBSCRIBE added"].values == us((99.0, 4.0, 4.0))
    assert blf["response -> SUBSCRIBE added"].verdict() == "pass"  # the median: 4 ms
    boot_rows = {row.name: row for row in next(r for t, r in table.items() if "up" in t)}
    # judged to the prober's start: the first OPTIONS less SPEC §1's random offset
    assert boot_rows["run -> probing starts"].values == us((1300.0,))
    assert boot_rows["run -> probing starts"].verdict() == "FAIL"  # 1300 ms > 1000 ms
    assert boot_rows["run -> first OPTIONS"].verdict() == "info"
    down = {row.name: row for row in next(r for t, r in table.items() if "blackholed" in t)}
    assert down["run -> probing starts"].values == us((1100.0,))
    assert down["run -> probing starts"].verdict() == "pass"  # <= 5500 ms
    assert boot_rows["first REGISTER -> first OPTIONS"].values == us((800.0,))
    assert boot_rows["boot response -> first REGISTER"].values == us((699.0,))
