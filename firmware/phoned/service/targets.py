"""Where each PBX is reached: probe target, SIP target and call sources, from the settings.

Owns: turning `[server]` and `[redundancy]` into one `ServerTargets` per server, and the
choice of the address handed to the SIP stack at a switch (SPEC §1: names are resolved at
each cycle, SRV when `port = 0`). Must not touch: sockets or the prober. At a switch the
address comes with `UseServer` (where the server answered); names are looked up only when
the targets are built (start-up, new settings) and, for SRV, when no probe decided the
switch (start-up, keep-alive off): never during a probe-driven switch (SPEC §9's 50 ms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from phoned.config.settings import Settings
from phoned.core.events import Server
from phoned.probe.lookup import (
    ResolveError,
    lookup_addresses,
    resolve_target,
    srv_target_name,
)
from phoned.probe.matching import ProbeTarget
from phoned.sip.stack import SipTarget


@dataclass(frozen=True, slots=True)
class ServerTargets:
    """One server as configured: a name or an IP literal; port 0 means DNS SRV."""

    probe: ProbeTarget
    sip: SipTarget

    @property
    def label(self) -> str:
        """How logs and the status name it: `host:port`, or `host (SRV)`."""
        return (
            f"{self.probe.host}:{self.probe.port}"
            if self.probe.port
            else f"{self.probe.host} (SRV)"
        )


def server_targets(settings: Settings) -> dict[Server, ServerTargets]:
    """The primary's and, when enabled, the backup's targets (SPEC §3)."""
    red, transport = settings.redundancy, settings.server.transport
    found = {
        Server.PRIMARY: _targets(
            settings.server.address,
            settings.server.port,
            transport,
            (red.outbound_proxy, red.outbound_proxy_port),
        )
    }
    if settings.backup_enabled:
        found[Server.BACKUP] = _targets(
            red.backup_destination_address,
            red.backup_destination_port,
            transport,
            (red.backup_outbound_proxy, red.backup_outbound_proxy_port),
        )
    return found


def _targets(host: str, port: int, transport: str, proxy: tuple[str, int]) -> ServerTargets:
    return ServerTargets(
        ProbeTarget(host, port, None if _is_literal(host) else host),
        SipTarget(host, port, transport, proxy if proxy[0] else None),
    )


def sip_target(targets: ServerTargets, answered: tuple[str, int] | None) -> SipTarget:
    """The SIP target for a switch to this server.

    A name with a port goes to pjsua as it is (it resolves A/AAAA itself, and TLS checks the
    certificate against that name). With port 0 (SRV) pjsua would not look up SRV, so it
    gets the address the server answered from (`UseServer.address`); only a switch no
    probe decided (start-up, keep-alive off) looks the SRV record up here. Over TLS it
    gets the SRV target's name with that port instead (issue 12: pjsua verifies the
    certificate against the name it connects to, and an IP would be checked as an IP).
    """
    sip = targets.sip
    if sip.port:
        return sip
    name = None
    if answered is None:
        try:
            resolved = resolve_target(targets.probe, sip.transport)
        except ResolveError:
            return replace(sip, port=5061 if sip.transport == "tls" else 5060)
        answered, name = resolved.address, resolved.name
    elif sip.transport == "tls":
        name = srv_target_name(targets.probe.host, sip.transport, answered)
    host = name if sip.transport == "tls" and name else answered[0]
    return replace(sip, host=host, port=answered[1])


def call_sources(targets: Mapping[Server, ServerTargets]) -> dict[Server, tuple[str, ...]]:
    """IP addresses incoming calls may come from: each server and its proxy (SPEC §2).

    Names are looked up here, once per set of targets (built at start-up and on new
    settings), so a switch only adds what the probes learnt (`with_answers`).
    """
    sources: dict[Server, tuple[str, ...]] = {}
    for role, target in targets.items():
        hosts = [target.probe.host] + ([target.sip.proxy[0]] if target.sip.proxy else [])
        sources[role] = tuple(address for host in hosts for address in _addresses(host))
    return sources


def with_answers(
    sources: Mapping[Server, tuple[str, ...]], answered: Mapping[Server, tuple[str, int]]
) -> dict[Server, list[str]]:
    """`sources` plus the address each server last answered a probe from."""
    merged = {role: list(hosts) for role, hosts in sources.items()}
    for role, (host, _port) in answered.items():
        if role in merged and host not in merged[role]:
            merged[role].insert(0, host)
    return merged


def _addresses(host: str) -> list[str]:
    if _is_literal(host):
        return [host]
    with contextlib.suppress(ResolveError):
        return lookup_addresses(host)
    return []


def _is_literal(host: str) -> bool:
    return ProbeTarget(host, 5060).is_literal
