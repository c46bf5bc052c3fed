"""The phone's user-facing SIP features on top of the stack: calls, BLF lamps (SPEC §4)
and check-sync (SPEC §7 Force Update).

Owns: the public methods `phoned call` / `phoned hangup` / `phoned status` reach
(`call`, `hangup`, `answer`, `calls`, `blf_states`), the list of addresses incoming
calls and check-syncs are accepted from, where the BLF subscriptions live (`watch_blf`
for new keys, subscribe on a server, end them), and the request hook's routing: BLF
NOTIFYs to the subscriptions, check-sync NOTIFYs to `checksync` (answered here,
reported as `CheckSyncReceived`, refusals counted in `checksync_refused`).
`PjsuaStack` (`stack`) inherits them; they run on its owner thread like every other
method and use its state, declared below.
Must not touch: accounts, registration, the library: `stack` owns those; what a
check-sync fetches or restarts: the service decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.account import (
    BlfChanged,
    RegistrationChanged,
    ServerAccount,
    SipIdentity,
    TxGate,
    call_uri,
)
from phoned.sip.calls import CallBook, CallChanged, CallInfo
from phoned.sip.checksync import CheckSyncInbox, CheckSyncReceived
from phoned.sip.dialog_info import BlfState
from phoned.sip.endpoint import SipEndpoint
from phoned.sip.pjsip_hooks import IncomingRequest, IncomingRequestHook
from phoned.sip.subscriptions import BlfSubscriptions

log = logging.getLogger("phoned.sip")

#: Everything the stack reports through `on_event`.
SipEvent = RegistrationChanged | CallChanged | BlfChanged | CheckSyncReceived


class PhoneFeatures:
    """Calls and BLF lamps of `PjsuaStack`; see there for the thread rule."""

    _identity: SipIdentity
    _calls: CallBook
    _active: Server | None
    _accounts: dict[Server, ServerAccount]
    _blf: BlfSubscriptions | None
    _blf_keys: tuple[str, ...]
    _blf_server: Server | None  #: where the subscriptions live now
    _hook: IncomingRequestHook | None
    _checksync: CheckSyncInbox
    _gate: TxGate | None
    _release_when_registered: Server | None
    _events: list[SipEvent]
    _peers_given: dict[Server, tuple[str, ...]]
    _library: SipEndpoint

    def _check_thread(self) -> None:
        raise NotImplementedError

    def _settle(self) -> None:
        raise NotImplementedError

    def _destroy_library(self) -> None:
        raise NotImplementedError

    # -- calls (SPEC §4: phoned call / hangup) --------------------------------------------
    def call(self, ext: str) -> int:
        """Call `ext` (an extension, or a full `sip:` URI) through the active server.

        Returns:
            The call's id (for `hangup()`); its progress arrives as `CallChanged`.

        Raises:
            SipError: wrong thread, no server in use yet, or pjsua2 refused the call.
        """
        self._check_thread()
        server = self._active
        account = self._accounts.get(server) if server is not None else None
        if server is None or account is None:
            raise SipError(f"sip: cannot call {ext}: no server in use")
        try:
            uri = call_uri(ext, self._identity, account.target)
        except ValueError as exc:
            raise SipError(f"sip: cannot call {ext!r}: {exc}") from exc
        call_id = self._calls.place(account, server, uri)
        self._settle()
        return call_id

    def hangup(self, call_id: int | None = None) -> int:
        """End call `call_id`, or every call when None; how many were asked to end.

        Raises:
            SipError: wrong thread, not started, or no live call has that id.
        """
        self._check_thread()
        count = self._calls.hangup(call_id)
        self._settle()
        return count

    def answer(self, call_id: int) -> None:
        """Pick up a ringing incoming call (when `auto_answer` is off).

        Raises:
            SipError: wrong thread, no such call, or it is not ringing.
        """
        self._check_thread()
        self._calls.answer(call_id)
        self._settle()

    def calls(self) -> list[CallInfo]:
        """The live calls, oldest first (for `phoned status`).

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        return self._calls.calls()

    def blf_states(self) -> dict[str, BlfState]:
        """Every BLF key's lamp state (all UNKNOWN while not subscribed).

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        if self._blf is None:
            return dict.fromkeys(self._blf_keys, BlfState.UNKNOWN)
        return self._blf.states()

    @property
    def checksync_refused(self) -> int:
        """check-sync NOTIFYs answered 403 so far: not from a configured server or proxy
        (SPEC §7; retransmissions not counted). A plain int: readable from any thread."""
        return self._checksync.refused

    def accept_calls_from(self, peers: Mapping[Server, Iterable[str]]) -> None:
        """Set the IP addresses (servers and their proxies) incoming calls and check-sync
        NOTIFYs may come from.

        SPEC §2: calls from either configured server are accepted, others get 403; SPEC
        §7: the same for check-sync. Replaces the previous set; IP literals of targets
        given to `use_server()` are added automatically, so this is needed for the server
        not in use yet and for names resolved by the caller.
        """
        self._check_thread()
        self._peers_given = {server: tuple(hosts) for server, hosts in peers.items()}
        self._update_peers()

    def _update_peers(self) -> None:
        merged = {server: list(hosts) for server, hosts in self._peers_given.items()}
        for server, account in self._accounts.items():
            target = account.target
            merged.setdefault(server, []).append(target.host)
            if target.proxy is not None:
                merged[server].append(target.proxy[0])
        self._calls.accept_from(merged)
        self._checksync.allow_from(host for hosts in merged.values() for host in hosts)
        self._library.admit_connections_from(host for hosts in merged.values() for host in hosts)

    # -- BLF subscriptions on the server in use (SPEC §2 step 2, §7 keys) ---------------
    def _start_requests(self) -> None:
        """At `start()`: the BLF keys' subscriptions (none without keys) and, always, the
        request hook (SPEC §7: check-sync is answered with or without BLF keys).

        Raises:
            SipError: the hook cannot be installed (the library is destroyed first).
        """
        self._blf = self._new_blf()
        self._hook = IncomingRequestHook(self._on_request)
        try:
            self._hook.install()
        except SipError:
            self._hook = None
            self._destroy_library()
            raise

    def _new_blf(self) -> BlfSubscriptions | None:
        if not self._blf_keys:
            return None
        mute = self._gate.muted if self._gate is not None else None
        return BlfSubscriptions(self._blf_keys, self._on_blf_change, mute=mute)

    def watch_blf(self, keys: Sequence[str]) -> None:
        """New `[blf] keys` (settings changed, SPEC §7): removed keys are un-SUBSCRIBEd,
        new ones subscribed where the others live (fresh buddies, STACK-NOTES), the kept
        ones left untouched. Same keys: nothing happens.

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        keys = tuple(keys)
        if keys == self._blf_keys:
            return
        if self._blf is not None and keys:
            self._blf_keys = keys
            try:
                self._blf.change_keys(keys)
            except SipError as exc:  # lamps of the new keys stay unknown
                log.warning("sip: blf: %s -> lamps unknown", exc)
            self._settle()
            return
        where = self._blf_server
        if where is None and self._release_when_registered is None:
            where = self._active
        self._end_blf(None, send=True)
        self._blf_keys = keys
        self._blf = self._new_blf()  # the hook stays (installed at start): check-sync
        if where is not None:
            self._subscribe_blf(where)
        self._settle()

    def _subscribe_blf(self, server: Server) -> None:
        account = self._accounts.get(server)
        if self._blf is None or account is None:
            return
        target = account.target
        domain = self._identity.domain or f"{target.host}:{target.port}"
        self._blf_server = server  # partial subscriptions are ended with the rest
        try:
            self._blf.subscribe(account, domain, target.transport)
        except (SipError, ValueError) as exc:  # lamps stay unknown; registration goes on
            log.warning("sip: blf on %s: %s -> lamps unknown", server.value, exc)

    def _end_blf(self, server: Server | None, *, send: bool) -> None:
        """End the subscriptions when they live on `server` (None: wherever they are)."""
        if self._blf is None or self._blf_server is None:
            return
        if server is None or server is self._blf_server:
            self._blf.end(send=send)
            self._blf_server = None

    def _on_request(self, request: IncomingRequest) -> int | None:
        """From the request hook, inside libHandleEvents (stack Rule 3: record only).

        BLF NOTIFYs are read, never answered here (pjsua answers them, which keeps the
        subscriptions alive). check-sync NOTIFYs are answered here (200 or 403, SPEC §7);
        a first 200 is queued as `CheckSyncReceived` for `on_event`. Anything else: None,
        pjsua's as before.
        """
        if self._blf is not None and self._blf.on_request(request):
            return None
        answer = self._checksync.handle(request, time.monotonic())
        if answer is None:
            return None
        if answer.warning is not None:
            log.warning("%s", answer.warning)
        if answer.report is not None:
            self._events.append(answer.report)
        return answer.status

    def _on_blf_change(self, ext: str, state: BlfState) -> None:
        self._events.append(BlfChanged(ext, state))
