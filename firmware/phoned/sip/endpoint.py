"""pjsua2's library: created with its transports and timers, polled, destroyed.

Owns: the one `pj.Endpoint` of the process (`libCreate` .. `libDestroy`), its UDP, TCP and
TLS transports (TLS verifying the server against `tls_ca_file`; who may connect to the
TCP and TLS listeners, Rule 4), pjsip's transaction
timers (`register_timeout_s`, set through ctypes), the routing of pjsip's log to the
"phoned.pjsip" logger, and what the TLS layer said about the last rejected certificate.
Must not touch: accounts, calls, or which server is in use (`stack` owns those); any
thread but the stack's owner (the caller guarantees it).

Rule 1: UDP must come up (it is the default transport and the start fails without it);
TCP and TLS are created too, and a failure there only makes targets with that transport
refused later (`SipError` from `require()`), never the whole start.
Rule 2: transaction timers are process-global in pjsip: `register_timeout_s` shortens
Timer F (non-INVITE, e.g. REGISTER) and Timer B (INVITE) alike. T1/T2/T4 keep RFC 3261's
values, so retransmissions stay at +0.5, +1.5, +3.5 s...
Rule 3 (SPEC §10): when the phone's link comes back or changes address, the stack calls
`handle_ip_change`; STACK-NOTES had it "from the API reference, not yet tried": measured
since with a link down and up in the lab (tests/integration/test_sip_link.py).
Rule 4 (SPEC §10, half-open TCP): the TCP and TLS listeners admit connections only from
the servers and proxies (`admit_connections_from`, a kernel socket filter, `listeners`
says why); until the stack names them, from nobody. Listeners pjsua creates anew (after
a link change) get the filter at the next check (`keep_listeners_filtered`, every
`CHECK_EVERY_S` from the stack's poll). A listener that cannot be filtered is logged and
left open: the phone keeps working.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import pjsua2 as pj
import pjsua2._pjsua2 as pj_native

from phoned.errors import SipError
from phoned.sip.account import quiet_pjlib
from phoned.sip.listeners import CHECK_EVERY_S, ipv4_sources, listening_fds
from phoned.sockfilter import MAX_SOURCES, attach, ipv4_sources_filter

log = logging.getLogger("phoned.sip")
pjsip_log = logging.getLogger("phoned.pjsip")

#: pjsip log levels -> logging levels; 3 (info) and chattier go to DEBUG.
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING}
#: RFC 3261 §17 timer defaults (ms), as pjsip ships them (pjsip_cfg()->tsx).
T1_MS, T2_MS, T4_MS, TD_MS = 500, 4000, 5000, 32000
#: pjsip transport types by phoned's names.
_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}


class _LogEntry(Protocol):
    level: int
    msg: str


class _TransportStateParam(Protocol):
    state: int
    lastError: int  # noqa: N815  # pjsua2's name
    tlsInfo: Any  # noqa: N815  # pjsua2's name


class _LogWriter(pj.LogWriter):  # type: ignore[misc]  # pjsua2 ships no stubs
    """Routes pjsip's log lines to `phoned.pjsip`; never raises into SWIG."""

    def write(self, entry: _LogEntry) -> None:
        with contextlib.suppress(Exception):
            level = _LOG_LEVELS.get(int(entry.level), logging.DEBUG)
            pjsip_log.log(level, "pjsip: %s", " ".join(str(entry.msg).split()))


@dataclass(frozen=True, slots=True)
class TlsRejection:
    """A server certificate that failed verification."""

    at: float  #: monotonic time of the failure
    remote: str  #: "ip:port" of the server
    detail: str  #: what the TLS layer said (e.g. "certificate not trusted")


class _Endpoint(pj.Endpoint):  # type: ignore[misc]  # pjsua2 ships no stubs
    """`pj.Endpoint` that remembers the last rejected server certificate."""

    def __init__(self) -> None:
        super().__init__()
        self.tls_rejection: TlsRejection | None = None

    def onTransportState(self, prm: _TransportStateParam) -> None:  # noqa: N802  # pjsua2
        try:
            info = prm.tlsInfo
            if info.isEmpty() or int(info.verifyStatus) == 0:
                return
            detail = "; ".join(str(m) for m in info.verifyMsgs) or f"status {info.verifyStatus}"
            remote = str(info.remoteAddr)
            self.tls_rejection = TlsRejection(time.monotonic(), remote, detail)
            log.warning("sip: tls: certificate of %s rejected (%s) -> closed", remote, detail)
        except Exception:  # nothing may escape into SWIG
            log.exception("sip: onTransportState failed")


class SipEndpoint:
    """The library with its transports; every method on the stack's owner thread."""

    def __init__(
        self,
        *,
        local_port: int,
        user_agent: str,
        log_level: int,
        tls_ca_file: str = "",
        register_timeout_s: float | None = None,
    ) -> None:
        """Args:
        local_port: UDP and TCP listen port; TLS listens on `local_port + 1`.
        user_agent: User-Agent header of every request.
        log_level: pjsip log level (<= 3 keeps headers out; 5 adds message dumps).
        tls_ca_file: CA bundle that server certificates must chain to ("" = system's).
        register_timeout_s: transaction timeout (Timer F/B) in seconds, 1..32; None
            keeps pjsip's 32 s (Rule 2).
        """
        if register_timeout_s is not None and not 1.0 <= register_timeout_s <= TD_MS / 1000:
            raise SipError(f"sip: register_timeout_s must be 1..32, got {register_timeout_s}")
        self.local_port = local_port
        self._user_agent = user_agent
        self._log_level = log_level
        self._tls_ca_file = tls_ca_file
        self._register_timeout_s = register_timeout_s
        self._ep: Any = None
        self._writer: _LogWriter | None = None
        self._transports: dict[str, int] = {}
        self._missing: dict[str, str] = {}
        self._admitted: tuple[str, ...] = ()  #: Rule 4: IPv4 sources the listeners admit
        self._filtered: set[str] = set()  #: socket inodes of the listeners filtered so far
        self._unfilterable: set[str] = set()  #: listeners whose filter failed (logged once)
        self._next_filter_check = 0.0

    @property
    def started(self) -> bool:
        """Whether the library exists."""
        return self._ep is not None

    def create(self) -> None:
        """libCreate, libInit (no worker threads), null audio, transports, libStart.

        Raises:
            pj.Error: pjsua2 failed (e.g. the UDP port is taken); call `destroy()`.
        """
        quiet_pjlib(self._log_level)
        self._ep = _Endpoint()
        self._ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0  # STACK-NOTES: our poll() is the only event loop
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = self._user_agent
        # Media (RTP) on SIP's ioqueue, served by our poll() too: pjmedia's own worker
        # thread woke every few ms and cost 0.5 % of a core on an idle phone (SPEC §9).
        cfg.medConfig.hasIoqueue = False
        cfg.medConfig.threadCnt = 0
        self._writer = _LogWriter()
        cfg.logConfig.writer = self._writer
        cfg.logConfig.level = self._log_level
        cfg.logConfig.consoleLevel = self._log_level
        cfg.logConfig.msgLogging = self._log_level >= 5  # dumps carry Authorization headers
        cfg.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        self._ep.libInit(cfg)
        self._ep.audDevManager().setNullDev()
        self._create_transports()
        self._filter_listeners()
        self._ep.libStart()
        if self._register_timeout_s is not None:
            set_transaction_timeout(self._register_timeout_s)

    def _create_transports(self) -> None:
        udp = pj.TransportConfig()
        udp.port = self.local_port
        self._transports["udp"] = self._ep.transportCreate(_TYPES["udp"], udp)  # Rule 1
        tcp = pj.TransportConfig()
        tcp.port = self.local_port
        tls = pj.TransportConfig()
        tls.port = self.local_port + 1
        tls.tlsConfig.CaListFile = self._tls_ca_file
        tls.tlsConfig.verifyServer = True  # SPEC §3: certificates must chain to the CA
        for name, config in (("tcp", tcp), ("tls", tls)):
            try:
                self._transports[name] = self._ep.transportCreate(_TYPES[name], config)
            except pj.Error as exc:
                self._missing[name] = exc.info()
                log.warning("sip: %s transport on port %d: %s -> unavailable",
                            name, config.port, exc.info())  # fmt: skip

    def require(self, transport: str) -> None:
        """Check that `transport` was created.

        Raises:
            SipError: unknown transport name, or it failed at start (with pjsip's reason).
        """
        if transport not in _TYPES:
            raise SipError(f"sip: transport must be udp, tcp or tls, got {transport!r}")
        if transport not in self._transports:
            why = self._missing.get(transport, "not created")
            raise SipError(f"sip: {transport} transport unavailable: {why}")

    def handle_events(self, timeout_ms: int) -> None:
        """Run pjsip's timers and sockets once, up to `timeout_ms`."""
        self._ep.libHandleEvents(max(0, timeout_ms))

    def admit_connections_from(self, hosts: Iterable[str]) -> None:
        """Rule 4: let only `hosts` (IPv4 literals; names are skipped) open connections to
        the TCP and TLS listeners. Replaces the previous set."""
        sources = ipv4_sources(hosts)
        if sources != self._admitted:
            self._admitted = sources
            self._filtered.clear()
            self._filter_listeners()
            who = ", ".join(sources) or "nobody yet"
            log.info("sip: tcp and tls listeners admit connections from %s only", who)

    def keep_listeners_filtered(self, now: float) -> None:
        """Rule 4: filter listeners pjsua created since the last look (monotonic `now`;
        looks at most every `CHECK_EVERY_S`)."""
        if now >= self._next_filter_check:
            self._next_filter_check = now + CHECK_EVERY_S
            self._filter_listeners()

    def _filter_listeners(self) -> None:
        ports = {"tcp": self.local_port, "tls": self.local_port + 1}
        program = ipv4_sources_filter(self._admitted[:MAX_SOURCES])
        for name in sorted(self._transports.keys() & ports.keys()):
            try:
                for inode, fd in listening_fds(ports[name]).items():
                    if inode not in self._filtered:
                        self._filtered.add(inode)  # tried once: a refusal is logged once
                        attach(fd, program)
            except (OSError, ValueError) as exc:
                if name not in self._unfilterable:
                    self._unfilterable.add(name)
                    log.warning("sip: %s listener on port %d cannot be filtered: %s -> open "
                                "to all", name, ports[name], exc)  # fmt: skip

    def handle_ip_change(self) -> None:
        """pjsua's IP change handling (Rule 3): TCP/TLS connections shut down, listeners
        bound afresh, then every account that has a registrar sends a REGISTER and its
        confirmed calls a re-INVITE (pjsua_core.c `handle_ip_change_on_acc`).

        Raises:
            pj.Error: pjsua refused.
        """
        param = pj.IpChangeParam()
        param.shutdownTransport = True  # connections bound to the old path would hang
        param.restartListener = True  # the UDP socket and the Contact take the new address
        self._ep.handleIpChange(param)
        self._next_filter_check = 0.0  # Rule 4: the listeners may be new sockets

    def tls_rejection_since(self, since: float) -> TlsRejection | None:
        """The last rejected certificate, when it happened at or after `since`."""
        found = self._ep.tls_rejection if self._ep is not None else None
        return found if found is not None and found.at >= since else None

    def destroy(self) -> None:
        """libDestroy without pjsua's 1 s wait for the network; idempotent."""
        if self._ep is not None:
            self._ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            self._ep = None
        self._transports.clear()
        self._missing.clear()
        self._admitted = ()
        self._filtered.clear()
        self._unfilterable.clear()
        self._writer = None
        set_transaction_timeout(TD_MS / 1000)  # the next library starts from pjsip's default


def set_transaction_timeout(timeout_s: float) -> None:
    """Set pjsip's transaction timeout (Timer B/F) to `timeout_s`; T1/T2/T4 unchanged.

    `pjsip_tsx_set_timers` is exported by the extension but not wrapped by SWIG.
    """
    lib = ctypes.CDLL(pj_native.__file__)
    lib.pjsip_tsx_set_timers.argtypes = [ctypes.c_uint] * 4
    lib.pjsip_tsx_set_timers.restype = None
    lib.pjsip_tsx_set_timers(T1_MS, T2_MS, T4_MS, round(timeout_s * 1000))
