"""Lab network namespaces (SPEC §8).

Owns: creating and deleting the lab's namespaces (`<prefix>-phone`, `<prefix>-pbx1`,
`<prefix>-pbx2`, `<prefix>-peer` (call peers), `<prefix>-dns` (the phone's resolver),
`<prefix>-prov` (the provisioning server) and `<prefix>-sw` holding the bridge that joins
them), the proxies' secondary addresses, the
phone's `/etc/netns/<phone-ns>/resolv.conf`, running commands in a namespace and opening
sockets in one. Process helpers live in `phonelab.procs` and are re-exported here.
Must not touch: namespaces, tables or processes it did not create (stale clean-up only
removes namespaces whose creating PID is dead), and the service's own code paths: the
service never shells out, only this test tooling does.

Running Python "inside" a namespace: `call_in_netns(ns, fn)` runs `fn` on a dedicated,
throwaway thread that has `setns(2)`-ed into the namespace (setns changes only the calling
thread, and Python 3.11 has no `os.setns`, hence ctypes). A socket created there stays in
that namespace for its whole life, whichever thread uses it later: `netns_socket()` is
the usual entry point. Whole programs (Kamailio, sipp, tcpdump, the phone service) run
under `ip netns exec`, which exec()s, so the PID we hold is the program's own. Only those
see the lab resolver: `ip netns exec` bind-mounts `/etc/netns/<ns>/resolv.conf`, a thread
that merely setns()-ed keeps the host's /etc/resolv.conf.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from phonelab.errors import LabError
from phonelab.procs import (
    ns_argv,
    poll_until,
    signal_group,
    spawn,
    stop_process,
)

__all__ = [
    "DNS_IP", "PBX1_IP", "PBX2_IP", "PEER_IP", "PHONE_IP", "PHONE_MAC", "PROV_IP",
    "PROXY1_IP", "PROXY2_IP",
    "Lab",
    "call_in_netns", "cleanup_stale", "delete_netns", "list_netns", "netns_socket",
    "ns_argv", "poll_until", "port_in_use", "signal_group", "spawn", "stop_process",
]  # fmt: skip

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000

#: Addresses of the lab (RFC 5737 TEST-NET-1), one /24 on one bridge.
PHONE_IP = "192.0.2.2"
PBX1_IP = "192.0.2.11"
PBX2_IP = "192.0.2.12"
#: Outbound proxies: secondary addresses of the pbx1 / pbx2 hosts.
PROXY1_IP = "192.0.2.21"
PROXY2_IP = "192.0.2.22"
#: Call peers (sipp UAS/UAC), trusted by the PBXs.
PEER_IP = "192.0.2.30"
#: The phone's DNS server (dnsmasq).
DNS_IP = "192.0.2.53"
#: The phone's MAC (a Raspberry Pi's OUI): its provisioning file is `<mac>.toml` (SPEC §7).
PHONE_MAC = "b8:27:eb:12:ab:34"
#: The provisioning server (the endpoint manager's HTTP/HTTPS side, `phonelab.nginx`).
PROV_IP = "192.0.2.40"
PREFIX_LEN = 24
_ROLES = {
    "phone": PHONE_IP, "pbx1": PBX1_IP, "pbx2": PBX2_IP, "peer": PEER_IP, "dns": DNS_IP,
    "prov": PROV_IP,
}  # fmt: skip
_SECONDARY = {"pbx1": PROXY1_IP, "pbx2": PROXY2_IP}
NETNS_ETC = Path("/etc/netns")


# --------------------------------------------------------------------- in-namespace calls


def _enter_netns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` on a throwaway thread inside `netns` and return its result.

    With `netns` None, `fn` runs on the calling thread. Exceptions propagate.
    """
    if netns is None:
        return fn()
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            _enter_netns(netns)
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def netns_socket(
    netns: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
) -> socket.socket:
    """A new socket living in `netns` (usable from any thread afterwards)."""
    return call_in_netns(netns, lambda: socket.socket(family, kind))


def port_in_use(netns: str | None, host: str, port: int) -> bool:
    """Whether something already holds UDP `host:port` in `netns`.

    Kamailio binds with SO_REUSEADDR, so a second one on the same address starts silently
    and both answer (STACK-NOTES); a plain bind without it fails instead, which we use here.
    """
    with netns_socket(netns) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------- the lab


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"lab: ip {' '.join(args)} failed: {result.stderr.strip()}")


def list_netns() -> list[str]:
    """Names of the named network namespaces on this machine."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(entry.name for entry in NETNS_DIR.iterdir())


def _kill_netns_pids(netns: str) -> None:
    """Kill processes left inside one of *our* namespaces (only ever ones we started)."""
    out = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    ).stdout
    for pid in (int(word) for word in out.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_netns(netns: str) -> None:
    """Kill what runs in `netns` and delete it (silently when already gone)."""
    if netns in list_netns():
        _kill_netns_pids(netns)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    # Per-namespace /etc files (the phone's resolv.conf) go with their namespace.
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix_glob: str = "phl*") -> list[str]:
    """Delete lab namespaces matching `prefix_glob-*` left by a crashed run.

    A namespace is stale when its prefix embeds a PID (`phl<pid>...`) that is no longer
    running; namespaces of live runs (other sessions, other helpers) are left alone.

    Returns:
        The names deleted.
    """
    deleted = []
    for name in list_netns():
        prefix = name.rsplit("-", 1)[0]
        match = re.match(r"[a-z]+(\d+)", prefix)
        if not fnmatch.fnmatch(prefix, prefix_glob) or match is None:
            continue
        if _pid_alive(int(match.group(1))):
            continue
        delete_netns(name)
        deleted.append(name)
    return deleted


class Lab:
    """Phone, two PBX hosts, a call peer, a DNS host, a provisioning server and a switch.

    All hosts share 192.0.2.0/24 through a bridge in `<prefix>-sw`; each host has `lo` up
    and its end of a veth pair named `eth0`. pbx1 and pbx2 also hold their proxy's address
    (PROXY1_IP, PROXY2_IP). prov (PROV_IP) serves provisioning files. The phone's resolver
    is DNS_IP (`/etc/netns/<phone>/resolv.conf`, seen by programs started with
    `ip netns exec`). Use as a context manager, or call `setup()` and `teardown()`
    (teardown is idempotent and always deletes everything).
    """

    _counter = 0

    def __init__(self, prefix: str | None = None, *, icmp_ratelimit_ms: int | None = None) -> None:
        """Args:
        prefix: namespace name prefix, short and unique (default `phl<pid>n<k>`).
        icmp_ratelimit_ms: `net.ipv4.icmp_ratelimit` in the PBX namespaces; None keeps
            the kernel's default (1000: a burst of about 6 ICMP errors, then 1 per s).
        """
        Lab._counter += 1
        self.prefix = prefix or f"phl{os.getpid()}n{Lab._counter}"
        self.icmp_ratelimit_ms = icmp_ratelimit_ms
        self.phone = f"{self.prefix}-phone"
        self.pbx1 = f"{self.prefix}-pbx1"
        self.pbx2 = f"{self.prefix}-pbx2"
        self.peer = f"{self.prefix}-peer"
        self.dns = f"{self.prefix}-dns"
        self.prov = f"{self.prefix}-prov"
        self.switch = f"{self.prefix}-sw"

    def ns(self, role: str) -> str:
        """The namespace name of `role` (phone, pbx1, pbx2, peer, dns, prov, sw)."""
        return f"{self.prefix}-{role}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab owns."""
        return [self.phone, self.pbx1, self.pbx2, self.peer, self.dns, self.prov, self.switch]

    @property
    def resolv_conf(self) -> Path:
        """The phone's resolv.conf as `ip netns exec` mounts it."""
        return NETNS_ETC / self.phone / "resolv.conf"

    def setup(self) -> Lab:
        """Create the namespaces, bridge, veth pairs and addresses.

        Raises:
            LabError: a step failed (what was created is deleted again).
        """
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def _build(self) -> None:
        for name in self.namespaces:
            _ip("netns", "add", name)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for ns in self.namespaces:
            _ip("-n", ns, "link", "set", "lo", "up")
        for role, address in _ROLES.items():
            self._plug(role, address)
        for role, address in _SECONDARY.items():
            _ip("-n", self.ns(role), "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        self.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text(f"nameserver {DNS_IP}\noptions timeout:1 attempts:1\n")

    def _plug(self, role: str, address: str) -> None:
        host = self.ns(role)
        _ip("-n", self.switch, "link", "add", role, "type", "veth", "peer", "eth0", "netns", host)
        _ip("-n", self.switch, "link", "set", role, "master", "br0", "up")
        _ip("-n", host, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        if role == "phone":
            _ip("-n", host, "link", "set", "eth0", "address", PHONE_MAC)
        _ip("-n", host, "link", "set", "eth0", "up")
        # Strict reverse-path filtering must not judge our single flat subnet.
        self.sysctl(role, "net.ipv4.conf.all.rp_filter", "0")
        self.sysctl(role, "net.ipv4.conf.eth0.rp_filter", "0")
        if role.startswith("pbx") and self.icmp_ratelimit_ms is not None:
            self.sysctl(role, "net.ipv4.icmp_ratelimit", str(self.icmp_ratelimit_ms))

    def sysctl(self, role: str, key: str, value: str) -> None:
        """Set `key` to `value` inside the namespace of `role`."""
        path = Path("/proc/sys") / key.replace(".", "/")
        call_in_netns(self.ns(role), lambda: path.write_text(value))

    def teardown(self) -> None:
        """Kill what runs in the lab's namespaces and delete them all."""
        for name in self.namespaces:
            delete_netns(name)

    def run(
        self, ns: str, argv: Sequence[str], *, timeout_s: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion inside namespace `ns` (a full name or a role).

        Raises:
            LabError: `check` and the command failed or timed out.
        """
        full = ns if ns in self.namespaces else self.ns(ns)
        try:
            result = subprocess.run(
                ns_argv(full, argv), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"lab: {argv[0]} in {full} timed out after {timeout_s} s") from exc
        if check and result.returncode != 0:
            raise LabError(f"lab: {' '.join(argv)} in {full} -> {result.stderr.strip()}")
        return result

    def popen(
        self,
        ns: str,
        argv: Sequence[str],
        **popen_kw: Any,  # noqa: ANN401 - Popen's own keywords, passed through
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside namespace `ns` (full name or role); the caller stops it."""
        full = ns if ns in self.namespaces else self.ns(ns)
        proc: subprocess.Popen[bytes] = subprocess.Popen(ns_argv(full, argv), **popen_kw)
        return proc

    def __enter__(self) -> Lab:
        return self.setup()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()
