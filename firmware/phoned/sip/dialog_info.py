"""BLF (busy lamp field) states from RFC 4235 dialog-info documents.

Owns: reading `application/dialog-info+xml` bodies (the dialog event package, RFC 4235)
into dialogs (state and direction), the rule that turns them into one lamp state per
extension (`BlfState`), `DialogInfoError`, and `DialogTracker`, which applies a
subscription's successive full and partial notifications (§4.1) in version order.
Must not touch: SIP, sockets, pjsua2, logging, the clock. Bytes in, values out: the
subscriptions that receive the NOTIFYs live in `subscriptions`.

Rule 1 (the lamp, SPEC §5): any dialog "confirmed" -> BUSY (red); a dialog being set up
("trying", "proceeding", "early") is judged by its direction (RFC 4235 §4.1.1): the
watched extension is the "initiator" -> it is calling out (dialling, ringback) -> BUSY;
"recipient" -> it is ringing -> RINGING (red blinking, what a colleague may pick up); no
direction given -> RINGING (cannot tell; the lamp offers the pickup rather than hide it).
Else (no dialog, all "terminated") -> IDLE. BUSY wins over RINGING: an extension on a
call with a second call ringing is busy.
Rule 2 (untrusted input, SPEC §10): the body comes from the network and is parsed by
defusedxml with DTDs forbidden, so entity expansion ("billion laughs") and external
entities can never happen; a body over `MAX_BODY_BYTES` is refused unread, and an element
nested deeper than `MAX_DEPTH` or past `MAX_ELEMENTS` stops the parse. Anything refused or
not a dialog-info document raises `DialogInfoError` with a one-line reason
(`read_dialog_document`), or is `None` (`parse_dialog_document`); nothing else escapes.
Rule 3: parsing leaves no reference cycle (see `_parse_xml`): the NOTIFY arrives in a pjsua2
callback, and pjsua2 objects freed later by the garbage collector abort the process.
"""

from __future__ import annotations

import enum
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from defusedxml import DefusedXmlException, DTDForbidden
from defusedxml.ElementTree import DefusedXMLParser

from phoned.errors import PhonedError

#: RFC 4235 §4.1: the namespace of every element of a dialog-info document.
DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
#: Larger bodies are refused unread: one lamp needs a few hundred bytes, a busy extension
#: with a dozen dialogs (identities, targets, parameters) a few KiB.
MAX_BODY_BYTES = 65536
#: Deeper nesting is refused: RFC 4235 documents nest 5 deep (dialog-info, dialog,
#: local, target, param); extensions from other namespaces get some room.
MAX_DEPTH = 16
#: More elements are refused: a dialog is about ten (state, local and remote identity and
#: target, parameters), and a phone's colleague has a handful of dialogs at most. Bounds
#: the parse to a couple of milliseconds whatever the body (SPEC §10).
MAX_ELEMENTS = 1000
#: RFC 4235 §3.7.1 dialog states.
_BUSY_STATES = frozenset({"confirmed"})
_SETUP_STATES = frozenset({"early", "proceeding", "trying"})
_KNOWN_STATES = frozenset({*_BUSY_STATES, *_SETUP_STATES, "terminated"})
#: RFC 4235 §4.1.1: the `direction` attribute of <dialog>.
INITIATOR, RECIPIENT = "initiator", "recipient"
_SHOWN_CHARS = 40


class DialogInfoError(PhonedError, ValueError):
    """A NOTIFY body that is refused or is no dialog-info document; the message is one
    line saying why (Rule 2)."""


class BlfState(enum.Enum):
    """What one BLF lamp shows for one extension."""

    #: No notification yet, or the subscription ended: the lamp says nothing.
    UNKNOWN = "unknown"
    #: The extension has no call.
    IDLE = "idle"
    #: A call to the extension rings (RFC 4235 early/proceeding/trying, recipient).
    RINGING = "ringing"
    #: The extension is on a call (confirmed) or calling out (early... as initiator).
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Dialog:
    """One <dialog> of a dialog-info document."""

    state: str  #: its RFC 4235 state in lower case ("early", "confirmed"...)
    #: "initiator" (the watched extension placed the call), "recipient", or None when the
    #: document did not say (or said something else)
    direction: str | None = None


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """One dialog-info document (RFC 4235 §4.1)."""

    entity: str  #: the watched AOR, e.g. "sip:1002@pbx.example.com" ("" when missing)
    version: int | None  #: the document's version (None when missing or not a number)
    full: bool  #: state="full" (the whole picture) rather than "partial" (changes only)
    #: dialog id -> the dialog; dialogs with an unknown state left out
    dialogs: Mapping[str, Dialog] = field(default_factory=dict)


def dialog_lamp(dialog: Dialog) -> BlfState:
    """Rule 1 for one dialog."""
    if dialog.state in _BUSY_STATES:
        return BlfState.BUSY
    if dialog.state in _SETUP_STATES:
        return BlfState.BUSY if dialog.direction == INITIATOR else BlfState.RINGING
    return BlfState.IDLE


def lamp_state(dialogs: Iterable[Dialog | str]) -> BlfState:
    """Rule 1: the lamp state for a set of dialogs (a bare state: no direction known)."""
    lamps = {dialog_lamp(Dialog(d) if isinstance(d, str) else d) for d in dialogs}
    for lamp in (BlfState.BUSY, BlfState.RINGING):
        if lamp in lamps:
            return lamp
    return BlfState.IDLE


def parse_dialog_info(body: bytes) -> tuple[str, BlfState] | None:
    """(entity, lamp state) of one dialog-info document, or None when refused.

    A partial document (state="partial") is judged on the dialogs it carries; use a
    `DialogTracker` to merge it with what came before.
    """
    document = parse_dialog_document(body)
    if document is None:
        return None
    return document.entity, lamp_state(document.dialogs.values())


def parse_dialog_document(body: bytes) -> DialogInfo | None:
    """The `DialogInfo` of `body`, or None when `read_dialog_document` refuses it."""
    try:
        return read_dialog_document(body)
    except DialogInfoError:
        return None


def read_dialog_document(body: bytes) -> DialogInfo:
    """The `DialogInfo` of a NOTIFY body (Rule 2).

    Raises:
        DialogInfoError: too large, a DTD or entity, nested too deeply, not well-formed
            XML, or not a dialog-info document; the message says which, on one line.
    """
    root = _parse_xml(body)
    name, namespace = _local_name(root.tag), _namespace(root.tag)
    if name != "dialog-info":
        raise DialogInfoError(f"dialog-info: the root element is {_show(name)}, not dialog-info")
    if namespace not in ("", DIALOG_INFO_NS):
        raise DialogInfoError(f"dialog-info: namespace {_show(namespace)} is not {DIALOG_INFO_NS}")
    dialogs: dict[str, Dialog] = {}
    for index, element in enumerate(_children(root, "dialog")):
        state = _dialog_state(element)
        if state is not None:
            dialogs[element.get("id") or f"#{index}"] = Dialog(state, _direction(element))
    return DialogInfo(
        entity=(root.get("entity") or "").strip(),
        version=_version(root.get("version")),
        full=(root.get("state") or "full").strip().lower() != "partial",
        dialogs=MappingProxyType(dialogs),
    )


class _BoundedBuilder(ET.TreeBuilder):
    """A tree builder that stops the parse at the first element deeper than `MAX_DEPTH`
    or past `MAX_ELEMENTS`."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._elements = 0

    def start(self, tag: str, attrs: dict[str, str], /) -> ET.Element:
        """Open an element, refusing one nested too deeply or one too many."""
        self._depth += 1
        self._elements += 1
        if self._depth > MAX_DEPTH:
            raise DialogInfoError(f"dialog-info: elements nested deeper than {MAX_DEPTH}")
        if self._elements > MAX_ELEMENTS:
            raise DialogInfoError(f"dialog-info: more than {MAX_ELEMENTS} elements")
        return super().start(tag, attrs)

    def end(self, tag: str, /) -> ET.Element:
        """Close an element."""
        self._depth -= 1
        return super().end(tag)


def _parse_xml(body: bytes) -> ET.Element:
    """The root element of `body`, parsed with every Rule 2 refusal as `DialogInfoError`.

    Leaves no reference cycle behind (Rule 3): the pure-Python parser defusedxml builds on
    and its expat parser hold each other until a successful `close()`, and its errors keep
    their own frames; a cycle holding frames holds the caller's frames (pjsua2's callback
    and the objects in it) until the garbage collector runs, at any time, on any thread.
    """
    if len(body) > MAX_BODY_BYTES:
        raise DialogInfoError(f"dialog-info: body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    parser = DefusedXMLParser(
        target=_BoundedBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(body)
        root: ET.Element = parser.close()
        return root
    # ValueError: defusedxml's refusals, and expat's "multi-byte encodings are not supported"
    except (DialogInfoError, ValueError, ET.ParseError, LookupError) as exc:
        reason = _refusal(exc)
        traceback.clear_frames(exc.__traceback__)
    finally:
        for name in ("parser", "_parser", "target", "_target"):
            vars(parser).pop(name, None)
    raise DialogInfoError(reason)  # outside the handler: no context to keep alive


def _refusal(exc: Exception) -> str:
    """The one-line reason for a parser's exception."""
    if isinstance(exc, DialogInfoError):
        return str(exc)
    if isinstance(exc, DTDForbidden):
        return "dialog-info: a DTD is refused (no entities, no external files)"
    if isinstance(exc, DefusedXmlException):  # entities live only in a DTD: belt and braces
        return "dialog-info: an entity or external reference is refused"
    if isinstance(exc, ET.ParseError):
        return f"dialog-info: not well-formed XML ({_show(str(exc))})"
    return f"dialog-info: cannot decode the body ({_show(str(exc))})"  # an encoding expat lacks


def _dialog_state(element: ET.Element) -> str | None:
    state = next(iter(_children(element, "state")), None)
    if state is None or state.text is None:
        return None
    value = state.text.strip().lower()
    return value if value in _KNOWN_STATES else None


def _direction(element: ET.Element) -> str | None:
    value = (element.get("direction") or "").strip().lower()
    return value if value in (INITIATOR, RECIPIENT) else None


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    """Direct children called `name`, in the document's namespace or in none."""
    namespace = _namespace(element.tag)
    return [
        child
        for child in element
        if isinstance(child.tag, str)
        and _local_name(child.tag) == name
        and _namespace(child.tag) in ("", namespace)
    ]


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def _version(value: str | None) -> int | None:
    text = (value or "").strip()
    # RFC 4235 §4.1.1: an unsignedLong; longer digit strings are not a version we can use
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def _show(value: str) -> str:
    """`value` for a one-line message: ASCII-escaped and cut short."""
    shown = ascii(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 4] + "...'"


class DialogTracker:
    """The dialogs of one extension as one subscription reports them (RFC 4235 §4.1).

    A full document replaces what is known, a partial one updates the dialogs it names
    (a "terminated" dialog is forgotten; a dialog that comes again without a direction
    keeps the one it had). A document whose version is not newer than the last one
    applied is a stale or repeated notification and is ignored.
    """

    def __init__(self) -> None:
        self._dialogs: dict[str, Dialog] = {}
        self._version: int | None = None
        self._state = BlfState.UNKNOWN

    @property
    def state(self) -> BlfState:
        """The lamp state so far (UNKNOWN until a document or `clear()`)."""
        return self._state

    def apply(self, document: DialogInfo) -> BlfState:
        """Merge `document` and return the lamp state after it."""
        stale = (
            self._version is not None
            and document.version is not None
            and document.version <= self._version
        )
        if stale:
            return self._state
        known = {} if document.full else self._dialogs
        merged = dict(known)
        for dialog_id, dialog in document.dialogs.items():
            before = known.get(dialog_id)
            if dialog.direction is None and before is not None:
                merged[dialog_id] = Dialog(dialog.state, before.direction)
            else:
                merged[dialog_id] = dialog
        self._dialogs = {k: d for k, d in merged.items() if d.state != "terminated"}
        if document.version is not None:
            self._version = document.version
        self._state = lamp_state(self._dialogs.values())
        return self._state

    def clear(self) -> BlfState:
        """The notifier knows of no dialog (an active NOTIFY without a body): IDLE."""
        self._dialogs.clear()
        self._state = BlfState.IDLE
        return self._state
