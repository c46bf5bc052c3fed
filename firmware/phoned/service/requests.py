"""Control requests: each validated command served by the part that owns the answer.

Owns: turning a request from the control socket into its answer (SPEC §4): `status` from
the status board at once, on the control loop; everything that may take long handed back
as `SlowWork`, which the control server runs on a worker thread (SPEC §10: a slow app
server or a busy main thread never delays `status` or another client): `app` fetched
there (pjsua2 is not involved), `call` and `hangup` handed on to the main thread
(`handover`) because they drive pjsua2, `resync` to the provisioning worker (which
fetches, then hands the apply to the main thread).
Must not touch: validation (`commands.parse_command` does it, before anything runs),
pjsua2 from these threads, or the socket itself (`control`).
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
from phoned.service.control import SlowWork
from phoned.service.handover import MainThreadWork, Work

if TYPE_CHECKING:
    from phoned.service.wiring import Phone


class ControlRequests:
    """Serves control requests for one phone (`handle` on the control loop, the slow work
    it hands back on worker threads).

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

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | SlowWork:
        """Answer one request at once, or hand back the slow work that answers it.

        Runs on the control loop, so it never waits: only `status` and refusals are
        answered here.

        Raises:
            CommandError: the request is invalid (one line).
        """
        command = parse_command(request)
        phone = self._require_phone()
        if isinstance(command, StatusCommand):
            return phone.board.snapshot()
        if isinstance(command, CallCommand):
            return self._on_main_thread("call", self.call_work(command.ext))
        if isinstance(command, HangupCommand):
            call_id = command.call_id
            return self._on_main_thread("hangup", lambda: {"ended": phone.sip.hangup(call_id)})
        if isinstance(command, AppCommand):
            return self._app(phone, command.name)
        if isinstance(command, ResyncCommand):
            return SlowWork("resync", self._run_resync)
        raise CommandError(f"unknown command: {command}")  # parse_command knows them all

    def call_work(self, ext: str) -> Work:
        """The work of calling `ext` through the server in use (run on the main thread)."""

        def run() -> dict[str, Any]:
            phone = self._require_phone()
            call_id = phone.sip.call(ext)
            return {"call_id": call_id, "server": phone.board.active.value}

        return run

    def _on_main_thread(self, name: str, work: Work) -> SlowWork:
        """`work` for the pjsua2 thread, waited for on a worker thread (not the loop)."""
        return SlowWork(name, lambda: self._work.submit(name, work))

    def _app(self, phone: Phone, name: str) -> SlowWork:
        """An unknown app is refused at once; a known one is fetched off the loop."""
        url = phone.apps.url(name)
        if url is None:
            known = ", ".join(phone.apps.names()) or "none configured"
            raise CommandError(f"no app {name!r} (apps: {known})")
        return SlowWork("app", lambda: _fetch_app(name, url))

    def _run_resync(self) -> dict[str, Any]:
        """On a worker thread: fetch and apply, wait for the outcome."""
        try:
            return self._resync()
        except PhonedError as exc:
            raise CommandError(str(exc)) from exc

    def _require_phone(self) -> Phone:
        if self._phone is None:
            raise CommandError("the phone is still starting")
        return self._phone


def _fetch_app(name: str, url: str) -> dict[str, Any]:
    """On a worker thread: the app's page as `phoned app` prints it.

    Raises:
        CommandError: the app server could not be reached or answered an error.
    """
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
