"""The supervisor: the main thread's loop, which is also the pjsua2 thread; owns threads.

Owns: the order of start-up and shut-down, signals (SIGTERM/SIGINT stop, SIGHUP re-reads
the settings), whether the process must re-exec itself (`reexec`, SPEC §7), the pjsua2
event loop (`libHandleEvents` polled here, STACK-NOTES: one
owner thread), carrying out the core's actions (a `UseServer` through `switch.Switch`),
turning SIP events into status and log lines, the watchdog ping (only when every worker
has beaten since the last one) and sd_notify. Everything is built by `wiring.Phone`.
Must not touch: decisions (the core's), the prober or its sockets, name lookups, or
pjsua2 from any other thread (other threads hand work over through `handover`).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

from phoned.clock import MonotonicClock
from phoned.config.live import LiveSettings
from phoned.config.loader import SettingsError
from phoned.config.settings import Settings
from phoned.core.events import (
    Action,
    CycleJudged,
    CycleVoided,
    Event,
    ProbeAnswered,
    ProbeFailed,
    RegistrationFailed,
    SendProbe,
    Server,
    ServiceChanged,
    UseServer,
)
from phoned.errors import PhonedError
from phoned.logfmt import log_event
from phoned.net.linkwatch import LinkWatch
from phoned.service import journal, sdnotify
from phoned.service.applier import ConfigApplier
from phoned.service.configsource import Built, ConfigSource
from phoned.service.handover import MainThreadWork
from phoned.service.provisioning import Provisioner
from phoned.service.requests import ControlRequests
from phoned.service.wiring import Hooks, Phone
from phoned.sip.stack import (
    BlfChanged,
    CallChanged,
    CallInfo,
    CheckSyncReceived,
    RegistrationChanged,
    RegState,
    SipEvent,
)

log = logging.getLogger("phoned")

#: pjsua2 event-loop slices. pjsua2 cannot be woken from another thread, so the loop polls:
#: briskly just after each deadline of the core (when UseServer may be queued: SPEC §9 wants
#: the REGISTER out within 50 ms) and while a provisioning fetch runs (its apply comes to
#: this thread), lazily otherwise (idle CPU < 1 %, SPEC §9). SIP traffic
#: itself wakes the loop at once whatever the slice.
_BUSY_POLL_MS = 3
_IDLE_POLL_MS = 100
_BUSY_WINDOW_S = 0.06
#: A worker silent this long is named in the log (the watchdog is no longer pinged).
_STUCK_AFTER_S = 10.0
#: How long `phoned resync` waits for the fetch (5 s at most) and the apply (the CLI
#: waits 15 s), and how long the worker waits for this thread to apply.
_RESYNC_TIMEOUT_S = 10.0
_APPLY_TIMEOUT_S = 3.0


class Supervisor:
    """Runs the phone until SIGTERM; `run()` returns the process exit code."""

    def __init__(self, settings: Settings, source: ConfigSource | None = None) -> None:
        """Args:
        settings: the settings to start with (`ConfigSource.boot()`'s).
        source: where settings come from; default: `settings.source` alone.
        """
        self._clock = MonotonicClock()
        self._actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self._work = MainThreadWork()
        self._stop = threading.Event()
        self._ready = False
        self._stuck_logged: set[str] = set()
        self._vpn_status_at = float("-inf")
        self._link: LinkWatch | None = None  # SPEC §10: the phone's own link (run())
        #: True when `run()` returned to be re-exec'd (check-sync reboot, a key that
        #: cannot change live): the caller execs the same command line.
        self.reexec = False
        self._reboot_for: str | None = None
        live = LiveSettings(settings)
        self.source = source if source is not None else ConfigSource(settings.source)
        self._requests = ControlRequests(live, self._work, self._resync)
        hooks = Hooks(
            on_sip_event=self._on_sip_event,
            on_action=self._actions.put,
            observe=self._observe,
            on_key=self._on_key,
            on_control=self._requests.handle,
        )
        self.phone = Phone(live, hooks, self._clock)
        self._requests.attach(self.phone)
        self.board = self.phone.board
        self.board.show_config(lambda: self.source.report.as_dict())  # noqa: PLW0108 - replaced, read late
        self.board.show_counters(self._counters)
        self._applier = ConfigApplier(self.phone, self.source, self._use_server, self._clock)
        self.phone.heartbeats.add("provisioning")
        self._provisioner = Provisioner(
            self.source,
            live,
            self._deliver,
            self._clock,
            on_beat=lambda: self.phone.heartbeats.beat("provisioning"),
        )

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, then stop cleanly."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, lambda _s, _f: self._provisioner.request("SIGHUP"))
        self._start_adapters()
        self._watch_link()
        self.phone.control.start()
        self.phone.monitor.start()
        self._provisioner.start()
        ext = self.phone.live.get().account.username
        log_event(log, "started", f"phoned: started as {ext}")
        code = 0
        while not self._stop.is_set():
            self.phone.sip.poll(self._poll_ms())
            self._check_link()
            self._drain_actions()
            self._work.drain()
            if self._applier.flash_ended():
                self._publish_status()
            if self._restart_due():
                break
            self._refresh_vpn_status()
            if not self._workers_alive():
                log.error("phoned: a worker thread died; exiting so that it is restarted")
                code = 1
                break
            self._feed_watchdog()
        self._shutdown()
        return code

    def _start_adapters(self) -> None:
        phone = self.phone
        try:
            if phone.vpn is not None:  # SPEC §2: the tunnel first, so SIP travels it
                phone.vpn.start(Server.PRIMARY)
            phone.sip.start()
            phone.allow_sources()  # a check-sync may come before the first switch
        except PhonedError:
            phone.control.stop()  # nothing else started yet
            if phone.vpn is not None:
                phone.vpn.stop()
            raise

    def _workers_alive(self) -> bool:
        phone = self.phone
        vpn_alive = phone.vpn is None or phone.vpn.alive
        threads = (phone.monitor.alive, phone.control.alive, self._provisioner.alive)
        return all(threads) and vpn_alive

    def _restart_due(self) -> bool:
        """SPEC §7: re-exec for check-sync reboot or a key that cannot change live, once
        no call is up (an apply never drops a call)."""
        why = self._reboot_for or self._applier.restart_for
        if why is None or self.board.has_calls():
            return False
        log_event(log, "restart", f"phoned: restarting for {why} (un-REGISTER, re-exec)",
                  reason=why)  # fmt: skip
        self.reexec = True
        return True

    def _feed_watchdog(self) -> None:
        """SPEC §10 / STYLE §3: WATCHDOG=1 only once every worker beat since the last."""
        beats = self.phone.heartbeats
        stuck = set(beats.stuck(_STUCK_AFTER_S))
        for worker in sorted(stuck - self._stuck_logged):
            log.error("watchdog: %s silent for %.1f s, not pinging", worker, beats.silent_s(worker))
        self._stuck_logged = stuck
        if beats.due() and sdnotify.watchdog():
            beats.ping_sent()

    def _poll_ms(self) -> int:
        monitor = self.phone.monitor
        now = self._clock.now()
        if now - monitor.last_deadline_at < _BUSY_WINDOW_S or self._provisioner.busy:
            return _BUSY_POLL_MS
        deadline = monitor.next_deadline_at
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
        phone = self.phone
        self._provisioner.stop()
        phone.monitor.stop()
        phone.sip.shutdown(timeout_s=1.0)  # un-REGISTER still travels the tunnel
        if self._link is not None:
            self._link.close()
        if phone.vpn is not None:
            phone.vpn.stop()  # routes removed (SPEC §6), interface and wireguard-go gone
        phone.control.stop()
        phone.device.close()
        log_event(log, "stopped", "phoned: stopped", took_ms=(time.monotonic() - started) * 1000)

    # -- the phone's own link (SPEC §10: registered again once it is back) -----------
    def _watch_link(self) -> None:
        """Netlink link and address events, read on this loop (never the VPN's own)."""
        vpn = self.phone.live.get().vpn
        self._link = LinkWatch(ignore=[vpn.interface] if vpn.enabled else [])

    def _check_link(self) -> None:
        change = self._link.poll() if self._link is not None else None
        if change is not None:
            log_event(log, "link", f"link: {change.reason}", addresses=" ".join(change.addresses))
            self.phone.sip.link_changed(change.reason)  # sip/moves.py Rule 7

    # -- new settings ---------------------------------------------------------------
    def _resync(self) -> dict[str, Any]:
        """`phoned resync` (control thread): fetch and apply now, wait for the outcome."""
        return self._provisioner.resync(_RESYNC_TIMEOUT_S)

    def _deliver(self, built: Built | SettingsError, why: str) -> dict[str, Any]:
        """From the provisioning worker: names looked up here, then the apply on the main
        thread; waits for it."""
        prepared = None if isinstance(built, SettingsError) else self.phone.prepare(built.settings)

        def run() -> dict[str, Any]:
            try:
                return self._applier.deliver(built, why, prepared)
            finally:
                self._publish_status()  # the flash, the new BLF keys, the config section

        reply = self._work.submit("apply", run, timeout_s=_APPLY_TIMEOUT_S)
        if "error" in reply:  # rejected: the applier logged it; `phoned resync` says it
            raise PhonedError(reply["error"])
        return reply

    def _on_check_sync(self, event: CheckSyncReceived) -> None:
        """SPEC §7 Force Update: fetch and apply (off this thread), or restart."""
        source = f"{event.source[0]}:{event.source[1]}"
        if not self.phone.live.get().provisioning.check_sync:
            log_event(log, "check_sync", f"check-sync from {source}: ignored (check_sync = "
                      "false)", source=source, result="ignored")  # fmt: skip
            return
        if event.reboot:
            log_event(log, "check_sync", f"check-sync from {source}: reboot requested",
                      source=source, result="reboot")  # fmt: skip
            self._reboot_for = f"check-sync reboot from {source}"
            return
        log_event(log, "check_sync", f"check-sync from {source}: fetching the settings",
                  source=source, result="fetch")  # fmt: skip
        self._provisioner.request("check-sync")

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
        elif isinstance(action, CycleVoided):
            log_event(log, "cycle_void", f"cycle {action.cycle}: void, the service stalled "
                      f"{action.stalled_s:.1f} s past an attempt -> nothing decided, back on "
                      "the grid", level=logging.WARNING, cycle=action.cycle,
                      stalled_s=round(action.stalled_s, 3))  # fmt: skip

    def _use_server(self, action: UseServer) -> None:
        phone = self.phone
        plan = phone.plan(action)
        label = phone.targets[action.server].label
        journal.switch(action, self.board.active, label, f"{plan.sip.host}:{plan.sip.port}")
        self.board.set_active(action.server, action.reason)
        phone.resume.save(action.server, self._clock.now())
        report = phone.switch.run(plan)  # SPEC §2 steps 1-3, in order
        for step, outcome in report.steps.items():
            self.board.set_step(step, outcome)
        self.board.set_apps(report.apps)
        self._refresh_vpn_status(force=True)  # a netlink dump: after SIP, not before it
        self._publish_status()  # step 4

    def _refresh_vpn_status(self, *, force: bool = False) -> None:
        """The VPN's state for the status board, read on this thread (every 5 s)."""
        vpn = self.phone.vpn
        now = self._clock.now()
        if vpn is None or (not force and now - self._vpn_status_at < 5.0):
            return
        self._vpn_status_at = now
        self.board.set_vpn(vpn.status())

    def _cycle_judged(self, action: CycleJudged) -> None:
        self.board.set_cycle(action.cycle, action.verdicts)
        self.phone.resume.save(self.board.active, self._clock.now())
        for verdict in action.verdicts:
            if verdict.up and verdict.address is not None:
                self.phone.answered[verdict.server] = verdict.address
            journal.verdict(action.cycle, verdict, self.phone.targets[verdict.server].probe.host)
            self.phone.sip.server_judged(verdict.server, up=verdict.up)  # a failback left it
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
        elif isinstance(event, CheckSyncReceived):
            self._on_check_sync(event)

    def _on_call(self, call: CallInfo) -> None:
        self.board.set_call(call.call_id, None if call.state.value == "ended" else _call_dict(call))
        journal.call(call)

    def _on_registration(self, event: RegistrationChanged) -> None:
        detail = f"{event.code} {event.reason}" if event.code else event.reason
        if event.rejected:
            account = self.phone.live.get().account
            user = account.auth_username or account.username
            detail = f"{event.server.value} rejected credentials for {user} ({detail})"
        self.board.set_registration(event.server, event.state.value, detail)
        target = self.phone.targets.get(event.server)
        journal.registration(event, target.probe.host if target else "?", detail)
        if event.state is RegState.REGISTERED:
            self._mark_ready()
        if event.server_unreachable:  # the core decides whether that moves anything
            self.phone.monitor.post(RegistrationFailed(event.server, detail))
        self._publish_status()

    def _mark_ready(self) -> None:
        if not self._ready:
            self._ready = True
            sdnotify.notify("READY=1")

    def _counters(self) -> dict[str, int]:
        """SPEC §1, §10: what reached the phone and never counted, since it started."""
        counts = self.phone.monitor.counts
        return {
            "unmatched_replies": counts.unmatched,
            "late_replies": counts.late,
            "voided_cycles": counts.voided_cycles,
            "refused_check_syncs": self.phone.sip.checksync_refused,
        }

    def _publish_status(self) -> None:
        snap = self.board.snapshot()
        # SPEC §5: LEDs and display follow every change; a provisioning flash wins
        self.phone.device.show(snap, self._applier.flash())
        self.board.set_device(self.phone.device.state())
        sdnotify.notify(f"STATUS={snap['display']['top_line']} ({snap['service']})")

    def _on_key(self, index: int) -> None:
        """A line key was pressed (gpiozero's thread): call that BLF key's extension."""
        keys = self.phone.live.get().blf.keys
        if index >= len(keys):
            log.info("key: line key %d pressed, no BLF extension on it", index + 1)
            return
        log.info("key: line key %d pressed -> calling %s", index + 1, keys[index])
        self._work.post("call", self._requests.call_work(keys[index]))

    # -- probes and answers (on the monitor thread: log only) ------------------------
    def _observe(self, item: Event | SendProbe, _now: float) -> None:
        if isinstance(item, SendProbe | ProbeAnswered | ProbeFailed):
            target = self.phone.targets.get(item.server)
            journal.probe(item, target.probe.host if target else "?")


def _call_dict(call: CallInfo) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "remote": call.remote_uri,
        "state": call.state.value,
        "direction": call.direction.value,
        "server": call.server.value,
        "duration_s": round(call.duration_s, 1),
    }
