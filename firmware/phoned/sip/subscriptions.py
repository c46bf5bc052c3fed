"""BLF subscriptions: one `Event: dialog` subscription per `[blf] keys` entry (RFC 4235).

Owns: the pjsua2 buddies of the BLF keys on the server in use (one generation at a
time), subscribing them to the dialog event package through ctypes (the SWIG module
offers presence only, STACK-NOTES), matching incoming dialog NOTIFYs to the keys, and the
lamp state of each key, reported to `on_change` on the pjsua2 thread, only on change.
Must not touch: accounts, the choice of server, the library's life or threads (`stack`);
answering the NOTIFYs: pjsua keeps the subscriptions alive by answering them itself.

Rule 1 (STACK-NOTES, measured on 2.15.1): a buddy is never re-subscribed (that sent
`Event: presence`); each `subscribe()` creates fresh buddies, and `end()` deletes them.
Deleting a buddy is what sends its un-SUBSCRIBE (Expires: 0): measured, one per buddy,
answered by Kamailio with 200 and a final NOTIFY (terminated;reason=timeout). An explicit
un-SUBSCRIBE first is worse: pjsua answers that final NOTIFY by re-subscribing after
500 ms, and deleting then sends a second un-SUBSCRIBE (481).
Rule 2: a dead server gets nothing (`end(send=False)`): the buddies are deleted inside
`mute()`, a context in which pjsip refuses every outgoing request (`TxGate.muted` of
`account`); otherwise pjsip would retransmit each un-SUBSCRIBE for 32 s.
Rule 3: a NOTIFY is one of ours when it has `Event: dialog` and its From user is one of
the keys. Its Call-ID ties it to a subscription: NOTIFYs of a generation that `end()`
closed (the final ones of the server left behind) change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import pjsua2 as pj

from phoned.errors import SipError
from phoned.sip.dialog_info import BlfState, DialogInfoError, DialogTracker, read_dialog_document
from phoned.sip.pjsip_hooks import PJ_SUCCESS, PJ_TRUE, IncomingRequest, pjsua_library, uri_user

log = logging.getLogger("phoned.blf")

Mute = Callable[[], AbstractContextManager[object]]
_TRANSPORTS = ("udp", "tcp", "tls")


def buddy_uri(key: str, domain: str, transport: str) -> str:
    """`sip:<key>@<domain>` (`sips:` for TLS, `;transport=tcp` for TCP).

    `domain` is host[:port] of the server (or the configured SIP domain); a "#" in the
    key is escaped (RFC 3261 §25.1 user).
    """
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}, got {transport!r}")
    user = key.replace("%", "%25").replace("#", "%23")
    scheme = "sips" if transport == "tls" else "sip"
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return f"{scheme}:{user}@{domain}{suffix}"


@dataclass
class _Subscription:
    """One key's subscription of the current generation."""

    buddy: pj.Buddy
    tracker: DialogTracker = field(default_factory=DialogTracker)
    call_id: str | None = None  #: learnt from its first NOTIFY
    confirmed_at: float | None = None  #: monotonic time of its first NOTIFY


class BlfSubscriptions:
    """The BLF keys' dialog subscriptions on the server in use; pjsua2 thread only."""

    def __init__(
        self,
        keys: Sequence[str],
        on_change: Callable[[str, BlfState], None],
        *,
        mute: Mute | None = None,
    ) -> None:
        """Args:
        keys: the extensions to watch (`[blf] keys`), in display order.
        on_change: called with (key, new state) on the pjsua2 thread, only on change.
        mute: a context in which pjsip sends no request (Rule 2); without one,
            `end(send=False)` cannot keep the un-SUBSCRIBEs off the wire.
        """
        self._keys = tuple(dict.fromkeys(keys))
        self._on_change = on_change
        self._mute = mute
        self._states = dict.fromkeys(self._keys, BlfState.UNKNOWN)
        self._subs: dict[str, _Subscription] = {}
        self._ended_call_ids: set[str] = set()
        self._subscribed_at: float | None = None
        self._where = ""
        #: where the current generation lives: (account, domain, transport), for new keys
        self._at: tuple[pj.Account, str, str] | None = None

    # -- subscribing -----------------------------------------------------------------------
    def subscribe(self, account: pj.Account, domain: str, transport: str) -> None:
        """Create a fresh buddy `sip:<key>@<domain>` per key on `account` and subscribe
        each to `Event: dialog` (Rule 1). A previous generation is ended first (send=True).

        Raises:
            SipError: pjsua2 refused a buddy or its subscription (those made so far stay
                and are ended by the next `end()`).
            ValueError: unknown transport.
        """
        buddy_uri("0", domain, transport)  # a bad transport raises before any buddy exists
        if self._subs:
            log.info("blf: subscribe() while subscribed at %s -> ending those first", self._where)
            self.end(send=True)
        self._where = domain
        self._at = (account, domain, transport)
        self._subscribed_at = time.monotonic()
        for key in self._keys:
            self._subscribe_key(key)
        if self._keys:
            log.info("blf: %d key(s) subscribed at %s -> waiting for NOTIFY",
                     len(self._keys), domain)  # fmt: skip

    def _subscribe_key(self, key: str) -> None:
        if self._at is None:
            return
        account, domain, transport = self._at
        self._subs[key] = _Subscription(self._new_buddy(account, key, domain, transport))
        status = pjsua_library().pjsua_buddy_subscribe_dlg_event(
            self._subs[key].buddy.getId(), PJ_TRUE
        )
        if status != PJ_SUCCESS:
            raise SipError(f"blf: cannot subscribe to {key}@{domain}: pjsua status {status}")

    def change_keys(self, keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """New `[blf] keys` (SPEC §7): a removed key is un-SUBSCRIBEd, a new one subscribed
        where the others live (when they live anywhere), the others are left untouched:
        their subscriptions and lamps go on. Returns (added, removed).

        Raises:
            SipError: pjsua2 refused a new key's buddy or subscription (the others stay).
        """
        new = tuple(dict.fromkeys(keys))
        added = [key for key in new if key not in self._states]
        removed = [key for key in self._keys if key not in new]
        gone = [self._subs.pop(key) for key in removed if key in self._subs]
        self._ended_call_ids |= {s.call_id for s in gone if s.call_id is not None}
        self._delete([s.buddy for s in gone])  # Rule 1: deleting sends the un-SUBSCRIBE
        self._keys = new
        self._states = {key: self._states.get(key, BlfState.UNKNOWN) for key in new}
        if self._subs or self._subscribed_at is not None:
            for key in added:
                self._subscribe_key(key)
        if added or removed:
            log.info("blf: keys %s added, %s removed at %s -> others untouched",
                     ",".join(added) or "none", ",".join(removed) or "none",
                     self._where or "no server yet")  # fmt: skip
        return added, removed

    @staticmethod
    def _new_buddy(account: pj.Account, key: str, domain: str, transport: str) -> pj.Buddy:
        config = pj.BuddyConfig()
        config.uri = buddy_uri(key, domain, transport)
        config.subscribe = False  # presence: never; the dialog subscription follows
        buddy = pj.Buddy()
        try:
            buddy.create(account, config)
        except pj.Error as exc:
            raise SipError(f"blf: cannot create the buddy {config.uri}: {exc.info()}") from exc
        return buddy

    def end(self, *, send: bool) -> None:
        """End every subscription and delete the buddies; every lamp goes UNKNOWN.

        Args:
            send: True: un-SUBSCRIBE each (Expires: 0) on the server, which is alive.
                False: the server is dead: nothing goes on the wire (Rule 2).
        """
        subs, self._subs = self._subs, {}
        self._ended_call_ids = {s.call_id for s in subs.values() if s.call_id is not None}
        self._subscribed_at = None
        self._at = None
        buddies = [s.buddy for s in subs.values()]
        subs.clear()
        if send or not buddies:
            self._delete(buddies)
        elif self._mute is None:
            log.warning("blf: no mute -> %d un-SUBSCRIBE(s) go to the dead server %s",
                        len(buddies), self._where)  # fmt: skip
            self._delete(buddies)
        else:
            with self._mute():
                self._delete(buddies)
        if buddies:
            how = "un-subscribed" if send else "dropped silently"
            log.info("blf: %d subscription(s) at %s %s -> lamps unknown",
                     len(buddies), self._where, how)  # fmt: skip
        for key in self._keys:
            self._set(key, BlfState.UNKNOWN)

    @staticmethod
    def _delete(buddies: list[pj.Buddy]) -> None:
        """Rule 1: pjsua2's Buddy destructor deletes the pjsua buddy (and un-subscribes)."""
        lib = pjsua_library()
        while buddies:
            buddy = buddies.pop()
            buddy_id = buddy.getId()
            del buddy  # the last reference: the destructor runs now
            if buddy_id >= 0 and lib.pjsua_buddy_is_valid(buddy_id):
                log.error("blf: buddy %d still alive after delete -> leaked", buddy_id)

    # -- NOTIFYs ---------------------------------------------------------------------------
    def on_request(self, request: IncomingRequest) -> bool:
        """Take a dialog NOTIFY for one of the keys (Rule 3); True if it was one.

        Never answers it: pjsua does, which keeps its subscription healthy.
        """
        if request.method != "NOTIFY" or _event_package(request) != "dialog":
            return False
        key = uri_user(request.header("from") or "")
        if key not in self._states:
            return False
        call_id = request.header("call-id") or ""
        sub = self._subs.get(key)
        if sub is None or call_id in self._ended_call_ids:
            return True  # a subscription we ended: its final NOTIFYs change nothing
        if sub.call_id != call_id:
            sub.call_id = call_id  # its first NOTIFY (or pjsua re-subscribed after a timeout)
        if sub.confirmed_at is None:
            sub.confirmed_at = time.monotonic()
        self._set(key, self._judge(key, sub, request))
        return True

    def _judge(self, key: str, sub: _Subscription, request: IncomingRequest) -> BlfState:
        substate = (request.header("subscription-state") or "").split(";")[0].strip().lower()
        if substate == "terminated":
            sub.confirmed_at = None
            return BlfState.UNKNOWN
        if not request.body.strip():
            # RFC 6665 §4.2.2: a NOTIFY may carry no state. Kamailio sends an empty body
            # while nothing is published for the extension, i.e. it has no dialog.
            return sub.tracker.clear() if substate == "active" else sub.tracker.state
        try:
            document = read_dialog_document(request.body)
        except DialogInfoError as exc:  # SPEC §10: hostile XML refused, one line saying why
            log.warning("blf: %s: NOTIFY body from %s:%d refused: %s -> ignored",
                        key, *request.source, exc)  # fmt: skip
            return sub.tracker.state
        return sub.tracker.apply(document)

    def _set(self, key: str, state: BlfState) -> None:
        old = self._states[key]
        if old is state:
            return
        self._states[key] = state
        log.info("blf: %s %s -> %s", key, old.value, state.value)
        try:
            self._on_change(key, state)
        except Exception:  # a pjsua2 callback path: nothing may escape into SWIG
            log.exception("blf: on_change(%s, %s) failed", key, state.value)

    # -- queries ---------------------------------------------------------------------------
    def states(self) -> dict[str, BlfState]:
        """Every key's lamp state (UNKNOWN until a NOTIFY says otherwise)."""
        return dict(self._states)

    def confirmed(self) -> int:
        """How many subscriptions of the current generation got their first NOTIFY."""
        return sum(1 for s in self._subs.values() if s.confirmed_at is not None)

    def confirm_time_ms(self) -> float | None:
        """`subscribe()` -> the last key's first NOTIFY, once every key has one."""
        if self._subscribed_at is None or not self._subs or self.confirmed() < len(self._subs):
            return None
        last = max(s.confirmed_at for s in self._subs.values() if s.confirmed_at is not None)
        return (last - self._subscribed_at) * 1000.0


def _event_package(request: IncomingRequest) -> str:
    """The event package of `Event: dialog;id=...` -> "dialog" (lower case)."""
    return (request.header("event") or "").split(";")[0].strip().lower()
