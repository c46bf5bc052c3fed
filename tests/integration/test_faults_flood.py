"""SPEC §10 "Junk": a flood at every port the phone has open, judged through the oracle.

Another host of the lab (the peer namespace) sends garbage, fake replies, malformed SIP
and near-64 KiB datagrams as fast as one process can at every UDP socket the phone holds
(its SIP port and each probe socket), and tries 50 half-open TCP connections to every
port it listens on (SIP over TCP and TLS), each to be sent the start of a request or
nothing. Before the listeners admitted only the servers (`phoned.sip.listeners`), about
60 such connections aborted the service (pjsip's ioqueue assertion). While the flood
lasts, every cycle's verdicts and attempts must still be what §1 implies for the replies
that reached the phone (nothing spurious, no move), the junk must be counted and not
logged line by line, `status` must answer at once, the phone must stay registered, and a
server must still be able to connect over TCP. `scripts/bench-stress --case flood`
measures the attempts' timing under the same flood.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartPhone

from phonelab.capture import DEFAULT_BPF, Capture
from phonelab.flood import Flood, flood_lines, open_ports, tcp_connects
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PEER_IP, PHONE_IP, Lab
from phonelab.oracle import OracleSettings
from phonelab.oracle_lab import judge_phone
from phonelab.phone import RunningPhone

INTERVAL_S = 2
FLOOD_CYCLES = 4
SETTINGS = OracleSettings(interval_s=INTERVAL_S)


@pytest.fixture
def capture_not_peer(lab: Lab, tmp_path: Path) -> Iterator[Capture]:
    """The phone's SIP traffic without the flood (which comes from the peer)."""
    bpf = f"({DEFAULT_BPF}) and not host {PEER_IP}"
    with Capture(lab.phone, tmp_path / "phone.pcap", bpf=bpf) as capture:
        yield capture


def status_seconds(phone: RunningPhone) -> float:
    started = time.monotonic()
    phone.status()
    return time.monotonic() - started


def test_junk_at_every_port_moves_no_probe_and_nothing_wedges(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    capture_not_peer: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone(interval=INTERVAL_S)
    phone.wait_event("registration", 10, server="primary", state="registered")
    phone.wait_more_cycles(1, INTERVAL_S)
    ports = open_ports(lab.phone, phone.proc.pid, host=PHONE_IP)
    assert (PHONE_IP, 5060) in ports.udp, ports
    assert len(ports.udp) >= 3, ports  # SIP and a probe socket per server
    assert {(PHONE_IP, 5060), (PHONE_IP, 5061)} <= set(ports.tcp), ports
    lines_before = len(phone.lines())

    with Flood(lab.peer, ports) as flood:
        print("\n".join(flood_lines(flood)))
        phone.wait_more_cycles(FLOOD_CYCLES, INTERVAL_S)
        during = [status_seconds(phone) for _ in range(5)]
        sent = flood.datagrams_sent
        status = phone.status()
        server_tcp = tcp_connects(lab.pbx1, (PHONE_IP, 5060))
        server_tls = tcp_connects(lab.pbx1, (PHONE_IP, 5061))
    phone.wait_more_cycles(1, INTERVAL_S)
    report = judge_phone(capture_not_peer, phone, SETTINGS)

    counted = status["counters"]["unmatched_replies"]
    print(f"flood: {sent} datagrams sent, {counted} counted as unmatched at the probe sockets")
    print(f"flood: status answered in {max(during) * 1000:.0f} ms at worst")
    assert phone.proc.poll() is None, phone.tail()
    assert not any("Traceback" in line for line in phone.lines()), phone.tail()
    assert report.discrepancies == []
    assert report.switches == []
    assert sent >= 10_000, "the flood hardly ran: it proves nothing"
    assert status["counters"]["unmatched_replies"] > 0  # junk reached the probe sockets
    assert max(during) < 0.5
    logged = len(phone.lines()) - lines_before
    assert logged < 40 * (FLOOD_CYCLES + 1), phone.tail()  # repeats summarised, not per datagram
    assert status["active"] == "primary", status
    assert status["registered"], status
    assert flood.admitted == 0, "a host that is no server opened a connection"
    assert server_tcp, "the primary could not connect over TCP during the flood"
    assert server_tls, "the primary could not connect to the TLS port during the flood"
