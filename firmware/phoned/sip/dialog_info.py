"""BLF (busy lamp field) states from RFC 4235 dialog-info documents.

Owns: reading `application/dialog-info+xml` bodies (the dialog event package, RFC 4235)
into dialog states, the rule that turns them into one lamp state per extension
(`BlfState`), and `DialogTracker`, which applies a subscription's successive full and
partial notifications (§4.1) in version order.
Must not touch: SIP, sockets, pjsua2, logging, the clock. Bytes in, values out: the
subscriptions that receive the NOTIFYs live in `subscriptions`.

Rule 1 (the lamp): any dialog "confirmed" -> BUSY; else any dialog "early", "proceeding"
or "trying" -> RINGING; else (no dialog, all "terminated") -> IDLE. BUSY wins over RINGING:
an extension on a call with a second call ringing is busy.
Rule 2 (untrusted input): the body comes from the network. A document with a DTD
(`<!DOCTYPE`, `<!ENTITY`) or bigger than `MAX_BODY_BYTES` is refused before any XML
parser sees it, which rules out entity expansion and external entities; anything that is
not a dialog-info document is `None`, never an exception.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: RFC 4235 §4.1: the namespace of every element of a dialog-info document.
DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
#: Larger bodies are refused unread: one lamp needs a few hundred bytes.
MAX_BODY_BYTES = 65536
#: RFC 4235 §3.7.1 dialog states.
_BUSY_STATES = frozenset({"confirmed"})
_RINGING_STATES = frozenset({"early", "proceeding", "trying"})
_KNOWN_STATES = frozenset({*_BUSY_STATES, *_RINGING_STATES, "terminated"})
_DTD_MARKERS = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)


class BlfState(enum.Enum):
    """What one BLF lamp shows for one extension."""

    #: No notification yet, or the subscription ended: the lamp says nothing.
    UNKNOWN = "unknown"
    #: The extension has no call.
    IDLE = "idle"
    #: A call to or from the extension is being set up (RFC 4235 early/proceeding/trying).
    RINGING = "ringing"
    #: The extension is on a call (RFC 4235 confirmed).
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """One dialog-info document (RFC 4235 §4.1)."""

    entity: str  #: the watched AOR, e.g. "sip:1002@pbx.example.com" ("" when missing)
    version: int | None  #: the document's version (None when missing or not a number)
    full: bool  #: state="full" (the whole picture) rather than "partial" (changes only)
    #: dialog id -> its RFC 4235 state in lower case; dialogs with an unknown state left out
    dialogs: Mapping[str, str] = field(default_factory=dict)


def lamp_state(dialog_states: Iterable[str]) -> BlfState:
    """Rule 1: the lamp state for a set of RFC 4235 dialog states."""
    states = set(dialog_states)
    if states & _BUSY_STATES:
        return BlfState.BUSY
    if states & _RINGING_STATES:
        return BlfState.RINGING
    return BlfState.IDLE


def parse_dialog_info(body: bytes) -> tuple[str, BlfState] | None:
    """(entity, lamp state) of one dialog-info document, or None when unparsable.

    A partial document (state="partial") is judged on the dialogs it carries; use a
    `DialogTracker` to merge it with what came before.
    """
    document = parse_dialog_document(body)
    if document is None:
        return None
    return document.entity, lamp_state(document.dialogs.values())


def parse_dialog_document(body: bytes) -> DialogInfo | None:
    """The `DialogInfo` of `body`, or None for anything else (Rule 2)."""
    if len(body) > MAX_BODY_BYTES or _DTD_MARKERS.search(body):
        return None
    try:
        root = ET.fromstring(body)  # noqa: S314  # Rule 2: no DTD can reach the parser
    except ET.ParseError:
        return None
    if _local_name(root.tag) != "dialog-info" or _namespace(root.tag) not in ("", DIALOG_INFO_NS):
        return None
    dialogs: dict[str, str] = {}
    for index, element in enumerate(_children(root, "dialog")):
        state = _dialog_state(element)
        if state is not None:
            dialogs[element.get("id") or f"#{index}"] = state
    return DialogInfo(
        entity=(root.get("entity") or "").strip(),
        version=_version(root.get("version")),
        full=(root.get("state") or "full").strip().lower() != "partial",
        dialogs=MappingProxyType(dialogs),
    )


def _dialog_state(element: ET.Element) -> str | None:
    state = next(iter(_children(element, "state")), None)
    if state is None or state.text is None:
        return None
    value = state.text.strip().lower()
    return value if value in _KNOWN_STATES else None


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
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class DialogTracker:
    """The dialogs of one extension as one subscription reports them (RFC 4235 §4.1).

    A full document replaces what is known, a partial one updates the dialogs it names
    (a "terminated" dialog is forgotten). A document whose version is not newer than the
    last one applied is a stale or repeated notification and is ignored.
    """

    def __init__(self) -> None:
        self._dialogs: dict[str, str] = {}
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
        if document.full:
            self._dialogs.clear()
        self._dialogs.update(document.dialogs)
        self._dialogs = {k: v for k, v in self._dialogs.items() if v != "terminated"}
        if document.version is not None:
            self._version = document.version
        self._state = lamp_state(self._dialogs.values())
        return self._state

    def clear(self) -> BlfState:
        """The notifier knows of no dialog (an active NOTIFY without a body): IDLE."""
        self._dialogs.clear()
        self._state = BlfState.IDLE
        return self._state
