"""linkwatch against the kernel: a real netlink socket in a throwaway namespace (SPEC §10).

The namespace holds a veth pair (`v0` with 198.51.100.2/24, its peer `v1`); the watcher
is created inside it (its socket stays there) and read from the test thread. Links and
addresses are changed with `ip -n`. Needs root, like every integration test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from phoned.net.linkwatch import LinkChange, LinkWatch
from phonelab.netns import call_in_netns, delete_netns, poll_until

SETTLE_S = 0.2
#: Events reach the socket before `ip` returns; this is ample for the settle to pass.
WAIT_S = 3.0


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"phl{os.getpid()}lw-link"
    delete_netns(name)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", name, "addr", "add", "198.51.100.2/24", "dev", "v0")
        for dev in ("lo", "v0", "v1"):
            ip("-n", name, "link", "set", dev, "up")
        yield name
    finally:
        delete_netns(name)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def watch(netns: str) -> Iterator[LinkWatch]:
    """A watcher created inside `netns`, ignoring `wg0` (as the service ignores its VPN)."""
    watcher = call_in_netns(netns, lambda: LinkWatch(ignore=["wg0"], settle_s=SETTLE_S))
    yield watcher
    watcher.close()


def change(watch: LinkWatch) -> LinkChange:
    return poll_until(watch.poll, timeout_s=WAIT_S, interval_s=0.02)


def quiet(watch: LinkWatch, during_s: float = 2 * SETTLE_S) -> bool:
    """True when `poll` reported nothing for `during_s`."""
    try:
        found = poll_until(watch.poll, timeout_s=during_s, interval_s=0.02)
    except TimeoutError:
        return True
    pytest.fail(f"unexpected change: {found}")


def test_the_start_up_state_is_the_baseline(watch: LinkWatch) -> None:
    assert quiet(watch)


def test_link_down_reports_nothing_and_link_up_reports_it_back(
    netns: str, watch: LinkWatch
) -> None:
    ip("-n", netns, "link", "set", "v0", "down")
    assert quiet(watch)  # down: nowhere to register; nothing to say yet
    ip("-n", netns, "link", "set", "v0", "up")
    back = change(watch)
    assert back.addresses == ("v0 198.51.100.2",)
    assert back.reason.startswith("back after ")
    assert back.reason.endswith(": v0 198.51.100.2")
    assert quiet(watch)  # once per change


def test_carrier_loss_counts_as_down(netns: str, watch: LinkWatch) -> None:
    ip("-n", netns, "link", "set", "v1", "down")  # v0 stays up, without carrier
    assert quiet(watch)
    ip("-n", netns, "link", "set", "v1", "up")
    assert change(watch).addresses == ("v0 198.51.100.2",)


def test_a_new_address_is_a_change_without_the_link_going_down(
    netns: str, watch: LinkWatch
) -> None:
    ip("-n", netns, "addr", "add", "198.51.100.7/24", "dev", "v0")
    found = change(watch)
    assert found.addresses == ("v0 198.51.100.2", "v0 198.51.100.7")
    assert found.reason == "addresses now v0 198.51.100.2, v0 198.51.100.7"


def test_the_services_own_interface_is_ignored(netns: str, watch: LinkWatch) -> None:
    ip("-n", netns, "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")
    ip("-n", netns, "addr", "add", "198.18.0.2/32", "dev", "wg0")
    for dev in ("wg0", "wg0p"):
        ip("-n", netns, "link", "set", dev, "up")
    assert quiet(watch)


def test_a_flap_within_one_read_is_still_reported(netns: str, watch: LinkWatch) -> None:
    ip("-n", netns, "link", "set", "v0", "down")
    ip("-n", netns, "link", "set", "v0", "up")  # both events wait in the socket
    assert change(watch).reason.startswith("back after ")
