"""New settings put in force on the main thread, and said (SPEC §7 "Applied live", "Reported").

Owns: what happens on the pjsua2 thread when a fetch or a re-read built new settings (or
was rejected): `Phone.apply`, re-registering where the server in use moved, the one log
line per apply or rejection (every changed key, old and new value, secrets `***`), the
`config applied` / `config rejected` flash on the display and status LED, and whether the
service must re-exec for a key that cannot change live (once no call is up).
Must not touch: the network (the provisioning worker fetched already), parsing, or the
parts' internals (the wiring's `Phone.apply` hands each its part).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from phoned.clock import Clock
from phoned.config.changes import describe_changes
from phoned.config.loader import SettingsError
from phoned.core.events import UseServer
from phoned.logfmt import log_event
from phoned.service.configsource import Built, ConfigSource
from phoned.service.wiring import Phone, Prepared

log = logging.getLogger("phoned")

#: SPEC §5: how long `config applied` / `config rejected` stays on the display.
FLASH_S = 3.0


class ConfigApplier:
    """Applies what the provisioning worker built (every method on the main thread).

    Args:
        phone: the phone's parts.
        source: the configuration's provenance (for `status` and the log).
        use_server: re-registers on the server in use when its address changed.
        clock: monotonic time (the flash's end).
    """

    def __init__(
        self,
        phone: Phone,
        source: ConfigSource,
        use_server: Callable[[UseServer], None],
        clock: Clock,
    ) -> None:
        self._phone = phone
        self._source = source
        self._use_server = use_server
        self._clock = clock
        self._flash: tuple[str, float] | None = None
        #: why the service must re-exec, once no call is up; None: it need not
        self.restart_for: str | None = None

    def deliver(
        self, built: Built | SettingsError, why: str, prepared: Prepared | None = None
    ) -> dict[str, Any]:
        """Apply `built` (`prepared`: its names already looked up, `Phone.prepare`), or
        report its rejection; the reply of `phoned resync`: for a rejection
        `{"error": <every reason, file:line first>}` (logged here, once)."""
        if isinstance(built, SettingsError):
            self._reject(built, why)
            return {"error": str(built)}
        return self._apply(built, why, prepared)

    def _reject(self, exc: SettingsError, why: str) -> None:
        where = self._source.report.url or self._source.local_path
        reason = "; ".join(exc.errors)
        log_event(log, "config", f"config: {where} ({why}) rejected, nothing changed: {reason}",
                  level=logging.WARNING, result="rejected", reason=reason)  # fmt: skip
        self._source.noted("rejected", reason)
        self._start_flash("rejected")

    def _apply(self, built: Built, why: str, prepared: Prepared | None) -> dict[str, Any]:
        applied = self._phone.apply(prepared if prepared is not None else built.settings)
        plan = applied.plan
        where = self._source.report.url if built.fetched else self._source.local_path
        if plan.empty and built.note not in ("fetched", "not modified", "local"):
            # the fetch failed: ConfigSource logged it and reported it (unreachable)
            return {"source": where, "changed": [], "keys": [], "fetch": built.note}
        if plan.empty:
            detail = "not modified" if built.note == "not modified" else "no change"
            log_event(log, "config", f"config: {where or self._source.local_path} ({why}): "
                      f"{detail}", result=detail)  # fmt: skip
            self._source.noted(detail, "")
            return {"source": where, "changed": [], "keys": [], "fetch": built.note}
        described = describe_changes(plan.changes)
        log_event(log, "config", f"config: {where} ({why}) applied: {described}",
                  result="applied", changed=",".join(plan.tables), keys=described)  # fmt: skip
        self._source.noted("applied", described)
        if applied.moved:  # SPEC §7: the registration follows the server in use at once
            server = self._phone.board.active
            self._use_server(UseServer(server, f"new settings moved the {server.value}"))
        restart = list(plan.restart) + (["vpn"] if applied.vpn_restart else [])
        if restart:
            self.restart_for = ", ".join(restart)
            log.warning("config: %s cannot change live -> phoned restarts itself (re-exec)%s",
                        self.restart_for, self._after_calls())  # fmt: skip
        self._start_flash("applied")
        return {
            "source": where,
            "changed": plan.tables,
            "keys": [c.describe() for c in plan.changes],
        }

    def _after_calls(self) -> str:
        return " once the call in progress ends" if self._phone.board.has_calls() else ""

    # -- the flash (SPEC §5) -------------------------------------------------------------
    def _start_flash(self, what: str) -> None:
        self._flash = (what, self._clock.now() + FLASH_S)

    def flash(self) -> str | None:
        """ "applied" / "rejected" while the flash lasts, else None."""
        if self._flash is None:
            return None
        what, until = self._flash
        return what if self._clock.now() < until else None

    def flash_ended(self) -> bool:
        """True once, when a flash has just ended (the display goes back to the state)."""
        if self._flash is None or self._clock.now() < self._flash[1]:
            return False
        self._flash = None
        return True
