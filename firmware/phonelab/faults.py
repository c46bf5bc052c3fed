"""Faults the lab inflicts on a PBX: silence (nftables drop), loss, stop, freeze (SPEC §8).

Owns: one nftables table per namespace (`phoned_lab`, or `phoned_lab_<pid>` in the
current namespace so parallel runs on one host never delete each other's), the bridge
table `phoned_lab_wire` in the lab's switch namespace (random loss on the wire, both
ways: `wire_loss`), and the list of faults a `Faults` object applied, so that
`undo_all()` restores everything.
Must not touch: any other nftables table, and any process but the `KamailioPbx` it is
handed (`tc netem` is not available here, STACK-NOTES: delays come from `SippResponder`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from phonelab.errors import LabError
from phonelab.kamailio import KamailioPbx
from phonelab.netns import ns_argv

TABLE = "phoned_lab"
#: The bridge table of `wire_loss`, in the lab's switch namespace.
WIRE_TABLE = "phoned_lab_wire"
#: Transports a drop rule can match (TCP drops SYNs too: connections go silent).
PROTOCOLS = ("udp", "tcp")


def table_name(netns: str | None) -> str:
    """The lab's nftables table in `netns` (pid-suffixed in the current namespace)."""
    return TABLE if netns else f"{TABLE}_{os.getpid()}"


def _nft(netns: str | None, script: str) -> None:
    done = subprocess.run(
        ns_argv(netns, ["nft", "-f", "-"]),
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    if done.returncode != 0:
        where = netns or "current netns"
        raise LabError(f"faults: nft in {where} failed: {done.stderr.strip()}")


def _drop_rule(port: int, host: str | None, loss_percent: int | None, proto: str = "udp") -> str:
    if proto not in PROTOCOLS:
        raise LabError(f"faults: proto must be one of {PROTOCOLS}, got {proto!r}")
    match = f"ip daddr {host} " if host else ""
    chance = f"numgen random mod 100 < {loss_percent} " if loss_percent is not None else ""
    return f"{match}{proto} dport {port} {chance}drop"


def _apply(netns: str | None, rule: str, host: str | None) -> None:
    if netns is None and host is None:
        # The current namespace is shared (other labs, other helpers' PBXs on loopback).
        raise LabError("faults: a drop rule in the current namespace needs host=")
    table = table_name(netns)
    # "add table" then "delete table" empties any previous fault: one fault at a time.
    _nft(
        netns,
        f"add table inet {table}\ndelete table inet {table}\n"
        f"table inet {table} {{\n  chain input {{\n"
        f"    type filter hook input priority -10; policy accept;\n    {rule}\n  }}\n}}\n",
    )


def blackhole(
    netns: str | None, port: int = 5060, *, host: str | None = None, proto: str = "udp"
) -> None:
    """Drop every incoming UDP datagram (or TCP segment) to `port` in `netns`: the server
    goes silent.

    Args:
        netns: the *server's* namespace (None: the current one; then `host` is required).
        port: port to silence.
        host: only packets to this address (needed on shared loopback).
        proto: "udp" (default) or "tcp" (SYNs included: new connections hang, open ones
            go silent).

    Raises:
        LabError: nft failed, `proto` is unknown, or `netns` and `host` are both None.
    """
    _apply(netns, _drop_rule(port, host, None, proto), host)


def lossy(
    netns: str | None, loss_percent: int, port: int = 5060, *, host: str | None = None
) -> None:
    """Drop `loss_percent` % of incoming UDP datagrams to `port` in `netns`, at random."""
    if not 0 <= loss_percent <= 100:
        raise LabError(f"faults: loss_percent must be 0..100, got {loss_percent}")
    _apply(netns, _drop_rule(port, host, loss_percent), host)


def wire_loss(switch_netns: str, losses: Mapping[str, int], port: int = 5060) -> None:
    """Drop at random, on the lab's bridge, `losses[host]` % of the UDP datagrams to
    `host:port` and, on their own, of those from it (SPEC §10: loss on the wire).

    On the bridge, not in the server's namespace: a datagram dropped there has left its
    sender, which sees no error (a drop in the sender's own output hook fails its
    `sendto()` with EPERM, and Kamailio then answers 500), and never reaches the other
    side's interface, so a capture at the phone holds exactly what arrived. A round trip
    survives with probability (1 - loss)^2. The table holds every host's rules at once;
    `losses` replaces it whole ({} lifts it).

    Raises:
        LabError: a percentage outside 0..100, or nft failed.
    """
    rules = []
    for host, percent in sorted(losses.items()):
        if not 0 <= percent <= 100:
            raise LabError(f"faults: loss for {host} must be 0..100 %, got {percent}")
        chance = f"numgen random mod 100 < {percent} drop"
        rules += [f"ip daddr {host} udp dport {port} {chance}"]
        rules += [f"ip saddr {host} udp sport {port} {chance}"]
    script = f"add table bridge {WIRE_TABLE}\ndelete table bridge {WIRE_TABLE}\n"
    if rules:
        script += (
            f"table bridge {WIRE_TABLE} {{\n  chain forward {{\n"
            "    type filter hook forward priority -10; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in rules)
            + "  }\n}\n"
        )
    _nft(switch_netns, script)


def unblackhole(netns: str | None) -> None:
    """Remove the lab's table from `netns` (no-op when there is none)."""
    table = table_name(netns)
    _nft(netns, f"add table inet {table}\ndelete table inet {table}\n")


@dataclass
class Faults:
    """Applies faults and remembers them so `undo_all()` (or `with`) restores everything."""

    #: Namespaces (None = current) that hold a lab table.
    filtered: set[str | None] = field(default_factory=set)
    #: PBXs frozen and not yet thawed.
    frozen: list[KamailioPbx] = field(default_factory=list)
    #: Loss on the wire: switch namespace -> host -> percent (`wire_loss`).
    wire: dict[str, dict[str, int]] = field(default_factory=dict)

    def blackhole(
        self, netns: str | None, port: int = 5060, *, host: str | None = None, proto: str = "udp"
    ) -> None:
        """`blackhole()`, remembered for `undo_all()`."""
        self.filtered.add(netns)
        blackhole(netns, port, host=host, proto=proto)

    def lossy(
        self, netns: str | None, loss_percent: int, port: int = 5060, *, host: str | None = None
    ) -> None:
        """`lossy()`, remembered for `undo_all()`."""
        self.filtered.add(netns)
        lossy(netns, loss_percent, port, host=host)

    def wire_loss(self, switch_netns: str, host: str, loss_percent: int) -> None:
        """Lose `loss_percent` % of `host`'s SIP datagrams each way on the wire (0 lifts
        it); the other hosts' losses stay (`wire_loss()`)."""
        losses = self.wire.setdefault(switch_netns, {})
        losses[host] = loss_percent
        wire_loss(switch_netns, {h: p for h, p in losses.items() if p})

    def unblackhole(self, netns: str | None) -> None:
        """Lift the drop rules in `netns`."""
        unblackhole(netns)
        self.filtered.discard(netns)

    def stop(self, pbx: KamailioPbx) -> None:
        """Stop `pbx` (its fixture or owner restarts or stops it; nothing to undo)."""
        pbx.stop()

    def freeze(self, pbx: KamailioPbx) -> None:
        """SIGSTOP `pbx`: its port stays bound, nothing answers, no ICMP is sent."""
        pbx.freeze()
        self.frozen.append(pbx)

    def thaw(self, pbx: KamailioPbx) -> None:
        """SIGCONT `pbx` after `freeze()`."""
        pbx.thaw()
        self.frozen.remove(pbx)

    def undo_all(self) -> None:
        """Thaw what is frozen, lift every drop rule and wire loss; errors are collected,
        then raised."""
        errors: list[str] = []
        for pbx in list(self.frozen):
            if pbx.running:
                pbx.thaw()
            self.frozen.remove(pbx)
        for netns in list(self.filtered):
            try:
                self.unblackhole(netns)
            except LabError as exc:
                errors.append(str(exc))
        for switch_netns in list(self.wire):
            try:
                wire_loss(switch_netns, {})
            except LabError as exc:
                errors.append(str(exc))
            del self.wire[switch_netns]
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> Faults:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.undo_all()
