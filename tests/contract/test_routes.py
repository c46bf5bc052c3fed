"""RouteTable against the kernel, in a throwaway network namespace (SPEC §6).

Each test gets a fresh namespace holding a veth link `tun0` (standing in for the
WireGuard interface) and a foreign route made with `ip route ... proto static`, which
must survive everything RouteTable does: only routes with PHONED_RTPROT are ours.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from phoned.net.routes import PHONED_RTPROT, RouteError, RouteTable

FOREIGN = "198.18.200.0/24"


def add_link(netns: str, name: str) -> None:
    """A veth pair `name`/`name`p (this kernel has no dummy links)."""
    ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    ip(netns, "link", "set", f"{name}p", "up")


def ip(netns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A new namespace with links lo and tun0 (veth) up and one foreign route."""
    name = f"vrt{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        add_link(name, "tun0")
        ip(name, "link", "set", "tun0", "up")
        ip(name, "route", "add", FOREIGN, "dev", "tun0", "proto", "static")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def table(netns: str) -> Iterator[RouteTable]:
    made = RouteTable(netns=netns)
    yield made
    made.close()


def kernel_routes(netns: str) -> list[str]:
    """`ip route show` lines of the main table, IPv4 and IPv6, without link-local."""
    lines = ip(netns, "route", "show").splitlines() + ip(netns, "-6", "route").splitlines()
    return [line.strip() for line in lines if not line.startswith("fe80")]


def test_replace_marks_routes_with_our_protocol(table: RouteTable, netns: str) -> None:
    table.replace(["198.18.100.0/24", "2001:db8:100::/64"], "tun0")

    routes = kernel_routes(netns)
    assert f"198.18.100.0/24 dev tun0 proto {PHONED_RTPROT} scope link" in routes
    assert any(r.startswith(f"2001:db8:100::/64 dev tun0 proto {PHONED_RTPROT}") for r in routes)
    assert table.ours() == ["198.18.100.0/24", "2001:db8:100::/64"]


def test_ours_ignores_foreign_routes(table: RouteTable) -> None:
    assert table.ours() == []
    table.replace(["198.18.1.0/24"], "tun0")
    assert table.ours() == ["198.18.1.0/24"]


def test_replace_is_idempotent(table: RouteTable, netns: str) -> None:
    table.replace(["198.18.100.0/24"], "tun0")
    table.replace(["198.18.100.0/24"], "tun0")

    assert table.ours() == ["198.18.100.0/24"]
    assert sum("198.18.100.0/24" in r for r in kernel_routes(netns)) == 1


def test_replace_takes_over_a_route_to_the_same_prefix(table: RouteTable, netns: str) -> None:
    add_link(netns, "tun1")
    ip(netns, "link", "set", "tun1", "up")
    table.replace(["198.18.100.0/24"], "tun0")

    table.replace(["198.18.100.0/24"], "tun1")

    assert f"198.18.100.0/24 dev tun1 proto {PHONED_RTPROT} scope link" in kernel_routes(netns)
    assert table.ours() == ["198.18.100.0/24"]


def test_remove_ours_leaves_foreign_routes(table: RouteTable, netns: str) -> None:
    table.replace(["198.18.1.0/24", "198.18.100.0/24", "2001:db8:100::/64"], "tun0")
    ip(netns, "route", "add", "198.18.50.0/24", "dev", "tun0", "proto", str(PHONED_RTPROT),
       "table", "100")  # fmt: skip

    assert table.remove_ours() == 4

    assert table.ours() == []
    assert f"{FOREIGN} dev tun0 proto static scope link" in kernel_routes(netns)
    assert table.remove_ours() == 0


def test_delete_removes_only_the_named_prefixes_of_ours(table: RouteTable, netns: str) -> None:
    table.replace(["198.18.1.0/24", "198.18.100.0/24"], "tun0")

    assert table.delete(["198.18.100.0/24", FOREIGN]) == 1

    assert table.ours() == ["198.18.1.0/24"]
    assert any(r.startswith(FOREIGN) for r in kernel_routes(netns))


def test_add_address_and_link_up_are_idempotent(table: RouteTable, netns: str) -> None:
    add_link(netns, "tun2")
    assert not table.link_is_up("tun2")

    for _ in range(2):
        table.add_address("tun2", "198.18.0.2/32")
        table.link_up("tun2")

    assert table.link_is_up("tun2")
    assert ip(netns, "-4", "addr", "show", "tun2").count("inet 198.18.0.2/32") == 1


def test_delete_link_only_when_present(table: RouteTable) -> None:
    assert table.has_link("tun0")
    assert table.delete_link("tun0")
    assert not table.has_link("tun0")
    assert not table.delete_link("tun0")


def test_errors_name_what_failed(table: RouteTable) -> None:
    with pytest.raises(RouteError, match="no link named nope0"):
        table.replace(["198.18.100.0/24"], "nope0")
    with pytest.raises(RouteError, match=re.escape("'198.18.100.0/33' is not a CIDR prefix")):
        table.replace(["198.18.100.0/33"], "tun0")
    with pytest.raises(RouteError, match="cannot create wireguardx link wg9"):
        table.add_link("wg9", "wireguardx")
