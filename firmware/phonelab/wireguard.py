"""The lab's WireGuard endpoints: `wireguard-go` in a namespace, set up with `wg`/`ip` (SPEC §6).

Owns: one userspace WireGuard interface per `WireGuardEndpoint` (a `wireguard-go -f`
process in its own process group, stopped by PID), its key pair files (mode 0600), its
tunnel address, its peers and the routes to them (as `wg-quick` would: one route per
allowed IP through the interface), and optionally the `routes` network's shared address
on the namespace's loopback. `make_keypair()` makes the phone's key pair.
Must not touch: other interfaces, other `wireguard-go` processes, or the service's VPN
code: this is test tooling, which may shell out (`wg`, `ip`); the service never does.

Facts this relies on (measured here): there is no kernel WireGuard module, but
`wireguard-go -f IFNAME` runs inside a namespace under `ip netns exec` and exits, removing
its interface and UAPI socket, on SIGTERM. The UAPI socket `/var/run/wireguard/IFNAME.sock`
is a file outside the network namespace, shared by every namespace on the machine: interface
names must be unique machine-wide, hence `unique_ifname()`.
Nothing here ever logs or returns a private key; only file paths.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from phonelab.apps import AppServer
from phonelab.errors import LabError
from phonelab.netns import PBX1_IP, PBX2_IP, Lab
from phonelab.phone import SettingsTables, TomlValue
from phonelab.procs import LabProcess, ns_argv, poll_until

__all__ = [
    "BACKUP_TUNNEL_CIDR", "PHONE_TUNNEL_CIDR", "PHONE_TUNNEL_IP", "PRIMARY_TUNNEL_CIDR",
    "SHARED_IP", "SHARED_NET", "UAPI_DIR", "WG_PORT", "VpnLab", "WireGuardEndpoint",
    "make_keypair", "open_vpn_lab", "unique_ifname",
]  # fmt: skip

#: Where wireguard-go puts its UAPI sockets (one per interface, shared by all namespaces).
UAPI_DIR = Path("/var/run/wireguard")
WG_PORT = 51820
#: The phone's tunnel address (SPEC §6 example) and its /32.
PHONE_TUNNEL_IP = "198.18.0.2"
PHONE_TUNNEL_CIDR = f"{PHONE_TUNNEL_IP}/32"
#: Each PBX's own tunnel address and network (its SIP and apps live there).
PRIMARY_TUNNEL_CIDR = "198.18.1.1/24"
BACKUP_TUNNEL_CIDR = "198.18.2.1/24"
#: The SPEC §6 `routes` network both PBXs serve, and the address each holds on `lo`.
SHARED_NET = "198.18.100.0/24"
SHARED_IP = "198.18.100.1"
_IFNAME_MAX = 15
_ifname_counter = itertools.count(1)


def unique_ifname(tag: str) -> str:
    """An interface name unique to this process: `wl<pid>n<k><tag>`, at most 15 characters.

    Raises:
        LabError: the name would be longer than Linux allows (shorten `tag`).
    """
    name = f"wl{os.getpid()}n{next(_ifname_counter)}{tag}"
    if len(name) > _IFNAME_MAX:
        raise LabError(f"wireguard: interface name {name!r} is over {_IFNAME_MAX} characters")
    return name


def _run(netns: str | None, argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run a tool to completion in `netns`; its stdout. Private keys only travel by stdin."""
    try:
        done = subprocess.run(
            ns_argv(netns, argv), input=stdin, capture_output=True, text=True, timeout=10,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"wireguard: {' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"wireguard: {' '.join(argv)} -> {done.stderr.strip()}")
    return done.stdout


def make_keypair(workdir: Path, name: str = "phone") -> tuple[Path, str]:
    """A fresh WireGuard key pair: the private key in `workdir/<name>.key` (mode 0600).

    Returns:
        (path of the private key file, base64 public key).

    Raises:
        LabError: `wg` failed or the file already exists.
    """
    private = _run(None, ["wg", "genkey"])
    path = Path(workdir) / f"{name}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise LabError(f"wireguard: cannot create key file {path}: {exc}") from exc
    with os.fdopen(fd, "w") as out:
        out.write(private)
    os.chmod(path, 0o600)  # whatever the umask said
    public = _run(None, ["wg", "pubkey"], stdin=private).strip()
    return path, public


class WireGuardEndpoint(LabProcess):
    """A `wireguard-go` interface in `netns` with an address, a listen port and peers.

    Lab PBXs use one each (pbx1 198.18.1.1/24, pbx2 198.18.2.1/24, each with the phone as
    its peer); tests use one in the phone namespace as a stand-in for the service's VPN.
    Use as a context manager, or `start()` and `stop()` (idempotent).
    """

    def __init__(
        self,
        name: str,
        netns: str | None,
        *,
        host: str,
        tunnel_cidr: str,
        workdir: Path,
        listen_port: int = WG_PORT,
        ifname: str | None = None,
        private_key_file: Path | None = None,
        loopback_cidr: str | None = None,
    ) -> None:
        """Args:
        name: label for files and errors (`<workdir>/<name>.key`, `<name>-wg.log`).
        netns: namespace to run in; None for the current one.
        host: this host's address on the underlay, for `endpoint` (e.g. 192.0.2.11).
        tunnel_cidr: address and prefix on the interface (e.g. "198.18.1.1/24").
        workdir: where the key and the log go (must exist).
        listen_port: UDP port WireGuard listens on.
        ifname: interface name, unique machine-wide (default `unique_ifname(...)`).
        private_key_file: an existing key (mode 0600) instead of a generated one.
        loopback_cidr: an extra address put on `lo` while running (the shared network's
            `SHARED_IP/32`), removed at stop.
        """
        self.name, self.netns, self.host = name, netns, host
        self.tunnel_cidr, self.listen_port = tunnel_cidr, listen_port
        self.workdir = Path(workdir)
        self.ifname = ifname or unique_ifname(name[:3])
        self.loopback_cidr = loopback_cidr
        self.key_path: Path | None = private_key_file
        self.public_key = ""
        self.log_path = self.workdir / f"{name}-wg.log"
        self._lo_added = False

    @property
    def endpoint(self) -> str:
        """`host:port` the other side puts in its peer's `endpoint`."""
        return f"{self.host}:{self.listen_port}"

    @property
    def tunnel_ip(self) -> str:
        """The interface's own tunnel address, without the prefix length."""
        return self.tunnel_cidr.split("/", 1)[0]

    @property
    def uapi_socket(self) -> Path:
        """The interface's UAPI socket (exists while wireguard-go runs)."""
        return UAPI_DIR / f"{self.ifname}.sock"

    def start(self, timeout_s: float = 5.0) -> None:
        """Start wireguard-go, wait for its UAPI socket, then key, address, port and link up.

        Raises:
            LabError: the interface name is taken, wireguard-go exited, or a step failed.
        """
        if self.running:
            raise LabError(f"wireguard {self.name}: already running (pid {self._proc_pid()})")
        if self.key_path is None:
            self.key_path, self.public_key = make_keypair(self.workdir, self.name)
        else:
            key = self.key_path.read_text()
            self.public_key = _run(None, ["wg", "pubkey"], stdin=key).strip()
        self._spawn(["wireguard-go", "-f", self.ifname])
        try:
            self._wait_uapi(timeout_s)
            self._configure()
        except BaseException:
            self.stop()
            raise

    def _proc_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _wait_uapi(self, timeout_s: float) -> None:
        def ready() -> bool:
            if not self.running:
                raise LabError(f"wireguard {self.name}: wireguard-go exited: {self._tail()}")
            return self.uapi_socket.is_socket()

        try:
            poll_until(ready, timeout_s=timeout_s, interval_s=0.01)
        except TimeoutError as exc:
            raise LabError(f"wireguard {self.name}: no UAPI socket in {timeout_s} s") from exc

    def _configure(self) -> None:
        wg = ["wg", "set", self.ifname, "private-key", str(self.key_path)]
        _run(self.netns, [*wg, "listen-port", str(self.listen_port)])
        _run(self.netns, ["ip", "addr", "add", self.tunnel_cidr, "dev", self.ifname])
        _run(self.netns, ["ip", "link", "set", self.ifname, "up"])
        if self.loopback_cidr is not None:
            _run(self.netns, ["ip", "addr", "replace", self.loopback_cidr, "dev", "lo"])
            self._lo_added = True

    def add_peer(
        self,
        public_key: str,
        allowed_ips: Sequence[str],
        *,
        endpoint: str | None = None,
        keepalive_s: int | None = None,
    ) -> None:
        """Add or update a peer and route its `allowed_ips` through this interface.

        Setting an allowed IP that another peer holds moves it to this peer (WireGuard
        allows each network on one peer only); the route through the interface stays.

        Args:
            public_key: the peer's base64 public key.
            allowed_ips: networks the peer may send from and is sent to; replaces the old.
            endpoint: the peer's `host:port`; None waits for the peer to call in.
            keepalive_s: persistent keepalive; also makes the handshake start at once.
        """
        argv = ["wg", "set", self.ifname, "peer", public_key]
        argv += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            argv += ["endpoint", endpoint]
        if keepalive_s is not None:
            argv += ["persistent-keepalive", str(keepalive_s)]
        _run(self.netns, argv)
        for network in allowed_ips:
            _run(self.netns, ["ip", "route", "replace", network, "dev", self.ifname])

    def latest_handshakes(self) -> dict[str, int]:
        """Public key -> time of the latest handshake (epoch s; 0 = none yet)."""
        out = _run(self.netns, ["wg", "show", self.ifname, "latest-handshakes"])
        pairs = (line.split("\t") for line in out.splitlines() if line.strip())
        return {key: int(stamp) for key, stamp in pairs}

    def allowed_ips(self) -> dict[str, list[str]]:
        """Public key -> the allowed IPs WireGuard holds for that peer now."""
        out = _run(self.netns, ["wg", "show", self.ifname, "allowed-ips"])
        pairs = (line.split("\t") for line in out.splitlines() if line.strip())
        return {key: [] if ips == "(none)" else ips.split() for key, ips in pairs}

    def wait_handshake(self, public_key: str, timeout_s: float = 5.0) -> int:
        """Wait until a handshake with `public_key` has completed; its time (epoch s).

        Raises:
            LabError: no handshake in time.
        """
        try:
            return poll_until(
                lambda: self.latest_handshakes().get(public_key, 0),
                timeout_s=timeout_s,
                interval_s=0.02,
            )
        except TimeoutError as exc:
            raise LabError(f"wireguard {self.name}: no handshake in {timeout_s} s") from exc

    def stop(self, timeout_s: float = 3.0) -> int | None:
        """Remove the loopback address, stop wireguard-go by PID; idempotent.

        Returns:
            wireguard-go's exit status, or None when it was not started.
        """
        if self._lo_added and self.loopback_cidr is not None:
            self._lo_added = False
            # The namespace may be gone already (lab torn down first): nothing to remove.
            with contextlib.suppress(LabError):
                _run(self.netns, ["ip", "addr", "del", self.loopback_cidr, "dev", "lo"])
        return self._stop_child(timeout_s)


# --------------------------------------------------------------------- the VPN lab


@dataclass(frozen=True)
class VpnLab:
    """Both PBXs' WireGuard endpoints and app servers, and the phone's key (SPEC §6).

    pbx1: wg 198.18.1.1/24 on 192.0.2.11:51820, apps on 198.18.1.1:80 answering "pbx1 ...";
    pbx2: wg 198.18.2.1/24 on 192.0.2.12:51820, apps answering "pbx2 ...". Each holds
    SHARED_IP on `lo` (its apps answer there too) and has the phone (198.18.0.2/32, key
    `phone_public_key`) as its one peer. Nothing runs on the phone side.
    """

    primary: WireGuardEndpoint
    backup: WireGuardEndpoint
    primary_apps: AppServer
    backup_apps: AppServer
    phone_key_file: Path  #: the phone's private key, mode 0600
    phone_public_key: str
    phone_ifname: str  #: a machine-wide unique name for the phone's interface

    @property
    def primary_host(self) -> str:
        """The primary PBX's tunnel address (its SIP and apps): 198.18.1.1."""
        return self.primary.tunnel_ip

    @property
    def backup_host(self) -> str:
        """The backup PBX's tunnel address: 198.18.2.1."""
        return self.backup.tunnel_ip

    def settings_tables(self, routes: Sequence[str] = (SHARED_NET,)) -> SettingsTables:
        """`[vpn]`, `[vpn.primary]`, `[vpn.backup]` for `write_config(..., settings=...)`."""
        return {
            "vpn": {
                "enabled": True,
                "interface": self.phone_ifname,
                "private_key_file": str(self.phone_key_file),
                "address": PHONE_TUNNEL_CIDR,
                "routes": list(routes),
            },
            "vpn.primary": _peer_table(self.primary),
            "vpn.backup": _peer_table(self.backup),
        }


def _peer_table(endpoint: WireGuardEndpoint) -> dict[str, TomlValue]:
    network = ipaddress.ip_interface(endpoint.tunnel_cidr).network
    return {
        "endpoint": endpoint.endpoint,
        "public_key": endpoint.public_key,
        "allowed_ips": [str(network)],
    }


@contextlib.contextmanager
def open_vpn_lab(lab: Lab, workdir: Path, *, apps_port: int = 80) -> Iterator[VpnLab]:
    """Start the VPN lab in `lab`'s pbx1/pbx2 namespaces; everything stops on exit."""
    phone_key, phone_public = make_keypair(workdir, "phone-wg")
    with contextlib.ExitStack() as stack:
        ends = []
        for role, host, cidr in (("pbx1", PBX1_IP, PRIMARY_TUNNEL_CIDR),
                                 ("pbx2", PBX2_IP, BACKUP_TUNNEL_CIDR)):  # fmt: skip
            end = WireGuardEndpoint(
                role, lab.ns(role), host=host, tunnel_cidr=cidr, workdir=workdir,
                loopback_cidr=f"{SHARED_IP}/32",
            )  # fmt: skip
            stack.enter_context(end)
            end.add_peer(phone_public, [PHONE_TUNNEL_CIDR])
            apps = AppServer(role, lab.ns(role), end.tunnel_ip, apps_port, workdir=workdir,
                             also=[SHARED_IP])  # fmt: skip
            ends.append((end, stack.enter_context(apps)))
        (primary, primary_apps), (backup, backup_apps) = ends
        yield VpnLab(
            primary, backup, primary_apps, backup_apps, phone_key, phone_public,
            unique_ifname("ph"),
        )  # fmt: skip
