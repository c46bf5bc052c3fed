"""The pjsua2 adapter: the phone's SIP stack (SPEC §2), registration only for now.

Owns: the pjsua2 library's life (`libCreate` .. `libDestroy`), its UDP transport, the
routing of pjsip's log to the "phoned.pjsip" logger, the one thread allowed to call
pjsua2, and which account exists for which server: at most one *current* account per
server, accounts *leaving* (un-REGISTER in flight) and shut-down ones kept referenced
until `libDestroy` (STACK-NOTES). This is the only module, with `sip_account.py`, that
imports pjsua2.
Must not touch: the choice of server (the failover core's), sockets other than pjsua's,
or pjsua2 from any thread but the owner: pjsua2 aborts the process when called from an
unregistered thread, so every public method raises `SipError` there instead.

Rule 1 (SPEC §2 failover): `use_server(BACKUP)` creates the backup account first (its
REGISTER leaves at once), then drops the primary's WITHOUT an un-REGISTER: the primary
is presumed dead, and pjsip would retransmit the un-REGISTER to it for 32 s.
Rule 2 (SPEC §2 failback): `use_server(PRIMARY)` keeps the backup account until the
primary answers 2xx; only then is the backup un-REGISTERed, so that it holds no stale
contact. While the primary fails, the backup stays registered.
Rule 3: registration changes are recorded inside pjsua2 callbacks and handed to
`on_event` by `poll()`, `use_server()` and `shutdown()` once pjsua2 has returned, on the
owner thread: `on_event` may call back into the stack without re-entering pjsua2.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import pjsua2 as pj

from phoned.errors import SipError
from phoned.events import Server
from phoned.sip_account import (
    RegistrationChanged,
    RegState,
    RetryPolicy,
    ServerAccount,
    SipIdentity,
    SipTarget,
    TxGate,
    account_config,
    quiet_pjlib,
)

__all__ = [
    "PjsuaStack",
    "RegState",
    "RegistrationChanged",
    "RetryPolicy",
    "SipIdentity",
    "SipTarget",
]

log = logging.getLogger("phoned.sip")
pjsip_log = logging.getLogger("phoned.pjsip")

#: pjsip log levels -> logging levels; 3 (info) and chattier go to DEBUG.
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING}
#: Transports created by `start()`; TCP/TLS are the next issue's seam.
_SUPPORTED_TRANSPORTS = frozenset({"udp"})
#: States in which an account still has (or may soon have) a binding on its server.
_BOUND = frozenset({RegState.REGISTERING, RegState.REGISTERED, RegState.UNREGISTERING})


class _LogEntry(Protocol):
    level: int
    msg: str


class _LogWriter(pj.LogWriter):  # type: ignore[misc]  # pjsua2 ships no stubs
    """Routes pjsip's log lines to `phoned.pjsip`; never raises into SWIG."""

    def write(self, entry: _LogEntry) -> None:
        with contextlib.suppress(Exception):
            level = _LOG_LEVELS.get(int(entry.level), logging.DEBUG)
            pjsip_log.log(level, "pjsip: %s", " ".join(str(entry.msg).split()))


class PjsuaStack:
    """pjsua2 with one account per server; every method on the `start()` thread.

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
        on_event: Callable[[RegistrationChanged], None],
        log_level: int = 1,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Args:
        identity: who registers (the password is only handed to pjsua's credentials).
        local_port: UDP port of the SIP transport, bound on all addresses.
        user_agent: User-Agent header of every request.
        register_expires: Expires asked for in REGISTER, seconds.
        on_event: receives every registration change, on the owner thread.
        log_level: pjsip log level (<= 3 keeps headers out; 5 adds message dumps).
        retry: when pjsua retries a failed REGISTER (default `RetryPolicy()`).
        """
        self._identity = identity
        self._local_port = local_port
        self._user_agent = user_agent
        self._register_expires = register_expires
        self._on_event = on_event
        self._log_level = log_level
        self._retry = retry or RetryPolicy()
        self._owner: int | None = None
        self._ep: Any = None
        self._writer: _LogWriter | None = None
        self._gate: TxGate | None = None
        self._accounts: dict[Server, ServerAccount] = {}
        self._leaving: list[ServerAccount] = []
        self._graveyard: list[ServerAccount] = []
        self._release_when_registered: Server | None = None
        self._unregister_tried: dict[int, int] = {}  # id(account) -> serial at last try
        self._reported = dict.fromkeys(Server, (RegState.IDLE, 0, ""))
        self._events: list[RegistrationChanged] = []

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """libCreate, libInit (no worker threads), null audio, UDP transport, libStart.

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
        try:
            self._create_library()
        except pj.Error as exc:
            self._destroy_library()
            raise SipError(
                f"sip: cannot start on udp port {self._local_port}: {exc.info()}"
            ) from exc
        try:
            self._gate = TxGate()
        except OSError as exc:  # degrade: failover then un-REGISTERs the dead primary
            log.warning("sip: tx gate unavailable (%s) -> dropped accounts un-REGISTER", exc)
        took_ms = (time.monotonic() - started) * 1000.0
        log.info("sip: pjsua2 up on udp port %d in %.1f ms -> ready", self._local_port, took_ms)

    def _create_library(self) -> None:
        quiet_pjlib(self._log_level)
        self._ep = pj.Endpoint()
        self._ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0  # STACK-NOTES: our poll() is the only event loop
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = self._user_agent
        self._writer = _LogWriter()
        cfg.logConfig.writer = self._writer
        cfg.logConfig.level = self._log_level
        cfg.logConfig.consoleLevel = self._log_level
        cfg.logConfig.msgLogging = self._log_level >= 5  # dumps carry Authorization headers
        cfg.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        self._ep.libInit(cfg)
        self._ep.audDevManager().setNullDev()
        transport = pj.TransportConfig()
        transport.port = self._local_port
        self._ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        self._ep.libStart()

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Un-REGISTER what is registered, wait for the answers up to `timeout_s`, then
        destroy the library. Idempotent; a stack never started does nothing.

        Raises:
            SipError: called from a thread other than the one that called `start()`.
        """
        if self._owner is None or self._ep is None:
            return
        self._check_thread()
        started = time.monotonic()
        deadline = started + timeout_s
        self._release_when_registered = None
        for server in list(self._accounts):
            self._release(server)
        while self._leaving and time.monotonic() < deadline:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            self._ep.libHandleEvents(min(10, remaining_ms))
            self._settle()
        for account in list(self._leaving):  # unanswered: pjsua sends nothing more (busy)
            self._bury(account, "shut down before the un-REGISTER was answered")
        self._flush()
        self._destroy_library()
        took_ms = (time.monotonic() - started) * 1000.0
        log.info("sip: shut down in %.0f ms -> pjsua2 destroyed", took_ms)

    def _destroy_library(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        if self._ep is not None:
            # Every account is already gone: skip pjsua's fixed 1 s wait for the network.
            self._ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            self._ep = None
        self._graveyard.clear()
        self._writer = None
        self._owner = None
        with PjsuaStack._holder_lock:
            if PjsuaStack._holder is self:
                PjsuaStack._holder = None

    # -- the event loop --------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> None:
        """Run pjsua2's timers and sockets once (up to `timeout_ms`), then act on what
        happened and deliver the registration changes to `on_event`.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        self._ep.libHandleEvents(max(0, timeout_ms))
        self._settle()

    def registration(self, server: Server) -> RegState:
        """The last registration state reported for `server`.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        return self._reported[server][0]

    # -- switching servers (SPEC §2) ----------------------------------------------------
    def use_server(self, server: Server, target: SipTarget) -> None:
        """Register on `server` at `target` and leave the other server (Rules 1 and 2).

        Calling it again for the server in use with the same target does nothing.

        Raises:
            SipError: wrong thread, not started, unsupported transport, or pjsua2 refused
                the account.
        """
        self._check_thread()
        if target.transport not in _SUPPORTED_TRANSPORTS:
            raise SipError(f"sip: transport {target.transport!r} is not supported yet (udp)")
        current = self._accounts.get(server)
        if current is None or current.target != target:
            if current is not None:
                self._release(server)
            self._create_account(server, target)
        other = server.other
        if server is Server.BACKUP:
            self._release_when_registered = None
            if other in self._accounts:
                self._drop_silently(other)
        elif other in self._accounts:
            self._release_when_registered = other
        self._settle()

    def _create_account(self, server: Server, target: SipTarget) -> None:
        config = account_config(
            self._identity, target, register_expires=self._register_expires, retry=self._retry
        )
        account = ServerAccount(server, target, config, self._on_account_change)
        self._accounts[server] = account  # before create(): its callbacks fire inside it
        try:
            account.create(config)  # registerOnAdd: the REGISTER leaves now
        except pj.Error as exc:
            del self._accounts[server]
            raise SipError(
                f"sip: cannot create the {server.value} account for {target.host}:"
                f"{target.port}: {exc.info()}"
            ) from exc
        log.info(
            "sip: %s account for %s:%d created -> registering",
            server.value,
            target.host,
            target.port,
        )

    def _drop_silently(self, server: Server) -> None:
        """Rule 1: delete `server`'s account with nothing put on the wire."""
        account = self._accounts.pop(server)
        account.silenced = True
        if self._gate is None:
            account.shutdown()  # measured: 11 un-REGISTER packets over 31.5 s
            self._graveyard.append(account)
            self._record(server, RegState.IDLE, 0, "dropped (un-REGISTER sent)")
            return
        # A refused un-REGISTER fails with 503, and pjsua would schedule a retry on an
        # account about to be freed ("timer entry deallocated" bug): no retries first.
        account.config.regConfig.retryIntervalSec = 0
        with contextlib.suppress(pj.Error):
            account.modify(account.config)
        refused_before = self._gate.refused
        with self._gate.muted():
            account.shutdown()
        self._graveyard.append(account)
        refused = self._gate.refused - refused_before
        log.info(
            "sip: %s account dropped, %d request(s) kept off the wire -> presumed dead",
            server.value,
            refused,
        )
        self._record(server, RegState.IDLE, 0, "dropped without un-REGISTER")

    def _release(self, server: Server) -> None:
        """Rule 2: un-REGISTER `server`'s account, then delete it once answered."""
        account = self._accounts.pop(server)
        self._leaving.append(account)
        state = account.state.value
        log.info("sip: %s account released while %s -> un-registering", server.value, state)

    def _settle(self) -> None:
        """Act on recorded changes (release the backup, reap leavers), then report."""
        waiting = self._release_when_registered
        if waiting is not None:
            newcomer = self._accounts.get(waiting.other)
            if newcomer is not None and newcomer.state is RegState.REGISTERED:
                self._release_when_registered = None
                if waiting in self._accounts:
                    self._release(waiting)
        for account in list(self._leaving):
            self._progress_leaving(account)
        self._flush()

    def _progress_leaving(self, account: ServerAccount) -> None:
        if account.state is RegState.REGISTERED:
            if self._unregister_tried.get(id(account)) != account.serial:
                self._unregister_tried[id(account)] = account.serial
                with contextlib.suppress(pj.Error):  # busy with a refresh: retry once answered
                    account.setRegistration(False)
        elif account.state not in _BOUND:
            self._bury(account, "")

    def _bury(self, account: ServerAccount, why: str) -> None:
        """Delete a leaving account (its registration client is idle or busy: pjsua
        sends nothing) and keep the Python object referenced until libDestroy."""
        self._leaving.remove(account)
        self._unregister_tried.pop(id(account), None)
        account.silenced = True
        account.shutdown()
        self._graveyard.append(account)
        if account.state is not RegState.IDLE and account.server not in self._accounts:
            self._record(account.server, RegState.IDLE, 0, why or "account removed")

    # -- events ----------------------------------------------------------------------------
    def _on_account_change(self, account: ServerAccount) -> None:
        """From pjsua2 callbacks (Rule 3): record only."""
        current = self._accounts.get(account.server)
        if current is account or (current is None and account in self._leaving):
            self._record(account.server, account.state, account.code, account.reason)

    def _record(self, server: Server, state: RegState, code: int, reason: str) -> None:
        if self._reported[server] == (state, code, reason):
            return
        self._reported[server] = (state, code, reason)
        self._events.append(RegistrationChanged(server, state, code, reason))

    def _flush(self) -> None:
        while self._events:
            self._on_event(self._events.pop(0))

    def _check_thread(self) -> None:
        if self._owner is None or self._ep is None:
            raise SipError("sip: the stack is not started")
        if threading.get_ident() != self._owner:
            raise SipError(
                f"sip: called from thread {threading.current_thread().name!r}; pjsua2 "
                "belongs to the thread that called start()"
            )
