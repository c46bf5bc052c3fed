"""Control requests: each validated command served by the part that owns the answer.

Owns: turning a request from the control socket into its answer (SPEC §4): `status` from
the status board, `app` fetched on the control thread (pjsua2 is not involved), `call`
and `hangup` handed to the main thread (`handover`) because they drive pjsua2, `resync`
to the provisioning worker (which fetches, then hands the apply to the main thread).
Must not touch: validation (`commands.parse_command` does it, before anything runs),
pjsua2 from this thread, or the socket itself (`control`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phoned.config.live import LiveSettings
from phoned.errors import PhonedError
from phoned.net.apps import AppError, fetch
from phoned.service.commands import (
    AppCommand,
    CallCommand,
    CommandError,
    HangupCommand,
    ResyncCommand,
    StatusCommand,
    parse_command,
)
from phoned.service.handover import MainThreadWork, Work

if TYPE_CHECKING:
    from phoned.service.wiring import Phone


class ControlRequests:
    """Serves control requests for one phone (on the control thread).

    Args:
        live: the settings in force.
        work: the queue to the main (pjsua2) thread.
        resync: fetches and applies the settings and waits for the outcome (SPEC §7).
    """

    def __init__(
        self, live: LiveSettings, work: MainThreadWork, resync: Callable[[], dict[str, Any]]
    ) -> None:
        self._live = live
        self._work = work
        self._resync = resync
        self._phone: Phone | None = None

    def attach(self, phone: Phone) -> None:
        """The phone whose parts answer (built after this object: it needs our handler)."""
        self._phone = phone

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request.

        Raises:
            CommandError: the request is invalid, or its command failed (one line).
        """
        command = parse_command(request)
        phone = self._require_phone()
        if isinstance(command, StatusCommand):
            return phone.board.snapshot()
        if isinstance(command, CallCommand):
            return self._work.submit("call", self.call_work(command.ext))
        if isinstance(command, HangupCommand):
            call_id = command.call_id
            return self._work.submit("hangup", lambda: {"ended": phone.sip.hangup(call_id)})
        if isinstance(command, AppCommand):
            return self._app(phone, command.name)
        if isinstance(command, ResyncCommand):
            try:
                return self._resync()
            except PhonedError as exc:
                raise CommandError(str(exc)) from exc
        raise CommandError(f"unknown command: {command}")  # parse_command knows them all

    def call_work(self, ext: str) -> Work:
        """The work of calling `ext` through the server in use (run on the main thread)."""

        def run() -> dict[str, Any]:
            phone = self._require_phone()
            call_id = phone.sip.call(ext)
            return {"call_id": call_id, "server": phone.board.active.value}

        return run

    def _app(self, phone: Phone, name: str) -> dict[str, Any]:
        url = phone.apps.url(name)
        if url is None:
            known = ", ".join(phone.apps.names()) or "none configured"
            raise CommandError(f"no app {name!r} (apps: {known})")
        try:
            page = fetch(name, url)
        except AppError as exc:
            raise CommandError(str(exc)) from exc
        return {
            "name": page.name,
            "url": page.url,
            "status": page.status,
            "content_type": page.content_type,
            "content": page.content.decode("utf-8", errors="replace"),
        }

    def _require_phone(self) -> Phone:
        if self._phone is None:
            raise CommandError("the phone is still starting")
        return self._phone
