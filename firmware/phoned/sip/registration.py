"""Getting each server's REGISTER out, and retrying the ones pjsua refuses (SPEC §2).

Owns: creating a server's pjsua2 account (its first REGISTER leaves inside `create()`),
asking a current account for a new REGISTER, noticing that pjsua refused one, reporting
it, and the retries: when each comes and with what random spread (`RetrySchedule`); also
why a registration failed when the TLS layer knows better than pjsua (`explain`).
Must not touch: which account is current or leaving, BLF, calls (`stack.py`,
`leaving.py`); any thread but the stack's owner; blocking: the stack's `poll()` runs the
retries once they are due (`run_due`), nothing here waits for them.

Rule 1 (STACK-NOTES: "a registration request can be refused"): pjsua refuses a REGISTER
while an earlier REGISTER or un-REGISTER of the same account is pending (pjsua2 raises
`pj.Error`, PJSIP_EBUSY), and it only logs a refused first REGISTER of a new account (no
`onRegStarted`: the state stays idle). Neither is ever only logged: the server's
registration is reported FAILED with what pjsua said and when the retry comes
("REGISTER refused by pjsua (PJSIP_EBUSY), retrying in 1.3 s"), and the retry is
scheduled. An account pjsua refuses to create is retried the same way.
Rule 2: while a retry is due, the account's own idle/failed states are not reported (the
refusal is the news); a REGISTER that goes out after all makes the retry moot.
Rule 3: the waits double from `RetryPolicy.refused_s` up to `first_interval_s`, each
spread at random as pjsua's `randomRetryIntervalSec` spreads its retries (± `random_s`,
but at most ± half the wait), so phones that switched together retry apart.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import pjsua2 as pj

from phoned.core.events import Server
from phoned.sip.account import (
    RegState,
    RetryPolicy,
    ServerAccount,
    SipIdentity,
    SipTarget,
    account_config,
)
from phoned.sip.endpoint import TlsRejection

log = logging.getLogger("phoned.sip")

#: Reports a registration state of a server (the stack de-duplicates).
Report = Callable[[Server, RegState, int, str], None]
T = TypeVar("T")
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]*)\)")
#: What is retried: an account's REGISTER, or (account None) creating it at the target.
_Retry = tuple[ServerAccount | None, SipTarget]


def retry_delay_s(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """The wait before retry number `attempt` (1, 2, ...) of a refused request (Rule 3).

    Args:
        attempt: how many refusals in a row this retry answers (1 for the first).
        policy: `refused_s` (first wait), `first_interval_s` (cap), `random_s` (spread).
        rand: a random float in [0, 1) (e.g. `random.random`).
    """
    cap = max(policy.refused_s, float(policy.first_interval_s))
    base = min(policy.refused_s * 2.0 ** (max(1, attempt) - 1), cap)
    spread = min(float(policy.random_s), base / 2)
    return base + spread * (2.0 * rand() - 1.0)


def refusal_name(reason: str, status: int) -> str:
    """pjlib's name of a refusal: "Object is busy (PJSIP_EBUSY)" -> "PJSIP_EBUSY"."""
    found = _ERROR_NAME.search(reason)
    if found is not None:
        return found.group(1)
    return reason.strip() or f"status {status}"


class RetrySchedule(Generic[T]):
    """Which server's refused request is retried when (at most one each); no I/O."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self._attempts: dict[Server, int] = {}  # refusals in a row, per server
        self._due: dict[Server, tuple[float, T]] = {}

    def schedule(self, server: Server, item: T) -> float:
        """Retry `item` for `server` after the next wait (replacing one due); the wait, s."""
        attempt = self._attempts.get(server, 0) + 1
        self._attempts[server] = attempt
        delay = retry_delay_s(attempt, self._policy, self._rand)
        self._due[server] = (self._clock() + delay, item)
        return delay

    def pending(self, server: Server) -> T | None:
        """What is due for `server`, if anything."""
        entry = self._due.get(server)
        return entry[1] if entry is not None else None

    def cancel(self, server: Server) -> None:
        """Forget `server`'s retry and its count of refusals (it succeeded or is moot)."""
        self._due.pop(server, None)
        self._attempts.pop(server, None)

    def take_due(self) -> list[tuple[Server, T]]:
        """Remove and return the retries whose time has come (their counts stay)."""
        now = self._clock()
        due = [(server, item) for server, (at, item) in self._due.items() if at <= now]
        for server, _item in due:
            del self._due[server]
        return due


class Registrar:
    """Creates the servers' accounts and gets their REGISTERs out; owner thread only."""

    def __init__(
        self,
        identity: SipIdentity,
        *,
        register_expires: int,
        retry: RetryPolicy,
        accounts: dict[Server, ServerAccount],
        on_change: Callable[[ServerAccount], None],
        on_incoming: Callable[[ServerAccount, int, str], None],
        report: Report,
        tls_rejection: Callable[[float], TlsRejection | None],
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """Args:
        identity, register_expires, retry: what every account is configured with.
        accounts: the stack's current accounts (a created account goes in here).
        on_change: gets each account's registration changes (Rule 2 filters them).
        on_incoming: gets each account's incoming INVITEs.
        report: reports refusals (FAILED, with the reason and the retry's wait).
        tls_rejection: the last rejected server certificate since a monotonic time.
        clock, rand: monotonic seconds and a random float in [0, 1) (tests replace them).
        """
        self._identity = identity
        self._register_expires = register_expires
        self._retry = retry
        self._accounts = accounts
        self._on_change = on_change
        self._on_incoming = on_incoming
        self._report = report
        self._tls_rejection = tls_rejection
        self._clock = clock
        self._schedule: RetrySchedule[_Retry] = RetrySchedule(retry, clock=clock, rand=rand)
        self._asked: dict[Server, float] = {}  # when a REGISTER was last asked for

    def create(self, server: Server, target: SipTarget) -> ServerAccount | None:
        """Make a new account `server`'s current one at `target`; its REGISTER leaves now.

        Returns None when pjsua refused the account (reported, retried: Rule 1).
        """
        config = account_config(
            self._identity, target, register_expires=self._register_expires, retry=self._retry
        )
        account = ServerAccount(server, target, config, self._changed)
        account.on_incoming = self._on_incoming
        self._accounts[server] = account  # before create(): its callbacks fire inside it
        self._asked[server] = self._clock()
        try:
            account.create(config)  # registerOnAdd: the REGISTER leaves now
        except pj.Error as exc:
            del self._accounts[server]
            self._refused(server, target, None, "account", exc)
            return None
        log.info("sip: %s account for %s:%d/%s created -> registering",
                 server.value, target.host, target.port, target.transport)  # fmt: skip
        if account.state is RegState.IDLE:  # no onRegStarted: pjsua only logged a refusal
            self._refused(server, target, account, "REGISTER", None)
        else:
            self._schedule.cancel(server)
        return account

    def reconfigure(self, identity: SipIdentity, *, register_expires: int) -> None:
        """What accounts are configured with from now on (new settings, SPEC §7)."""
        self._identity = identity
        self._register_expires = register_expires

    def modify(self, account: ServerAccount) -> bool:
        """Give a current account the identity in force; pjsua registers it again at once
        (an un-REGISTER of the old AOR first when that changed). False when refused
        (reported, retried: Rule 1)."""
        server = account.server
        config = account_config(
            self._identity, account.target, register_expires=self._register_expires,
            retry=self._retry,
        )  # fmt: skip
        self._asked[server] = self._clock()
        try:
            account.modify(config)
        except pj.Error as exc:
            self._refused(server, account.target, account, "REGISTER", exc)
            return False
        account.config = config
        log.info("sip: %s account at %s:%d given new settings -> registering again",
                 server.value, account.target.host, account.target.port)  # fmt: skip
        return True

    def register(self, account: ServerAccount) -> bool:
        """Ask pjsua for a REGISTER on `account` now; False when refused (Rule 1)."""
        server = account.server
        before = account.serial
        self._asked[server] = self._clock()
        try:
            account.setRegistration(True)
        except pj.Error as exc:
            self._refused(server, account.target, account, "REGISTER", exc)
            return False
        if account.serial == before and account.state is not RegState.REGISTERED:
            self._refused(server, account.target, account, "REGISTER", None)
            return False
        self._schedule.cancel(server)
        return True

    def waiting(self, account: ServerAccount) -> bool:
        """Whether a retry of `account`'s REGISTER is due."""
        pending = self._schedule.pending(account.server)
        return pending is not None and pending[0] is account

    def cancel(self, server: Server) -> None:
        """Drop `server`'s retry: its account changed, left, or is not wanted any more."""
        self._schedule.cancel(server)

    def run_due(self) -> list[ServerAccount]:
        """Run the retries whose time has come; returns the accounts they created."""
        created: list[ServerAccount] = []
        for server, (account, target) in self._schedule.take_due():
            if account is None:
                made = self.create(server, target) if server not in self._accounts else None
                created.extend([made] if made is not None else [])
            elif self._accounts.get(server) is account:
                self.register(account)
        return created

    def explain(self, account: ServerAccount) -> str:
        """pjsua's reason, or the TLS layer's when a certificate was rejected."""
        if account.state is not RegState.FAILED or account.target.transport != "tls":
            return account.reason
        rejection = self._tls_rejection(self._asked.get(account.server, 0.0))
        if rejection is None:
            return account.reason
        return f"TLS certificate rejected by {rejection.remote}: {rejection.detail}"

    def _changed(self, account: ServerAccount) -> None:
        """From pjsua2 callbacks (record only): Rule 2, then the stack's `on_change`."""
        if self.waiting(account):
            if account.state not in (RegState.REGISTERING, RegState.REGISTERED):
                return
            self._schedule.cancel(account.server)  # a REGISTER went out after all
        self._on_change(account)

    def _refused(
        self,
        server: Server,
        target: SipTarget,
        account: ServerAccount | None,
        what: str,
        exc: pj.Error | None,
    ) -> None:
        """Rule 1: report FAILED with pjsua's reason and the wait, schedule the retry."""
        if exc is None:
            why = f"{what} not sent by pjsua"
        else:
            why = f"{what} refused by pjsua ({refusal_name(str(exc.reason), int(exc.status))})"
        delay = self._schedule.schedule(server, (account, target))
        reason = f"{why}, retrying in {delay:.1f} s"
        log.warning("registration: %s %s %s", server.value, target.host, reason)
        self._report(server, RegState.FAILED, 0, reason)
