"""A pjsip module on pjsua's endpoint that sees incoming requests first (ctypes).

Owns: the ctypes view of the pjsua2 extension's C library (`pjsua_library()`), the
pjsip structures phoned reads or fills (`PjStr`, `PjsipModule`, the head of
`pjsip_rx_data`), the run-time check of that layout, turning a received request into an
`IncomingRequest` (`parse_request`, pure), and `IncomingRequestHook`, the module that
hands every incoming request to Python and answers it when asked to.
Must not touch: pjsua2's objects, the library's life cycle or event loop (`stack`), and
any request it is not asked to answer: those go on to pjsua unchanged.

Rule 1 (STACK-NOTES, measured on 2.15.1): priority 31 sits just above the transaction
layer (16) and below the dialog layer (32): the module sees each out-of-dialog request
and each in-dialog NOTIFY once, retransmissions already absorbed. A request it answers
is answered statefully (`pjsip_endpt_respond`), so that retransmissions of it are too.
Rule 2: the layout of `pjsip_rx_data` depends on the build (PJSIP_MAX_PKT_LEN, the
ioqueue). Every packet is cross-checked against the layout below (buffer bounds, the
source address against its own text form) and, when anything disagrees, nothing is read:
the request goes on to pjsua and `unreadable` counts it.
Rule 3: pjsip reuses the receive buffer as soon as the callback returns, so the message
is copied into Python bytes first. A module struct collected while registered crashes
the process on the next packet: the hook keeps it (and its callback) referenced until
`uninstall()`. Nothing raised in the callback reaches pjsip.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

import pjsua2._pjsua2 as pj_native

from phoned.errors import SipError
from phoned.probe.sipmsg import canonical_header_name

log = logging.getLogger("phoned.sip")

PJ_SUCCESS = 0
PJ_TRUE = 1
PJ_FALSE = 0
#: Rule 1: between the transaction layer (16) and the dialog layer (32) in 2.15.
HOOK_PRIORITY = 31
#: PJSIP_MAX_PKT_LEN of the pjsua2-python 2.15.1 wheel (checked per packet, Rule 2).
PJSIP_MAX_PKT_LEN = 4000
#: `pj_ioqueue_op_key_t` of the select() ioqueue: void *internal__[32] + two pointers.
_IOQUEUE_OP_KEY_POINTERS = 34
_PJ_AF_INET, _PJ_AF_INET6 = 2, 10  # pjlib's values on Linux
_REQUEST_LINE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/2\.0")
_HEADER = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*)")
_URI_USER = re.compile(r"sips?:([^@;>\s]+)@", re.IGNORECASE)


# ------------------------------------------------------------------ pjsip structures
class PjStr(ctypes.Structure):
    """`pj_str_t`: pointer + length, not NUL-terminated."""

    _fields_ = (("ptr", ctypes.c_void_p), ("slen", ctypes.c_ssize_t))


#: `pj_bool_t (*on_rx_request)(pjsip_rx_data *)` and the other module callbacks.
RX_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
#: `pj_status_t (*on_tx_request)(pjsip_tx_data *)`.
TX_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class PjsipModule(ctypes.Structure):
    """`struct pjsip_module` (pjsip/sip_module.h, unchanged through 2.15); callbacks NULL
    unless set."""

    _fields_ = (
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", RX_CALLBACK),
        ("on_rx_response", RX_CALLBACK),
        ("on_tx_request", TX_CALLBACK),
        ("on_tx_response", TX_CALLBACK),
        ("on_tsx_state", ctypes.c_void_p),
    )


class _RxHead(ctypes.Structure):
    """`pjsip_rx_data` up to `msg_info.len` (sip_transport.h, 2.15.1 order, Rule 2)."""

    _fields_ = (
        ("pool", ctypes.c_void_p),
        ("transport", ctypes.c_void_p),
        ("tp_data", ctypes.c_void_p),
        ("op_key", ctypes.c_void_p * _IOQUEUE_OP_KEY_POINTERS),
        ("op_key_rdata", ctypes.c_void_p),
        ("timestamp", ctypes.c_long * 2),
        ("packet", ctypes.c_char * PJSIP_MAX_PKT_LEN),
        ("zero", ctypes.c_uint32),
        ("pkt_len", ctypes.c_ssize_t),
        ("src_addr", ctypes.c_uint8 * 28),  # pj_sockaddr: the in6 variant is the largest
        ("src_addr_len", ctypes.c_int),
        ("src_name", ctypes.c_char * 46),  # PJ_INET6_ADDRSTRLEN
        ("src_port", ctypes.c_int),
        ("msg_buf", ctypes.c_void_p),
        ("msg_len", ctypes.c_int),
    )


#: Offset of `pkt_info.packet`: measured 320 on x86_64 (tp_info, then a pj_time_val).
_PACKET_OFFSET: int = _RxHead.packet.offset


@functools.cache
def pjsua_library() -> ctypes.CDLL:
    """The pjsua2 extension's shared object, with the signatures phoned calls.

    Raises:
        OSError: the object or one of its symbols cannot be loaded.
    """
    lib = ctypes.CDLL(pj_native.__file__)
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsua_get_pjsip_endpt.argtypes = []
    for name in ("pjsip_endpt_register_module", "pjsip_endpt_unregister_module"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_int
    lib.pjsip_endpt_respond.argtypes = (
        [ctypes.c_void_p] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 4
    )
    lib.pjsip_endpt_respond.restype = ctypes.c_int
    lib.pjsua_buddy_subscribe_dlg_event.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pjsua_buddy_subscribe_dlg_event.restype = ctypes.c_int
    lib.pjsua_buddy_is_valid.argtypes = [ctypes.c_int]
    lib.pjsua_buddy_is_valid.restype = ctypes.c_int
    return lib


# ------------------------------------------------------------------ requests (pure)
@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A SIP request as it arrived, before pjsua saw it."""

    method: str  #: as received, e.g. "NOTIFY"
    source: tuple[str, int]  #: (ip, port) it came from
    #: canonical lower-case name (compact forms expanded) -> value; repeated headers are
    #: joined with ", " (RFC 3261 §7.3.1)
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    in_dialog: bool  #: the To header carries a tag
    request_uri: str = ""

    def header(self, name: str) -> str | None:
        """The value of header `name` (any case, compact form accepted), or None."""
        return self.headers.get(canonical_header_name(name))


def parse_request(raw: bytes, source: tuple[str, int]) -> IncomingRequest | None:
    """The `IncomingRequest` in `raw`, or None when it is not a SIP request."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        head, separator, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8", errors="replace").splitlines()
    match = _REQUEST_LINE.fullmatch(lines[0].strip()) if lines else None
    if match is None:
        return None
    headers = _headers(lines[1:])
    length = headers.get("content-length", "").strip()
    if length.isdigit():
        body = body[: int(length)]
    return IncomingRequest(
        method=match.group(1),
        source=source,
        headers=MappingProxyType(headers),
        body=body,
        in_dialog=has_tag(headers.get("to", "")),
        request_uri=match.group(2),
    )


def _headers(lines: list[str]) -> dict[str, str]:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:  # RFC 3261 §7.3.1 line folding
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    headers: dict[str, str] = {}
    for line in unfolded:
        match = _HEADER.fullmatch(line.strip())
        if match is None:
            continue
        name, value = canonical_header_name(match.group(1)), match.group(2).strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def has_tag(name_addr: str) -> bool:
    """Whether a From/To value carries a `tag` parameter."""
    params = name_addr.rpartition(">")[2] if "<" in name_addr else name_addr.partition(";")[2]
    return any(part.split("=", 1)[0].strip().lower() == "tag" for part in params.split(";") if part)


def uri_user(name_addr: str) -> str | None:
    """The user part of the SIP URI in a From/To/Contact value, %-unescaped."""
    match = _URI_USER.search(name_addr)
    return unquote(match.group(1)) if match else None


# ------------------------------------------------------------------ reading rx data
def read_rx_data(rdata: int) -> tuple[bytes, tuple[str, int]] | None:
    """(message bytes, source) copied out of a `pjsip_rx_data`, or None (Rule 2)."""
    head = _RxHead.from_address(rdata)
    packet = rdata + _PACKET_OFFSET
    msg_buf, msg_len, pkt_len = head.msg_buf or 0, head.msg_len, head.pkt_len
    if not (0 < pkt_len <= PJSIP_MAX_PKT_LEN and 0 < msg_len <= pkt_len):
        return None
    if not packet <= msg_buf <= packet + pkt_len - msg_len:
        return None
    source = _source(head)
    if source is None:
        return None
    return ctypes.string_at(msg_buf, msg_len), source


def _source(head: _RxHead) -> tuple[str, int] | None:
    """The source address, only when the binary address agrees with its text form."""
    raw = bytes(head.src_addr)
    family, port = int.from_bytes(raw[0:2], "little"), int.from_bytes(raw[2:4], "big")
    if family == _PJ_AF_INET and head.src_addr_len == 16:
        address = socket.inet_ntop(socket.AF_INET, raw[4:8])
    elif family == _PJ_AF_INET6 and head.src_addr_len == 28:
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    else:
        return None
    name = head.src_name.decode("ascii", errors="replace")
    if name != address or port != head.src_port or not 0 < port < 65536:
        return None
    return address, port


# ------------------------------------------------------------------ the hook
RequestHandler = Callable[[IncomingRequest], int | None]


class IncomingRequestHook:
    """Hands every incoming request to `on_request` before pjsua sees it.

    `on_request` runs on the pjsua2 thread inside `libHandleEvents` and must not block.
    It returns a status code (200..699) to answer the request statefully and keep it
    from pjsua, or None to let pjsua handle it (BLF NOTIFYs: None, pjsua answers them).
    """

    #: pjsip asserts (aborting the process) on a second module of the same name.
    _serials = itertools.count(1)

    def __init__(self, on_request: RequestHandler) -> None:
        self._on_request = on_request
        name = f"mod-phoned-rxhook-{next(self._serials)}".encode()
        self._name = ctypes.create_string_buffer(name)
        self._callback = RX_CALLBACK(self._on_rx_request)
        self._module = PjsipModule(
            name=PjStr(ctypes.addressof(self._name), len(name)),
            id=-1,
            priority=HOOK_PRIORITY,
            on_rx_request=self._callback,
        )
        self._endpt: int | None = None
        self.seen = 0  #: requests handed to `on_request`
        self.answered = 0  #: requests answered here
        self.unreadable = 0  #: requests left to pjsua because the layout check failed

    @property
    def installed(self) -> bool:
        """Whether the module is registered on pjsua's endpoint."""
        return self._endpt is not None

    def install(self) -> None:
        """Register the module (after `libStart`, on the pjsua2 thread); idempotent.

        Raises:
            SipError: the library or pjsua's endpoint is unavailable, or pjsip refused.
        """
        if self._endpt is not None:
            return
        try:
            lib = pjsua_library()
            endpt = lib.pjsua_get_pjsip_endpt()
        except (OSError, AttributeError) as exc:
            raise SipError(f"sip: request hook: pjsua library unavailable: {exc}") from exc
        if not endpt:
            raise SipError("sip: request hook: pjsua has no endpoint (libCreate first)")
        status = lib.pjsip_endpt_register_module(endpt, ctypes.byref(self._module))
        if status != PJ_SUCCESS:
            raise SipError(f"sip: request hook: pjsip refused the module: status {status}")
        self._endpt = endpt

    def uninstall(self) -> None:
        """Unregister the module (before `libDestroy`); idempotent."""
        if self._endpt is None:
            return
        endpt, self._endpt = self._endpt, None
        pjsua_library().pjsip_endpt_unregister_module(endpt, ctypes.byref(self._module))

    def _on_rx_request(self, rdata: int | None) -> int:
        try:
            return self._handle(rdata)
        except Exception:  # Rule 3: nothing may escape into pjsip
            log.exception("sip: request hook failed -> left to pjsua")
            return PJ_FALSE

    def _handle(self, rdata: int | None) -> int:
        read = read_rx_data(rdata) if rdata else None
        if read is None:
            self.unreadable += 1
            if self.unreadable == 1:
                log.warning("sip: request hook: rx data layout not recognised -> not read")
            return PJ_FALSE
        request = parse_request(*read)
        if request is None:
            return PJ_FALSE
        self.seen += 1
        code = self._on_request(request)
        if code is None:
            return PJ_FALSE
        if request.method == "ACK":  # never answered; absorbed as asked
            return PJ_TRUE
        return self._respond(rdata, request, code)

    def _respond(self, rdata: int | None, request: IncomingRequest, code: int) -> int:
        if not 200 <= code <= 699:
            log.error("sip: request hook: %s: status %d is not final -> left to pjsua",
                      request.method, code)  # fmt: skip
            return PJ_FALSE
        status = pjsua_library().pjsip_endpt_respond(
            self._endpt, ctypes.addressof(self._module), rdata, code, None, None, None, None
        )
        if status != PJ_SUCCESS:
            log.warning("sip: request hook: %s from %s:%d: answer %d failed (status %d) -> "
                        "left to pjsua", request.method, *request.source, code, status)  # fmt: skip
            return PJ_FALSE
        self.answered += 1
        return PJ_TRUE
