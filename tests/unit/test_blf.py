"""BLF: RFC 4235 dialog-info parsing, the lamp rule, partial notifications, and the pure
helpers of the request hook (request parsing, tags, URI users, buddy URIs).

The KAMAILIO_* bodies are verbatim NOTIFY bodies captured from the lab's Kamailio 5.6
(presence_dialoginfo) after `publish_dialog("1002", ringing|busy|idle)`.
"""

from __future__ import annotations

import gc

import pytest

from phoned.sip.dialog_info import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_ELEMENTS,
    BlfState,
    Dialog,
    DialogInfo,
    DialogInfoError,
    DialogTracker,
    lamp_state,
    parse_dialog_document,
    parse_dialog_info,
    read_dialog_document,
)
from phoned.sip.pjsip_hooks import has_tag, parse_request, uri_user
from phoned.sip.subscriptions import buddy_uri

KAMAILIO_RINGING = (
    b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    b'version="2" state="full" entity="sip:1002@127.0.0.21">\n  <dialog id="lab-1" '
    b'call-id="lab-call-1" direction="recipient">\n    <state>early</state>\n  </dialog>\n'
    b"</dialog-info>\n"
)
KAMAILIO_BUSY = (
    b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    b'version="3" state="full" entity="sip:1002@127.0.0.21">\n  <dialog id="lab-2" '
    b'call-id="lab-call-2">\n    <state>confirmed</state>\n  </dialog>\n</dialog-info>\n'
)
KAMAILIO_IDLE = (
    b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    b'version="4" state="full" entity="sip:1002@127.0.0.21">\n  <dialog id="lab-3" '
    b'call-id="lab-call-3">\n    <state>terminated</state>\n  </dialog>\n</dialog-info>\n'
)
ENTITY = "sip:1002@127.0.0.21"


def document(
    *dialogs: tuple[str, str] | tuple[str, str, str], version: int = 1, state: str = "full"
) -> bytes:
    """A dialog-info document with (id, state) or (id, state, direction) dialogs."""
    inner = "".join(
        f'<dialog id="{d[0]}"{f" direction={d[2]!r}" if len(d) > 2 else ""}>'
        f"<state>{d[1]}</state></dialog>"
        for d in dialogs
    )
    return (
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" '
        f'state="{state}" entity="sip:1003@pbx.example.com">{inner}</dialog-info>'
    ).encode()


# ---------------------------------------------------------------- Kamailio's documents
@pytest.mark.parametrize(
    ("body", "state"),
    [(KAMAILIO_RINGING, BlfState.RINGING), (KAMAILIO_BUSY, BlfState.BUSY),
     (KAMAILIO_IDLE, BlfState.IDLE)],
)  # fmt: skip
def test_kamailio_notify_bodies(body: bytes, state: BlfState) -> None:
    assert parse_dialog_info(body) == (ENTITY, state)


def test_kamailio_document_fields() -> None:
    info = parse_dialog_document(KAMAILIO_RINGING)
    assert info == DialogInfo(
        entity=ENTITY, version=2, full=True, dialogs={"lab-1": Dialog("early", "recipient")}
    )


# ---------------------------------------------------------------- the lamp rule
@pytest.mark.parametrize(
    ("dialogs", "state"),
    [
        ((), BlfState.IDLE),
        ((("a", "terminated"),), BlfState.IDLE),
        ((("a", "terminated"), ("b", "terminated")), BlfState.IDLE),
        ((("a", "trying"),), BlfState.RINGING),
        ((("a", "proceeding"),), BlfState.RINGING),
        ((("a", "early"),), BlfState.RINGING),
        ((("a", "confirmed"),), BlfState.BUSY),
        ((("a", "early"), ("b", "confirmed")), BlfState.BUSY),  # busy wins over ringing
        ((("a", "confirmed"), ("b", "early")), BlfState.BUSY),
        ((("a", "terminated"), ("b", "early")), BlfState.RINGING),
    ],
)
def test_lamp_state_of_multiple_dialogs(
    dialogs: tuple[tuple[str, str], ...], state: BlfState
) -> None:
    assert parse_dialog_info(document(*dialogs)) == ("sip:1003@pbx.example.com", state)


def test_lamp_state_ignores_case_and_blanks() -> None:
    body = document(("a", " Confirmed\n"))
    assert parse_dialog_info(body) == ("sip:1003@pbx.example.com", BlfState.BUSY)
    assert lamp_state(["early", "bogus"]) is BlfState.RINGING


def test_unknown_dialog_state_is_left_out() -> None:
    info = parse_dialog_document(document(("a", "on-hold"), ("b", "early")))
    assert info is not None
    assert dict(info.dialogs) == {"b": Dialog("early")}


def test_document_without_namespace_and_without_ids_is_read() -> None:
    body = b'<dialog-info version="0" state="full" entity="sip:7@x"><dialog><state>confirmed</state></dialog><dialog><state>early</state></dialog></dialog-info>'  # noqa: E501
    info = parse_dialog_document(body)
    assert info is not None
    assert dict(info.dialogs) == {"#0": Dialog("confirmed"), "#1": Dialog("early")}
    assert parse_dialog_info(body) == ("sip:7@x", BlfState.BUSY)


def test_namespace_prefix_as_some_pbxs_send_it() -> None:
    body = (
        b'<di:dialog-info xmlns:di="urn:ietf:params:xml:ns:dialog-info" version="5" '
        b'state="full" entity="sip:1004@pbx"><di:dialog id="x"><di:state>early</di:state>'
        b"</di:dialog></di:dialog-info>"
    )
    assert parse_dialog_info(body) == ("sip:1004@pbx", BlfState.RINGING)


# ---------------------------------------------------------------- early by direction
# RFC 4235 §4.1.1: direction="initiator" means the watched extension placed the call.
@pytest.mark.parametrize(
    ("dialogs", "state"),
    [
        ((("a", "early", "initiator"),), BlfState.BUSY),  # calling out: ringback -> red
        ((("a", "early", "recipient"),), BlfState.RINGING),  # a call rings there: blinking
        ((("a", "early"),), BlfState.RINGING),  # no direction: cannot tell, offer pickup
        ((("a", "trying", "initiator"),), BlfState.BUSY),  # dialling
        ((("a", "proceeding", "initiator"),), BlfState.BUSY),
        ((("a", "proceeding", "recipient"),), BlfState.RINGING),
        ((("a", "early", "Initiator "),), BlfState.BUSY),  # any case, blanks around
        ((("a", "early", "sideways"),), BlfState.RINGING),  # unknown direction: none
        ((("a", "confirmed", "recipient"),), BlfState.BUSY),
        ((("a", "terminated", "initiator"),), BlfState.IDLE),
        # calling out while another call rings there: busy wins, as for confirmed
        ((("a", "early", "initiator"), ("b", "early", "recipient")), BlfState.BUSY),
        ((("a", "early", "recipient"), ("b", "terminated", "initiator")), BlfState.RINGING),
    ],
)
def test_early_is_judged_by_the_dialogs_direction(
    dialogs: tuple[tuple[str, str, str] | tuple[str, str], ...], state: BlfState
) -> None:
    assert parse_dialog_info(document(*dialogs)) == ("sip:1003@pbx.example.com", state)


def test_direction_is_read_into_the_document() -> None:
    info = parse_dialog_document(
        document(("a", "early", "initiator"), ("b", "early", "recipient"), ("c", "early"))
    )
    assert info is not None
    assert dict(info.dialogs) == {
        "a": Dialog("early", "initiator"),
        "b": Dialog("early", "recipient"),
        "c": Dialog("early", None),
    }


def test_lamp_state_takes_dialogs_or_bare_states() -> None:
    assert lamp_state([Dialog("early", "initiator")]) is BlfState.BUSY
    assert lamp_state([Dialog("early", "recipient"), "terminated"]) is BlfState.RINGING


def test_asterisk_style_outgoing_call_is_busy_then_confirmed() -> None:
    """An extension that dials out: trying, early (ringback), confirmed, terminated, each a
    full document with the direction (the shape Asterisk and FreeSWITCH send)."""
    tracker = DialogTracker()
    states = []
    for version, state in enumerate(("trying", "early", "confirmed", "terminated"), start=1):
        info = parse_dialog_document(document(("out", state, "initiator"), version=version))
        assert info is not None
        states.append(tracker.apply(info))
    assert states == [BlfState.BUSY, BlfState.BUSY, BlfState.BUSY, BlfState.IDLE]


def test_tracker_keeps_a_dialogs_direction_when_a_partial_update_omits_it() -> None:
    tracker = DialogTracker()
    steps = [
        document(("a", "early", "initiator"), version=1),
        document(("a", "early"), version=2, state="partial"),  # direction left out
        document(("b", "early"), version=3, state="full"),  # full: "a" is forgotten
    ]
    lamps = []
    for body in steps:
        info = parse_dialog_document(body)
        assert info is not None
        lamps.append(tracker.apply(info))
    assert lamps == [BlfState.BUSY, BlfState.BUSY, BlfState.RINGING]


def test_tracker_takes_a_new_direction_for_the_same_dialog() -> None:
    tracker = DialogTracker()
    for version, direction in ((1, "initiator"), (2, "recipient")):
        info = parse_dialog_document(
            document(("a", "early", direction), version=version, state="partial")
        )
        assert info is not None
        lamp = tracker.apply(info)
    assert lamp is BlfState.RINGING


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<dialog-info",  # truncated
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:1002@x"/>',
        b'<dialog-info xmlns="urn:example:other" entity="sip:1002@x"/>',
        b"\xff\xfe<\x00",
    ],
)
def test_garbage_is_none(body: bytes) -> None:
    assert parse_dialog_info(body) is None


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><dialog-info entity="&a;"/>',
        b'<!doctype dialog-info SYSTEM "file:///etc/passwd"><dialog-info entity="x"/>',
        b'<!ENTITY x SYSTEM "file:///etc/passwd"><dialog-info/>',
    ],
)
def test_dtds_and_entities_are_refused_before_parsing(body: bytes) -> None:
    assert parse_dialog_document(body) is None


def test_oversized_body_is_refused() -> None:
    padding = b" " * MAX_BODY_BYTES
    assert parse_dialog_info(document(("a", "early")) + padding) is None


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10)
        for n in range(1, 10)
    )
    + b']>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" entity="&lol9;"/>'
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" entity="sip:1@x">'
    b"<dialog><state>&x;</state></dialog></dialog-info>"
)
PARAMETER_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "http://192.0.2.1/x.dtd"> %p;]>'
    b"<dialog-info/>"
)
HEAD = b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" entity="sip:1@x">'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "a DTD is refused"),
        (EXTERNAL_ENTITY, "a DTD is refused"),
        (PARAMETER_ENTITY, "a DTD is refused"),
        (b'<!DOCTYPE dialog-info SYSTEM "file:///etc/passwd"><dialog-info/>', "a DTD is refused"),
        (b"<dialog-info>&lol;</dialog-info>", "not well-formed XML ('undefined entity"),
        (b"<a>" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
        (b"<a>" * 20_000, f"nested deeper than {MAX_DEPTH}"),
        (HEAD + b"<x/>" * MAX_ELEMENTS + b"</dialog-info>", f"more than {MAX_ELEMENTS} elements"),
        (b" " * (MAX_BODY_BYTES + 1), f"body of {MAX_BODY_BYTES + 1} bytes is over"),
        (b'<?xml version="1.0" encoding="x-bogus"?><dialog-info/>', "cannot decode the body"),
        # found by scripts/fuzz: expat raises a bare ValueError for these
        (b'<?xml version="1.0" encoding="UTF-7"?><dialog-info/>', "multi-byte encodings are"),
        (b'<?xml version="1.0" encoding="big5"?><dialog-info/>', "multi-byte encodings are"),
        (b"<presence/>", "the root element is 'presence', not dialog-info"),
        (b'<dialog-info xmlns="urn:x"/>', "namespace 'urn:x' is not urn:ietf"),
        (b"\xff\xfe<\x00", "not well-formed XML"),
        (b"", "not well-formed XML ('no element found"),
        (b"<dialog-info>\n\n<", "not well-formed XML ('unclosed token: line 3, column 0')"),
    ],
    ids=[
        "billion-laughs", "external-entity", "parameter-entity", "external-dtd",
        "undefined-entity", "depth-limit", "deep-60k", "element-limit", "oversized",
        "unknown-encoding", "utf-7", "big5", "other-root", "other-namespace", "binary",
        "empty", "truncated",
    ],
)  # fmt: skip
def test_hostile_bodies_are_refused_with_a_one_line_reason(body: bytes, reason: str) -> None:
    with pytest.raises(DialogInfoError) as refused:
        read_dialog_document(body)
    message = str(refused.value)
    assert message.startswith("dialog-info: ")
    assert reason in message
    assert "\n" not in message
    assert len(message) < 120
    assert parse_dialog_document(body) is None  # the None-returning form refuses it too


@pytest.mark.parametrize(
    "body",
    [
        KAMAILIO_RINGING, BILLION_LAUGHS, EXTERNAL_ENTITY, b"<not-xml", b"<a>" * 40,
        HEAD + b"<x/>" * MAX_ELEMENTS, b'<?xml version="1.0" encoding="x-bogus"?><a/>',
    ],
    ids=["valid", "dtd", "entity", "syntax", "depth", "elements", "encoding"],
)  # fmt: skip
def test_parsing_leaves_no_reference_cycle(body: bytes) -> None:
    """Rule 3: a cycle holding the parser's frames would hold the pjsua2 callback's frames
    until the collector runs, at any time (a pjsua2 object freed then aborts)."""
    gc.collect()
    gc.disable()
    try:
        parse_dialog_document(body)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_nesting_at_the_limit_and_many_dialogs_are_read() -> None:
    nested = b"<x>" * (MAX_DEPTH - 1) + b"</x>" * (MAX_DEPTH - 1)
    assert read_dialog_document(HEAD + nested + b"</dialog-info>").dialogs == {}
    many = document(*((f"d{i}", "terminated") for i in range(MAX_ELEMENTS // 2 - 1)))
    info = read_dialog_document(many)
    assert len(info.dialogs) == MAX_ELEMENTS // 2 - 1


def test_a_huge_version_or_odd_digits_are_no_version() -> None:
    body = document(("a", "early")).replace(b'version="1"', b'version="' + b"9" * 5000 + b'"')
    assert read_dialog_document(body).version is None
    arabic = document(("a", "early")).replace(b'version="1"', 'version="٣"'.encode())
    assert read_dialog_document(arabic).version is None


# ---------------------------------------------------------------- partial notifications
def test_tracker_merges_partial_documents_by_dialog_id() -> None:
    tracker = DialogTracker()
    assert tracker.state is BlfState.UNKNOWN

    full = parse_dialog_document(document(("a", "confirmed"), version=1))
    ring_b = parse_dialog_document(document(("b", "early"), version=2, state="partial"))
    end_a = parse_dialog_document(document(("a", "terminated"), version=3, state="partial"))
    end_b = parse_dialog_document(document(("b", "terminated"), version=4, state="partial"))
    assert None not in (full, ring_b, end_a, end_b)

    assert [tracker.apply(d) for d in (full, ring_b, end_a, end_b) if d is not None] == [
        BlfState.BUSY,  # a on a call
        BlfState.BUSY,  # a still on it, b ringing as well: busy wins
        BlfState.RINGING,  # a hung up: b still rings
        BlfState.IDLE,
    ]


def test_partial_alone_is_judged_on_its_dialogs() -> None:
    body = document(("b", "early"), state="partial")
    assert parse_dialog_info(body) == ("sip:1003@pbx.example.com", BlfState.RINGING)


def test_tracker_full_document_replaces_everything() -> None:
    tracker = DialogTracker()
    for body in (document(("a", "confirmed"), version=1), document(("b", "early"), version=2)):
        info = parse_dialog_document(body)
        assert info is not None
        state = tracker.apply(info)
    assert state is BlfState.RINGING  # "a" is gone: the full document does not name it


def test_tracker_ignores_stale_and_repeated_versions() -> None:
    tracker = DialogTracker()
    newer = parse_dialog_document(document(("a", "confirmed"), version=7))
    older = parse_dialog_document(document(("a", "early"), version=6))
    again = parse_dialog_document(document(("a", "terminated"), version=7))
    assert newer is not None
    assert older is not None
    assert again is not None
    assert tracker.apply(newer) is BlfState.BUSY
    assert tracker.apply(older) is BlfState.BUSY
    assert tracker.apply(again) is BlfState.BUSY


def test_tracker_clear_means_no_dialog() -> None:
    tracker = DialogTracker()
    info = parse_dialog_document(KAMAILIO_BUSY)
    assert info is not None
    tracker.apply(info)
    assert tracker.clear() is BlfState.IDLE


# ---------------------------------------------------------------- request parsing
NOTIFY = (
    b"NOTIFY sip:1001@127.0.0.1:38639;ob SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.21:60990;branch=z9hG4bK6ebb.4d38\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKxyz\r\n"
    b"To: <sip:1001@127.0.0.21>;tag=WV3aBY5qgz55\r\n"
    b"f: <sip:1002@127.0.0.21>;tag=b0be96f7\r\n"
    b"CSeq: 2 NOTIFY\r\n"
    b"i: WrVRAzBtoXoPGGv9VKyUib\r\n"
    b"Event: dialog\r\n"
    b"Subscription-State: active;\r\n expires=600\r\n"
    b"Content-Type: application/dialog-info+xml\r\n"
    b"Content-Length: 5\r\n\r\n"
    b"<x/>\ntrailing junk"
)


def test_parse_request_reads_headers_body_and_dialog() -> None:
    request = parse_request(NOTIFY, ("127.0.0.21", 60990))

    assert request is not None
    assert (request.method, request.source, request.in_dialog) == (
        "NOTIFY", ("127.0.0.21", 60990), True,
    )  # fmt: skip
    assert request.request_uri == "sip:1001@127.0.0.1:38639;ob"
    assert request.header("Call-ID") == "WrVRAzBtoXoPGGv9VKyUib"  # compact "i"
    assert request.header("from") == "<sip:1002@127.0.0.21>;tag=b0be96f7"
    assert request.header("subscription-state") == "active; expires=600"  # unfolded
    assert request.header("via") == (
        "SIP/2.0/UDP 127.0.0.21:60990;branch=z9hG4bK6ebb.4d38, "
        "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKxyz"
    )
    assert request.body == b"<x/>\n"  # Content-Length wins over what follows


def test_parse_request_out_of_dialog_and_garbage() -> None:
    raw = NOTIFY.replace(b";tag=WV3aBY5qgz55", b"")
    request = parse_request(raw, ("192.0.2.11", 5060))
    assert request is not None
    assert request.in_dialog is False
    assert parse_request(b"SIP/2.0 200 OK\r\n\r\n", ("192.0.2.11", 5060)) is None
    assert parse_request(b"", ("192.0.2.11", 5060)) is None
    assert parse_request(b"\x00\x01garbage", ("192.0.2.11", 5060)) is None


@pytest.mark.parametrize(
    ("value", "tagged"),
    [
        ("<sip:1001@pbx>;tag=abc", True),
        ('"Desk; tag=no" <sip:1001@pbx;tag=uri-param>', False),
        ("sip:1001@pbx;tag=abc", True),
        ("<sip:1001@pbx>", False),
        ("<sip:1001@pbx>;TAG=x;foo", True),
    ],
)
def test_has_tag(value: str, tagged: bool) -> None:
    assert has_tag(value) is tagged


@pytest.mark.parametrize(
    ("value", "user"),
    [
        ("<sip:1002@127.0.0.21>;tag=x", "1002"),
        ('"Bob" <sips:bob@pbx.example.com:5061>', "bob"),
        ("sip:%2A97%23@pbx", "*97#"),
        ("<sip:pbx.example.com>", None),
    ],
)
def test_uri_user(value: str, user: str | None) -> None:
    assert uri_user(value) == user


@pytest.mark.parametrize(
    ("transport", "uri"),
    [
        ("udp", "sip:1002@192.0.2.12"),
        ("tcp", "sip:1002@192.0.2.12;transport=tcp"),
        ("tls", "sips:1002@192.0.2.12"),
    ],
)
def test_buddy_uri(transport: str, uri: str) -> None:
    assert buddy_uri("1002", "192.0.2.12", transport) == uri


def test_buddy_uri_escapes_and_refuses_unknown_transport() -> None:
    assert buddy_uri("*9#", "pbx:5070", "udp") == "sip:*9%23@pbx:5070"
    with pytest.raises(ValueError, match="got 'sctp'"):
        buddy_uri("1002", "pbx", "sctp")
