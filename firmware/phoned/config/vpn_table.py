"""The `[vpn]` table of the settings (SPEC §6): its keys, their rules, its two peers.

Owns: which keys `[vpn]`, `[vpn.primary]` and `[vpn.backup]` hold and the checks between
them and the servers (a server's IP address lies in its peer's `allowed_ips`); reads the
`private_key_file` (through `phoned.config.rules`) only when enabled.
Must not touch: the tunnel itself (`phoned.net.vpn`), other tables, line numbers (the
`Checker` knows them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import fields

from phoned.config import rules as rule
from phoned.config.check import Checker, KeyPath, Table
from phoned.config.settings import Settings, VpnPeer, VpnSettings

#: The keys `[vpn]` may hold.
VPN_KEYS = frozenset(f.name for f in fields(VpnSettings))
#: The keys `[vpn.primary]` and `[vpn.backup]` may hold.
PEER_KEYS = frozenset(f.name for f in fields(VpnPeer))


def vpn_settings(check: Checker, data: Table) -> VpnSettings:
    """`[vpn]` of the parsed settings, its problems recorded in `check`.

    Args:
        check: Collects the problems with their lines.
        data: The parsed settings (all tables).

    Returns:
        The VPN settings (the defaults when disabled; bad values replaced by defaults).
    """
    path = ("vpn",)
    table = check.table(data, path, VPN_KEYS)
    if not check.take(table, path, "enabled", rule.boolean, False):
        # SPEC §6 values are checked only when used: a half-filled [vpn] may wait disabled,
        # but a misspelt key is still refused.
        for side in ("primary", "backup"):
            check.table(table, (*path, side), PEER_KEYS)
        return VpnSettings()
    for key in ("private_key_file", "address", "primary"):
        check.require(table, path, key)
    return VpnSettings(
        enabled=True,
        interface=check.take(table, path, "interface", rule.ifname, "wg-phoned"),
        private_key_file=check.take(table, path, "private_key_file", rule.private_key_file, ""),
        address=check.take(table, path, "address", rule.interface_address, ""),
        routes=check.take_list(table, path, "routes", rule.network, "networks (CIDR)"),
        primary=_peer(check, table, (*path, "primary")),
        backup=_peer(check, table, (*path, "backup")),
    )


def _peer(check: Checker, vpn: Table, path: KeyPath) -> VpnPeer | None:
    if path[-1] not in vpn:
        return None
    table = check.table(vpn, path, PEER_KEYS)
    if not isinstance(vpn[path[-1]], dict):
        return None
    for key in ("endpoint", "public_key", "allowed_ips"):
        check.require(table, path, key)
    allowed_ips = check.take_list(table, path, "allowed_ips", rule.network, "networks (CIDR)")
    if "allowed_ips" in table and not allowed_ips and (*path, "allowed_ips") not in check.failed:
        check.fail((*path, "allowed_ips"), f"{'.'.join(path)}.allowed_ips must not be empty")
    return VpnPeer(
        endpoint=check.take(table, path, "endpoint", rule.endpoint, ""),
        public_key=check.take(table, path, "public_key", rule.wireguard_key, ""),
        allowed_ips=allowed_ips,
    )


def check_server_tunnels(check: Checker, settings: Settings) -> None:
    """SPEC §6: with `[vpn]` enabled, each server lies in its own peer's `allowed_ips`.

    The primary's `[server] address` must lie in `[vpn.primary] allowed_ips` and, when the
    backup is used and has a peer, its address in `[vpn.backup] allowed_ips`; otherwise its
    probes and SIP would not travel its tunnel. Only IP literals are checked: a host name
    resolves later, at each cycle. Problems are recorded in `check` at the server's address.

    Args:
        check: Collects the problems with their lines.
        settings: The settings built so far (values already checked one by one).
    """
    vpn = settings.vpn
    if not vpn.enabled:
        return
    servers: list[tuple[KeyPath, str, VpnPeer | None, str]] = [
        (("server", "address"), settings.server.address, vpn.primary, "vpn.primary")
    ]
    if settings.backup_enabled:
        address = settings.redundancy.backup_destination_address
        servers.append(
            (("redundancy", "backup_destination_address"), address, vpn.backup, "vpn.backup")
        )
    for path, address, peer, peer_name in servers:
        networks_path = (*peer_name.split("."), "allowed_ips")
        if peer is None or not peer.allowed_ips or check.failed & {path, networks_path}:
            continue  # no tunnel, or a problem already told (a bad network, a bad address)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue  # a host name: resolved at each cycle, not known now
        if any(ip in ipaddress.ip_network(net) for net in peer.allowed_ips):
            continue
        check.fail(
            path,
            f"{'.'.join(path)} must lie in {peer_name}.allowed_ips"
            f" ({', '.join(peer.allowed_ips)}) when [vpn] is enabled, got {rule.show(address)}",
        )
