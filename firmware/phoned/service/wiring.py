"""The one wiring place: every component built from the settings, and new settings applied.

Owns: building the phone's parts from one `LiveSettings` (status board, SIP stack, Phone
Apps, VPN, the §2 switch, prober and keep-alive monitor, control socket, device output,
heartbeats), the few rules that turn settings into adapter arguments (keep-alive off:
short REGISTER timeout and expiry), and `Phone.apply`, the one path by which new settings
reach a running phone: each part gets the new settings (or its part) through one method,
and values read at use time come from `LiveSettings`, so nothing is left stale.
Must not touch: threads and the order of start and stop (the supervisor's), decisions
(the core's), or any library directly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phoned.clock import Clock
from phoned.config.live import LiveSettings
from phoned.config.settings import Settings
from phoned.core.events import Action, Event, SendProbe, Server, UseServer
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.device.output import DeviceOutput
from phoned.net.apps import PhoneApps
from phoned.probe.matching import ProbeTarget
from phoned.probe.resolve import make_prober
from phoned.service.changeplan import ChangePlan, plan_changes
from phoned.service.control import ControlServer, Handler
from phoned.service.monitor import KeepaliveMonitor
from phoned.service.resume import ResumeFile
from phoned.service.status import BoardFacts, StatusBoard
from phoned.service.switch import Switch, SwitchPlan
from phoned.service.targets import (
    ServerTargets,
    call_sources,
    server_targets,
    sip_target,
    with_answers,
)
from phoned.service.watchdog import Heartbeats
from phoned.sip.stack import Leaving, PjsuaStack, SipEvent, SipIdentity

if TYPE_CHECKING:
    from phoned.net.vpn import WireGuardVpn

log = logging.getLogger("phoned")

#: Keep-alive off (SPEC §1): registration is the only failure detector, so a REGISTER
#: must fail fast (pjsip's own timeout is 32 s) and refresh often enough to notice a dead
#: server: failover within about register refresh + 4 s.
REGISTRATION_DRIVEN_TIMEOUT_S = 4.0
REGISTRATION_DRIVEN_MAX_EXPIRES_S = 60
#: The worker threads whose heartbeats feed the watchdog.
WORKERS = ("keepalive", "control")


@dataclass(frozen=True)
class Hooks:
    """What the supervisor hands the wiring: where each part reports."""

    on_sip_event: Callable[[SipEvent], None]  #: on the pjsua2 (main) thread
    on_action: Callable[[Action], None]  #: from the keep-alive thread: queue it
    observe: Callable[[Event | SendProbe, float], None]  #: probes, for the log
    on_key: Callable[[int], None]  #: a line key, from gpiozero's thread
    on_control: Handler  #: on the control loop: a result at once, or SlowWork


def policy_settings(settings: Settings) -> PolicySettings:
    """The core's view of the `[redundancy]` settings."""
    red = settings.redundancy
    return PolicySettings(
        interval_s=float(red.sip_keep_alive_interval),
        keepalive=red.sip_keep_alive_mode,
        backup_enabled=settings.backup_enabled,
        failback_cycles=red.failback_cycles,
    )


@dataclass(frozen=True)
class Prepared:
    """New settings with what applying them needs that may block (`Phone.prepare`)."""

    settings: Settings
    targets: Mapping[Server, ServerTargets]
    sources: Mapping[Server, tuple[str, ...]]  #: IP addresses calls may come from


@dataclass(frozen=True)
class Applied:
    """What `Phone.apply` did."""

    plan: ChangePlan  #: every changed key and what each part took
    moved: bool  #: the server in use is now reached elsewhere: re-register there
    vpn_restart: bool = False  #: the tunnel needs a new interface (a restart)

    @property
    def changed(self) -> list[str]:
        """The settings tables that differ, in the file's order."""
        return self.plan.tables


class Phone:
    """The phone's parts, built from the settings in force (not started: see Supervisor)."""

    def __init__(self, live: LiveSettings, hooks: Hooks, clock: Clock) -> None:
        settings = live.get()
        self.live = live
        self.clock = clock
        self.targets = server_targets(settings)
        self._sources = call_sources(self.targets)  # names looked up now, not at a switch
        #: where each server last answered a probe (the core's verdicts, main thread)
        self.answered: dict[Server, tuple[str, int]] = {}
        self.board = StatusBoard(self.facts)
        self.board.watch_blf(settings.blf.keys)
        self.sip = build_sip_stack(settings, hooks.on_sip_event)
        self.apps = PhoneApps(live)
        self.board.set_apps(self.apps.point_to(Server.PRIMARY))
        self.vpn = build_vpn(settings) if settings.vpn.enabled else None
        self.switch = Switch(self.sip, self.apps, self.vpn)
        self.heartbeats = Heartbeats(clock, WORKERS)
        self.resume = ResumeFile(Path(settings.service.control_socket).parent / "resume")
        self.monitor = self._build_monitor(settings, hooks)
        self.control = ControlServer(
            settings.service.control_socket,
            hooks.on_control,
            on_beat=lambda: self.heartbeats.beat("control"),
        )
        self.device = DeviceOutput(
            settings.board.profile, state_dir=settings.service.state_dir, on_key=hooks.on_key
        )

    def _build_monitor(self, settings: Settings, hooks: Hooks) -> KeepaliveMonitor:
        policy = policy_settings(settings)
        # SPEC §1: start_0 at random within the first interval, so phones do not align.
        first_cycle_delay_s = random.uniform(0.0, policy.interval_s)  # noqa: S311 - not secret
        resumed = self.resume.load(self.clock.now(), policy.interval_s)
        resume_on = Server.PRIMARY if resumed is None else resumed[0]
        if resumed is not None:  # a restart, not a boot: judge the servers at once
            first_cycle_delay_s = 0.0
            log.info("keepalive: restarted %.1f s after a record of %s in use -> resume there, "
                     "first cycle now", resumed[1], resume_on.value)  # fmt: skip
        log.info("keepalive: first cycle in %.0f ms (%s), then every %g s",
                 first_cycle_delay_s * 1000, "random, SPEC §1" if resumed is None else "resumed",
                 policy.interval_s)  # fmt: skip
        prober = make_prober(
            probe_targets(self.targets),
            transport=settings.server.transport,
            tls_ca_file=settings.server.tls_ca_file,
            from_user=settings.account.username,
            domain=settings.account.domain or settings.server.address,
            user_agent=settings.sip.user_agent,
            clock=self.clock,
        )
        return KeepaliveMonitor(
            FailoverPolicy(policy, self.clock.now(), first_cycle_delay_s, resume_on=resume_on),
            prober,
            self.clock,
            on_action=hooks.on_action,
            observe=hooks.observe,
            on_beat=lambda: self.heartbeats.beat("keepalive"),
        )

    def facts(self) -> BoardFacts:
        """What the status shows of the settings in force (read at each snapshot)."""
        settings = self.live.get()
        return BoardFacts(
            settings.account.username,
            {role: (t.probe.host, t.probe.port) for role, t in self.targets.items()},
            keepalive=settings.redundancy.sip_keep_alive_mode,
            interval_s=float(settings.redundancy.sip_keep_alive_interval),
        )

    def plan(self, action: UseServer) -> SwitchPlan:
        """The switch `action` asks for: where the server answered, and who may call."""
        sip = sip_target(self.targets[action.server], action.address)
        left = Leaving.from_verdict(action.left_alive)  # SPEC §10: a dead one gets nothing
        return SwitchPlan(action.server, sip, with_answers(self._sources, self.answered), left)

    def allow_sources(self) -> None:
        """Tell the SIP stack where calls and check-syncs may come from: both servers and
        their proxies (SPEC §2, §7), from its start, not only from the first switch."""
        self.sip.accept_calls_from(with_answers(self._sources, self.answered))

    def prepare(self, new: Settings) -> Prepared:
        """What `apply(new)` needs that may look names up (call sources): on the calling
        thread, so that the pjsua2 thread never waits for DNS (issue 10)."""
        targets = server_targets(new)
        return Prepared(new, targets, call_sources(targets))

    def apply(self, new: Settings | Prepared) -> Applied:
        """Put `new` in force on the running phone (on the main thread: it drives pjsua2).

        Each part takes only what concerns it (`changeplan`): redundancy timing and server
        addresses reach the core and the prober from the next cycle (SPEC §7); the account
        re-registers on the server in use; BLF keys are added and removed; app URLs and
        the VPN change by difference. Keys that cannot change live are in
        `Applied.plan.restart` (the caller re-execs). When the server in use moved,
        `Applied.moved` says so: the caller re-registers there.
        """
        prepared = new if isinstance(new, Prepared) else self.prepare(new)
        new = prepared.settings
        old = self.live.swap(new)
        plan = plan_changes(old, new)
        moved = self._retarget(prepared) if plan.retarget else False
        if plan.account:
            self.sip.set_account(sip_identity(new), register_expires=register_expires(new))
        if plan.auto_answer:
            self.sip.set_auto_answer(new.sip.auto_answer)
        if plan.blf:
            self.board.watch_blf(new.blf.keys)
            self.sip.watch_blf(new.blf.keys)
        if plan.apps or plan.retarget:
            self.board.set_apps(self.apps.point_to(self.board.active))
        vpn_restart = plan.vpn and not self._apply_vpn(old, new)
        return Applied(plan, moved, vpn_restart)

    def _apply_vpn(self, old: Settings, new: Settings) -> bool:
        """The VPN by difference; False when only a new tunnel can take it (a restart)."""
        if self.vpn is None or not (old.vpn.enabled and new.vpn.enabled):
            return old.vpn.enabled == new.vpn.enabled and not new.vpn.enabled
        return self.vpn.reconfigure(new.vpn)

    def _retarget(self, prepared: Prepared) -> bool:
        """New targets for the prober and the core, new addresses calls and check-syncs
        may come from; whether the server in use moved."""
        active = self.board.active
        previous = self.targets.get(active)
        self.targets, self._sources = dict(prepared.targets), dict(prepared.sources)
        self.answered = {s: a for s, a in self.answered.items() if s in self.targets}
        self.allow_sources()
        self.monitor.reconfigure(policy_settings(prepared.settings), probe_targets(self.targets))
        return active in self.targets and self.targets[active] != previous


def probe_targets(targets: Mapping[Server, ServerTargets]) -> dict[Server, ProbeTarget]:
    """Each server's probe target, as the prober wants them."""
    return {role: t.probe for role, t in targets.items()}


def build_vpn(settings: Settings) -> WireGuardVpn:
    """The `[vpn]` tunnel (not started). pyroute2 and wireguard_tools load only here, when
    the VPN is on: a quarter of a second of start-up that a phone without one never pays."""
    from phoned.net.vpn import WireGuardVpn  # noqa: PLC0415 - see above

    return WireGuardVpn(settings.vpn, state_dir=settings.service.state_dir)


def register_expires(settings: Settings) -> int:
    """REGISTER's Expires: keep-alive off shortens it, so a dead server is noticed."""
    if not settings.redundancy.sip_keep_alive_mode:
        return min(settings.sip.register_expires, REGISTRATION_DRIVEN_MAX_EXPIRES_S)
    return settings.sip.register_expires


def sip_identity(settings: Settings) -> SipIdentity:
    """Who registers, from `[account]` (the password goes only to pjsua's credentials)."""
    account = settings.account
    return SipIdentity(
        username=account.username,
        password=account.password,
        auth_username=account.auth_username or account.username,
        display_name=account.display_name,
        domain=account.domain or None,
    )


def build_sip_stack(settings: Settings, on_event: Callable[[SipEvent], None]) -> PjsuaStack:
    """The pjsua2 adapter for these settings (not started)."""
    registration_driven = not settings.redundancy.sip_keep_alive_mode
    return PjsuaStack(
        sip_identity(settings),
        local_port=settings.sip.local_port,
        user_agent=settings.sip.user_agent,
        register_expires=register_expires(settings),
        on_event=on_event,
        auto_answer=settings.sip.auto_answer,
        tls_ca_file=settings.server.tls_ca_file,
        register_timeout_s=REGISTRATION_DRIVEN_TIMEOUT_S if registration_driven else None,
        blf_keys=settings.blf.keys,
    )
