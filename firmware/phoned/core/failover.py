"""The failover core (SPEC §1): when to probe, how to judge a cycle, which PBX to use.

Owns: the probe schedule of every cycle, each server's verdict in each cycle, the choice of
the active server and the service state. Sans-IO like aioquic: every call takes `now`
(monotonic seconds), `next_deadline()` says when to call `on_deadline()`, and every call
returns the actions (`phoned.core.events`) the shell must carry out, in order.
Must not touch: sockets, threads, clocks, sleeps, randomness or logging. It imports only
typing helpers, `enum` and the core's own modules.

Rules:
1. Grid. Cycle n starts at start_0 + n * interval_s, computed from the grid's anchor, never
   by adding to the previous start, so it never drifts. start_0 = now + first_cycle_delay_s
   (drawn at random by the shell). If `on_deadline()` comes so late that a whole cycle was
   missed, the missed cycles are skipped and the next one starts at the first grid point
   >= now: no burst. Cycle numbers are grid indexes; skipped numbers never exist.
2. Attempts. At a cycle start the primary and, if enabled, the backup get attempt 1 at the
   same instant. Each server on its own: attempt k+1 at t0 + sum(timeouts[:k]) unless it
   is up; down at t0 + sum(timeouts) (800/400/400 ms: attempts at 0, 0.8, 1.2, down at 1.6).
3. Answers. A `ProbeAnswered` with a status >= 200 other than 503, for a server whose cycle
   is not judged yet, makes it up at once, whichever attempt it answers. 1xx is ignored.
   503 and `ProbeFailed` are misses of that attempt, kept for the verdict's reason; the
   schedule goes on unchanged. Answers for a judged or dropped cycle are ignored and
   counted (`PolicySnapshot.ignored_answers`).
4. Order. Cycles overlap when interval_s < sum(timeouts). A cycle is judged (`CycleJudged`)
   when every server it probed has a verdict, and cycles are judged in their order: a later
   cycle waits for an earlier one.
5. Decision. `RULES` maps (active server, primary's outcome, backup's outcome) to a move;
   the service is then OK if the (new) active server was up, else NO_SERVICE. A backup
   that is disabled *now* counts as OFF even if an older cycle probed it.
6. Failback happens at the moment the primary's answer that completes `failback_cycles`
   good cycles arrives (SPEC §1), without waiting for the backup's verdict of that cycle,
   provided every earlier cycle is judged (the count needs their primary verdicts). When
   the cycle is judged later, the phone is already on the primary: nothing more moves.
7. Keep-alive off: no cycles at all; the service is OK (it follows registration) and a
   `RegistrationFailed` for the active server switches to the other when backup is enabled.
8. Settings apply from the next cycle: a started cycle keeps its own timeouts, the next
   start already scheduled is kept and the grid goes on from it with the new interval.
9. `handle()` first runs every deadline already passed, so an event is judged against the
   schedule as of `now`. A `now` older than one already seen counts as that one (the shell
   may wake a little before a deadline it then reports). The shell hands an answer's
   arrival time as `now`, so a reply that arrived in time counts however late it is read.
10. Stalls (SPEC §10). An attempt whose deadline is only run once the wait after it is over
   too (the process was stopped, paused or starved) cannot follow §1 on the wire: its cycle
   is voided (`CycleVoided`), with no verdict and no decision. Whole cycles missed are
   skipped (rule 1), and so is a start more than 100 ms late: the grid goes on, never
   replayed in a burst nor shifted.
"""

from __future__ import annotations

from phoned.core.cycle import Cycle, ServerProbe
from phoned.core.decision import RULES, Move, Outcome
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
    Service,
    ServiceChanged,
    SettingsChanged,
    UseServer,
    Verdict,
)
from phoned.core.policy import PolicyError, PolicySettings, PolicySnapshot

_SERVICE_UNAVAILABLE = 503  # SPEC §1: "503 counts as no reply"
_KEEPALIVE_OFF = "keep-alive probing off: service follows registration"
#: A cycle start this much later than its grid point is skipped (rule 10): far beyond a
#: busy machine's scheduling delay (ms), well below any §1 wait.
_LATE_START_S = 0.1


_P, _B = Server.PRIMARY, Server.BACKUP
_UP, _DOWN, _OFF = Outcome.UP, Outcome.DOWN, Outcome.OFF


class FailoverPolicy:
    """SPEC §1 as a state machine fed with events and deadlines (see the module rules)."""

    def __init__(
        self,
        settings: PolicySettings,
        now: float,
        first_cycle_delay_s: float,
        *,
        resume_on: Server = Server.PRIMARY,
    ) -> None:
        """Args:
        settings: the redundancy settings in force.
        now: the current monotonic time, seconds.
        first_cycle_delay_s: start_0 - now, drawn by the shell in [0, interval_s).
        resume_on: the server in use before a restart (the shell's record); the backup
            is only resumed on while backup is enabled.

        Raises:
            PolicyError: a negative delay.
        """
        if first_cycle_delay_s < 0:
            raise PolicyError(f"first_cycle_delay_s must be >= 0, got {first_cycle_delay_s}")
        self._settings = settings
        self._first_delay_s = first_cycle_delay_s
        self._now = now
        self._started = False
        resumable = resume_on is _B and settings.backup_enabled
        self._active = _B if resumable else _P
        self._service = Service.STARTING
        self._cycle = -1
        self._anchor_s = now + first_cycle_delay_s  # the grid: start_n = anchor_s + ...
        self._anchor_cycle = 0  # ... (n - anchor_cycle) * interval_s
        self._next_cycle: int | None = 0 if settings.keepalive else None
        self._cycles: dict[int, Cycle] = {}  # pending, in cycle order
        self._last_verdicts: dict[Server, Verdict] = {}
        self._good_primary = 0
        self._ignored_answers = 0
        self._voided_cycles = 0

    @property
    def active(self) -> Server:
        """The server registration, subscriptions, new calls and apps go to."""
        return self._active

    @property
    def service(self) -> Service:
        """Whether the active server answered in the last judged cycle."""
        return self._service

    @property
    def cycle(self) -> int:
        """The number of the last cycle started; -1 before the first."""
        return self._cycle

    @property
    def ignored_answers(self) -> int:
        """Answers for judged, dropped or decided probes (late or stale), so far."""
        return self._ignored_answers

    @property
    def voided_cycles(self) -> int:
        """Cycles dropped undecided because the shell stalled in them (rule 10)."""
        return self._voided_cycles

    def snapshot(self) -> PolicySnapshot:
        """Return the state for status displays and `phoned status`."""
        next_at = None if self._next_cycle is None else self._grid_start(self._next_cycle)
        return PolicySnapshot(
            active=self._active,
            service=self._service,
            cycle=self._cycle,
            next_cycle_at=next_at,
            last_verdicts=tuple(self._last_verdicts[s] for s in Server if s in self._last_verdicts),
            good_primary_cycles=self._good_primary,
            ignored_answers=self._ignored_answers,
            pending_cycles=tuple(self._cycles),
            voided_cycles=self._voided_cycles,
        )

    def start(self, now: float) -> list[Action]:
        """Begin on the primary (or the server resumed on). Returns `UseServer` (and the
        service state when keep-alive is off). Raises `PolicyError` when already started."""
        if self._started:
            raise PolicyError("can't start: already started")
        self._started = True
        # SPEC §1: start_0 within the first interval after start-up, counted from here
        # (the shell built this core before pjsua2 started: that time is not the grid's)
        self._anchor_s = now + self._first_delay_s
        self._tick(now)
        reason = "start" if self._active is _P else "resumed after a restart"
        actions: list[Action] = [UseServer(self._active, reason)]
        if not self._settings.keepalive:
            actions += self._set_service(Service.OK, _KEEPALIVE_OFF)
        return actions

    def next_deadline(self) -> float | None:
        """When to call `on_deadline()` next; None when nothing is scheduled."""
        item = self._earliest()
        return None if item is None else item[0]

    def on_deadline(self, now: float) -> list[Action]:
        """Run everything due by `now`: cycle starts, attempts, down verdicts, decisions.

        Raises:
            PolicyError: before `start()`.
        """
        self._require_started("a deadline")
        return self._run_due(self._tick(now))

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event; return the actions it (and any deadline passed) calls for.

        Raises:
            PolicyError: before `start()`, an unknown event, a probe result for a cycle
                never started, a server not probed, or an attempt never sent.
        """
        self._require_started(type(event).__name__)
        actions = self._run_due(self._tick(now))
        if isinstance(event, ProbeAnswered):
            actions += self._on_answer(event)
        elif isinstance(event, ProbeFailed):
            self._on_failure(event)
        elif isinstance(event, RegistrationFailed):
            actions += self._on_registration_failed(event)
        elif isinstance(event, SettingsChanged):
            actions += self._on_settings(event, self._now)
        else:
            raise PolicyError(f"can't handle {type(event).__name__}: not a policy event")
        return actions

    # ------------------------------------------------------------------ time and grid

    def _tick(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _require_started(self, what: str) -> None:
        if not self._started:
            raise PolicyError(f"can't handle {what} before start()")

    def _grid_start(self, cycle: int) -> float:
        return self._anchor_s + (cycle - self._anchor_cycle) * self._settings.interval_s

    def _earliest(self) -> tuple[float, int, int, ServerProbe | None] | None:
        """The next thing due: (when, cycle, server rank, probe or None for a start)."""
        if not self._started:
            return None
        items: list[tuple[float, int, int, ServerProbe | None]] = []
        if self._next_cycle is not None:
            items.append((self._grid_start(self._next_cycle), self._next_cycle, -1, None))
        for number, cycle in self._cycles.items():
            for rank, probe in enumerate(cycle.probes.values()):
                deadline = probe.deadline()
                if deadline is not None:
                    items.append((deadline, number, rank, probe))
        return min(items, key=lambda item: item[:3], default=None)

    def _run_due(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while (item := self._earliest()) is not None and item[0] <= now:
            _, number, _, probe = item
            if probe is None:
                actions += self._start_cycle(number, now)
            elif (stalled_s := probe.stalled_by(now)) is not None:
                actions += self._void(number, stalled_s)
            elif (send := probe.fire()) is not None:
                actions.append(send)
            else:
                actions += self._judge_ready()
        return actions

    def _start_cycle(self, number: int, now: float) -> list[Action]:
        # A start later than _LATE_START_S (a stall, rule 10) is skipped too, like whole
        # cycles missed: cycles stay on the grid, never a burst or a start off it.
        late_limit = min(self._grid_start(number + 1), self._grid_start(number) + _LATE_START_S)
        if late_limit < now:
            missed = int((now - self._anchor_s) // self._settings.interval_s)
            skip_to = max(number + 1, self._anchor_cycle + missed)
            while self._grid_start(skip_to) < now:
                skip_to += 1
            self._next_cycle = skip_to
            return []
        self._cycle, self._next_cycle = number, number + 1
        servers = [_P, _B] if self._settings.backup_enabled else [_P]
        cycle = Cycle.start(number, now, servers, self._settings.attempt_timeouts_s)
        self._cycles[number] = cycle
        return [SendProbe(server, number, 1) for server in servers]

    def _void(self, number: int, stalled_s: float) -> list[Action]:
        """Rule 10: drop cycle `number` undecided; later cycles may be judged now."""
        del self._cycles[number]
        self._voided_cycles += 1
        return [CycleVoided(number, stalled_s), *self._judge_ready()]

    # ------------------------------------------------------------------ probe results

    def _probe_for(self, event: ProbeAnswered | ProbeFailed) -> ServerProbe | None:
        """The probe an answer or failure belongs to; None when its cycle is over."""
        what = f"{type(event).__name__} for {event.server.value} cycle {event.cycle}"
        if event.attempt < 1:
            raise PolicyError(f"can't handle {what}: attempt {event.attempt} is out of range")
        if not 0 <= event.cycle <= self._cycle:
            raise PolicyError(f"can't handle {what}: last cycle started is {self._cycle}")
        cycle = self._cycles.get(event.cycle)
        if cycle is None:
            return None
        probe = cycle.probes.get(event.server)
        if probe is None:
            raise PolicyError(f"can't handle {what}: {event.server.value} is not probed")
        if event.attempt > probe.sent:
            raise PolicyError(
                f"can't handle {what}: attempt {event.attempt} never sent "
                f"({probe.sent} of {len(probe.send_offsets_s)} sent)"
            )
        return probe

    def _on_answer(self, event: ProbeAnswered) -> list[Action]:
        probe = self._probe_for(event)
        if probe is None or probe.verdict is not None:
            self._ignored_answers += 1
            return []
        if event.status_code < 200:  # provisional: not an answer to judge by
            return []
        if event.status_code == _SERVICE_UNAVAILABLE:
            probe.miss(event.attempt, f"answered {_SERVICE_UNAVAILABLE}", event.status_code)
            return []
        probe.judge_up(event.attempt, event.status_code, event.rtt_ms, event.address)
        return self._judge_ready()

    def _early_failback(self) -> list[Action]:
        """Rule 6: the primary's answer that completes `failback_cycles` fails back now,
        in the first cycle still open (earlier ones are judged: the count is known)."""
        open_cycle = next(iter(self._cycles.values()), None)
        if self._active is not _B or open_cycle is None:
            return []
        probe = open_cycle.probes.get(_P)
        if probe is None or probe.verdict is None or not probe.verdict.up:
            return []
        good = self._good_primary + 1
        if good < self._settings.failback_cycles:
            return []
        needed = self._settings.failback_cycles
        reason = f"primary {probe.verdict.reason}; primary up {good} of {needed} cycles"
        backup = open_cycle.probes.get(_B)
        pending = backup is not None and backup.verdict is None  # the shell waits for it
        use = self._use(_P, reason, probe.verdict.address, left_alive=None if pending else True)
        return [use, *self._set_service(Service.OK, reason)]

    def _on_failure(self, event: ProbeFailed) -> None:
        probe = self._probe_for(event)
        if probe is not None and probe.verdict is None:
            probe.miss(event.attempt, event.reason)

    # ------------------------------------------------------------------ decisions

    def _judge_ready(self) -> list[Action]:
        """Judge, in cycle order, every leading cycle whose verdicts are all in."""
        actions: list[Action] = []
        for number, cycle in list(self._cycles.items()):
            verdicts = cycle.verdicts()
            if verdicts is None:
                break
            del self._cycles[number]
            actions.append(CycleJudged(number, verdicts))
            actions += self._decide(cycle, verdicts)
        return actions + self._early_failback()

    def _outcome(self, cycle: Cycle, server: Server) -> Outcome:
        probe = cycle.probes.get(server)
        if probe is None or probe.verdict is None:
            return _OFF
        if server is _B and not self._settings.backup_enabled:
            return _OFF
        return _UP if probe.verdict.up else _DOWN

    def _decide(self, cycle: Cycle, verdicts: tuple[Verdict, ...]) -> list[Action]:
        for verdict in verdicts:
            self._last_verdicts[verdict.server] = verdict
        outcomes = {server: self._outcome(cycle, server) for server in Server}
        summary = ", ".join(f"{v.server.value} {v.reason}" for v in verdicts)
        if outcomes[_B] is _OFF:
            summary += ", backup disabled" if not self._settings.backup_enabled else ""
        move = RULES[(self._active, outcomes[_P], outcomes[_B])]
        good = self._active is _B and outcomes[_P] is _UP
        self._good_primary = self._good_primary + 1 if good else 0
        actions: list[Action] = []
        left_alive = outcomes[self._active] is not _DOWN
        if move is Move.SWITCH:
            actions.append(self._use(self._active.other, summary, left_alive=left_alive))
        elif move is Move.COUNT and self._good_primary >= self._settings.failback_cycles:
            needed = self._settings.failback_cycles
            reason = f"{summary}; primary up {self._good_primary} of {needed} cycles"
            actions.append(self._use(_P, reason))
        up = outcomes[self._active] is _UP
        return actions + self._set_service(Service.OK if up else Service.NO_SERVICE, summary)

    def _use(
        self,
        server: Server,
        reason: str,
        address: tuple[str, int] | None = None,
        *,
        left_alive: bool | None = True,
    ) -> UseServer:
        self._active = server
        self._good_primary = 0
        last = self._last_verdicts.get(server)
        if address is None and last is not None and last.up:
            address = last.address
        return UseServer(server, reason, address, left_alive=left_alive)

    def _set_service(self, service: Service, reason: str) -> list[Action]:
        if service is self._service:
            return []
        self._service = service
        return [ServiceChanged(service, reason)]

    # ------------------------------------------------------------------ other events

    def _on_registration_failed(self, event: RegistrationFailed) -> list[Action]:
        """SPEC §1: with keep-alive off, registration drives failover (and failback)."""
        settings = self._settings
        if settings.keepalive or not settings.backup_enabled or event.server is not self._active:
            return []
        reason = f"{event.server.value} registration failed: {event.reason}"
        return [self._use(event.server.other, reason, left_alive=False)]

    def _on_settings(self, event: SettingsChanged, now: float) -> list[Action]:
        new = event.settings
        if not isinstance(new, PolicySettings):
            raise PolicyError(f"can't handle SettingsChanged with {type(new).__name__}")
        next_start = None if self._next_cycle is None else self._grid_start(self._next_cycle)
        self._settings = new
        actions: list[Action] = []
        if self._active is _B and not new.backup_enabled:
            actions.append(self._use(_P, "backup disabled by new settings"))
        if not new.keepalive:
            self._cycles.clear()
            self._next_cycle = None
            self._good_primary = 0
            actions += self._set_service(Service.OK, _KEEPALIVE_OFF)
        elif self._next_cycle is None or next_start is None:  # turned on: fresh first delay
            self._next_cycle = self._cycle + 1
            self._anchor_cycle, self._anchor_s = self._next_cycle, now + self._first_delay_s
        else:  # the scheduled start stays; the new interval counts from it
            self._anchor_cycle, self._anchor_s = self._next_cycle, next_start
        return actions
