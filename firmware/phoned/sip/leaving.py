"""Accounts on their way out of the SIP stack: un-REGISTERing, kept for calls, deleted.

Owns: the accounts `stack` no longer uses for new traffic: those *leaving* (un-REGISTER
in flight, Rule 2 of `stack`), those *kept* only because calls set up through them are
still up (Rule 4 of `stack`), and the shut-down ones, referenced until `libDestroy`
(STACK-NOTES: pjsua2 may call into them until then); and `Leaving`, what a switch knows
of the server it leaves.
Must not touch: the current accounts, the choice of server, calls themselves (it only
asks `CallBook.live_on`), or the library's life cycle.

Rule 1: an account of a dead server leaves silently: its un-REGISTER and its deletion
run inside `TxGate.muted()`, so nothing reaches the wire (pjsip would retransmit for 32 s).
Rule 2: an account with calls up is never deleted: its registration is switched off and
it is deleted by `progress()` once its last call has ended (measured on 2.15.1:
`pjsua_acc_del` leaves the call running, but the call then refers to a freed account
slot that the next account created reuses).
Rule 3: a leaver whose binding may still be on its server (REGISTERING, REGISTERED,
UNREGISTERING) is handed back by `revive()` when the stack switches back to that server
and target. A new account there would register the same Contact, and the leaver's
un-REGISTER, landing after it (measured: a retransmission 0.5-1.5 s later), removed that
binding while the new account believed itself registered.
Rule 5 (SPEC §10): a kept account never registers again, not even when the link comes
back: pjsua's IP change handling REGISTERs every account that has a registrar, so
`keep_unregistered()` takes it away first (`moves` Rule 7).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable

import pjsua2 as pj

from phoned.core.events import Server
from phoned.sip.account import RegState, ServerAccount, SipTarget, TxGate
from phoned.sip.calls import CallBook

log = logging.getLogger("phoned.sip")


class Leaving(enum.Enum):
    """What a switch knows of the server it leaves (SPEC §2, §10)."""

    #: Down in the cycle that decided the switch: it is sent nothing at all (Rule 1); its
    #: binding and subscriptions expire there.
    DEAD = "dead"
    #: Up in that cycle: un-SUBSCRIBEd and un-REGISTERed once the new server registered.
    ALIVE = "alive"
    #: Its verdict of that cycle is still to come (a failback decided by the primary's
    #: reply): kept as it is until the verdict says ALIVE or DEAD.
    JUDGING = "judging"

    @classmethod
    def from_verdict(cls, alive: bool | None) -> Leaving:
        """The core's `UseServer.left_alive`: True, False, or None (not judged yet)."""
        if alive is None:
            return cls.JUDGING
        return cls.ALIVE if alive else cls.DEAD


#: States in which an account still has (or may soon have) a binding on its server.
_BOUND = frozenset({RegState.REGISTERING, RegState.REGISTERED, RegState.UNREGISTERING})
#: States in which a REGISTER or un-REGISTER of the account is in flight.
_PENDING = frozenset({RegState.REGISTERING, RegState.UNREGISTERING})
Record = Callable[[Server, RegState, int, str], None]


class LeavingAccounts:
    """Every account on its way out; all methods on the stack's owner thread."""

    def __init__(
        self, calls: CallBook, record: Record, is_current: Callable[[Server], bool]
    ) -> None:
        """Args:
        calls: the stack's calls (which account still carries one).
        record: reports a registration state of a server (`stack` de-duplicates).
        is_current: whether a server has a current account again (then its state is
            that account's, not a leaver's).
        """
        self.gate: TxGate | None = None
        self._calls = calls
        self._record = record
        self._is_current = is_current
        self._leaving: list[ServerAccount] = []
        self._kept: list[tuple[ServerAccount, bool]] = []  # (account, muted)
        self._graveyard: list[ServerAccount] = []
        self._unregister_tried: dict[int, int] = {}  # id(account) -> serial at last try

    def __contains__(self, account: ServerAccount) -> bool:
        return account in self._leaving

    @property
    def unregistering(self) -> bool:
        """Whether an un-REGISTER is still waiting for its answer."""
        return bool(self._leaving)

    def drop_silently(self, account: ServerAccount) -> None:
        """Rule 1: remove a dead server's account with nothing put on the wire."""
        account.silenced = True
        calls = self._calls.live_on(account)
        server = account.server
        if self.gate is None:
            self._retire(account, muted=False, unregister=True)  # 11 un-REGISTERs in 31.5 s
            self._record(server, RegState.IDLE, 0, "dropped (un-REGISTER sent)")
            return
        # A refused un-REGISTER fails with 503, and pjsua would schedule a retry on an
        # account about to be freed ("timer entry deallocated" bug): no retries first.
        account.config.regConfig.retryIntervalSec = 0
        with contextlib.suppress(pj.Error):
            account.modify(account.config)
        refused_before = self.gate.refused
        # With a REGISTER pending, pjsua refuses the account's un-REGISTER itself and
        # logs "Unable to create/send REGISTER: Object is busy": expected here.
        pending = " (its REGISTER pending)" if account.state is RegState.REGISTERING else ""
        self._retire(account, muted=True, unregister=True)
        refused = self.gate.refused - refused_before
        log.info("sip: %s account dropped%s, %d request(s) kept off the wire, %d call(s) "
                 "kept on it -> presumed dead", server.value, pending, refused, calls)  # fmt: skip
        self._record(server, RegState.IDLE, 0, "dropped without un-REGISTER")

    def revive(self, server: Server, target: SipTarget) -> ServerAccount | None:
        """Rule 3: take back the newest leaver of `server` at `target` still bound there."""
        for account in reversed(self._leaving):
            if account.server is server and account.target == target and account.state in _BOUND:
                self._leaving.remove(account)
                self._unregister_tried.pop(id(account), None)
                return account
        return None

    def release(self, account: ServerAccount) -> None:
        """Un-REGISTER `account` (its server is alive), then delete it once answered."""
        self._leaving.append(account)
        log.info("sip: %s account released while %s -> un-registering",
                 account.server.value, account.state.value)  # fmt: skip

    def progress(self) -> None:
        """Move leavers on (un-REGISTER, delete when answered); delete kept accounts
        whose last call has ended."""
        for account in list(self._leaving):
            if account.state is RegState.REGISTERED:
                if self._unregister_tried.get(id(account)) != account.serial:
                    self._unregister_tried[id(account)] = account.serial
                    with contextlib.suppress(pj.Error):  # busy with a refresh: retry later
                        account.setRegistration(False)
            elif account.state not in _BOUND:
                self._bury(account, "")
        self._reap_kept(force=False)

    def keep_unregistered(self) -> None:
        """Rule 5, before pjsua's IP change handling (which REGISTERs every account that
        has a registrar): a kept account loses its registrar, so it never registers
        again; one of a dead server is also refused a re-INVITE of its calls. Nothing
        reaches the wire (muted). One still (un)registering is left: pjsua refuses it
        a REGISTER while that is pending (PJSIP_EBUSY)."""
        for account, muted in self._kept:
            config = account.config
            if not config.regConfig.registrarUri or account.state in _PENDING:
                continue
            config.regConfig.registrarUri = ""
            if muted:
                config.ipChangeConfig.reinviteFlags = 0
            with self.gate.muted() if self.gate is not None else contextlib.nullcontext():
                try:
                    account.modify(config)
                except pj.Error as exc:
                    log.warning("sip: %s account kept for calls: %s -> may register again",
                                account.server.value, exc.info())  # fmt: skip

    def finish(self) -> None:
        """At shutdown: delete every leaver and kept account, answered or not."""
        for account in list(self._leaving):  # unanswered: pjsua sends nothing more (busy)
            self._bury(account, "shut down before the un-REGISTER was answered")
        self._reap_kept(force=True)

    def forget(self) -> None:
        """After libDestroy: drop the references."""
        self._graveyard.clear()
        self._kept.clear()
        self._leaving.clear()

    def _bury(self, account: ServerAccount, why: str) -> None:
        """Delete a leaver (its registration client is idle or busy: pjsua sends nothing)."""
        self._leaving.remove(account)
        self._unregister_tried.pop(id(account), None)
        account.silenced = True
        self._retire(account, muted=False, unregister=False)  # its un-REGISTER is done
        if account.state is not RegState.IDLE and not self._is_current(account.server):
            self._record(account.server, RegState.IDLE, 0, why or "account removed")

    def _retire(self, account: ServerAccount, *, muted: bool, unregister: bool) -> None:
        """Delete `account`, or (Rule 2) switch its registration off and keep it."""
        gate = self.gate if muted else None
        with gate.muted() if gate is not None else contextlib.nullcontext():
            if self._calls.live_on(account) == 0:
                account.shutdown()
                self._graveyard.append(account)
                return
            if unregister:
                with contextlib.suppress(pj.Error):  # muted: fails at once, nothing sent
                    account.setRegistration(False)
        self._kept.append((account, muted))
        log.info("sip: %s account kept for %d call(s) -> deleted when they end",
                 account.server.value, self._calls.live_on(account))  # fmt: skip

    def _reap_kept(self, *, force: bool) -> None:
        for entry in list(self._kept):
            account, muted = entry
            if force or self._calls.live_on(account) == 0:
                self._kept.remove(entry)
                gate = self.gate if muted else None
                with gate.muted() if gate is not None else contextlib.nullcontext():
                    account.shutdown()
                self._graveyard.append(account)
                log.info("sip: %s account kept for calls -> deleted", account.server.value)
