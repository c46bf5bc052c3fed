"""The phone's WireGuard tunnel to both PBXs and the routes that follow the active one (SPEC §6).

Owns: the wireguard_tools devices and configs; the `[vpn] interface` (kernel WireGuard
created over netlink where the kernel has it, else a `wireguard-go -f` child it starts,
watches and stops), its private key once read (`vpn_inputs` reads and checks the key file
and resolves the endpoints), both peers, and which peer carries `[vpn] routes`.
Rule 1: ONE interface, BOTH peers configured at all times, each with its own allowed_ips,
so each server is probed through its own tunnel and both stay warm (keepalive 25 s).
WireGuard picks a packet's peer by allowed_ips: "routes move to the backup" means the
`routes` prefixes leave the primary's allowed_ips and join the backup's.
Rule 2: configuration is declarative: the wanted config is built from settings and only
the difference is applied. On the UAPI socket that takes `WarmUapiDevice`, because
wireguard-tools' own UAPI `set_config` sends `replace_peers=true`, which drops every
session (measured: the handshake and counters reset, a new handshake starts).
Rule 3: nothing secret leaves this module: keys are never logged, put in a message or in
`status()`.
Must not touch: kernel routes and addresses directly (`routes` does that, marked with
our protocol number), SIP, the failover decision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from wireguard_tools import WireguardConfig, WireguardDevice, WireguardKey, WireguardPeer
from wireguard_tools.wireguard_netlink import WireguardNetlinkDevice
from wireguard_tools.wireguard_uapi import WG_UAPI_SOCKET_DIR

from phoned.config.settings import VpnPeer, VpnSettings
from phoned.core.events import Server
from phoned.errors import VpnError
from phoned.net.routes import RouteError, RouteTable
from phoned.net.vpn_inputs import parse_endpoint, read_private_key
from phoned.net.wireguard_go import WIREGUARD_GO, WarmUapiDevice, WireguardGoProcess, wait_for

log = logging.getLogger(__name__)

#: SPEC §6: both tunnels stay warm; 25 s is WireGuard's advice for NAT bindings.
KEEPALIVE_S = 25
#: WireGuard's REJECT_AFTER_TIME: a session older than this carries nothing any more.
HANDSHAKE_STALE_S = 180
_GONE_TIMEOUT_S = 3.0  # measured: an orphan wireguard-go exits ~1.7 s after its link goes


class WireGuardVpn:
    """The `[vpn]` tunnel: one interface, both PBX peers, `routes` on the active one.

    Thread-safe: `status()` may come from the control thread while the supervisor moves
    the routes.

    Args:
        settings: `[vpn]`; `primary` must be set.
        state_dir: `[service] state_dir`; wireguard-go's own log goes there.
        netns: tests only: act in this named network namespace (wireguard-go runs under
            `ip netns exec`, kernel WireGuard is not tried).
    """

    def __init__(self, settings: VpnSettings, *, state_dir: str, netns: str | None = None) -> None:
        if settings.primary is None:
            raise VpnError("vpn: [vpn.primary] is required when the VPN is enabled")
        self._settings = settings
        self._state_dir = Path(state_dir)
        self._netns = netns
        self._lock = threading.Lock()
        self._routes: RouteTable | None = None
        self._device: WireguardDevice | None = None
        self._process: WireguardGoProcess | None = None
        self._backend = ""
        self._key: WireguardKey | None = None
        self._endpoints: dict[Server, tuple[str, int]] = {}
        self._active: Server | None = None
        self._last_switch_ms: float | None = None

    @property
    def ifname(self) -> str:
        """The tunnel interface's name."""
        return self._settings.interface

    @property
    def alive(self) -> bool:
        """False once started wireguard-go has died (the supervisor then exits 1)."""
        if self._backend == "kernel":
            return True
        return self._process is not None and self._process.alive

    def _peers(self) -> dict[Server, VpnPeer]:
        pairs = ((Server.PRIMARY, self._settings.primary), (Server.BACKUP, self._settings.backup))
        return {server: peer for server, peer in pairs if peer is not None}

    def start(self, active: Server) -> None:
        """Create and configure the tunnel with `routes` on `active`'s peer.

        Stale state of a crashed run goes first: every route with our protocol and an
        interface of the same name.

        Raises:
            VpnError: bad key file (e.g. mode 0644), unresolvable endpoint, no
                wireguard-go, or netlink/UAPI refused; what was set up is undone.
        """
        with self._lock:
            if self._routes is not None:
                raise VpnError(f"vpn: {self.ifname} is already started; stop() it first")
            self._key = read_private_key(self._settings.private_key_file)
            self._endpoints = {s: parse_endpoint(p.endpoint) for s, p in self._peers().items()}
            try:
                self._start(active)
            except (VpnError, RouteError) as exc:
                self._teardown()
                raise VpnError(f"vpn: cannot start {self.ifname}: {exc}") from exc

    def _start(self, active: Server) -> None:
        self._routes = RouteTable(netns=self._netns)
        stale_routes = self._routes.remove_ours()
        stale_link = self._remove_stale_interface(self._routes)
        self._backend = self._create_interface(self._routes)
        self._device = self._open_device()
        self._set_config(self._config(active))
        self._routes.add_address(self.ifname, self._settings.address)
        self._routes.link_up(self.ifname)
        self._routes.replace(self._kernel_prefixes(active), self.ifname)
        self._active = active
        log.info(
            "vpn: %s up (%s) address %s, peers %s, routes %s on %s; stale: %d routes, %s -> ready",
            self.ifname,
            self._backend,
            self._settings.address,
            ", ".join(f"{s.value} {p.endpoint}" for s, p in self._peers().items()),
            ",".join(self._settings.routes) or "none",
            active.value,
            stale_routes,
            "interface removed" if stale_link else "no interface",
        )

    def _remove_stale_interface(self, routes: RouteTable) -> bool:
        deleted = routes.delete_link(self.ifname)
        uapi = WireguardGoProcess(self.ifname, netns=self._netns, log_path=Path(os.devnull))
        if deleted:  # an orphan wireguard-go exits once its link is gone
            with contextlib.suppress(VpnError):
                wait_for(lambda: not uapi._uapi_ready(), "stale wireguard-go exit", lambda: None)
        if uapi._uapi_ready():
            raise VpnError(
                f"{WG_UAPI_SOCKET_DIR}/{self.ifname}.sock is served by another wireguard-go; "
                "choose another [vpn] interface"
            )
        return deleted

    def _create_interface(self, routes: RouteTable) -> str:
        if self._netns is None:
            try:
                routes.add_link(self.ifname, "wireguard")
            except RouteError as exc:
                log.info("vpn: no kernel WireGuard (%s) -> %s", exc.__cause__, WIREGUARD_GO)
            else:
                return "kernel"
        self._state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._state_dir / f"wireguard-go-{self.ifname}.log"
        self._process = WireguardGoProcess(self.ifname, netns=self._netns, log_path=log_path)
        self._process.start()
        return WIREGUARD_GO

    def _open_device(self) -> WireguardDevice:
        try:
            if self._backend == "kernel":
                return WireguardNetlinkDevice(self.ifname)
            return WarmUapiDevice(self.ifname)
        except OSError as exc:
            raise VpnError(f"cannot open {self._backend} control of {self.ifname}: {exc}") from exc

    def _config(self, active: Server) -> WireguardConfig:
        config = WireguardConfig(private_key=self._key)
        for server, peer in self._peers().items():
            host, port = self._endpoints[server]
            routes = self._settings.routes if server is active else ()
            config.add_peer(
                WireguardPeer(
                    public_key=peer.public_key,
                    endpoint_host=host,
                    endpoint_port=port,
                    persistent_keepalive=KEEPALIVE_S,
                    allowed_ips=[*peer.allowed_ips, *routes],
                )
            )
        return config

    def _kernel_prefixes(self, active: Server) -> list[str]:
        peers = self._peers()
        prefixes = [net for peer in peers.values() for net in peer.allowed_ips]
        return prefixes + list(self._settings.routes if active in peers else ())

    def _set_config(self, config: WireguardConfig) -> None:
        if self._device is None:
            raise VpnError(f"vpn: {self.ifname} is not started")
        try:
            self._device.set_config(config)
        except (OSError, RuntimeError, AssertionError, ValueError) as exc:
            # wireguard-tools' messages name errnos and interfaces, never keys
            raise VpnError(f"vpn: cannot configure {self.ifname}: {exc!r}") from exc

    def point_to(self, server: Server) -> None:
        """Move `routes` to `server`'s peer (SPEC §2 step 1); both peers stay up.

        A server without a `[vpn.<role>]` peer is reached outside the tunnel: `routes`
        then leave every peer and their kernel routes go.

        Raises:
            VpnError: not started, or the change was refused.
        """
        with self._lock:
            started_s = time.monotonic()
            self._set_config(self._config(server))
            try:
                if self._routes is None:
                    raise VpnError(f"vpn: {self.ifname} is not started")
                if server in self._peers():
                    self._routes.replace(self._settings.routes, self.ifname)
                else:
                    self._routes.delete(self._settings.routes)
            except RouteError as exc:
                raise VpnError(f"vpn: cannot move routes to {server.value}: {exc}") from exc
            previous, self._active = self._active, server
            self._last_switch_ms = (time.monotonic() - started_s) * 1000
        peer = self._peers().get(server)
        log.info(
            "vpn: routes %s from %s to %s (%s) in %.1f ms -> moved",
            ",".join(self._settings.routes) or "none",
            previous.value if previous else "none",
            server.value,
            f"peer {peer.endpoint}" if peer else "no peer: outside the tunnel",
            self._last_switch_ms,
        )

    def reconfigure(self, settings: VpnSettings) -> bool:
        """New `[vpn]` settings on the running tunnel, applied by difference (SPEC §7).

        Peers (endpoints, keys, allowed networks) and `routes` change in place: the
        device gets only what differs and the kernel routes follow. A new interface,
        address or key file needs a new tunnel: returns False and changes nothing, so
        that the caller stops this one and starts another.

        Raises:
            VpnError: not started, or the change was refused.
        """
        old = self._settings
        if (settings.interface, settings.address, settings.private_key_file) != (
            old.interface, old.address, old.private_key_file
        ) or settings.primary is None:  # fmt: skip
            return False
        with self._lock:
            if self._routes is None or self._active is None:
                raise VpnError(f"vpn: {self.ifname} is not started")
            gone = set(self._kernel_prefixes(self._active))
            self._settings = settings
            self._endpoints = {s: parse_endpoint(p.endpoint) for s, p in self._peers().items()}
            self._set_config(self._config(self._active))
            kept = self._kernel_prefixes(self._active)
            try:
                self._routes.delete(sorted(gone - set(kept)))
                self._routes.replace(kept, self.ifname)
            except RouteError as exc:
                raise VpnError(f"vpn: cannot apply new routes: {exc}") from exc
        log.info("vpn: %s peers %s, routes %s -> reconfigured", self.ifname,
                 ", ".join(f"{s.value} {p.endpoint}" for s, p in self._peers().items()),
                 ",".join(settings.routes) or "none")  # fmt: skip
        return True

    def status(self) -> dict[str, object]:
        """Backend, interface, liveness, active peer and per-peer tunnel facts.

        Never holds a key (private, public or preshared). Errors reading the device are
        reported in `error`, not raised.
        """
        with self._lock:
            facts: dict[str, object] = {
                "interface": self.ifname,
                "backend": self._backend or None,
                "alive": self.alive,
                "wireguard_go_pid": self._process.pid if self._process else None,
                "up": False,
                "address": self._settings.address,
                "active": self._active.value if self._active else None,
                "routes": list(self._settings.routes),
                "last_switch_ms": self._last_switch_ms,
                "peers": {},
            }
            if self._device is None or self._routes is None:
                return facts
            try:
                facts["up"] = self.alive and self._routes.link_is_up(self.ifname)
                facts["peers"] = self._peer_facts(self._device.get_config())
            except (OSError, RuntimeError, AssertionError, ValueError) as exc:
                facts["error"] = f"{type(exc).__name__}: {exc}"
            return facts

    def _peer_facts(self, config: WireguardConfig) -> dict[str, object]:
        now_s = time.time()  # WireGuard stamps handshakes with wall-clock time
        facts: dict[str, object] = {}
        for server, peer in self._peers().items():
            live = config.peers.get(WireguardKey(peer.public_key))
            handshake = live.last_handshake if live is not None else None
            age_s = round(now_s - handshake, 1) if handshake else None
            facts[server.value] = {
                "endpoint": peer.endpoint,
                "allowed_ips": [str(net) for net in live.allowed_ips] if live else [],
                "handshake_age_s": age_s,
                "tunnel_up": age_s is not None and age_s < HANDSHAKE_STALE_S,
                "rx_bytes": live.rx_bytes if live else None,
                "tx_bytes": live.tx_bytes if live else None,
            }
        return facts

    def stop(self) -> None:
        """Remove our routes, delete the interface, stop wireguard-go (idempotent).

        Raises:
            VpnError: some step failed; every other step was still done.
        """
        with self._lock:
            failures = self._teardown()
        if failures:
            raise VpnError(f"vpn: {self.ifname} stopped with errors: {'; '.join(failures)}")

    def _teardown(self) -> list[str]:
        failures: list[str] = []
        removed = 0
        if self._device is not None:
            self._device.close()
            self._device = None
        if self._routes is not None:
            try:
                removed = self._routes.remove_ours()
                if self._backend == "kernel":
                    self._routes.delete_link(self.ifname)
            except RouteError as exc:
                failures.append(str(exc))
        exit_status = self._process.stop() if self._process is not None else None
        if self._routes is not None:
            with contextlib.suppress(RouteError):  # a wireguard-go killed hard leaves its tun
                self._routes.delete_link(self.ifname)
            self._routes.close()
        if self._routes is not None or self._process is not None:
            log.info(
                "vpn: %s stopped: %d routes removed, %s exit status %s -> down",
                self.ifname,
                removed,
                self._backend or "nothing",
                exit_status,
            )
        self._routes, self._process, self._backend, self._active = None, None, "", None
        return failures
