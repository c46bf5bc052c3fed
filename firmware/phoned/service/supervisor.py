"""The supervisor: wires settings, core, prober, SIP stack and control socket; owns threads.

Owns: the main thread, which is also the pjsua2 thread (STACK-NOTES: one owner thread,
`libHandleEvents` polled here); the queue through which other threads hand it actions; the
status board's writes; signals; the order of start-up and shut-down. Must not touch:
decisions (the core's), sockets of the prober, or pjsua2 from any other thread.
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from phoned.clock import MonotonicClock
from phoned.config.loader import Settings
from phoned.core.events import (
    Action,
    CycleJudged,
    Event,
    ProbeAnswered,
    ProbeFailed,
    RegistrationFailed,
    SendProbe,
    Server,
    ServiceChanged,
    UseServer,
)
from phoned.core.failover import FailoverPolicy, PolicySettings
from phoned.device.output import DeviceOutput
from phoned.errors import PhonedError, VpnError
from phoned.logfmt import log_event
from phoned.net.apps import AppError, app_urls, fetch
from phoned.net.vpn import WireGuardVpn
from phoned.probe.resolve import make_prober
from phoned.service import journal, sdnotify
from phoned.service.control import ControlServer
from phoned.service.monitor import KeepaliveMonitor
from phoned.service.status import StatusBoard
from phoned.service.targets import call_sources, server_targets, sip_target
from phoned.sip.stack import (
    BlfChanged,
    CallChanged,
    CallInfo,
    PjsuaStack,
    RegistrationChanged,
    RegState,
    SipEvent,
    SipIdentity,
)

log = logging.getLogger("phoned")

#: pjsua2 event-loop slices. pjsua2 cannot be woken from another thread, so the loop polls:
#: briskly just after each deadline of the core (when UseServer may be queued: SPEC §9 wants
#: the REGISTER out within 50 ms), lazily otherwise (idle CPU < 1 %, SPEC §9). SIP traffic
#: itself wakes the loop at once whatever the slice.
_BUSY_POLL_MS = 3
_IDLE_POLL_MS = 100
_BUSY_WINDOW_S = 0.06
#: Registration failures that mean "this server cannot serve" (SPEC §1, keep-alive off).
_REGISTRATION_DEAD_CODES = frozenset({408, 503})
#: Keep-alive off (SPEC §1): registration is the only failure detector, so a REGISTER
#: must fail fast (pjsip's own timeout is 32 s) and refresh often enough to notice a dead
#: server: failover within about register refresh + 4 s.
_REGISTRATION_DRIVEN_TIMEOUT_S = 4.0
_REGISTRATION_DRIVEN_MAX_EXPIRES_S = 60


@dataclass
class _Command:
    """Work the control thread hands the pjsua2 thread, and its outcome."""

    run: Callable[[], dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def policy_settings(settings: Settings) -> PolicySettings:
    """The core's view of the `[redundancy]` settings."""
    red = settings.redundancy
    return PolicySettings(
        interval_s=float(red.sip_keep_alive_interval),
        keepalive=red.sip_keep_alive_mode,
        backup_enabled=settings.backup_enabled,
        failback_cycles=red.failback_cycles,
    )


class Supervisor:
    """Runs the phone until SIGTERM; `run()` returns the process exit code."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._targets = server_targets(settings)
        self._clock = MonotonicClock()
        self._actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ready = False
        self.board = StatusBoard(
            settings.account.username,
            {role: (t.probe.host, t.probe.port) for role, t in self._targets.items()},
            keepalive=settings.redundancy.sip_keep_alive_mode,
            interval_s=float(settings.redundancy.sip_keep_alive_interval),
        )
        self.board.watch_blf(settings.blf.keys)
        self.board.set_apps(self._app_urls(Server.PRIMARY))
        self._sip = _sip_stack(settings, self._on_sip_event)
        policy = policy_settings(settings)
        # SPEC §1: start_0 at random within the first interval, so phones do not align.
        first_cycle_delay_s = random.uniform(0.0, policy.interval_s)  # noqa: S311 - not secret
        self._prober = make_prober(
            {role: t.probe for role, t in self._targets.items()},
            transport=settings.server.transport,
            tls_ca_file=settings.server.tls_ca_file,
            from_user=settings.account.username,
            domain=settings.account.domain or settings.server.address,
            user_agent=settings.sip.user_agent,
            clock=self._clock,
        )
        self._monitor = KeepaliveMonitor(
            FailoverPolicy(policy, self._clock.now(), first_cycle_delay_s),
            self._prober,
            self._clock,
            on_action=self._actions.put,
            observe=self._observe,
        )
        self._control = ControlServer(settings.service.control_socket, self._on_control)
        self._vpn = (
            WireGuardVpn(settings.vpn, state_dir=settings.service.state_dir)
            if settings.vpn.enabled
            else None
        )
        self._vpn_status_at = 0.0
        self._device = DeviceOutput(
            settings.board.profile, state_dir=settings.service.state_dir, on_key=self._on_key
        )

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, then stop cleanly."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            if self._vpn is not None:  # SPEC §2: the tunnel first, so SIP travels it
                self._vpn.start(Server.PRIMARY)
            self._sip.start()
            self._sip.accept_calls_from(call_sources(self._targets, self._prober.resolved))
        except PhonedError:
            self._control.stop()  # nothing else started yet
            if self._vpn is not None:
                self._vpn.stop()
            raise
        self._control.start()
        self._monitor.start()
        log_event(log, "started", f"phoned: started as {self._settings.account.username}")
        code = 0
        while not self._stop.is_set():
            self._sip.poll(self._poll_ms())
            self._drain_actions()
            self._drain_commands()
            self._refresh_vpn_status()
            vpn_alive = self._vpn is None or self._vpn.alive
            if not (self._monitor.alive and self._control.alive and vpn_alive):
                log.error("phoned: a worker thread died; exiting so that it is restarted")
                code = 1
                break
            sdnotify.watchdog()
        self._shutdown()
        return code

    def _poll_ms(self) -> int:
        now = self._clock.now()
        if now - self._monitor.last_deadline_at < _BUSY_WINDOW_S:
            return _BUSY_POLL_MS
        deadline = self._monitor.next_deadline_at
        if deadline is None:
            return _IDLE_POLL_MS
        return max(1, min(_IDLE_POLL_MS, int((deadline - now) * 1000) + 1))

    def stop(self) -> None:
        """Ask `run()` to return (thread-safe)."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("phoned: %s received, stopping", signal.Signals(signum).name)
        self._stop.set()

    def _shutdown(self) -> None:
        started = time.monotonic()
        sdnotify.notify("STOPPING=1")
        self._monitor.stop()
        self._sip.shutdown(timeout_s=1.0)  # un-REGISTER still travels the tunnel
        if self._vpn is not None:
            self._vpn.stop()  # routes removed (SPEC §6), interface and wireguard-go gone
        self._control.stop()
        self._device.close()
        log_event(log, "stopped", "phoned: stopped", took_ms=(time.monotonic() - started) * 1000)

    # -- actions from the core (on this thread) ------------------------------------
    def _drain_actions(self) -> None:
        while True:
            try:
                action = self._actions.get_nowait()
            except queue.Empty:
                return
            self._execute(action)

    def _execute(self, action: Action) -> None:
        if isinstance(action, UseServer):
            self._use_server(action)
        elif isinstance(action, CycleJudged):
            self._cycle_judged(action)
        elif isinstance(action, ServiceChanged):
            self.board.set_service(action.service)
            journal.service(action)
            self._publish_status()

    def _use_server(self, action: UseServer) -> None:
        targets = self._targets[action.server]
        sip = sip_target(targets, self._prober.resolved(action.server))
        journal.switch(action, self.board.active, targets.label, f"{sip.host}:{sip.port}")
        self.board.set_active(action.server, action.reason)
        # SPEC §2 order: VPN routes, then SIP, then apps; each step's outcome in the status.
        self.board.set_step("vpn", self._move_routes(action.server))
        self._sip.accept_calls_from(call_sources(self._targets, self._prober.resolved))
        self._sip.use_server(action.server, sip)
        self.board.set_step("sip", f"registering on {action.server.value} {sip.host}:{sip.port}")
        urls = self._app_urls(action.server)
        self.board.set_apps(urls)
        self.board.set_step("apps", f"{len(urls)} app(s) on {action.server.value}")
        self._refresh_vpn_status(force=True)  # a netlink dump: after SIP, not before it
        self._publish_status()

    def _move_routes(self, server: Server) -> str:
        if self._vpn is None:
            return "off"
        try:
            self._vpn.point_to(server)
        except VpnError as exc:  # SIP and apps still move: the backup may be reachable
            log.error("%s", exc)
            return f"failed: {exc}"
        return f"routes via the {server.value} peer"

    def _refresh_vpn_status(self, *, force: bool = False) -> None:
        """The VPN's state for the status board, read on this thread (every 5 s)."""
        now = self._clock.now()
        if self._vpn is None or (not force and now - self._vpn_status_at < 5.0):
            return
        self._vpn_status_at = now
        self.board.set_vpn(self._vpn.status())

    def _app_urls(self, server: Server) -> dict[str, str]:
        red = self._settings.redundancy
        return app_urls(
            self._settings.apps, server, self._settings.server.address,
            red.backup_destination_address,
        )  # fmt: skip

    def _cycle_judged(self, action: CycleJudged) -> None:
        self.board.set_cycle(action.cycle, action.verdicts)
        for verdict in action.verdicts:
            journal.verdict(action.cycle, verdict, self._targets[verdict.server].probe.host)
        self._publish_status()
        self._mark_ready()

    # -- events from pjsua2 (on this thread) ------------------------------------------
    def _on_sip_event(self, event: SipEvent) -> None:
        if isinstance(event, RegistrationChanged):
            self._on_registration(event)
        elif isinstance(event, CallChanged):
            self._on_call(event.call)
        elif isinstance(event, BlfChanged):
            self.board.set_blf(event.ext, event.state.value)
            journal.blf(event)
            self._publish_status()

    def _on_call(self, call: CallInfo) -> None:
        self.board.set_call(call.call_id, None if call.state.value == "ended" else _call_dict(call))
        journal.call(call)

    def _on_registration(self, event: RegistrationChanged) -> None:
        detail = f"{event.code} {event.reason}" if event.code else event.reason
        if event.rejected:
            user = self._settings.account.auth_username or self._settings.account.username
            detail = f"{event.server.value} rejected credentials for {user} ({detail})"
        self.board.set_registration(event.server, event.state.value, detail)
        journal.registration(event, self._targets[event.server].probe.host, detail)
        if event.state is RegState.REGISTERED:
            self._mark_ready()
        dead = event.state is RegState.FAILED and event.code in _REGISTRATION_DEAD_CODES
        if dead and event.server is self.board.active:
            self._monitor.post(RegistrationFailed(event.server, detail))
        self._publish_status()

    def _mark_ready(self) -> None:
        if not self._ready:
            self._ready = True
            sdnotify.notify("READY=1")

    def _publish_status(self) -> None:
        snap = self.board.snapshot()
        self._device.show(snap)  # SPEC §5: LEDs and display follow every change
        self.board.set_device(self._device.state())
        sdnotify.notify(f"STATUS={snap['display']['top_line']} ({snap['service']})")

    def _on_key(self, index: int) -> None:
        """A line key was pressed (gpiozero's thread): call that BLF key's extension."""
        keys = self._settings.blf.keys
        if index >= len(keys):
            log.info("key: line key %d pressed, no BLF extension on it", index + 1)
            return
        log.info("key: line key %d pressed -> calling %s", index + 1, keys[index])
        self._commands.put(_Command(lambda: self._call(keys[index])))

    # -- probes and answers (on the monitor thread: log only) ------------------------
    def _observe(self, item: Event | SendProbe, _now: float) -> None:
        if isinstance(item, SendProbe | ProbeAnswered | ProbeFailed):
            journal.probe(item, self._targets[item.server].probe.host)

    # -- control socket (on the control thread; pjsua2 work is handed over) ------------
    def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "status":
            return self.board.snapshot()
        if cmd == "call":
            ext = request.get("ext")
            if not isinstance(ext, str) or not ext.strip():
                raise ValueError("call needs an extension, e.g. phoned call 1002")
            return self._on_sip_thread(lambda: self._call(ext.strip()))
        if cmd == "app":
            name = str(request.get("name"))
            url = self.board.app_url(name)
            if url is None:
                known = ", ".join(self.board.snapshot()["apps"]) or "none configured"
                raise ValueError(f"no app {name!r} (apps: {known})")
            try:
                page = fetch(name, url)  # on this thread: pjsua2 is not involved
            except AppError as exc:
                raise ValueError(str(exc)) from exc
            return {
                "name": page.name,
                "url": page.url,
                "status": page.status,
                "content_type": page.content_type,
                "content": page.content.decode("utf-8", errors="replace"),
            }
        if cmd == "hangup":
            call_id = request.get("call_id")
            if call_id is not None and not isinstance(call_id, int):
                raise ValueError("hangup takes a call id (a number)")
            return self._on_sip_thread(lambda: {"ended": self._sip.hangup(call_id)})
        raise ValueError(f"unknown command: {cmd}")

    def _call(self, ext: str) -> dict[str, Any]:
        call_id = self._sip.call(ext)
        return {"call_id": call_id, "server": self.board.active.value}

    def _on_sip_thread(
        self, run: Callable[[], dict[str, Any]], timeout_s: float = 3.0
    ) -> dict[str, Any]:
        command = _Command(run)
        self._commands.put(command)
        if not command.done.wait(timeout_s):
            raise ValueError(f"the SIP stack did not answer within {timeout_s:.0f} s")
        if command.error:
            raise ValueError(command.error)
        return command.result

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command.result = command.run()
            except PhonedError as exc:
                command.error = str(exc)
            finally:
                command.done.set()


def _call_dict(call: CallInfo) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "remote": call.remote_uri,
        "state": call.state.value,
        "direction": call.direction.value,
        "server": call.server.value,
        "duration_s": round(call.duration_s, 1),
    }


def _sip_stack(settings: Settings, on_event: Callable[[SipEvent], None]) -> PjsuaStack:
    registration_driven = not settings.redundancy.sip_keep_alive_mode
    expires = settings.sip.register_expires
    if registration_driven:
        expires = min(expires, _REGISTRATION_DRIVEN_MAX_EXPIRES_S)
    return PjsuaStack(
        _identity(settings),
        local_port=settings.sip.local_port,
        user_agent=settings.sip.user_agent,
        register_expires=expires,
        on_event=on_event,
        auto_answer=settings.sip.auto_answer,
        tls_ca_file=settings.server.tls_ca_file,
        register_timeout_s=_REGISTRATION_DRIVEN_TIMEOUT_S if registration_driven else None,
        blf_keys=settings.blf.keys,
    )


def _identity(settings: Settings) -> SipIdentity:
    account = settings.account
    return SipIdentity(
        username=account.username,
        password=account.password,
        auth_username=account.auth_username or account.username,
        display_name=account.display_name,
        domain=account.domain or None,
    )
