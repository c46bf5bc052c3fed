"""Control requests (SPEC §4): validated at the socket, then run so that none can kill us.

Owns: turning one decoded JSON request into a frozen command (`parse_command`), with a
one-line message for every bad input (SPEC §10: bad input gets a message, not a
traceback), and running a command's work so that any `Exception` becomes an error reply
(`run_safely`). Must not touch: the socket (`control`), pjsua2 or the status board (the
supervisor executes the commands on the right thread).

Rules:
1. Nothing reaches pjsua2 that it cannot take: an extension is 1..64 characters, encodable
   as UTF-8 (JSON `\\ud800` and the shell's `$'\\xff'` arrive as lone surrogates), with no
   control characters or whitespace inside, and only characters of a SIP user part
   (RFC 3261 §25.1: letters, digits, `-_.!~*'()`, `&=+$,;?/` and `%XX` escapes); a full
   `sip:`/`sips:` URI may also hold `@`, `:` and the `[]` of an IPv6 host.
2. A request holds `cmd` and only the keys its command takes.
3. Messages quote what was received with `ascii()`, shortened: a surrogate or a 4 KiB
   value must not break the log line or the reply.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from phoned.errors import PhonedError

log = logging.getLogger("phoned")

#: Longest extension or URI, and longest app name, in characters.
MAX_EXT_CHARS = 64
MAX_APP_NAME_CHARS = 64
#: pjsua2 call ids are C ints.
_MAX_CALL_ID = 2**31 - 1
#: RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ).
_USER_CHARS = frozenset(string.ascii_letters + string.digits + "-_.!~*'()" + "&=+$,;?/")
#: ... and what a full URI adds: the host after `@`, ports, an IPv6 host's brackets.
_URI_CHARS = _USER_CHARS | frozenset("@:[]")
_URI_SCHEMES = ("sip:", "sips:")  # as `sip.account.call_uri` recognises them
_ALLOWED_HINT = "letters, digits, -_.!~*'()&=+$,;?/ and %XX escapes"
_SHOWN_CHARS = 40
_JSON_CONTAINERS: dict[type, str] = {list: "an array", dict: "an object"}


class CommandError(PhonedError, ValueError):
    """A control request that cannot be run as it is; the message is the reply's error."""


@dataclass(frozen=True)
class StatusCommand:
    """`phoned status`: the status board's snapshot."""

    cmd: ClassVar[str] = "status"


@dataclass(frozen=True)
class CallCommand:
    """`phoned call EXT`: place a call through the active server."""

    cmd: ClassVar[str] = "call"
    #: an extension (`1002`) or a full URI (`sip:1002@203.0.113.10`), validated (rule 1)
    ext: str


@dataclass(frozen=True)
class HangupCommand:
    """`phoned hangup [--call-id N]`: end one call, or every call."""

    cmd: ClassVar[str] = "hangup"
    #: the call to end, or None for all of them
    call_id: int | None = None


@dataclass(frozen=True)
class AppCommand:
    """`phoned app NAME`: fetch a Phone App from the active server."""

    cmd: ClassVar[str] = "app"
    #: the app's name in `[apps]` (1..64 printable characters)
    name: str


@dataclass(frozen=True)
class ResyncCommand:
    """`phoned resync`: fetch and apply the provisioning file now (SPEC §7)."""

    cmd: ClassVar[str] = "resync"


Command = StatusCommand | CallCommand | HangupCommand | AppCommand | ResyncCommand


def parse_command(request: object) -> Command:
    """Validate one decoded control request.

    Args:
        request: what `json.loads` made of the request line (anything JSON can hold).

    Returns:
        The command, its arguments checked and normalised (an extension stripped).

    Raises:
        CommandError: not a JSON object, no or an unknown `cmd`, a key the command does
            not take, or an argument of the wrong type or form; one line for the reply.
    """
    if not isinstance(request, dict):
        raise CommandError(f"a request is a JSON object, got {_json_type(request)}")
    if "cmd" not in request:
        raise CommandError(f"a request needs a 'cmd' (one of: {_KNOWN})")
    cmd = request["cmd"]
    if not isinstance(cmd, str):
        raise CommandError(f"'cmd' must be a string, got {_json_type(cmd)}")
    parser = _PARSERS.get(cmd)
    if parser is None:
        raise CommandError(f"unknown command {_show(cmd)} (one of: {_KNOWN})")
    args = {key: value for key, value in request.items() if key != "cmd"}
    _check_keys(cmd, args, _KEYS[cmd])
    return parser(args)


def run_safely(name: str, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Run a command's work (on the pjsua2 thread) so that no `Exception` escapes.

    A `PhonedError` is an expected refusal: its message is the error, logged on one line.
    Any other `Exception` is a bug or an adapter's surprise (pjsua2's `TypeError`): it is
    logged with its traceback and answered as an internal error, and the service goes on.
    `BaseException`s that are not `Exception`s (KeyboardInterrupt, SystemExit) propagate.

    Args:
        name: the command's name for the log line (`CallCommand.cmd`: "call").
        run: the work; returns the reply's result.

    Returns:
        `(result, "")` when `run` returned, `({}, error)` when it raised.
    """
    try:
        return run(), ""
    except PhonedError as exc:
        log.warning("control: %s refused: %s", name, exc)
        return {}, str(exc)
    except Exception as exc:  # SPEC §10: a command must never end the service
        log.exception("control: %s failed with %s, service goes on", name, type(exc).__name__)
        return {}, f"{name} failed: internal error ({type(exc).__name__}: {_shorten(exc)})"


# -- one parser per command -----------------------------------------------------------------
def _status(_args: Mapping[str, object]) -> Command:
    return StatusCommand()


def _resync(_args: Mapping[str, object]) -> Command:
    return ResyncCommand()


def _call(args: Mapping[str, object]) -> Command:
    if "ext" not in args:
        raise CommandError("call needs an extension, e.g. phoned call 1002")
    return CallCommand(validate_ext(args["ext"]))


def _hangup(args: Mapping[str, object]) -> Command:
    call_id = args.get("call_id")
    if call_id is None:
        return HangupCommand(None)
    # bool is an int to Python, never a call id to a person
    if not isinstance(call_id, int) or isinstance(call_id, bool):
        raise CommandError(f"call_id must be a call number, got {_json_type(call_id)}")
    if not 0 <= call_id <= _MAX_CALL_ID:
        raise CommandError(f"call_id must be 0..{_MAX_CALL_ID}, got {_shorten(call_id, 20)}")
    return HangupCommand(call_id)


def _app(args: Mapping[str, object]) -> Command:
    if "name" not in args:
        raise CommandError("app needs an app name, e.g. phoned app contacts")
    return AppCommand(validate_app_name(args["name"]))


_PARSERS: dict[str, Callable[[Mapping[str, object]], Command]] = {
    StatusCommand.cmd: _status,
    CallCommand.cmd: _call,
    HangupCommand.cmd: _hangup,
    AppCommand.cmd: _app,
    ResyncCommand.cmd: _resync,
}
#: The keys besides `cmd` each command takes (rule 2).
_KEYS: dict[str, frozenset[str]] = {
    StatusCommand.cmd: frozenset(),
    CallCommand.cmd: frozenset({"ext"}),
    HangupCommand.cmd: frozenset({"call_id"}),
    AppCommand.cmd: frozenset({"name"}),
    ResyncCommand.cmd: frozenset(),
}
_KNOWN = ", ".join(sorted(_PARSERS))


# -- arguments --------------------------------------------------------------------------------
def validate_ext(value: object) -> str:
    """An extension or SIP URI that pjsua2 can be handed (rule 1), stripped of outer blanks.

    Args:
        value: the request's `ext`.

    Returns:
        The extension without leading or trailing whitespace.

    Raises:
        CommandError: not a string, empty, too long, not UTF-8 encodable, or holding a
            control character, inner whitespace or a character a SIP URI cannot carry.
    """
    if not isinstance(value, str):
        raise CommandError(f"the extension must be a string, got {_json_type(value)}")
    _check_encodable("extension", value)
    ext = value.strip()
    if not ext:
        raise CommandError("the extension is empty, e.g. phoned call 1002")
    if len(ext) > MAX_EXT_CHARS:
        raise CommandError(f"the extension is {len(ext)} characters long, at most {MAX_EXT_CHARS}")
    _check_printable("extension", ext)
    is_uri = ext.startswith(_URI_SCHEMES)
    body = ext.split(":", 1)[1] if is_uri else ext
    if not body:
        raise CommandError(f"extension {_show(ext)} names no user or host after the scheme")
    _check_sip_chars(ext, body, _URI_CHARS if is_uri else _USER_CHARS)
    return ext


def validate_app_name(value: object) -> str:
    """An app name: 1..64 printable characters, UTF-8 encodable.

    Args:
        value: the request's `name`.

    Raises:
        CommandError: not a string, empty, too long, not encodable or not printable.
    """
    if not isinstance(value, str):
        raise CommandError(f"the app name must be a string, got {_json_type(value)}")
    _check_encodable("app name", value)
    if not value:
        raise CommandError("the app name is empty, e.g. phoned app contacts")
    if len(value) > MAX_APP_NAME_CHARS:
        raise CommandError(
            f"the app name is {len(value)} characters long, at most {MAX_APP_NAME_CHARS}"
        )
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise CommandError(f"app name {_show(value)} holds the unprintable {bad!a}")
    return value


def _check_keys(cmd: str, args: Mapping[str, object], allowed: frozenset[str]) -> None:
    extra = sorted(_show(key) for key in args if key not in allowed)
    if not extra:
        return
    takes = "only " + ", ".join(map(repr, sorted(allowed))) if allowed else "no arguments"
    raise CommandError(f"{cmd} takes {takes}, got {', '.join(extra)}")


def _check_encodable(what: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad, at = ascii(value[exc.start]), exc.start
        raise CommandError(
            f"{what} {_show(value)} cannot be encoded as UTF-8 (lone surrogate {bad} at {at})"
        ) from None


def _check_printable(what: str, value: str) -> None:
    for ch in value:
        if unicodedata.category(ch).startswith("C"):  # Cc, Cf, Co, Cn (Cs is caught above)
            raise CommandError(f"{what} {_show(value)} holds the control character {ch!a}")
        if ch.isspace():
            raise CommandError(f"{what} {_show(value)} holds whitespace ({ch!a})")


def _check_sip_chars(ext: str, body: str, allowed: frozenset[str]) -> None:
    for index, ch in enumerate(body):
        if ch in allowed:
            continue
        if ch == "%":
            escape = body[index + 1 : index + 3]
            if len(escape) == 2 and all(c in string.hexdigits for c in escape):
                continue
            raise CommandError(f"extension {_show(ext)} has a '%' that is no %XX escape")
        if ch in _URI_CHARS:  # fine in a URI, not in a bare extension
            hint = "; write a full URI (sip:1002@host) to name a host"
        else:
            hint = f"; percent-encode it as {quote(ch, safe='')}"
        raise CommandError(
            f"extension {_show(ext)} has {ch!a}, which a SIP URI cannot carry "
            f"(allowed: {_ALLOWED_HINT}){hint}"
        )


# -- messages --------------------------------------------------------------------------------
def _show(value: object) -> str:
    """`value` for a message: ASCII-escaped (rule 3) and cut to a readable length."""
    shown = ascii(value)
    if len(shown) > _SHOWN_CHARS:
        shown = shown[: _SHOWN_CHARS - 4] + "...'"
    return shown


def _shorten(value: object, limit: int = 200) -> str:
    """`str(value)` ASCII-escaped and cut to `limit` characters."""
    if isinstance(value, int) and abs(value) >= 10**limit:
        return "a number too large to show"  # str() of a huge int raises (3.11's limit)
    text = ascii(str(value))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    """The JSON name of `value`'s type, as a client sent it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({_shorten(value, 20)})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    return _JSON_CONTAINERS.get(type(value), type(value).__name__)
