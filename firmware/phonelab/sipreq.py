"""Pure builders of the SIP the lab sends itself: BLF documents, PUBLISH, SUBSCRIBE, REGISTER.

Owns: the text of RFC 4235 `application/dialog-info+xml` bodies for the three lab states,
of the requests lab tools and tests send by hand (PUBLISH, SUBSCRIBE, REGISTER, with RFC
2617 digest credentials when asked), the headers of the check-sync NOTIFY the lab PBX
originates, responses a test sends back, and reading a message's status, headers and body.
Imports nothing that does IO.
Must not touch: sockets and processes (`phonelab.kamailio` sends these).

Lab states -> RFC 4235 (§3.7.1 dialog states): ringing = one dialog in state "early",
busy = one dialog "confirmed", idle = one dialog "terminated" (a watcher sees the same
thing as "no dialog": the extension is free).
"""

from __future__ import annotations

import hashlib
import re
import uuid

from phonelab.errors import LabError

DIALOG_STATES = {"idle": "terminated", "ringing": "early", "busy": "confirmed"}
CONTENT_TYPE = "application/dialog-info+xml"


def dialog_info_xml(entity: str, state: str, version: int) -> str:
    """An RFC 4235 full-state document for `entity` in lab `state` (idle|ringing|busy).

    Raises:
        LabError: unknown state.
    """
    if state not in DIALOG_STATES:
        raise LabError(f"dialog-info: state must be one of {sorted(DIALOG_STATES)}, got {state!r}")
    direction = ' direction="recipient"' if state == "ringing" else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" '
        f'state="full" entity="{entity}">\n'
        f'  <dialog id="lab-{version}" call-id="lab-call-{version}"{direction}>'
        f"<state>{DIALOG_STATES[state]}</state></dialog>\n"
        "</dialog-info>\n"
    )


def _new_branch() -> str:
    return f"z9hG4bK{uuid.uuid4().hex}"


def publish_request(
    aor: str, local: tuple[str, int], body: str, *, etag: str | None, expires_s: int = 3600
) -> bytes:
    """A PUBLISH (Event: dialog) of `body` for `aor` (`sip:user@host`) sent from `local`."""
    if_match = f"SIP-If-Match: {etag}\r\n" if etag else ""
    payload = body.encode()
    return (
        f"PUBLISH {aor} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={_new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{aor}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <{aor}>\r\n"
        f"Call-ID: lab-publish-{uuid.uuid4().hex}\r\n"
        "CSeq: 1 PUBLISH\r\n"
        "Event: dialog\r\n"
        f"Expires: {expires_s}\r\n"
        f"{if_match}"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def subscribe_request(
    aor: str,
    local: tuple[str, int],
    *,
    event: str = "dialog",
    call_id: str,
    cseq: int = 1,
    expires_s: int = 600,
    watcher: str = "watcher",
    proxy_authorization: str | None = None,
) -> bytes:
    """An out-of-dialog SUBSCRIBE to `aor` from `watcher@local` (lab tests)."""
    auth = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization else ""
    accept = CONTENT_TYPE if event == "dialog" else "application/pidf+xml"
    return (
        f"SUBSCRIBE {aor} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={_new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{watcher}@{local[0]}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <{aor}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} SUBSCRIBE\r\n"
        f"Contact: <sip:{watcher}@{local[0]}:{local[1]}>\r\n"
        f"Event: {event}\r\n"
        f"Accept: {accept}\r\n"
        f"Expires: {expires_s}\r\n"
        f"{auth}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def split_message(data: bytes) -> tuple[str, dict[str, str], str]:
    """(start line, headers by lower-case name (last wins), body) of one SIP message."""
    text = data.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    start, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return start, headers, body


def response_status(data: bytes) -> int | None:
    """The status code of a SIP response, or None for a request or garbage."""
    start = split_message(data)[0].split(" ", 2)
    if len(start) >= 2 and start[0] == "SIP/2.0" and start[1].isdigit():
        return int(start[1])
    return None


def ok_for(request: bytes) -> bytes:
    """A 200 OK echoing Via/From/To/Call-ID/CSeq of `request` (answer a NOTIFY in tests)."""
    return reply_for(request, 200, "OK")


def reply_for(request: bytes, status: int, reason: str) -> bytes:
    """A `status reason` response echoing Via/From/To/Call-ID/CSeq of `request`."""
    text = request.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = ("via:", "from:", "to:", "call-id:", "cseq:", "v:", "f:", "t:", "i:")
    echoed = [line for line in text if line.lower().startswith(keep)]
    head = f"SIP/2.0 {status} {reason}\r\n"
    return (head + "\r\n".join(echoed) + "\r\nContent-Length: 0\r\n\r\n").encode()


def check_sync_headers(ext: str, pbx: tuple[str, int], *, reboot: bool, call_id: str) -> str:
    """The headers of a PBX's "Force Update" NOTIFY to extension `ext` (SPEC §7).

    What FreePBX's `pjsip send notify` puts on the wire: an out-of-dialog NOTIFY from the
    PBX with `Event: check-sync` (`;reboot=true` to ask for a restart) and a terminated
    subscription state. No body: the sender adds `Content-Length: 0` itself.
    """
    event = "check-sync;reboot=true" if reboot else "check-sync"
    host, port = pbx
    return (
        f"From: <sip:pbx@{host}:{port}>\r\n"
        f"To: <sip:{ext}@{host}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"Contact: <sip:pbx@{host}:{port}>\r\n"
        f"Event: {event}\r\n"
        "Subscription-State: terminated\r\n"
    )


def digest_authorization(
    challenge: str, *, method: str, uri: str, username: str, password: str
) -> str:
    """The credentials answering one `WWW-Authenticate`/`Proxy-Authenticate` value.

    RFC 2617 MD5 without qop, or with qop=auth (nc=00000001). The result is the value of
    an `Authorization` (401) or `Proxy-Authorization` (407) header.
    """
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.removeprefix("Digest ")))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{username}:{realm}:{password}"), md5(f"{method}:{uri}")
    fields = f'username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in params.get("qop", "").split(","):
        cnonce = uuid.uuid4().hex[:16]
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        fields += f', qop=auth, nc=00000001, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    return f'Digest {fields}, response="{response}", algorithm=MD5'


def register_request(
    registrar: str,
    user: str,
    local: tuple[str, int],
    *,
    call_id: str,
    cseq: int = 1,
    expires_s: int = 300,
    authorization: str | None = None,
    contact: tuple[str, int] | None = None,
) -> bytes:
    """A REGISTER of `sip:user@registrar` binding `sip:user@contact` (default: `local`)."""
    bound = contact or local
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"REGISTER sip:{registrar} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={_new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{registrar}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{user}@{registrar}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{bound[0]}:{bound[1]}>\r\n"
        f"Expires: {expires_s}\r\n"
        f"{auth}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
