"""How the registration leaves a server and comes back after the link (SPEC §2, §10).

Owns: the steps of `stack`'s Rules 1, 2, 5 and 6 that move accounts: taking a server's
account (a new one, or a leaver made current again), releasing a live server
(un-REGISTER once the new one is registered), dropping a dead one without a packet, the
verdict a failback waits for (`server_judged`), and what the stack does when the
phone's link comes back (`link_changed`, Rule 7 below). `PjsuaStack` inherits it; every
method runs on its owner thread and uses its state, declared below.
Must not touch: which server to use (the core's), BLF and calls themselves (`features`,
`subscriptions`, `calls`), the library's life cycle (`endpoint`), sockets.

Rule 7 (SPEC §10: registered again on the right server within one cycle after the link
is back): `link_changed` hands the change to pjsua (`SipEndpoint.handle_ip_change`),
which re-creates the transports and REGISTERs every account that has a registrar; the
current accounts are exactly the servers in use, so that is the right server. Accounts
kept only for their calls (`leaving` Rule 2) lose their registrar first, so pjsua never
registers them again. A current account that pjsua did not re-register within
`RELINK_CHECK_S` (busy, or refused) gets a REGISTER of ours (refusals are retried, Rule
6). The BLF subscriptions are made afresh where they live: their dialogs may have died
with the link.
"""

from __future__ import annotations

import logging
import time

import pjsua2 as pj

from phoned.core.events import Server
from phoned.sip.account import RegState, ServerAccount, SipTarget
from phoned.sip.endpoint import SipEndpoint
from phoned.sip.features import PhoneFeatures
from phoned.sip.leaving import LeavingAccounts
from phoned.sip.registration import Registrar

log = logging.getLogger("phoned.sip")

#: How long after a link change a current account may take to send its REGISTER before
#: the stack asks for one itself (pjsua sends it at once over UDP; over TCP/TLS once the
#: old connection is shut, within milliseconds).
RELINK_CHECK_S = 1.0


class ServerMoves(PhoneFeatures):
    """Account moves of `PjsuaStack`; see there (and the module rules) for the why."""

    _library: SipEndpoint
    _registrar: Registrar
    _leavers: LeavingAccounts
    _release_awaits_verdict: bool
    #: (when, each current account's serial at the link change) until checked (Rule 7)
    _relink: tuple[float, dict[Server, int]] | None
    #: revived accounts waiting for their un-REGISTER's answer to REGISTER (Rule 6)
    _after_unregister: dict[Server, ServerAccount]

    def _on_account_change(self, account: ServerAccount) -> None:
        raise NotImplementedError

    # -- a verdict, the link --------------------------------------------------------------
    def server_judged(self, server: Server, *, up: bool) -> None:
        """The verdict of `server` in a cycle (SPEC §1): a server left `Leaving.JUDGING`
        is un-REGISTERed once the new one is registered when up, dropped without a
        packet when down (Rules 1 and 2). Any other verdict changes nothing here.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        if not self._release_awaits_verdict or self._release_when_registered is not server:
            return
        self._release_awaits_verdict = False
        if not up:
            self._release_when_registered = None
            log.info("sip: %s judged down while being left -> dropped silently", server.value)
            self._drop_dead(server)
            self._subscribe_blf(server.other)
        self._settle()

    def link_changed(self, why: str) -> None:
        """The phone's link is back or has a new address (SPEC §10, Rule 7): transports
        renewed, every current account registers again, BLF subscribed afresh.

        Args:
            why: for the log, e.g. "back after 4.0 s: eth0 192.0.2.2".

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        self._leavers.progress()
        self._leavers.keep_unregistered()
        before = {server: account.serial for server, account in self._accounts.items()}
        check_at = time.monotonic() + RELINK_CHECK_S
        try:
            self._library.handle_ip_change()
        except pj.Error as exc:
            log.warning("sip: link %s: pjsua's IP change failed (%s) -> registering "
                        "again without it", why, exc.info())  # fmt: skip
            check_at = time.monotonic()
        self._relink = (check_at, before)
        where = self._blf_server
        if where is not None:
            self._end_blf(where, send=True)
            self._subscribe_blf(where)
        servers = ", ".join(server.value for server in self._accounts) or "no server yet"
        log.info("sip: link %s -> transports renewed, registering again on %s", why, servers)
        self._settle()

    def _check_relink(self) -> None:
        """Rule 7: REGISTER the current accounts pjsua left out after a link change."""
        if self._relink is None or time.monotonic() < self._relink[0]:
            return
        before, self._relink = self._relink[1], None
        for server, account in self._accounts.items():
            if before.get(server) == account.serial and not self._registrar.waiting(account):
                log.info("sip: %s sent no REGISTER after the link change -> asking for one",
                         server.value)  # fmt: skip
                self._registrar.register(account)

    # -- account moves ----------------------------------------------------------------------
    def _take_account(self, server: Server, target: SipTarget) -> None:
        """Rule 6: `server`'s leaver at `target` becomes current again, else a new one."""
        self._registrar.cancel(server)
        account = self._leavers.revive(server, target)
        if account is None:
            self._registrar.create(server, target)
            return
        self._accounts[server] = account
        log.info("sip: %s account at %s:%d still %s -> current again",
                 server.value, target.host, target.port, account.state.value)  # fmt: skip
        if account.state is RegState.UNREGISTERING:
            # pjsua refuses a REGISTER while the un-REGISTER is pending (PJSIP_EBUSY) and a
            # refusal waits out a random spread: REGISTER the moment it is answered instead
            self._after_unregister[server] = account
        else:
            self._on_account_change(account)

    def _register_revived(self) -> None:
        """Rule 6: a revived account whose un-REGISTER has been answered (or given up)
        REGISTERs now; one no longer current is forgotten."""
        for server, account in list(self._after_unregister.items()):
            if self._accounts.get(server) is not account:
                del self._after_unregister[server]
            elif account.state is not RegState.UNREGISTERING:
                del self._after_unregister[server]
                log.info("sip: %s un-REGISTER answered -> REGISTER again", server.value)
                self._registrar.register(account)

    def _drop_dead(self, server: Server) -> None:
        """Rules 1 and 5: `server` is dead: its subscriptions and account go silently."""
        if server in self._accounts:
            self._end_blf(server, send=False)
            self._registrar.cancel(server)
            self._leavers.drop_silently(self._accounts.pop(server))

    def _release(self, server: Server) -> None:
        """Rule 2: un-REGISTER `server`'s account, then delete it once answered."""
        self._registrar.cancel(server)
        self._leavers.release(self._accounts.pop(server))

    def _release_if_registered(self) -> None:
        """Rules 2 and 5: once the new server is REGISTERED, the live server left behind
        is un-SUBSCRIBEd, then un-REGISTERed, and BLF moves to the new one."""
        waiting = self._release_when_registered
        if waiting is None or self._release_awaits_verdict:
            return
        newcomer = self._accounts.get(waiting.other)
        if newcomer is not None and newcomer.state is RegState.REGISTERED:
            self._release_when_registered = None
            self._end_blf(waiting, send=True)  # Rule 5: un-SUBSCRIBE the backup first
            if waiting in self._accounts:
                self._release(waiting)
            self._subscribe_blf(waiting.other)
