"""The `[vpn]` table of the settings (SPEC §6): its keys, their rules, its two peers.

Owns: which keys `[vpn]`, `[vpn.primary]` and `[vpn.backup]` hold and the checks between
them; reads the `private_key_file` (through `phoned.config.rules`) only when enabled.
Must not touch: the tunnel itself (`phoned.net.vpn`), other tables, line numbers (the
`Checker` knows them).
"""

from __future__ import annotations

from dataclasses import fields

from phoned.config import rules as rule
from phoned.config.check import Checker, KeyPath, Table
from phoned.config.settings import VpnPeer, VpnSettings

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
