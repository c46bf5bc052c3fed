"""WireGuardVpn against two wireguard-go PBX peers in throwaway namespaces (SPEC §2, §6).

Topology (created per module, names `vpt<pid>-*`, removed in teardown even on failure):
    phone  198.51.100.1/30 --veth-- 198.51.100.2/30  pbx1  (wireguard-go, tunnel 198.18.1.1)
    phone  198.51.100.5/30 --veth-- 198.51.100.6/30  pbx2  (wireguard-go, tunnel 198.18.2.1)
Both PBXs also hold 198.18.100.1, the shared `routes` network, and run a UDP echo on
ECHO_PORT that answers with its own name, so a reply says which tunnel carried the packet.
The phone's tunnel is 198.18.0.2/32. The peers' side is configured with the `wg` CLI.
WireGuardVpn runs with its `netns` test hook (wireguard-go under `ip netns exec`, netlink
in the namespace); the crash test runs it in a child process inside the namespace with no
hook at all, as the service does. Waits are polls with deadlines, never sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from phoned.config.settings import VpnPeer, VpnSettings
from phoned.core.events import Server
from phoned.errors import VpnError
from phoned.net.routes import RouteTable
from phoned.net.vpn import WireGuardVpn
from phonelab.netns import netns_socket
from phonelab.procs import poll_until, spawn, stop_process

P, B = Server.PRIMARY, Server.BACKUP
ECHO_PORT = 7007
SHARED_IP = "198.18.100.1"
ROUTES = ("198.18.100.0/24",)
WAIT_S = 5.0
_TAG = f"vpt{os.getpid() % 100000}"
UAPI_DIR = Path("/var/run/wireguard")


def sh(*argv: str) -> str:
    """Run a setup command; fail loudly with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def genkey(path: Path) -> str:
    """Write a fresh private key (mode 0600) to `path`; return its public key."""
    private = sh("wg", "genkey").strip()
    path.write_text(private + "\n")
    path.chmod(0o600)
    return subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass
class PbxPeer:
    """One PBX namespace: its WireGuard endpoint and who it says it is."""

    name: str
    netns: str
    ifname: str
    endpoint: str
    tunnel_ip: str
    allowed_ips: tuple[str, ...]
    public_key: str


class Echo(threading.Thread):
    """UDP echo in a namespace that answers every datagram with its owner's name."""

    def __init__(self, netns: str, name: str) -> None:
        super().__init__(name=f"echo-{name}", daemon=True)
        self.reply = name.encode()
        self.sock = netns_socket(netns)
        self.sock.bind(("0.0.0.0", ECHO_PORT))  # noqa: S104 throwaway namespace
        self.sock.settimeout(0.1)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                _, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.sock.sendto(self.reply, source)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=2)
        self.sock.close()


@dataclass
class Topology:
    """The module's namespaces and peers; `phone_key` is the phone's key file."""

    phone: str
    phone_key: Path
    phone_public: str
    pbx: dict[Server, PbxPeer]


def _plug(phone: str, pbx: str, phone_ip: str, pbx_ip: str, index: int) -> None:
    here, there = f"{_TAG}a{index}", f"{_TAG}b{index}"
    sh("ip", "-n", phone, "link", "add", here, "type", "veth", "peer", "name", there, "netns", pbx)
    sh("ip", "-n", phone, "addr", "add", f"{phone_ip}/30", "dev", here)
    sh("ip", "-n", pbx, "addr", "add", f"{pbx_ip}/30", "dev", there)
    sh("ip", "-n", phone, "link", "set", here, "up")
    sh("ip", "-n", pbx, "link", "set", there, "up")
    sh("ip", "-n", pbx, "link", "set", "lo", "up")


def _pbx_wireguard(peer: PbxPeer, key: Path, phone_public: str) -> subprocess.Popen[bytes]:
    proc = spawn(["wireguard-go", "-f", peer.ifname], netns=peer.netns)
    poll_until((UAPI_DIR / f"{peer.ifname}.sock").exists, timeout_s=WAIT_S)
    sh("ip", "netns", "exec", peer.netns, "wg", "set", peer.ifname, "private-key", str(key),
       "listen-port", "51820", "peer", phone_public, "allowed-ips", "198.18.0.2/32")  # fmt: skip
    for address in (f"{peer.tunnel_ip}/24", f"{SHARED_IP}/32"):
        sh("ip", "-n", peer.netns, "addr", "add", address, "dev", peer.ifname)
    sh("ip", "-n", peer.netns, "link", "set", peer.ifname, "up")
    sh("ip", "-n", peer.netns, "route", "add", "198.18.0.2/32", "dev", peer.ifname)
    return proc


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Phone, pbx1 and pbx2 namespaces with wireguard-go peers and echoes."""
    keys = tmp_path_factory.mktemp("keys")
    names = {"phone": f"{_TAG}-ph", P: f"{_TAG}-p1", B: f"{_TAG}-p2"}
    procs: list[subprocess.Popen[bytes]] = []
    echoes: list[Echo] = []
    try:
        for netns in names.values():
            sh("ip", "netns", "add", netns)
        phone = names["phone"]
        sh("ip", "-n", phone, "link", "set", "lo", "up")
        phone_public = genkey(keys / "phone.key")
        pbx: dict[Server, PbxPeer] = {}
        for index, (server, tunnel) in enumerate(((P, "198.18.1.1"), (B, "198.18.2.1"))):
            phone_ip, pbx_ip = f"198.51.100.{4 * index + 1}", f"198.51.100.{4 * index + 2}"
            _plug(phone, names[server], phone_ip, pbx_ip, index)
            name = f"pbx{index + 1}"
            public = genkey(keys / f"{name}.key")
            peer = PbxPeer(name, names[server], f"{_TAG}{name}", f"{pbx_ip}:51820", tunnel,
                           (f"{tunnel.rsplit('.', 1)[0]}.0/24",), public)  # fmt: skip
            procs.append(_pbx_wireguard(peer, keys / f"{name}.key", phone_public))
            echoes.append(Echo(peer.netns, name))
            echoes[-1].start()
            pbx[server] = peer
        yield Topology(phone, keys / "phone.key", phone_public, pbx)
    finally:
        for echo in echoes:
            echo.stop()
        for proc in procs:
            stop_process(proc)
        for netns in names.values():
            subprocess.run(["ip", "netns", "del", netns], check=False)


def vpn_settings(topo: Topology, **changes: object) -> VpnSettings:
    """`[vpn]` for the phone, both peers; `changes` override fields."""
    peers = {
        role: VpnPeer(endpoint=p.endpoint, public_key=p.public_key, allowed_ips=p.allowed_ips)
        for role, p in (("primary", topo.pbx[P]), ("backup", topo.pbx[B]))
    }
    fields: dict[str, object] = {
        "enabled": True,
        "interface": f"{_TAG}ph",
        "private_key_file": str(topo.phone_key),
        "address": "198.18.0.2/32",
        "routes": ROUTES,
        **peers,
        **changes,
    }
    return VpnSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def vpn(topo: Topology, tmp_path: Path) -> Iterator[WireGuardVpn]:
    """A WireGuardVpn for the phone namespace (not started); stopped after the test."""
    made = WireGuardVpn(vpn_settings(topo), state_dir=str(tmp_path), netns=topo.phone)
    yield made
    made.stop()


def who_answers(topo: Topology, host: str) -> str:
    """Send one datagram from the phone to `host`'s echo; the name in the reply."""
    with netns_socket(topo.phone) as sock:
        sock.settimeout(WAIT_S)
        sock.sendto(b"who", (host, ECHO_PORT))
        data, _ = sock.recvfrom(2048)
    return data.decode()


def wg_allowed_ips(topo: Topology, ifname: str) -> dict[str, set[str]]:
    """`wg show IF allowed-ips` in the phone namespace: public key -> prefixes."""
    out = sh("ip", "netns", "exec", topo.phone, "wg", "show", ifname, "allowed-ips")
    table: dict[str, set[str]] = {}
    for line in out.splitlines():
        key, *nets = line.split()
        table[key] = {n for n in nets if n != "(none)"}
    return table


def latest_handshake(topo: Topology, ifname: str, public_key: str) -> int:
    """`wg show IF latest-handshakes` for one peer: the unix time of its last handshake."""
    out = sh("ip", "netns", "exec", topo.phone, "wg", "show", ifname, "latest-handshakes")
    found = dict(line.split() for line in out.splitlines())
    return int(found[public_key])


def our_routes(topo: Topology) -> list[str]:
    table = RouteTable(netns=topo.phone)
    try:
        return table.ours()
    finally:
        table.close()


def handshakes(vpn: WireGuardVpn) -> dict[str, float | None]:
    """Seconds since each peer's latest handshake (None: none yet), from `status()`."""
    peers = vpn.status()["peers"]
    assert isinstance(peers, dict)
    ages: dict[str, float | None] = {}
    for role, facts in peers.items():
        age = facts["handshake_age_s"]
        assert age is None or isinstance(age, float)
        ages[role] = age
    return ages


def test_start_reaches_each_server_through_its_own_tunnel(
    vpn: WireGuardVpn, topo: Topology
) -> None:
    vpn.start(P)

    assert who_answers(topo, "198.18.1.1") == "pbx1"
    assert who_answers(topo, "198.18.2.1") == "pbx2"
    assert who_answers(topo, SHARED_IP) == "pbx1"
    # keepalive 25 s: both tunnels handshake without any traffic of ours
    poll_until(lambda: all(a is not None for a in handshakes(vpn).values()), timeout_s=WAIT_S)
    assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.2.0/24"]
    with pytest.raises(VpnError, match="already started"):
        vpn.start(B)
    status = vpn.status()
    assert status["backend"] == "wireguard-go"
    assert status["up"] is True
    assert status["alive"] is True
    assert status["active"] == "primary"


def test_point_to_moves_routes_and_keeps_both_tunnels_warm(
    vpn: WireGuardVpn, topo: Topology
) -> None:
    vpn.start(P)
    assert who_answers(topo, SHARED_IP) == "pbx1"
    assert who_answers(topo, "198.18.2.1") == "pbx2"
    before = handshakes(vpn)
    primary_key, backup_key = topo.pbx[P].public_key, topo.pbx[B].public_key

    vpn.point_to(B)

    allowed = wg_allowed_ips(topo, vpn.ifname)
    assert allowed[primary_key] == {"198.18.1.0/24"}
    assert allowed[backup_key] == {"198.18.2.0/24", "198.18.100.0/24"}
    assert who_answers(topo, SHARED_IP) == "pbx2"
    assert who_answers(topo, "198.18.1.1") == "pbx1"  # probes still reach the primary
    after = handshakes(vpn)
    for role in ("primary", "backup"):  # no session dropped: no new handshake needed
        was, now = before[role], after[role]
        assert was is not None
        assert now is not None
        assert now >= was
    switched_ms = vpn.status()["last_switch_ms"]
    assert isinstance(switched_ms, float)
    assert switched_ms < 250  # SPEC §9 budget for everything after the REGISTER

    vpn.point_to(P)

    assert wg_allowed_ips(topo, vpn.ifname)[primary_key] == {"198.18.1.0/24", "198.18.100.0/24"}
    assert who_answers(topo, SHARED_IP) == "pbx1"
    print(f"point_to: to backup {switched_ms:.1f} ms, back {vpn.status()['last_switch_ms']:.1f} ms")


def test_point_to_a_server_without_a_peer_takes_routes_out_of_the_tunnel(
    topo: Topology, tmp_path: Path
) -> None:
    settings = vpn_settings(topo, backup=None)
    vpn = WireGuardVpn(settings, state_dir=str(tmp_path), netns=topo.phone)
    vpn.start(P)
    try:
        assert who_answers(topo, SHARED_IP) == "pbx1"
        vpn.point_to(B)
        assert our_routes(topo) == ["198.18.1.0/24"]
        assert wg_allowed_ips(topo, vpn.ifname)[topo.pbx[P].public_key] == {"198.18.1.0/24"}
        vpn.point_to(P)
        assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24"]
    finally:
        vpn.stop()


def test_reconfigure_applies_peers_and_routes_by_difference(
    vpn: WireGuardVpn, topo: Topology
) -> None:
    """SPEC §7: `[vpn]` changed live: the backup's peer leaves and comes back, `routes`
    grows, the primary's session is never touched; a new address needs a new tunnel."""
    vpn.start(P)
    poll_until(lambda: handshakes(vpn)["primary"] is not None, timeout_s=WAIT_S)
    primary_key, backup_key = topo.pbx[P].public_key, topo.pbx[B].public_key
    before = latest_handshake(topo, vpn.ifname, primary_key)
    # handshakes are stamped in whole seconds: a peer re-created now would handshake anew
    # in a later second, which the check below would see
    poll_until(lambda: time.time() >= before + 1.5, timeout_s=3, interval_s=0.05)

    assert vpn.reconfigure(vpn_settings(topo, backup=None, routes=(*ROUTES, "198.18.101.0/24")))
    allowed = wg_allowed_ips(topo, vpn.ifname)
    assert set(allowed) == {primary_key}
    assert allowed[primary_key] == {"198.18.1.0/24", "198.18.100.0/24", "198.18.101.0/24"}
    assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.101.0/24"]
    assert who_answers(topo, SHARED_IP) == "pbx1"
    assert latest_handshake(topo, vpn.ifname, primary_key) == before  # the session went on

    assert vpn.reconfigure(vpn_settings(topo))
    assert set(wg_allowed_ips(topo, vpn.ifname)) == {primary_key, backup_key}
    assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.2.0/24"]
    assert who_answers(topo, "198.18.2.1") == "pbx2"

    assert not vpn.reconfigure(vpn_settings(topo, address="198.18.0.3/32"))
    assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.2.0/24"]


def test_stop_removes_routes_interface_and_wireguard_go(vpn: WireGuardVpn, topo: Topology) -> None:
    vpn.start(B)
    pid = vpn.status()["wireguard_go_pid"]
    assert isinstance(pid, int)

    started_s = time.monotonic()
    vpn.stop()
    print(f"stop: {(time.monotonic() - started_s) * 1000:.0f} ms")

    assert our_routes(topo) == []
    table = RouteTable(netns=topo.phone)
    assert not table.has_link(vpn.ifname)
    table.close()
    assert not (UAPI_DIR / f"{vpn.ifname}.sock").exists()
    assert not vpn.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    vpn.stop()  # idempotent


def test_alive_turns_false_when_wireguard_go_dies(vpn: WireGuardVpn) -> None:
    vpn.start(P)
    pid = vpn.status()["wireguard_go_pid"]
    assert isinstance(pid, int)
    assert vpn.alive

    os.kill(pid, signal.SIGKILL)

    poll_until(lambda: not vpn.alive, timeout_s=WAIT_S)


def test_world_readable_key_is_refused_and_nothing_is_created(
    vpn: WireGuardVpn, topo: Topology, tmp_path: Path
) -> None:
    key_text = topo.phone_key.read_text().strip()
    topo.phone_key.chmod(0o644)
    try:
        with pytest.raises(VpnError, match=r"mode 0644.*refused.*chmod 600") as caught:
            vpn.start(P)
    finally:
        topo.phone_key.chmod(0o600)
    assert key_text not in str(caught.value)
    assert our_routes(topo) == []
    assert not (UAPI_DIR / f"{vpn.ifname}.sock").exists()


def test_status_never_shows_key_material(vpn: WireGuardVpn, topo: Topology) -> None:
    vpn.start(P)
    poll_until(lambda: all(a is not None for a in handshakes(vpn).values()), timeout_s=WAIT_S)

    text = json.dumps(vpn.status())

    private = topo.phone_key.read_text().strip()
    secrets = [private, topo.phone_public, topo.pbx[P].public_key, topo.pbx[B].public_key]
    secrets += [base64.b64decode(k).hex() for k in list(secrets)]
    assert not [s for s in secrets if s in text]
    assert '"endpoint": "198.51.100.2:51820"' in text


_CRASHER = """
import json, sys
from phoned.core.events import Server
from phoned.config.settings import VpnPeer, VpnSettings
from phoned.net.vpn import WireGuardVpn
raw = json.loads(sys.argv[1])
peers = {r: VpnPeer(**{**raw[r], "allowed_ips": tuple(raw[r]["allowed_ips"])})
         for r in ("primary", "backup")}
settings = VpnSettings(**{**raw, "routes": tuple(raw["routes"]), **peers})
vpn = WireGuardVpn(settings, state_dir=sys.argv[2])
vpn.start(Server.PRIMARY)
print(json.dumps(vpn.status()), flush=True)
sys.stdin.read()
"""


def test_after_kill_9_the_next_start_cleans_stale_routes_and_interface(
    vpn: WireGuardVpn, topo: Topology, tmp_path: Path
) -> None:
    settings = vpn_settings(topo)
    raw = json.dumps({
        **{f: getattr(settings, f) for f in ("enabled", "interface", "private_key_file",
                                             "address", "routes")},
        "primary": vars_of(settings.primary), "backup": vars_of(settings.backup),
    })  # fmt: skip
    argv = ["ip", "netns", "exec", topo.phone, sys.executable, "-c", _CRASHER, raw, str(tmp_path)]
    crashed = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    orphan_pid = 0
    try:
        assert crashed.stdout is not None
        first = json.loads(crashed.stdout.readline())
        orphan_pid = first["wireguard_go_pid"]
        crashed.kill()  # SIGKILL: no clean-up at all
        crashed.wait(timeout=WAIT_S)
        assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.2.0/24"]
        os.kill(orphan_pid, 0)  # the orphan still holds the interface

        vpn.start(B)

        assert our_routes(topo) == ["198.18.1.0/24", "198.18.100.0/24", "198.18.2.0/24"]
        assert who_answers(topo, SHARED_IP) == "pbx2"
        poll_until(lambda: not _pid_alive(orphan_pid), timeout_s=WAIT_S)
    finally:
        if crashed.poll() is None:
            crashed.kill()
        if orphan_pid and _pid_alive(orphan_pid):
            os.kill(orphan_pid, signal.SIGKILL)


def vars_of(peer: VpnPeer | None) -> dict[str, object]:
    assert peer is not None
    return {"endpoint": peer.endpoint, "public_key": peer.public_key,
            "allowed_ips": list(peer.allowed_ips)}  # fmt: skip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of a reaped parent is reparented to init and reaped there
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
