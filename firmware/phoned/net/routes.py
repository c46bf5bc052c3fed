"""Kernel addresses and routes of the VPN interface, through netlink (SPEC §6).

Owns: the only import of pyroute2 in the service; adding the tunnel address, bringing a
link up, and the routes phoned creates, every one marked with `PHONED_RTPROT` as its
routing protocol.
Rule 1: a route is touched (replaced, listed, deleted) only if it carries our protocol
number, so routes made by the system, DHCP or an installer are never changed.
Rule 2: every call is idempotent (`replace`, not `add`), so a restart after a crash
converges on the wanted state instead of failing on what the last run left.
Must not touch: WireGuard peers (`vpn`), links it was not named, other tables' routes
that lack our protocol. Never shells out to `ip`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from phoned.errors import PhonedError

log = logging.getLogger(__name__)

#: Routing protocol number of the routes phoned creates (`ip route ... proto 80`).
#: 80 (0x50) is not reserved in iproute2's rt_protos (kernel 2, boot 3, static 4, dhcp 16,
#: babel 42, bgp 186, ...), so no routing daemon on the phone uses it.
PHONED_RTPROT = 80
_MAIN_TABLE = 254
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class RouteError(PhonedError, OSError):
    """An address, link or route could not be read or changed through netlink."""


def _prefix(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise RouteError(f"routes: {cidr!r} is not a CIDR prefix") from exc


#: A pyroute2 netlink message (untyped library: pyroute2 ships no annotations).
Nlmsg = Any


def _attr(message: Nlmsg, name: str) -> object:
    return message.get_attr(name)


class RouteTable:
    """The routes phoned owns in one network namespace, through one netlink socket.

    Args:
        netns: a named network namespace to act in; None (the service) for the
            namespace the process runs in. Tests use it to work in a throwaway one.

    Raises:
        RouteError: the netlink socket cannot be opened.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        try:
            self._ipr = IPRoute(netns=netns) if netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            where = netns or "this namespace"
            raise RouteError(f"routes: cannot open netlink in {where}: {exc}") from exc

    def _index(self, ifname: str) -> int:
        try:
            found = self._ipr.link_lookup(ifname=ifname)
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot look up link {ifname}: {exc}") from exc
        if not found:
            raise RouteError(f"routes: no link named {ifname}")
        index: int = found[0]
        return index

    def has_link(self, ifname: str) -> bool:
        """Whether a link named `ifname` exists."""
        try:
            return bool(self._ipr.link_lookup(ifname=ifname))
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot look up link {ifname}: {exc}") from exc

    def link_is_up(self, ifname: str) -> bool:
        """Whether `ifname` exists and is administratively up."""
        try:
            links = self._ipr.get_links(ifname=ifname)
        except NetlinkError:
            return False
        except OSError as exc:
            raise RouteError(f"routes: cannot read link {ifname}: {exc}") from exc
        return bool(links) and bool(links[0]["flags"] & 1)  # IFF_UP

    def add_link(self, ifname: str, kind: str) -> None:
        """Create link `ifname` of `kind` (e.g. "wireguard").

        Raises:
            RouteError: the kernel refused (e.g. no such link kind), cause kept.
        """
        try:
            self._ipr.link("add", ifname=ifname, kind=kind)
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot create {kind} link {ifname}: {exc}") from exc

    def delete_link(self, ifname: str) -> bool:
        """Delete link `ifname` if it exists. Returns whether one was deleted."""
        if not self.has_link(ifname):
            return False
        try:
            self._ipr.link("del", index=self._index(ifname))
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV: gone meanwhile (its owner exited)
                return False
            raise RouteError(f"routes: cannot delete link {ifname}: {exc}") from exc
        return True

    def add_address(self, ifname: str, cidr: str) -> None:
        """Give `ifname` the address `cidr` ("198.18.0.2/32"); a no-op if it has it."""
        iface = ipaddress.ip_interface(cidr)
        try:
            self._ipr.addr(
                "replace",
                index=self._index(ifname),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot add {cidr} to {ifname}: {exc}") from exc

    def link_up(self, ifname: str) -> None:
        """Bring `ifname` up (idempotent)."""
        try:
            self._ipr.link("set", index=self._index(ifname), state="up")
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot bring {ifname} up: {exc}") from exc

    def replace(self, prefixes: Sequence[str], ifname: str) -> None:
        """Route every prefix of `prefixes` through `ifname`, marked as ours.

        `route replace` semantics: an existing route to the same prefix (ours, or one we
        left behind) is replaced in place, so nothing is ever briefly unrouted.

        Raises:
            RouteError: a prefix is not CIDR, the link is missing or the kernel refused.
        """
        index = self._index(ifname)
        for cidr in prefixes:
            net = _prefix(cidr)
            try:
                self._ipr.route(
                    "replace",
                    dst=str(net),
                    oif=index,
                    proto=PHONED_RTPROT,
                    table=_MAIN_TABLE,
                    scope=253,  # RT_SCOPE_LINK: a point-to-point tunnel has no gateway
                )
            except (OSError, NetlinkError) as exc:
                raise RouteError(f"routes: cannot route {net} via {ifname}: {exc}") from exc

    def _our_routes(self) -> list[Nlmsg]:
        found: list[Nlmsg] = []
        try:
            for family in _FAMILIES:
                found.extend(
                    route
                    for route in self._ipr.get_routes(family=family, table=None)
                    if route["proto"] == PHONED_RTPROT
                )
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"routes: cannot list routes: {exc}") from exc
        return found

    @staticmethod
    def _cidr(route: Nlmsg) -> str:
        dst = _attr(route, "RTA_DST")
        if dst is None:
            dst = "0.0.0.0" if route["family"] == socket.AF_INET else "::"  # noqa: S104 a default route
        return f"{dst}/{route['dst_len']}"

    def ours(self) -> list[str]:
        """Prefixes of every route carrying our protocol, in any table, sorted."""
        return sorted(self._cidr(route) for route in self._our_routes())

    def delete(self, prefixes: Sequence[str]) -> int:
        """Delete our routes to exactly these prefixes. Returns how many went."""
        wanted = {str(_prefix(cidr)) for cidr in prefixes}
        return self._delete_routes([r for r in self._our_routes() if self._cidr(r) in wanted])

    def remove_ours(self) -> int:
        """Delete every route carrying our protocol. Returns how many went."""
        return self._delete_routes(self._our_routes())

    def _delete_routes(self, routes: list[Nlmsg]) -> int:
        removed = 0
        for route in routes:
            try:
                self._ipr.route(
                    "del",
                    family=route["family"],
                    dst=self._cidr(route),
                    table=_attr(route, "RTA_TABLE") or route["table"],
                    proto=PHONED_RTPROT,
                    scope=route["scope"],  # the kernel matches it: pyroute2's default misses
                    oif=_attr(route, "RTA_OIF"),
                )
            except NetlinkError as exc:
                if exc.code == 3:  # ESRCH: gone meanwhile (its link was deleted)
                    continue
                raise RouteError(f"routes: cannot delete {self._cidr(route)}: {exc}") from exc
            removed += 1
        return removed

    def close(self) -> None:
        """Close the netlink socket (idempotent)."""
        self._ipr.close()
