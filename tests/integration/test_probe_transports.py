"""Probes over TCP and TLS, and server names resolved at each cycle, in the lab (SPEC §1).

The phone side is a real probe session: this file run as a script inside the phone
namespace (`ip netns exec`, so it sees the lab's resolver) runs `make_prober`, the
failover core and the keep-alive monitor thread, and prints one JSON line per probe
sent, per event and per verdict. The tests read those lines (select with a deadline),
change the world (DNS records, an nftables drop rule in a PBX namespace) and judge the
timing from tcpdump's kernel timestamps in the phone namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from phoned.clock import MonotonicClock
from phoned.core.events import (
    Action,
    CycleJudged,
    Event,
    ProbeAnswered,
    ProbeFailed,
    SendProbe,
    Server,
)
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.probe.matching import ProbeTarget
from phoned.probe.resolve import make_prober
from phoned.service.monitor import KeepaliveMonitor
from phonelab.capture import Capture
from phonelab.dns import DnsServer
from phonelab.kamailio import TLS_PORT, KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, ns_argv, stop_process
from phonelab.tls import CertAuthority, self_signed

MakePbx = Callable[..., KamailioPbx]
Line = dict[str, Any]
DROP_TABLE = "phoned_probe_drop"
#: tcpdump -tt -n on `any`: "1732551234.123456 eth0  Out IP 192.0.2.2.40312 > 192.0.2.11.5060: ..."
_SYN_LINE = re.compile(r"^(\d+\.\d+) .*?IP (\S+) > (\S+): Flags \[S\]", re.MULTILINE)
_DATA_LINE = re.compile(
    r"^(\d+\.\d+) .*?IP (\S+) > (\S+): Flags \[P\.\], seq (\d+:\d+)", re.MULTILINE
)
#: The interval of the sessions: short, so that a test sees several cycles.
INTERVAL_S = 2.0


# ------------------------------------------------------------- the phone-side session


def _target(text: str) -> ProbeTarget:
    host, _, port = text.rpartition(":")
    return ProbeTarget(host, int(port))


def run_session(argv: list[str]) -> int:
    """Probe the given servers for `--cycles` cycles; JSON lines on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="udp")
    parser.add_argument("--ca", default="")
    parser.add_argument("--primary", required=True)
    parser.add_argument("--backup")
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args(argv)
    targets = {Server.PRIMARY: _target(args.primary)}
    if args.backup:
        targets[Server.BACKUP] = _target(args.backup)
    clock = MonotonicClock()
    prober = make_prober(
        targets,
        transport=args.transport,
        tls_ca_file=args.ca,
        from_user="1001",
        domain="lab.test",
        user_agent="phoned-probe-session",
        clock=clock,
    )
    done = threading.Event()
    judged = 0

    def emit(line: Line) -> None:
        print(json.dumps(line), flush=True)

    def observe(item: Event | SendProbe, now: float) -> None:
        if isinstance(item, SendProbe | ProbeAnswered | ProbeFailed):
            fields = {"server": item.server.value, "cycle": item.cycle, "attempt": item.attempt}
            emit({"kind": type(item).__name__, "t": now, **fields, **_detail(item)})

    def on_action(action: Action) -> None:
        nonlocal judged
        if not isinstance(action, CycleJudged):
            return
        for verdict in action.verdicts:
            resolved = prober.resolved(verdict.server)
            emit({
                "kind": "verdict", "cycle": action.cycle, "server": verdict.server.value,
                "up": verdict.up, "reason": verdict.reason, "resolved": resolved,
            })  # fmt: skip
        judged += 1
        if judged >= args.cycles:
            done.set()

    settings = PolicySettings(interval_s=INTERVAL_S, backup_enabled=Server.BACKUP in targets)
    policy = FailoverPolicy(settings, clock.now(), first_cycle_delay_s=1.2)
    monitor = KeepaliveMonitor(policy, prober, clock, on_action, observe=observe)
    monitor.start()
    finished = done.wait(INTERVAL_S * (args.cycles + 2))
    monitor.stop()
    return 0 if finished else 1


def _detail(item: Event | SendProbe) -> Line:
    if isinstance(item, ProbeAnswered):
        return {"status": item.status_code, "rtt_ms": item.rtt_ms}
    if isinstance(item, ProbeFailed):
        return {"reason": item.reason}
    return {}


# ------------------------------------------------------------------ the test side


class Session:
    """A probe session running in the phone namespace, read line by line."""

    def __init__(self, lab: Lab, workdir: Path, *args: str) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), *args]
        self.stderr_path = workdir / "session.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ns_argv(lab.phone, argv),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self.lines: list[Line] = []
        self._buffer = b""

    def wait_for(self, check: Callable[[Line], bool], timeout_s: float) -> Line:
        """The first line (seen so far or coming within `timeout_s`) that passes `check`."""
        deadline = time.monotonic() + timeout_s
        checked = 0
        while True:
            found = next((ln for ln in self.lines[checked:] if check(ln)), None)
            if found is not None:
                return found
            checked = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                pytest.fail(f"session: line not seen; last {self.lines[-6:]}\n{self._tail()}")

    def verdicts(self, server: str) -> list[Line]:
        return [ln for ln in self.lines if ln["kind"] == "verdict" and ln["server"] == server]

    def finish(self, timeout_s: float) -> None:
        """Read to the end; the session must exit 0 (all its cycles judged)."""
        deadline = time.monotonic() + timeout_s
        while self._read(deadline - time.monotonic()):
            pass
        self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        assert self.proc.returncode == 0, self._tail()

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=3.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def _read(self, timeout_s: float) -> bool:
        """Read what comes within `timeout_s` into `lines`; False at end of output."""
        assert self.proc.stdout is not None
        assert timeout_s > 0, f"session: out of time\n{self._tail()}"
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not readable:
            return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [json.loads(raw) for raw in complete if raw.strip()]
        return bool(chunk)

    def _tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def start_session(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Session]]:
    started: list[Session] = []

    def start(*args: str) -> Session:
        session = Session(lab, tmp_path, *args)
        started.append(session)
        return session

    yield start
    for session in started:
        session.stop()


class TcpDrop:
    """nftables rules in PBX namespaces that drop every TCP segment to a port (SYNs
    included): the server is blackholed, connections already open go silent."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._applied: set[str] = set()

    def drop(self, role: str, port: int) -> None:
        script = (
            f"table inet {DROP_TABLE} {{\n  chain input {{\n"
            "    type filter hook input priority -10; policy accept;\n"
            f"    tcp dport {port} drop\n  }}\n}}\n"
        )
        self._nft(self._lab.ns(role), ["-f", "-"], script)
        self._applied.add(self._lab.ns(role))

    def lift(self, role: str) -> None:
        self._nft(self._lab.ns(role), ["delete", "table", "inet", DROP_TABLE])
        self._applied.discard(self._lab.ns(role))

    def lift_all(self) -> None:
        for ns in list(self._applied):
            self._nft(ns, ["delete", "table", "inet", DROP_TABLE])
        self._applied.clear()

    @staticmethod
    def _nft(ns: str, args: list[str], script: str = "") -> None:
        done = subprocess.run(
            ns_argv(ns, ["nft", *args]),
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture
def tcp_drop(lab: Lab) -> Iterator[TcpDrop]:
    """Drop rules applied through it are lifted after the test."""
    rules = TcpDrop(lab)
    yield rules
    rules.lift_all()


def tcpdump_lines(pcap: Path, bpf: str) -> str:
    return subprocess.run(
        ["tcpdump", "-r", str(pcap), "-tt", "-n", bpf],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout


def data_times(pcap: Path, dst: str) -> list[float]:
    """Kernel timestamps of the phone's data segments to `dst`, retransmissions left out."""
    first: dict[tuple[str, str], float] = {}
    for found in _DATA_LINE.finditer(tcpdump_lines(pcap, "tcp[tcpflags] & tcp-push != 0")):
        when, source, destination, seq = found.groups()
        if source.startswith(f"{PHONE_IP}.") and destination.startswith(f"{dst}."):
            first.setdefault((source, seq), float(when))
    return sorted(first.values())


def syn_times(pcap: Path, dst: str) -> list[float]:
    """Kernel timestamps of the first SYN of each connection from the phone to `dst`."""
    out = tcpdump_lines(pcap, "tcp[tcpflags] == tcp-syn")
    first: dict[str, float] = {}
    for found in _SYN_LINE.finditer(out):
        when, source, destination = found.groups()
        if source.startswith(f"{PHONE_IP}.") and destination.startswith(f"{dst}."):
            first.setdefault(source, float(when))  # kernel retransmissions keep the port
    return sorted(first.values())


def cycle_offsets_ms(times: list[float]) -> list[list[float]]:
    """Group send times into cycles (within 3/4 of an interval of a cycle's first send):
    each send's offset from its cycle's first, in ms."""
    cycles: list[list[float]] = []
    for when in times:
        if cycles and when - cycles[-1][0] < INTERVAL_S * 0.75:
            cycles[-1].append(when)
        else:
            cycles.append([when])
    return [[(t - c[0]) * 1000.0 for t in c] for c in cycles]


# ------------------------------------------------------------------------- the tests


def test_tcp_probes_judge_up_over_one_kept_connection(
    lab: Lab, make_pbx: MakePbx, start_session: Callable[..., Session], tmp_path: Path
) -> None:
    make_pbx("pbx1", tcp=True)
    make_pbx("pbx2", tcp=True)
    with Capture(lab.phone, tmp_path / "tcp.pcap", bpf="tcp port 5060") as capture:
        session = start_session(
            "--transport", "tcp", "--primary", f"{PBX1_IP}:5060",
            "--backup", f"{PBX2_IP}:5060", "--cycles", "3",
        )  # fmt: skip
        session.finish(timeout_s=INTERVAL_S * 6)
    for server in ("primary", "backup"):
        verdicts = session.verdicts(server)
        assert [v["up"] for v in verdicts] == [True, True, True], verdicts
        assert all(v["reason"].startswith("answered in") for v in verdicts)
    # A real phone keeps its connection: one connect per server for all three cycles.
    assert len(syn_times(capture.path, PBX1_IP)) == 1
    assert len(syn_times(capture.path, PBX2_IP)) == 1


def test_tls_probes_verify_the_certificate(
    lab: Lab,
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    start_session: Callable[..., Session],
    tmp_path: Path,
) -> None:
    make_pbx("pbx1", tls=lab_ca.issue("probe-pbx1", [PBX1_IP]))
    make_pbx("pbx2", tls=self_signed(tmp_path, "probe-pbx2", [PBX2_IP]))
    session = start_session(
        "--transport", "tls", "--ca", str(lab_ca.cert), "--primary", f"{PBX1_IP}:{TLS_PORT}",
        "--backup", f"{PBX2_IP}:{TLS_PORT}", "--cycles", "2",
    )  # fmt: skip
    session.finish(timeout_s=INTERVAL_S * 5)
    assert [v["up"] for v in session.verdicts("primary")] == [True, True]
    backup = session.verdicts("backup")
    assert [v["up"] for v in backup] == [False, False]
    # The words depend on whether the server sends its (rogue) CA along with its leaf.
    unknown_ca = {
        "unable to get local issuer certificate",
        "self-signed certificate in certificate chain",
    }
    [reason] = {v["reason"] for v in backup}
    assert reason in {f"TLS certificate rejected: {why} x3" for why in unknown_ca}


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_attempts_keep_the_schedule_against_a_blackholed_server(
    lab: Lab,
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    tcp_drop: TcpDrop,
    start_session: Callable[..., Session],
    tmp_path: Path,
    transport: str,
) -> None:
    port = TLS_PORT if transport == "tls" else 5060
    make_pbx("pbx1", tcp=True, tls=lab_ca.issue(f"hole-{transport}", [PBX1_IP]))
    tcp_drop.drop("pbx1", port)
    with Capture(lab.phone, tmp_path / "hole.pcap", bpf=f"tcp port {port}") as capture:
        session = start_session(
            "--transport", transport, "--ca", str(lab_ca.cert),
            "--primary", f"{PBX1_IP}:{port}", "--cycles", "3",
        )  # fmt: skip
        session.finish(timeout_s=INTERVAL_S * 6)
    assert [v["reason"] for v in session.verdicts("primary")] == ["missed 3 probes"] * 3
    cycles = cycle_offsets_ms(syn_times(capture.path, PBX1_IP))
    assert len(cycles) == 3, cycles
    for offsets in cycles:  # SPEC §1: a fresh connect per attempt at 0 / 800 / 1200 ms
        assert len(offsets) == 3, cycles
        assert offsets[1] == pytest.approx(800, abs=30)
        assert offsets[2] == pytest.approx(1200, abs=30)
    medians = [statistics.median(c[i] for c in cycles) for i in (1, 2)]
    print(f"{transport} blackhole: attempt offsets {cycles} ms, medians {medians} ms")


def test_a_connection_gone_silent_is_replaced_within_the_cycle(
    lab: Lab,
    make_pbx: MakePbx,
    tcp_drop: TcpDrop,
    start_session: Callable[..., Session],
    tmp_path: Path,
) -> None:
    make_pbx("pbx1", tcp=True)
    with Capture(lab.phone, tmp_path / "silent.pcap", bpf="tcp port 5060") as capture:
        session = start_session(
            "--transport", "tcp", "--primary", f"{PBX1_IP}:5060", "--cycles", "8"
        )
        up = session.wait_for(lambda ln: ln["kind"] == "verdict", INTERVAL_S * 3)
        assert up["up"], up
        tcp_drop.drop("pbx1", 5060)  # the kept connection goes silent
        down = session.wait_for(lambda ln: ln["kind"] == "verdict" and not ln["up"], INTERVAL_S * 2)
        tcp_drop.lift("pbx1")
        back = session.wait_for(
            lambda ln: ln["kind"] == "verdict" and ln["up"] and ln["cycle"] > down["cycle"],
            INTERVAL_S * 2,
        )
    assert down["reason"] == "missed 3 probes"
    assert back["cycle"] == down["cycle"] + 1  # reachable again: up at the very next cycle
    syns = syn_times(capture.path, PBX1_IP)
    assert len(syns) >= 3, syns  # the first connect, then attempts 2 and 3 of the down cycle
    t0 = max(t for t in data_times(capture.path, PBX1_IP) if t < syns[1] - 0.5)
    offsets_ms = [(syns[1] - t0) * 1000, (syns[2] - t0) * 1000]
    print(f"silent connection: attempt 1 on it at 0, reconnects at {offsets_ms} ms")
    assert offsets_ms[0] == pytest.approx(800, abs=30)
    assert offsets_ms[1] == pytest.approx(1200, abs=30)


def test_names_are_resolved_at_each_cycle_with_srv(
    lab: Lab,
    make_pbx: MakePbx,
    dns: DnsServer,
    start_session: Callable[..., Session],
) -> None:
    make_pbx("pbx1")
    make_pbx("pbx2")
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_a("pbx2.lab.test", PBX2_IP)
    dns.set_srv("_sip._udp.voip.lab.test", "pbx2.lab.test", 5060)
    session = start_session(
        "--primary", "pbx1.lab.test:5060", "--backup", "voip.lab.test:0", "--cycles", "12"
    )

    def verdict(server: str, up: bool, after: int = -1) -> Callable[[Line], bool]:
        return lambda ln: (
            ln["kind"] == "verdict" and ln["server"] == server and ln["up"] is up
            and ln["cycle"] > after
        )  # fmt: skip

    first = session.wait_for(verdict("primary", True), INTERVAL_S * 3)
    assert first["resolved"] == [PBX1_IP, 5060]
    backup = session.wait_for(verdict("backup", True), INTERVAL_S)
    assert backup["resolved"] == [PBX2_IP, 5060]  # through SRV
    dns.remove("pbx1.lab.test")
    gone = session.wait_for(verdict("primary", False), INTERVAL_S * 4)
    assert gone["reason"] in {"name does not resolve x3", "name lookup timed out x3"}
    assert gone["resolved"] is None
    down = session.wait_for(
        lambda ln: ln["kind"] == "verdict" and ln["server"] == "primary"
        and ln["reason"] == "name does not resolve x3",
        INTERVAL_S * 4,
    )  # fmt: skip
    dns.set_a("pbx1.lab.test", PBX1_IP)
    back = session.wait_for(verdict("primary", True, after=down["cycle"]), INTERVAL_S * 4)
    assert back["resolved"] == [PBX1_IP, 5060]
    backup_cycles = [v["up"] for v in session.verdicts("backup")]
    assert all(backup_cycles), "the backup never depended on the primary's name"


@pytest.mark.parametrize(
    ("backup_names", "backup_up"),
    [(["pbx2.lab.test"], True), ([PBX2_IP], False), (["sips.lab.test"], False)],
    ids=["srv-target", "ip-only", "domain-only"],
)
def test_tls_by_name_checks_the_name_looked_up_and_through_srv_the_srv_target(
    make_pbx: MakePbx,
    lab_ca: CertAuthority,
    dns: DnsServer,
    start_session: Callable[..., Session],
    backup_names: list[str],
    backup_up: bool,
) -> None:
    # Issue 12: through SRV, the certificate must name the SRV target (the name the SIP
    # stack connects to and verifies), neither its IP nor the domain that was queried.
    make_pbx("pbx1", tls=lab_ca.issue("byname-pbx1", ["pbx1.lab.test"]))
    make_pbx("pbx2", tls=lab_ca.issue(f"byname-pbx2-{backup_names[0]}", backup_names))
    dns.set_a("pbx1.lab.test", PBX1_IP)
    dns.set_a("pbx2.lab.test", PBX2_IP)
    dns.set_srv("_sips._tcp.sips.lab.test", "pbx2.lab.test", TLS_PORT)
    session = start_session(
        "--transport", "tls", "--ca", str(lab_ca.cert), "--primary",
        f"pbx1.lab.test:{TLS_PORT}", "--backup", "sips.lab.test:0", "--cycles", "1",
    )  # fmt: skip
    session.finish(timeout_s=INTERVAL_S * 4)
    [primary] = session.verdicts("primary")
    [backup] = session.verdicts("backup")
    assert (primary["up"], primary["resolved"]) == (True, [PBX1_IP, TLS_PORT])
    assert (backup["up"], backup["resolved"]) == (backup_up, [PBX2_IP, TLS_PORT])
    if not backup_up:
        assert backup["reason"].startswith("TLS certificate rejected: Hostname mismatch")
        assert "'pbx2.lab.test'" in backup["reason"]  # checked against the SRV target


if __name__ == "__main__":
    sys.exit(run_session(sys.argv[1:]))
