"""The lab's DNS server: dnsmasq in its own namespace, A and SRV records on demand (SPEC §8).

Owns: one dnsmasq in the foreground (its own process group), its generated config file
under `workdir`, and the records it serves. Every change rewrites the config and restarts
dnsmasq (it re-reads neither `host-record` nor `srv-host` on SIGHUP); the call returns only
once the new process answers, so a query after `set_a()`/`remove()` sees the new data.
Must not touch: the host's resolver, other dnsmasq processes (stopped by PID only).

Names are authoritative here (`local=/<name>/` for every name ever set, and no upstream
server): a name that was removed answers NXDOMAIN at once instead of timing out.
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from phonelab.errors import LabError
from phonelab.netns import netns_socket
from phonelab.procs import LabProcess

DNS_PORT = 53
_RCODE_MASK = 0x000F


@dataclass(frozen=True)
class SrvRecord:
    """One SRV record (RFC 2782)."""

    service: str  #: e.g. `_sip._udp.pbx.lab.test`
    target: str  #: host name the record points to (needs its own A record)
    port: int
    priority: int = 0
    weight: int = 10


def render_conf(
    address: str, a_records: dict[str, str], srv: list[SrvRecord], names: set[str]
) -> str:
    """The dnsmasq config serving exactly these records, authoritative for `names`."""
    lines = [
        "no-resolv", "no-hosts", "no-poll", "bind-interfaces", f"listen-address={address}",
        f"port={DNS_PORT}", "cache-size=0", "log-queries", "user=root", "group=root",
    ]  # fmt: skip
    lines += [f"local=/{name}/" for name in sorted(names)]
    lines += [f"host-record={name},{ip},0" for name, ip in sorted(a_records.items())]
    lines += [
        f"srv-host={r.service},{r.target},{r.port},{r.priority},{r.weight}"
        for r in sorted(srv, key=lambda r: (r.service, r.priority, r.target))
    ]
    return "\n".join(lines) + "\n"


def probe_query(name: str) -> bytes:
    """A minimal DNS query (type A, recursion desired) for `name`."""
    header = struct.pack("!HHHHHH", uuid.uuid4().int & 0xFFFF, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


class DnsServer(LabProcess):
    """dnsmasq on `host:53` inside `netns`, serving the records set through this object."""

    def __init__(self, netns: str | None, host: str, *, workdir: Path) -> None:
        """Args:
        netns: namespace to run in (the lab's `dns` role); None for the current one.
        host: address to listen on (the lab's DNS_IP).
        workdir: where `dnsmasq.conf` and its log go (must exist).
        """
        self.netns, self.host = netns, host
        self.workdir = Path(workdir)
        self.conf_path = self.workdir / "dnsmasq.conf"
        self.log_path = self.workdir / "dnsmasq.log"
        self._a: dict[str, str] = {}
        self._srv: list[SrvRecord] = []
        self._names: set[str] = set()

    def start(self, timeout_s: float = 5.0) -> None:
        """Write the config, start dnsmasq and wait until it answers a query.

        Raises:
            LabError: dnsmasq exited or did not answer in time.
        """
        self.conf_path.write_text(render_conf(self.host, self._a, self._srv, self._names))
        argv = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--pid-file="]
        argv += [f"--conf-file={self.conf_path}"]
        self._spawn(argv)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with netns_socket(self.netns) as sock:
            sock.connect((self.host, DNS_PORT))
            while time.monotonic() < deadline:
                if not self.running:
                    raise LabError(f"dns: dnsmasq exited at start: {self._tail()}")
                try:
                    sock.send(probe_query("lab-ready.invalid"))
                    sock.settimeout(0.05)
                    if sock.recv(512):
                        return
                except (TimeoutError, ConnectionRefusedError):
                    time.sleep(0.005)  # not bound yet: pace the next try
        raise LabError(f"dns: dnsmasq did not answer within {timeout_s} s: {self._tail()}")

    def _apply(self) -> None:
        if self.running:
            self.stop()  # dnsmasq re-reads neither A nor SRV records on SIGHUP
            self.start()

    def set_a(self, name: str, ip: str) -> None:
        """Serve `name` -> `ip` (replacing any earlier address of `name`)."""
        self._a[name] = ip
        self._names.add(name)
        self._apply()

    def set_srv(
        self, service: str, target: str, port: int, priority: int = 0, weight: int = 10
    ) -> None:
        """Add an SRV record, e.g. `set_srv("_sip._udp.pbx.lab.test", "pbx1.lab.test", 5060)`.

        Records of one `service` accumulate (set several for priorities); `remove(service)`
        drops them all.
        """
        self._srv.append(SrvRecord(service, target, port, priority, weight))
        self._names.add(service)
        self._apply()

    def remove(self, name: str) -> None:
        """Stop serving `name` (A and SRV records): queries get NXDOMAIN."""
        self._a.pop(name, None)
        self._srv = [r for r in self._srv if r.service != name]
        self._apply()


def resolve_status(netns: str | None, server: str, name: str, timeout_s: float = 1.0) -> int:
    """The RCODE the server gives for an A query of `name` (0 ok, 3 NXDOMAIN)."""
    with netns_socket(netns) as sock:
        sock.connect((server, DNS_PORT))
        sock.settimeout(timeout_s)
        sock.send(probe_query(name))
        reply = sock.recv(512)
    flags: int = struct.unpack("!H", reply[2:4])[0]
    return flags & _RCODE_MASK
