"""Calls through pjsua2: placing, answering, ending and tracking them (SPEC §1, §2, §4).

Owns: the call vocabulary handed to the supervisor (`CallState`, `CallDirection`,
`CallInfo`, `CallChanged`), the `PhoneCall` subclass of `pj.Call` that records pjsua2's
call callbacks, and `CallBook`, which knows every live call, which server it was set up
through, and answers incoming calls by policy (auto-answer or ring) once the source has
been checked against the configured servers.
Must not touch: accounts, registrations or the library's life: `stack` owns those and
is the only caller. This module never decides which server is active.

Rule 1 (SPEC §1/§2): a call keeps its dialog on the server it was set up through until it
ends. Nothing here hangs a call up because the active server changed; `stack` asks
`live_on(account)` before deleting an account and keeps it while calls use it.
Rule 2 (SPEC §2): an incoming INVITE is accepted only from an address of one of the two
configured servers (or their outbound proxies); anything else gets 403.
Rule 3: pjsua2 callbacks only record (they never raise, never block); decisions and
`on_event` deliveries happen in `settle()`, on the owner thread, once pjsua2 returned.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import pjsua2 as pj

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.account import ServerAccount

log = logging.getLogger("phoned.sip")

#: SIP status of a refused incoming call (Rule 2).
FORBIDDEN = 403


class CallState(enum.Enum):
    """Where a call is, as the phone's user sees it."""

    #: Outgoing INVITE sent, no ringing yet.
    CALLING = "calling"
    #: Outgoing: the callee rings (18x). Incoming: the phone rings.
    RINGING = "ringing"
    #: Answered (200 OK) and acknowledged: the call is up.
    CONFIRMED = "confirmed"
    #: Over (BYE, CANCEL, rejected, failed). Reported once, then forgotten.
    ENDED = "ended"


class CallDirection(enum.Enum):
    """Who placed the call."""

    OUTGOING = "outgoing"  #: placed by this phone (`phoned call EXT`)
    INCOMING = "incoming"  #: placed by someone else, through one of the servers


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One call as `phoned status` shows it."""

    call_id: int  #: pjsua's call id: what `hangup(call_id)` takes
    remote_uri: str  #: the other party's URI
    state: CallState
    server: Server  #: the server the call was set up through; it stays there (Rule 1)
    direction: CallDirection
    duration_s: float  #: time since the call was answered (0 before)
    code: int = 0  #: last SIP status seen for the call (e.g. 486 when the callee is busy)
    reason: str = ""  #: its reason phrase


@dataclass(frozen=True, slots=True)
class CallChanged:
    """A call changed state (delivered on the stack's thread through `on_event`)."""

    call: CallInfo


class _CallStateParam(Protocol):
    """What phoned reads of pjsua2's `OnCallStateParam` (nothing: state is read fresh)."""


_INV_STATES = {
    pj.PJSIP_INV_STATE_NULL: CallState.CALLING,
    pj.PJSIP_INV_STATE_CALLING: CallState.CALLING,
    pj.PJSIP_INV_STATE_INCOMING: CallState.RINGING,
    pj.PJSIP_INV_STATE_EARLY: CallState.RINGING,
    pj.PJSIP_INV_STATE_CONNECTING: CallState.RINGING,  # 200 sent/received, ACK pending
    pj.PJSIP_INV_STATE_CONFIRMED: CallState.CONFIRMED,
    pj.PJSIP_INV_STATE_DISCONNECTED: CallState.ENDED,
}


class PhoneCall(pj.Call):  # type: ignore[misc]  # pjsua2 ships no stubs
    """A pjsua2 call that remembers its server and records its state changes.

    Kept referenced by `CallBook` until it ended (pjsua2 calls into it until then).
    """

    def __init__(
        self,
        account: ServerAccount,
        server: Server,
        direction: CallDirection,
        on_change: Callable[[PhoneCall], None],
        call_id: int = pj.PJSUA_INVALID_ID,
    ) -> None:
        super().__init__(account, call_id)
        self.account = account
        self.server = server
        self.direction = direction
        self.state = CallState.CALLING if direction is CallDirection.OUTGOING else CallState.RINGING
        self.remote_uri = ""
        self.code, self.reason = 0, ""
        self.confirmed_at: float | None = None
        self.known_id = call_id
        #: (state, code) last reported through `on_event`: pjsua repeats DISCONNECTED.
        self.reported: tuple[CallState, int] | None = None
        self._on_change = on_change

    def snapshot(self, now: float) -> CallInfo:
        """This call as a frozen `CallInfo` at monotonic time `now`."""
        duration_s = 0.0 if self.confirmed_at is None else max(0.0, now - self.confirmed_at)
        return CallInfo(
            self.known_id,
            self.remote_uri,
            self.state,
            self.server,
            self.direction,
            round(duration_s, 3),
            self.code,
            self.reason,
        )

    # -- pjsua2 callbacks (owner thread) -------------------------------------------------
    def onCallState(self, _prm: _CallStateParam) -> None:  # noqa: N802  # pjsua2's name
        """The INVITE session changed state: read it while pjsua still has it."""
        try:
            info = self.getInfo()
            self.known_id = int(info.id)
            self.remote_uri = str(info.remoteUri)
            self.code, self.reason = int(info.lastStatusCode), str(info.lastReason)
            state = _INV_STATES.get(info.state, CallState.CALLING)
            if state is CallState.CONFIRMED and self.confirmed_at is None:
                self.confirmed_at = time.monotonic()
            self.state = state
            self._on_change(self)
        except Exception:  # Rule 3: nothing may escape into SWIG
            log.exception("sip: call %d: onCallState failed", self.known_id)

    def onCallMediaState(self, _prm: object) -> None:  # noqa: N802  # pjsua2's name
        """Connect the call's audio to the sound device (the null device in the lab)."""
        try:
            manager = pj.Endpoint.instance().audDevManager()
            audio = self.getAudioMedia(-1)
            audio.startTransmit(manager.getPlaybackDevMedia())
            manager.getCaptureDevMedia().startTransmit(audio)
        except Exception:  # no active audio (e.g. on hold): nothing to connect
            log.debug("sip: call %d: no audio to connect", self.known_id)


@dataclass
class _Incoming:
    call: PhoneCall
    source: str  #: "ip:port" the INVITE came from


@dataclass
class CallBook:
    """Every live call of the stack; all methods on the stack's owner thread."""

    on_event: Callable[[CallChanged], None]
    auto_answer: bool = False
    _calls: dict[int, PhoneCall] = field(default_factory=dict)
    _incoming: list[_Incoming] = field(default_factory=list)
    _peers: dict[Server, frozenset[str]] = field(default_factory=dict)
    _changed: list[PhoneCall] = field(default_factory=list)

    # -- who may call us (Rule 2) -------------------------------------------------------
    def accept_from(self, peers: Mapping[Server, Iterable[str]]) -> None:
        """Set the IP addresses each server's requests may come from (replaces all)."""
        self._peers = {server: frozenset(map(_normal_ip, hosts)) for server, hosts in peers.items()}

    def server_of(self, source: str) -> Server | None:
        """The configured server whose address `source` ("ip:port") is, or None."""
        ip = _normal_ip(_host_of(source))
        return next((server for server, ips in self._peers.items() if ip in ips), None)

    # -- placing and ending -------------------------------------------------------------
    def place(self, account: ServerAccount, server: Server, uri: str) -> int:
        """Send an INVITE to `uri` through `account`; the new call's id.

        Raises:
            SipError: pjsua2 refused to place the call.
        """
        call = PhoneCall(account, server, CallDirection.OUTGOING, self._record)
        prm = pj.CallOpParam(True)  # default call settings: one audio stream
        try:
            call.makeCall(uri, prm)
        except pj.Error as exc:
            raise SipError(f"sip: cannot call {uri} via {server.value}: {exc.info()}") from exc
        call.known_id = int(call.getId())
        call.remote_uri = uri
        self._calls[call.known_id] = call
        log.info("sip: call %d to %s via %s -> calling", call.known_id, uri, server.value)
        return call.known_id

    def hangup(self, call_id: int | None) -> int:
        """End one call (or all when `call_id` is None); how many were asked to end.

        Raises:
            SipError: no live call has that id.
        """
        if call_id is not None and call_id not in self._calls:
            raise SipError(f"sip: no call {call_id} to hang up")
        chosen = [self._calls[call_id]] if call_id is not None else list(self._calls.values())
        for call in chosen:
            with contextlib.suppress(pj.Error):  # already ending: pjsua refuses twice
                call.hangup(pj.CallOpParam(True))
        return len(chosen)

    def answer(self, call_id: int, code: int = 200) -> None:
        """Answer a ringing incoming call with `code` (200 picks it up).

        Raises:
            SipError: no such call, or pjsua2 refused (e.g. it is not ringing).
        """
        call = self._calls.get(call_id)
        if call is None:
            raise SipError(f"sip: no call {call_id} to answer")
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        try:
            call.answer(prm)
        except pj.Error as exc:
            raise SipError(f"sip: cannot answer call {call_id}: {exc.info()}") from exc

    # -- incoming calls -----------------------------------------------------------------
    def on_incoming(
        self, account: ServerAccount, server: Server, call_id: int, source: str
    ) -> None:
        """From `Account.onIncomingCall` (Rule 3): wrap the call now, decide in `settle()`."""
        via = self.server_of(source) or server
        call = PhoneCall(account, via, CallDirection.INCOMING, self._record, call_id)
        self._calls[call_id] = call
        self._incoming.append(_Incoming(call, source))

    def _decide(self, pending: _Incoming) -> None:
        call = pending.call
        if self.server_of(pending.source) is None:
            log.warning("sip: call %d from %s: not a configured server -> 403",
                        call.known_id, pending.source)  # fmt: skip
            self._answer_quietly(call, FORBIDDEN)
            return
        code = 200 if self.auto_answer else 180
        log.info("sip: call %d from %s via %s -> %s", call.known_id, pending.source,
                 call.server.value, "answered" if code == 200 else "ringing")  # fmt: skip
        self._answer_quietly(call, code)

    @staticmethod
    def _answer_quietly(call: PhoneCall, code: int) -> None:
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        try:
            call.answer(prm)
        except pj.Error as exc:  # the caller cancelled meanwhile: its state says so
            log.info("sip: call %d: answer %d refused: %s", call.known_id, code, exc.info())

    # -- state --------------------------------------------------------------------------
    def live_on(self, account: ServerAccount) -> int:
        """How many live calls were set up through `account`."""
        return sum(1 for call in self._calls.values() if call.account is account)

    def calls(self) -> list[CallInfo]:
        """Every live call, oldest first."""
        now = time.monotonic()
        return [call.snapshot(now) for call in self._calls.values()]

    def _record(self, call: PhoneCall) -> None:
        self._changed.append(call)

    def settle(self) -> None:
        """Decide pending incoming calls, report changes, forget ended calls."""
        while self._incoming:
            self._decide(self._incoming.pop(0))
        now = time.monotonic()
        while self._changed:
            call = self._changed.pop(0)
            if call.state is CallState.ENDED:
                self._calls.pop(call.known_id, None)
            if call.reported != (call.state, call.code):
                call.reported = (call.state, call.code)
                self.on_event(CallChanged(call.snapshot(now)))

    def forget_all(self) -> None:
        """At shutdown, before libDestroy: drop every call object (pjsua2 must not call
        into a `PhoneCall` after the library is gone)."""
        self._incoming.clear()
        self._changed.clear()
        self._calls.clear()


def _host_of(source: str) -> str:
    """The host part of pjsip's "ip:port" / "[v6]:port" source address."""
    if source.startswith("["):
        return source[1 : source.find("]")]
    return source.rsplit(":", 1)[0] if source.count(":") == 1 else source


def _normal_ip(host: str) -> str:
    """`host` as a canonical IP string when it is one (names stay as they are)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host.lower()
