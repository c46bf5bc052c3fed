"""One pjsua2 account per PBX: its settings, its registration state, and how it leaves.

Owns: the SIP vocabulary the supervisor hands to the stack (`SipIdentity`, `SipTarget`,
`RegState`, `RegistrationChanged`); building a pjsua2 `AccountConfig` from them; the
`ServerAccount` subclass that turns pjsua2's registration callbacks into `RegState`s; and
`TxGate`, a pjsip module (through ctypes) that keeps requests off the wire while an
account of a dead server is deleted.
Must not touch: the library's life cycle, its event loop, threads, or which server is
active: `stack.py` decides all of that; it, `registration.py` and `leaving.py` are the
only callers of this module.

Rule 1: a pjsua2 callback never raises and never blocks. `ServerAccount` catches every
exception and hands plain facts to `on_change`, which only records them.
Rule 2: nothing here may run on a thread other than the stack's owner thread (STACK-NOTES:
pjsua2 aborts the process); `stack` enforces it before calling in.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pjsua2 as pj
import pjsua2._pjsua2 as pj_native

from phoned.core.events import Server
from phoned.sip.dialog_info import BlfState
from phoned.sip.pjsip_hooks import TX_CALLBACK, PjsipModule, PjStr, pjsua_library

log = logging.getLogger("phoned.sip")

#: Transports a target may name (SPEC §3); `endpoint` creates one of each.
TRANSPORTS = ("udp", "tcp", "tls")
#: Final answers to an authenticated REGISTER that mean "wrong user name or password".
REJECTED_CODES = frozenset({401, 403, 407})
#: pj_status_t PJ_ECANCELLED (PJ_ERRNO_START_STATUS + 14): what the gate answers pjsip.
_PJ_ECANCELLED = 70014
_PJ_SUCCESS = 0


@dataclass(frozen=True, slots=True)
class SipIdentity:
    """Who the phone registers as (SPEC §3 `[account]`)."""

    username: str  #: user part of the AOR, e.g. "1001"
    password: str = field(repr=False)  #: digest password; never logged, never in repr
    auth_username: str = ""  #: digest user name; empty -> `username`
    display_name: str = ""  #: shown to callees; may be empty
    domain: str | None = None  #: AOR domain; None -> the address of the server in use


@dataclass(frozen=True, slots=True)
class SipTarget:
    """Where one PBX is reached for SIP (SPEC §3 `[server]` / `[redundancy]`)."""

    host: str  #: IP literal or name of the registrar
    port: int  #: its SIP port
    transport: str = "udp"  #: udp | tcp | tls
    proxy: tuple[str, int] | None = None  #: outbound proxy (host, port) for this server


class RegState(enum.Enum):
    """Registration of the phone on one server, as the stack reports it."""

    #: No account for this server, or its binding was removed (un-REGISTER answered).
    IDLE = "idle"
    #: A REGISTER went out and is not answered yet (refreshes of a live binding excluded).
    REGISTERING = "registering"
    #: The server answered 2xx with expires > 0: it holds our contact.
    REGISTERED = "registered"
    #: The last REGISTER failed (408 timeout, 503, 403...); pjsua retries later.
    FAILED = "failed"
    #: An un-REGISTER (Expires: 0) went out and is not answered yet.
    UNREGISTERING = "unregistering"


#: Registration failures that mean "this server cannot serve" (SPEC §1, keep-alive off).
_SERVER_UNREACHABLE_CODES = frozenset({408, 503})


@dataclass(frozen=True, slots=True)
class RegistrationChanged:
    """The registration state of `server` changed (delivered on the stack's thread)."""

    server: Server
    state: RegState
    code: int  #: SIP status of the answer (0 when none, e.g. when a REGISTER goes out)
    reason: str  #: its reason phrase, or what the stack did ("dropped without un-REGISTER")
    #: The server refused our credentials (401/403/407 once pjsip had answered its
    #: challenge): "primary rejected credentials for 1001". pjsua does not retry these.
    rejected: bool = False

    @property
    def server_unreachable(self) -> bool:
        """The server cannot serve: a REGISTER that timed out (408) or was answered 503.

        SPEC §1, keep-alive off: this is what drives the failover (the core decides).
        """
        return self.state is RegState.FAILED and self.code in _SERVER_UNREACHABLE_CODES


@dataclass(frozen=True, slots=True)
class BlfChanged:
    """The lamp of BLF key `ext` changed (delivered on the stack's thread)."""

    ext: str  #: the watched extension, as in `[blf] keys`
    state: BlfState


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed REGISTER is retried (SPEC §2: a random spread between phones).

    pjsua retries a REGISTER the server failed; `registration.py` retries one that pjsua
    refused to send (`refused_s`, doubling up to `first_interval_s`, spread too).
    """

    first_interval_s: int = 30  #: wait after the first failure
    interval_s: int = 60  #: wait after later failures
    random_s: int = 10  #: pjsua adds or removes up to this much at random each time
    refused_s: float = 1.0  #: first wait after pjsua refused a REGISTER (e.g. PJSIP_EBUSY)


class RegStartedParam(Protocol):
    """What phoned reads of pjsua2's `OnRegStartedParam`."""

    renew: bool


class RegStateParam(Protocol):
    """What phoned reads of pjsua2's `OnRegStateParam`."""

    code: int
    reason: str
    expiration: int


class _RxData(Protocol):
    srcAddress: str  # noqa: N815  # pjsua2's name


class IncomingCallParam(Protocol):
    """What phoned reads of pjsua2's `OnIncomingCallParam`."""

    callId: int  # noqa: N815  # pjsua2's name
    rdata: _RxData


def sip_uri(host: str, port: int, transport: str) -> str:
    """`sip:host:port` (`sips:` for TLS, `;transport=tcp` for TCP), IPv6 bracketed."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    scheme = "sips" if transport == "tls" else "sip"
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return f"{scheme}:{_bracketed(host)}:{port}{suffix}"


def rejected(code: int) -> bool:
    """Whether a final REGISTER answer means the server refused our credentials."""
    return code in REJECTED_CODES


def call_uri(ext: str, identity: SipIdentity, target: SipTarget) -> str:
    """The Request-URI of a call to `ext` through `target` (a full URI is kept as is).

    `sip:<ext>@<domain>` when the AOR domain is configured, else `@<host>:<port>`; the
    transport of the server (`;transport=tcp`, `sips:` for TLS) so that the INVITE goes
    the way the REGISTER went.
    """
    if ext.startswith(("sip:", "sips:")):
        return ext
    user = ext.strip()
    if not user or any(c in user for c in " <>@;"):
        raise ValueError(f"extension must be a SIP user part, got {ext!r}")
    if identity.domain:
        scheme = "sips" if target.transport == "tls" else "sip"
        suffix = ";transport=tcp" if target.transport == "tcp" else ""
        return f"{scheme}:{user}@{_bracketed(identity.domain)}{suffix}"
    address = sip_uri(target.host, target.port, target.transport)
    scheme, rest = address.split(":", 1)
    return f"{scheme}:{user}@{rest}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def account_config(
    identity: SipIdentity, target: SipTarget, *, register_expires: int, retry: RetryPolicy
) -> pj.AccountConfig:
    """The pjsua2 `AccountConfig` that registers `identity` at `target` at once."""
    cfg = pj.AccountConfig()
    domain = identity.domain or target.host
    display = identity.display_name.replace('"', "")
    uri = f"sip:{identity.username}@{_bracketed(domain)}"
    cfg.idUri = f'"{display}" <{uri}>' if display else f"<{uri}>"
    reg = cfg.regConfig
    reg.registrarUri = sip_uri(target.host, target.port, target.transport)
    reg.registerOnAdd = True
    reg.timeoutSec = register_expires
    reg.firstRetryIntervalSec = retry.first_interval_s
    reg.retryIntervalSec = retry.interval_s
    reg.randomRetryIntervalSec = retry.random_s
    reg.dropCallsOnFail = False  # SPEC §1: neither failover nor failback ends a call
    # Our OPTIONS are the keep-alive (SPEC §1): pjsua's CRLF ping every 15 s would be
    # traffic to the PBX that nobody asked for.
    cfg.natConfig.udpKaIntervalSec = 0
    if target.proxy is not None:
        proxy_host, proxy_port = target.proxy
        cfg.sipConfig.proxies.append(sip_uri(proxy_host, proxy_port, target.transport) + ";lr")
    user = identity.auth_username or identity.username
    cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, identity.password))
    return cfg


class ServerAccount(pj.Account):  # type: ignore[misc]  # pjsua2 ships no stubs
    """The pjsua2 account of one server; tracks its registration state.

    Keep a Python reference for as long as pjsua2 may call it (STACK-NOTES), i.e. until
    the library is destroyed: `stack` keeps shut-down accounts in a graveyard.
    """

    def __init__(
        self,
        server: Server,
        target: SipTarget,
        config: pj.AccountConfig,
        on_change: Callable[[ServerAccount], None],
    ) -> None:
        super().__init__()
        self.server = server
        self.target = target
        self.config = config
        self.state = RegState.IDLE
        self.code = 0
        self.reason = ""
        #: Bumped by every callback: lets the stack retry a busy un-REGISTER only once
        #: something happened to the account.
        self.serial = 0
        #: Callbacks are ignored once the account is being dropped or is gone.
        self.silenced = False
        #: Receives (account, pjsua call id, "ip:port" source) of each incoming INVITE.
        self.on_incoming: Callable[[ServerAccount, int, str], None] | None = None
        self._on_change = on_change

    # -- pjsua2 callbacks (owner thread, inside libHandleEvents or a pjsua2 call) -------
    def onRegStarted(self, prm: RegStartedParam) -> None:  # noqa: N802  # pjsua2's name
        """A REGISTER (renew) or un-REGISTER (not renew) went out."""
        try:
            if bool(prm.renew):
                # A refresh of a live binding keeps REGISTERED: the display must not flicker.
                if self.state is not RegState.REGISTERED:
                    self._set(RegState.REGISTERING, 0, "")
            else:
                self._set(RegState.UNREGISTERING, 0, "")
        except Exception:  # Rule 1: nothing may escape into SWIG
            log.exception("sip: %s account: onRegStarted failed", self.server.value)

    def onRegState(self, prm: RegStateParam) -> None:  # noqa: N802  # pjsua2's name
        """A REGISTER or un-REGISTER got its final answer (or timed out: 408)."""
        try:
            code, reason, expires_s = int(prm.code), str(prm.reason), int(prm.expiration)
            if 200 <= code < 300:
                state = RegState.REGISTERED if expires_s > 0 else RegState.IDLE
            else:
                state = RegState.FAILED
            self._set(state, code, reason)
        except Exception:  # Rule 1
            log.exception("sip: %s account: onRegState failed", self.server.value)

    def onIncomingCall(self, prm: IncomingCallParam) -> None:  # noqa: N802  # pjsua2's name
        """An INVITE arrived for this account: hand it on (pjsua2 answers 500 to calls
        nobody wraps in a `pj.Call` during this callback, so the hook must do that)."""
        try:
            if self.on_incoming is not None:
                self.on_incoming(self, int(prm.callId), str(prm.rdata.srcAddress))
        except Exception:  # Rule 1
            log.exception("sip: %s account: onIncomingCall failed", self.server.value)

    def _set(self, state: RegState, code: int, reason: str) -> None:
        if self.silenced:
            return
        self.state, self.code, self.reason = state, code, reason
        self.serial += 1
        self._on_change(self)


class TxGate:
    """A pjsip module that refuses to send any request while `muted()` is active.

    pjsua deletes a registered account by un-REGISTERing it, and pjsip retransmits that
    request to a dead server for 32 s (measured: 11 packets over 31.5 s). pjsua2 offers
    no way out in 2.15.1 (`disableRegOnModify` skips the un-REGISTER *and* keeps the
    registration client), so the gate's `on_tx_request` answers PJ_ECANCELLED for the
    few microseconds of `Account.shutdown()`: the transaction fails at once, nothing
    reaches the wire. The module struct and callback stay referenced here until
    `close()`: pjsip calls into them (STACK-NOTES: a collected module crashes).
    """

    _NAME = b"mod-phoned-txgate"

    def __init__(self) -> None:
        """Register the module on pjsua's endpoint (after `libInit`).

        Raises:
            OSError: the extension's symbols could not be found or the module refused.
        """
        self._lib = pjsua_library()
        self._muted = False
        self.refused = 0  #: requests kept off the wire so far
        self._callback = TX_CALLBACK(self._on_tx_request)
        self._name = ctypes.create_string_buffer(self._NAME)
        self._module = PjsipModule(
            name=PjStr(ctypes.addressof(self._name), len(self._NAME)),
            id=-1,
            priority=33,  # above the dialog layer (32): refused before anything prints it
            on_tx_request=self._callback,
        )
        self._endpt = self._lib.pjsua_get_pjsip_endpt()
        status = self._lib.pjsip_endpt_register_module(self._endpt, ctypes.byref(self._module))
        if not self._endpt or status != _PJ_SUCCESS:
            raise OSError(f"pjsip refused module {self._NAME.decode()}: status {status}")
        self._registered = True

    def _on_tx_request(self, _tdata: int) -> int:
        if self._muted:
            self.refused += 1
            return _PJ_ECANCELLED
        return _PJ_SUCCESS

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Refuse every outgoing request inside the `with` block (owner thread only)."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def close(self) -> None:
        """Unregister the module (before `libDestroy`); idempotent."""
        if self._registered:
            self._registered = False
            self._lib.pjsip_endpt_unregister_module(self._endpt, ctypes.byref(self._module))


def quiet_pjlib(level: int) -> None:
    """Lower pjlib's log level before `libCreate` so its banner stays off stdout."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(pj_native.__file__).pj_log_set_level(ctypes.c_int(level))
