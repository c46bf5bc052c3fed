"""SPEC §2's switch: what moves to the server the core chose, in order, step by step.

Owns: the order of a switch (1. VPN routes, 2. SIP: call sources, then registration,
subscriptions and new calls, 3. Phone App URLs) and each step's outcome, worded for
`phoned status` (`switch_steps`). A step that fails is reported and the later steps still
run: the backup may well be reachable without the tunnel's shared routes.
Must not touch: the choice of server (the core's), where the server is (the
`UseServer` action and `targets` say), step 4 (the status board and the device: the
supervisor publishes once the switch returns), or any adapter but through its port.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from phoned.core.events import Server
from phoned.errors import PhonedError
from phoned.service.ports import Apps, SipStack, Vpn
from phoned.sip.account import SipTarget
from phoned.sip.leaving import Leaving

log = logging.getLogger("phoned")

#: SPEC §2's steps, in the order they run (and are shown).
STEPS = ("vpn", "sip", "apps")


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    """One switch: the server, where its SIP goes, and who may call the phone."""

    server: Server
    sip: SipTarget
    call_sources: Mapping[Server, Sequence[str]]
    #: what the deciding cycle said of the server left (`UseServer.left_alive`); DEAD
    #: sends it nothing (SPEC §10). None: the SIP stack presumes (failover: dead).
    left: Leaving | None = None


@dataclass(slots=True)
class SwitchReport:
    """What a switch did: each step's outcome (in `STEPS` order) and the app URLs now."""

    steps: dict[str, str] = field(default_factory=dict)
    apps: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """The steps that failed."""
        return [step for step, outcome in self.steps.items() if outcome.startswith("failed")]


class Switch:
    """Runs SPEC §2's steps 1-3 against the ports, in order.

    Args:
        sip: the SIP stack.
        apps: the Phone Apps.
        vpn: the tunnel, or None when `[vpn]` is off.
    """

    def __init__(self, sip: SipStack, apps: Apps, vpn: Vpn | None) -> None:
        self._sip = sip
        self._apps = apps
        self._vpn = vpn

    def run(self, plan: SwitchPlan) -> SwitchReport:
        """Move everything to `plan.server`; never raises for a step that fails."""
        report = SwitchReport()
        report.steps["vpn"] = self._move_routes(plan.server)
        report.steps["sip"] = self._move_sip(plan)
        report.steps["apps"] = self._move_apps(plan.server, report)
        return report

    def _move_routes(self, server: Server) -> str:
        if self._vpn is None:
            return "off"
        try:
            self._vpn.point_to(server)
        except PhonedError as exc:  # SIP and apps still move: the backup may be reachable
            log.error("switch: vpn routes to the %s peer failed: %s", server.value, exc)
            return f"failed: {exc}"
        return f"routes via the {server.value} peer"

    def _move_sip(self, plan: SwitchPlan) -> str:
        where = f"{plan.server.value} {plan.sip.host}:{plan.sip.port}"
        try:
            self._sip.accept_calls_from(plan.call_sources)
            self._sip.use_server(plan.server, plan.sip, left=plan.left)
        except PhonedError as exc:
            log.error("switch: registering on %s failed: %s", where, exc)
            return f"failed: {exc}"
        return f"registering on {where}"

    def _move_apps(self, server: Server, report: SwitchReport) -> str:
        try:
            report.apps = self._apps.point_to(server)
        except PhonedError as exc:
            log.error("switch: app URLs on the %s failed: %s", server.value, exc)
            return f"failed: {exc}"
        return f"{len(report.apps)} app(s) on {server.value}"
