"""SIP OPTIONS requests out, SIP responses in: the bytes of SPEC §1's probes (RFC 3261).

Owns: building an out-of-dialog OPTIONS request, parsing a response into the few fields
the prober matches on (status, Call-ID, CSeq, top Via branch), in bounded linear time.
Cutting a TCP/TLS byte stream into messages is `framing`'s.

Rule 1: pure. No sockets, no clock, no logging: bytes in, values out.
Rule 2: `parse_response` never raises. Anything that is not a SIP response (a request,
garbage, a truncated datagram) is `None`; a response with a missing or malformed header
has `None` in that field, so the prober's matching simply fails.
Rule 3: what we send is strict: a value that would break the message (CR/LF in a header,
a branch without the RFC 3261 magic cookie) raises `ValueError` instead of going out.
Rule 4: bounded. A head over `MAX_HEAD_BYTES` or `MAX_HEADER_LINES` is not parsed at all,
so no datagram costs more than a bounded, linear amount of work (SPEC §10).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

#: RFC 3261 §8.1.1.7: every branch we send starts with this cookie.
BRANCH_COOKIE = "z9hG4bK"
_MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5
_TRANSPORTS = frozenset({"UDP", "TCP", "TLS"})

# RFC 3261 §25.1 `token` and `word` (Call-ID) character sets.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(f"{_WORD}(?:@{_WORD})?")
# user = 1*( unreserved / escaped / user-unreserved ): anything else is %-escaped.
_USER_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/"
)
_HOST_RE = re.compile(r"[A-Za-z0-9\-.:\[\]]+")

_STATUS_LINE_RE = re.compile(r"SIP/2\.0[ \t]+([1-6][0-9]{2})(?:[ \t]+(.*))?", re.IGNORECASE)
_HEADER_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*)")
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_LINE_SPLIT_RE = re.compile(r"\r\n|\n")
_LWS = " \t\r"
#: Bounds on one message's head (start line and headers), datagram or stream: a probe
#: answer has about a dozen header lines in well under 2 KiB. Anything past these is not
#: parsed at all (a datagram is not a response; a stream is dropped), so a hostile peer
#: can never make parsing cost more than a bounded, linear amount of work (SPEC §10).
MAX_HEAD_BYTES = 16384
MAX_HEADER_LINES = 256

#: RFC 3261 §7.3.3 and later RFCs: compact header names and what they stand for.
COMPACT_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "a": "accept-contact",
        "b": "referred-by",
        "c": "content-type",
        "d": "request-disposition",
        "e": "content-encoding",
        "f": "from",
        "i": "call-id",
        "j": "reject-contact",
        "k": "supported",
        "l": "content-length",
        "m": "contact",
        "n": "identity-info",
        "o": "event",
        "r": "refer-to",
        "s": "subject",
        "t": "to",
        "u": "allow-events",
        "v": "via",
        "x": "session-expires",
        "y": "identity",
    }
)


@dataclass(frozen=True, slots=True)
class SipResponse:
    """The parts of a SIP response the prober needs; `None` where a header is missing
    or malformed."""

    status_code: int  #: 100..699
    reason: str  #: reason phrase, possibly empty
    call_id: str | None
    cseq_number: int | None
    cseq_method: str | None  #: as received (methods are case-sensitive)
    via_branch: str | None  #: branch parameter of the topmost Via value
    #: lower-case full header name -> the values of each header line, in order
    headers: Mapping[str, tuple[str, ...]]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case, compact form accepted)."""
        values = self.headers.get(canonical_header_name(name))
        return values[0] if values else None


def canonical_header_name(name: str) -> str:
    """`name` in lower case, with a compact form (`i`, `v`, ...) expanded."""
    lowered = name.strip().lower()
    return COMPACT_HEADERS.get(lowered, lowered)


# ----------------------------------------------------------------------------- ids


def new_branch() -> str:
    """A fresh Via branch with the RFC 3261 magic cookie (80 random bits)."""
    return BRANCH_COOKIE + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    """A fresh Call-ID `random@host` (96 random bits)."""
    return f"{secrets.token_hex(12)}@{_bracket(host)}"


def new_tag() -> str:
    """A fresh From tag (64 random bits)."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- build


def format_hostport(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets (RFC 3261 §25.1 `hostport`)."""
    return f"{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class OptionsTemplate:
    """Everything of an OPTIONS request that does not change between attempts.

    Built once per server and socket; `render` only fills in the per-attempt ids, so
    the prober's send path stays short (SPEC §9 probe timing).
    """

    head: str  #: request line and Via up to the branch value
    middle: str  #: from `;rport` to the From tag value
    to_call_id: str  #: the To header, up to the Call-ID value
    tail: str  #: Accept, User-Agent, Content-Length and the blank line

    @classmethod
    def create(
        cls,
        *,
        target_host: str,
        target_port: int,
        local_host: str,
        local_port: int,
        transport: str,
        from_user: str,
        domain: str,
        user_agent: str,
    ) -> OptionsTemplate:
        """Validate the fixed parts and pre-render them.

        Raises:
            ValueError: a host, port, transport or text would not make a valid request.
        """
        proto = transport.upper()
        if proto not in _TRANSPORTS:
            raise ValueError(f"transport must be udp, tcp or tls, got {transport!r}")
        target = _checked_hostport("target", target_host, target_port)
        local = _checked_hostport("local", local_host, local_port)
        if not domain or not _HOST_RE.fullmatch(domain):
            raise ValueError(f"domain must be a host name or IP, got {domain!r}")
        _check_text("user_agent", user_agent)
        _check_text("from_user", from_user)
        aor = f"sip:{_escape_user(from_user)}@{_bracket(domain)}"
        return cls(
            head=f"OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/{proto} {local};branch=",
            middle=f";rport\r\nMax-Forwards: 70\r\nFrom: <{aor}>;tag=",
            to_call_id=f"\r\nTo: <sip:{target}>\r\nCall-ID: ",
            tail=(
                f"\r\nAccept: application/sdp\r\nUser-Agent: {user_agent}\r\n"
                "Content-Length: 0\r\n\r\n"
            ),
        )

    def render(self, *, call_id: str, cseq: int, branch: str, from_tag: str) -> bytes:
        """The request for one attempt.

        Raises:
            ValueError: a bad branch (no magic cookie), tag, Call-ID or CSeq number.
        """
        if not branch.startswith(BRANCH_COOKIE) or not _TOKEN_RE.fullmatch(branch):
            raise ValueError(f"branch must be a token starting {BRANCH_COOKIE}, got {branch!r}")
        if not _TOKEN_RE.fullmatch(from_tag):
            raise ValueError(f"from_tag must be a token, got {from_tag!r}")
        if not _CALL_ID_RE.fullmatch(call_id):
            raise ValueError(f"call_id must be word[@word], got {call_id!r}")
        if not 0 <= cseq <= _MAX_CSEQ:
            raise ValueError(f"cseq must be 0..{_MAX_CSEQ}, got {cseq}")
        text = (
            f"{self.head}{branch}{self.middle}{from_tag}{self.to_call_id}{call_id}\r\n"
            f"CSeq: {cseq} OPTIONS{self.tail}"
        )
        return text.encode("utf-8")


def build_options(
    *,
    target_host: str,
    target_port: int,
    local_host: str,
    local_port: int,
    transport: str,
    call_id: str,
    cseq: int,
    branch: str,
    from_tag: str,
    from_user: str,
    domain: str,
    user_agent: str,
) -> bytes:
    """A minimal out-of-dialog OPTIONS request (RFC 3261 §11), CRLF line endings.

    Raises:
        ValueError: see `OptionsTemplate.create` and `OptionsTemplate.render`.
    """
    template = OptionsTemplate.create(
        target_host=target_host,
        target_port=target_port,
        local_host=local_host,
        local_port=local_port,
        transport=transport,
        from_user=from_user,
        domain=domain,
        user_agent=user_agent,
    )
    return template.render(call_id=call_id, cseq=cseq, branch=branch, from_tag=from_tag)


def _checked_hostport(what: str, host: str, port: int) -> str:
    if not host or not _HOST_RE.fullmatch(host):
        raise ValueError(f"{what} host must be a host name or IP, got {host!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} port must be 1..65535, got {port}")
    return format_hostport(host, port)


def _check_text(what: str, value: str) -> None:
    if not value or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} must be non-empty text on one line, got {value!r}")


def _escape_user(user: str) -> str:
    return "".join(
        ch if ch in _USER_SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in user
    )


# --------------------------------------------------------------------------- parse


def parse_response(data: bytes) -> SipResponse | None:
    """Parse a datagram as a SIP response; `None` if it is not one. Never raises.

    Linear in the size of the datagram; a head over `MAX_HEAD_BYTES` or with more than
    `MAX_HEADER_LINES` lines is not a response (SPEC §10: bounded work per datagram).
    """
    head = _message_head(data)
    if head is None:
        return None
    lines = _LINE_SPLIT_RE.split(head, maxsplit=MAX_HEADER_LINES + 1)
    if len(lines) > MAX_HEADER_LINES + 1:
        return None
    status = _STATUS_LINE_RE.fullmatch(lines[0].rstrip(_LWS))
    if status is None:
        return None
    headers = _parse_headers(lines[1:])
    cseq = _parse_cseq(headers)
    call_ids = headers.get("call-id")
    return SipResponse(
        status_code=int(status.group(1)),
        reason=(status.group(2) or "").strip(),
        call_id=(call_ids[0].strip() or None) if call_ids else None,
        cseq_number=cseq[0] if cseq else None,
        cseq_method=cseq[1] if cseq else None,
        via_branch=_top_via_branch(headers),
        headers=MappingProxyType(headers),
    )


def _message_head(data: bytes) -> str | None:
    """The start line and headers, decoded; the body (if any) is dropped. None when the
    head is over `MAX_HEAD_BYTES` (only that much is ever searched)."""
    window = data[: MAX_HEAD_BYTES + 4]
    end = window.find(b"\r\n\r\n")
    if end < 0:
        end = window.find(b"\n\n")
    head = data if end < 0 else data[:end]
    if len(head) > MAX_HEAD_BYTES:
        return None
    return head.decode("utf-8", errors="replace")


def head_headers(head: bytes) -> dict[str, tuple[str, ...]] | None:
    """The headers of a message head (start line and header lines, no body), grouped by
    lower-case full name; None when it has more than `MAX_HEADER_LINES` lines."""
    lines = _LINE_SPLIT_RE.split(head.decode("utf-8", errors="replace"), MAX_HEADER_LINES + 1)
    if len(lines) > MAX_HEADER_LINES + 1:
        return None
    return _parse_headers(lines[1:])


def _parse_headers(lines: list[str]) -> dict[str, tuple[str, ...]]:
    """Unfold continuation lines (RFC 3261 §7.3.1) and group values by header name.

    Lines that are not `name: value` are skipped: a broken header must not hide the
    good ones, and a missing one shows up as `None` where it matters.
    """
    # Linear: a folded header's pieces are joined once, values are gathered in lists and
    # frozen once (rebuilding a tuple per line made 20k headers cost a second).
    unfolded: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1].append(line.strip(_LWS))
        else:
            unfolded.append([line])
    grouped: dict[str, list[str]] = {}
    for pieces in unfolded:
        match = _HEADER_RE.fullmatch(" ".join(pieces).rstrip(_LWS))
        if match is None:
            continue
        grouped.setdefault(canonical_header_name(match.group(1)), []).append(match.group(2))
    return {name: tuple(values) for name, values in grouped.items()}


def _parse_cseq(headers: Mapping[str, tuple[str, ...]]) -> tuple[int, str] | None:
    values = headers.get("cseq")
    if not values:
        return None
    match = _CSEQ_RE.fullmatch(values[0].strip())
    if match is None or int(match.group(1)) > _MAX_CSEQ:
        return None
    return int(match.group(1)), match.group(2)


def _top_via_branch(headers: Mapping[str, tuple[str, ...]]) -> str | None:
    """The branch of the first value of the first Via line (`a, b` holds two values)."""
    values = headers.get("via")
    if not values:
        return None
    top = _split_outside_quotes(values[0], ",")[0]
    for param in _split_outside_quotes(top, ";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "branch":
            return value.strip() or None
    return None


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split `text` at `sep` except inside double quotes (backslash escapes honoured)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts
