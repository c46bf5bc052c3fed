"""The pjsua2 adapter: the phone's SIP stack (SPEC §1, §2): registration, calls, transports.

Owns: which pjsua2 account is *current* for which server (at most one each; accounts on
their way out are `leaving`'s), the one thread allowed to call pjsua2, and the
order in which registration, BLF subscriptions (`subscriptions`) and calls
(`calls`) move between servers. The library and its transports live in
`endpoint`. Only the modules of this subpackage import pjsua2.
Must not touch: the choice of server (the failover core's), sockets other than pjsua's,
or pjsua2 from any thread but the owner: pjsua2 aborts the process when called from an
unregistered thread, so every public method raises `SipError` there instead.

Rule 1 (SPEC §2 failover, §10): a server left `Leaving.DEAD` (down in the cycle that
decided the switch; by default on a failover) is sent nothing: the new account is created
first (its REGISTER leaves at once), then the dead server's is dropped WITHOUT an
un-REGISTER and its subscriptions without un-SUBSCRIBEs (pjsip would retransmit them to
it for 32 s); its binding expires there.
Rule 2 (SPEC §2 failback): a server left `Leaving.ALIVE` (by default on a failback) keeps
its account until the new server answers 2xx; only then is it un-REGISTERed, so that it
holds no stale contact. While the new server fails, the old one stays registered. One
left `Leaving.JUDGING` (a failback at the primary's reply, before the backup's verdict)
waits for that verdict (`server_judged`): up makes it ALIVE, down makes it DEAD.
Rule 3: registration, call, lamp and check-sync events are recorded inside pjsua2
callbacks (and the request hook) and handed to `on_event` by `poll()`, `use_server()`,
`call()`... and `shutdown()` once pjsua2 has returned, on the owner thread: `on_event`
may call back into the stack.
Rule 4 (SPEC §1/§2): neither failover nor failback ends a call. An account that leaves
while calls set up through it are up is kept (registration off) until they end.
Rule 5 (STACK-NOTES, BLF): a dead server's subscriptions are dropped silently and its
account deleted before the new server's buddies are created; a live server's are
un-SUBSCRIBEd once the new server is REGISTERED, then it is un-REGISTERed and the new
server's subscriptions are created.
Rule 6: a switch ends registered on the server it names, or says why and retries.
Switching back to a server whose account is still leaving (its REGISTER or un-REGISTER
pending) makes that account current again (`leaving.py` Rule 3); one caught
un-REGISTERing REGISTERs the moment its un-REGISTER is answered (pjsua would refuse it
before, PJSIP_EBUSY, and a refusal waits out a random spread). Every REGISTER pjsua
refuses is reported FAILED with why and retried after a random spread
(`registration.py`, from `poll()`).
Rule 7 (SPEC §10): after the phone's link comes back (`link_changed`), every current
account registers again at once and nothing on its way out does (`moves.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import pjsua2 as pj

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.account import (
    BlfChanged,
    RegistrationChanged,
    RegState,
    RetryPolicy,
    ServerAccount,
    SipIdentity,
    SipTarget,
    TxGate,
    rejected,
)
from phoned.sip.calls import CallBook, CallChanged, CallDirection, CallInfo, CallState
from phoned.sip.checksync import CheckSyncInbox, CheckSyncReceived
from phoned.sip.dialog_info import BlfState
from phoned.sip.endpoint import SipEndpoint
from phoned.sip.features import SipEvent
from phoned.sip.leaving import Leaving, LeavingAccounts
from phoned.sip.moves import ServerMoves
from phoned.sip.pjsip_hooks import IncomingRequestHook
from phoned.sip.registration import Registrar
from phoned.sip.subscriptions import BlfSubscriptions

__all__ = [
    "BlfChanged",
    "BlfState",
    "CallChanged",
    "CallDirection",
    "CallInfo",
    "CallState",
    "CheckSyncReceived",
    "Leaving",
    "PjsuaStack",
    "RegState",
    "RegistrationChanged",
    "RetryPolicy",
    "SipEvent",
    "SipIdentity",
    "SipTarget",
]

log = logging.getLogger("phoned.sip")


class PjsuaStack(ServerMoves):
    """pjsua2 with one account per server; every method on the `start()` thread.

    Calls, BLF lamps and check-sync (`call`, `hangup`, `answer`, `calls`, `blf_states`,
    `accept_calls_from`, `checksync_refused`) come from `PhoneFeatures` (`features`);
    `server_judged`, `link_changed` and the account moves from `ServerMoves` (`moves`).

    pjsua2 is one library per process, and a second `pj.Endpoint()` aborts the process
    (measured: C++ `terminate`): only one stack may be started at a time.
    """

    _holder: ClassVar[PjsuaStack | None] = None
    _holder_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        identity: SipIdentity,
        *,
        local_port: int,
        user_agent: str,
        register_expires: int,
        on_event: Callable[[SipEvent], None],
        log_level: int = 1,
        retry: RetryPolicy | None = None,
        auto_answer: bool = False,
        tls_ca_file: str = "",
        register_timeout_s: float | None = None,
        blf_keys: Sequence[str] = (),
    ) -> None:
        """Args:
        identity: who registers (the password is only handed to pjsua's credentials).
        local_port: UDP and TCP port of the SIP transports (TLS: `local_port + 1`).
        user_agent: User-Agent header of every request.
        register_expires: Expires asked for in REGISTER, seconds.
        on_event: receives every registration, call, lamp change and accepted
            check-sync (`SipEvent`), on the owner thread.
        log_level: pjsip log level (<= 3 keeps headers out; 5 adds message dumps).
        retry: when pjsua retries a failed REGISTER (default `RetryPolicy()`).
        auto_answer: answer incoming calls from the servers at once (else they ring).
        tls_ca_file: CA bundle that TLS servers' certificates must chain to.
        register_timeout_s: how long a REGISTER (any transaction) may go unanswered
            before it fails with 408; None keeps pjsip's 32 s.
        blf_keys: extensions watched with `Event: dialog` on the server in use.

        Raises:
            SipError: `register_timeout_s` out of 1..32.
        """
        self._identity = identity
        self._on_event = on_event
        self._library = SipEndpoint(
            local_port=local_port,
            user_agent=user_agent,
            log_level=log_level,
            tls_ca_file=tls_ca_file,
            register_timeout_s=register_timeout_s,
        )
        self._owner: int | None = None
        self._gate: TxGate | None = None
        self._calls = CallBook(self._queue_event, auto_answer=auto_answer)
        self._active: Server | None = None
        self._accounts: dict[Server, ServerAccount] = {}
        self._leavers = LeavingAccounts(self._calls, self._record, self._accounts.__contains__)
        self._blf_keys = tuple(blf_keys)
        self._blf: BlfSubscriptions | None = None
        self._blf_server: Server | None = None  # where the subscriptions live now
        self._hook: IncomingRequestHook | None = None
        self._checksync = CheckSyncInbox()
        self._release_when_registered: Server | None = None
        self._release_awaits_verdict = False  # Rule 2: a JUDGING server is left as it is
        self._relink: tuple[float, dict[Server, int]] | None = None  # Rule 7
        self._after_unregister: dict[Server, ServerAccount] = {}  # Rule 6
        self._registrar = Registrar(
            identity, register_expires=register_expires, retry=retry or RetryPolicy(),
            accounts=self._accounts, on_change=self._on_account_change,
            on_incoming=self._on_incoming_call, report=self._record,
            tls_rejection=self._library.tls_rejection_since,
        )  # fmt: skip
        self._reported = dict.fromkeys(Server, (RegState.IDLE, 0, ""))
        self._events: list[SipEvent] = []
        self._peers_given: dict[Server, tuple[str, ...]] = {}

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the library with UDP, TCP and TLS transports, then libStart.

        The calling thread becomes the only one allowed to use this stack.

        Raises:
            SipError: already started, or pjsua2 failed (e.g. the port is taken).
        """
        if self._owner is not None:
            raise SipError("sip: start() called twice")
        with PjsuaStack._holder_lock:
            if PjsuaStack._holder is not None:
                raise SipError("sip: pjsua2 is already in use by another stack in this process")
            PjsuaStack._holder = self
        self._owner = threading.get_ident()
        started = time.monotonic()
        port = self._library.local_port
        try:
            self._library.create()
        except pj.Error as exc:
            self._destroy_library()
            raise SipError(f"sip: cannot start on udp port {port}: {exc.info()}") from exc
        try:
            self._gate = TxGate()
        except OSError as exc:  # degrade: failover then un-REGISTERs the dead primary
            log.warning("sip: tx gate unavailable (%s) -> dropped accounts un-REGISTER", exc)
        self._leavers.gate = self._gate
        self._start_requests()  # the request hook: BLF lamps and check-sync (SPEC §7)
        took_ms = (time.monotonic() - started) * 1000.0
        log.info("sip: pjsua2 up on port %d in %.1f ms -> ready", port, took_ms)

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """End the calls, un-REGISTER what is registered, wait for the answers up to
        `timeout_s`, then destroy the library. Idempotent; a stack never started does
        nothing.

        Raises:
            SipError: called from a thread other than the one that called `start()`.
        """
        if self._owner is None or not self._library.started:
            return
        self._check_thread()
        started = time.monotonic()
        deadline = started + timeout_s
        self._release_when_registered = None
        for server in Server:
            self._registrar.cancel(server)
        self._calls.hangup(None)
        self._end_blf(None, send=True)
        for server in list(self._accounts):
            self._release(server)
        while (self._leavers.unregistering or self._calls.calls()) and (
            time.monotonic() < deadline
        ):
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            self._library.handle_events(min(10, remaining_ms))
            self._settle()
        self._calls.forget_all()
        self._leavers.finish()
        self._flush()
        self._destroy_library()
        took_ms = (time.monotonic() - started) * 1000.0
        log.info("sip: shut down in %.0f ms -> pjsua2 destroyed", took_ms)

    def _destroy_library(self) -> None:
        if self._hook is not None:
            self._hook.uninstall()
            self._hook = None
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        # Every account is already gone: no wait for the network.
        self._library.destroy()
        self._leavers.forget()
        self._owner = None
        with PjsuaStack._holder_lock:
            if PjsuaStack._holder is self:
                PjsuaStack._holder = None

    # -- the event loop --------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> None:
        """Run pjsua2's timers and sockets once (up to `timeout_ms`), then act on what
        happened and deliver the changes to `on_event`.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        self._library.handle_events(timeout_ms)
        self._library.keep_listeners_filtered(time.monotonic())
        self._settle()

    def registration(self, server: Server) -> RegState:
        """The last registration state reported for `server`.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        return self._reported[server][0]

    def use_server(self, server: Server, target: SipTarget, *, left: Leaving | None = None) -> None:
        """Register on `server` at `target` and leave the other server (Rules 1 and 2).

        Calling it again for the server in use with the same target does nothing.

        A REGISTER (or account) pjsua refuses is reported FAILED and retried (Rule 6).

        Args:
            server, target: where to register now.
            left: what the switch knows of the other server (Rules 1 and 2); None: a
                failover leaves a dead primary, a failback a live backup.

        Raises:
            SipError: wrong thread, not started, or the target's transport is unavailable.
        """
        self._check_thread()
        self._library.require(target.transport)
        current = self._accounts.get(server)
        created = current is None or current.target != target
        if created:
            if current is not None:
                self._end_blf(server, send=True)
                self._release(server)
            self._take_account(server, target)
        self._active = server
        other = server.other
        if other not in self._accounts:
            self._registrar.cancel(other)  # a retry to create it is moot now
        if left is None:
            left = Leaving.ALIVE if server is Server.PRIMARY else Leaving.DEAD
        if other not in self._accounts or left is Leaving.DEAD:
            self._release_when_registered, self._release_awaits_verdict = None, False
            self._drop_dead(other)
        else:  # Rule 5: BLF moves once registered (and, JUDGING, once judged up)
            self._release_when_registered = other
            self._release_awaits_verdict = left is Leaving.JUDGING
        if self._release_when_registered is None and (created or self._blf_server is None):
            self._subscribe_blf(server)
        self._update_peers()
        self._settle()

    def set_account(self, identity: SipIdentity, *, register_expires: int) -> None:
        """New `[account]` settings (SPEC §7): every current account registers again
        with them on its own server (calls go on); BLF moves to the new AOR when it
        changed. A refused REGISTER is reported FAILED and retried (Rule 6).

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        old, self._identity = self._identity, identity
        self._registrar.reconfigure(identity, register_expires=register_expires)
        for account in list(self._accounts.values()):
            self._registrar.modify(account)
        if (old.username, old.domain) != (identity.username, identity.domain):
            where = self._blf_server
            self._end_blf(None, send=True)
            if where is not None:
                self._subscribe_blf(where)
        self._settle()

    def set_auto_answer(self, enabled: bool) -> None:
        """Whether incoming calls from the servers are answered at once (`[sip]`)."""
        self._check_thread()
        self._calls.auto_answer = enabled

    def _settle(self) -> None:
        """Act on recorded changes (calls, retries, release the backup, the link's
        REGISTERs, reap leavers), report."""
        self._calls.settle()
        for account in self._registrar.run_due():  # an account created at last
            if self._release_when_registered is None:
                self._subscribe_blf(account.server)
        self._release_if_registered()
        self._register_revived()
        self._check_relink()
        self._leavers.progress()
        self._flush()

    # -- events ----------------------------------------------------------------------------
    def _on_account_change(self, account: ServerAccount) -> None:
        """From pjsua2 callbacks (Rule 3): record only."""
        current = self._accounts.get(account.server)
        if current is account or (current is None and account in self._leavers):
            reason = self._registrar.explain(account)
            self._record(account.server, account.state, account.code, reason)

    def _on_incoming_call(self, account: ServerAccount, call_id: int, source: str) -> None:
        """From `onIncomingCall` (Rule 3): the book wraps the call; `settle()` decides."""
        self._calls.on_incoming(account, account.server, call_id, source)

    def _record(self, server: Server, state: RegState, code: int, reason: str) -> None:
        if self._reported[server] == (state, code, reason):
            return
        self._reported[server] = (state, code, reason)
        refused = state is RegState.FAILED and rejected(code)
        self._events.append(RegistrationChanged(server, state, code, reason, refused))

    def _queue_event(self, event: CallChanged) -> None:
        self._events.append(event)

    def _flush(self) -> None:
        while self._events:
            self._on_event(self._events.pop(0))

    def _check_thread(self) -> None:
        if self._owner is None or not self._library.started:
            raise SipError("sip: the stack is not started")
        if threading.get_ident() != self._owner:
            raise SipError(
                f"sip: called from thread {threading.current_thread().name!r}; pjsua2 "
                "belongs to the thread that called start()"
            )
