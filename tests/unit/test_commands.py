"""Control requests validated at the socket (SPEC §4, §10) and run so that none kills us."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from phoned.errors import PhonedError, SipError
from phoned.service.commands import (
    AppCommand,
    CallCommand,
    CommandError,
    HangupCommand,
    ResyncCommand,
    StatusCommand,
    parse_command,
    run_safely,
)

# -- good requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "command"),
    [
        ({"cmd": "status"}, StatusCommand()),
        ({"cmd": "resync"}, ResyncCommand()),
        ({"cmd": "call", "ext": "1002"}, CallCommand("1002")),
        ({"cmd": "call", "ext": "  1002\n"}, CallCommand("1002")),  # outer blanks go
        ({"cmd": "call", "ext": "*97"}, CallCommand("*97")),  # feature codes
        ({"cmd": "call", "ext": "alice.smith-2"}, CallCommand("alice.smith-2")),
        ({"cmd": "call", "ext": "%C3%BF"}, CallCommand("%C3%BF")),  # an escaped ÿ
        ({"cmd": "call", "ext": "sip:1002@203.0.113.10"}, CallCommand("sip:1002@203.0.113.10")),
        (
            {"cmd": "call", "ext": "sip:1002@203.0.113.10:5070;transport=tcp"},
            CallCommand("sip:1002@203.0.113.10:5070;transport=tcp"),
        ),
        ({"cmd": "call", "ext": "sips:1002@[2001:db8::1]"}, CallCommand("sips:1002@[2001:db8::1]")),
        ({"cmd": "call", "ext": "9" * 64}, CallCommand("9" * 64)),
        ({"cmd": "hangup"}, HangupCommand(None)),
        ({"cmd": "hangup", "call_id": None}, HangupCommand(None)),  # what the CLI sends
        ({"cmd": "hangup", "call_id": 0}, HangupCommand(0)),
        ({"cmd": "hangup", "call_id": 3}, HangupCommand(3)),
        ({"cmd": "app", "name": "contacts"}, AppCommand("contacts")),
        ({"cmd": "app", "name": "Wetter für heute"}, AppCommand("Wetter für heute")),
        ({"cmd": "app", "name": "x" * 64}, AppCommand("x" * 64)),
    ],
)
def test_good_requests_become_commands(request_: dict[str, Any], command: object) -> None:
    assert parse_command(request_) == command


def test_requests_as_the_cli_sends_them_over_the_socket_parse() -> None:
    """`control_client.request()` sends `{"cmd": cmd, **args}` as one JSON line."""
    line = json.dumps({"cmd": "call", "ext": "sip:1002@203.0.113.10"}).encode()

    assert parse_command(json.loads(line)) == CallCommand("sip:1002@203.0.113.10")


def test_commands_are_frozen_and_name_their_cmd() -> None:
    command = CallCommand("1002")

    with pytest.raises(AttributeError):
        command.ext = "1003"  # type: ignore[misc]
    assert [c.cmd for c in (StatusCommand, CallCommand, HangupCommand, AppCommand)] == [
        "status",
        "call",
        "hangup",
        "app",
    ]
    assert ResyncCommand.cmd == "resync"


# -- the shape of a request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (None, "a request is a JSON object, got null"),
        ([], "a request is a JSON object, got an array"),
        ([{"cmd": "status"}], "a request is a JSON object, got an array"),
        ("status", "a request is a JSON object, got a string ('status')"),
        (7, "a request is a JSON object, got a number (7)"),
        (True, "a request is a JSON object, got a boolean (true)"),
        ({}, "a request needs a 'cmd' (one of: app, call, hangup, resync, status)"),
        ({"ext": "1002"}, "a request needs a 'cmd'"),
        ({"cmd": None}, "'cmd' must be a string, got null"),
        ({"cmd": ["call"]}, "'cmd' must be a string, got an array"),
        ({"cmd": {"call": "1002"}}, "'cmd' must be a string, got an object"),
        ({"cmd": 1}, "'cmd' must be a string, got a number (1)"),
        ({"cmd": "reboot"}, "unknown command 'reboot' (one of: app, call, hangup, resync, status)"),
        ({"cmd": "STATUS"}, "unknown command 'STATUS'"),
        ({"cmd": "\udcff"}, "unknown command '\\udcff'"),
        ({"cmd": "status", "verbose": True}, "status takes no arguments, got 'verbose'"),
        ({"cmd": "resync", "now": 1}, "resync takes no arguments, got 'now'"),
        ({"cmd": "call", "ext": "1", "to": "2"}, "call takes only 'ext', got 'to'"),
        ({"cmd": "hangup", "id": 1}, "hangup takes only 'call_id', got 'id'"),
        ({"cmd": "app", "name": "x", "url": "y"}, "app takes only 'name', got 'url'"),
    ],
)
def test_malformed_requests_get_a_one_line_message(request_: object, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(request_)

    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_command_error_is_a_phoned_error_and_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown command"):
        parse_command({"cmd": "x"})
    assert issubclass(CommandError, PhonedError)


def test_a_deeply_nested_request_is_refused_without_recursing() -> None:
    deep: object = {"cmd": "call", "ext": "1002"}
    for _ in range(10_000):
        deep = {"cmd": deep}

    with pytest.raises(CommandError, match="'cmd' must be a string, got an object"):
        parse_command(deep)


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(CommandError) as info:
        parse_command({"cmd": "x" * 4000})

    assert len(str(info.value)) < 120


# -- extensions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "message"),
    [
        # what crashed the service: pjsua2's makeCall raised TypeError on its thread
        ("sip:\udcff@203.0.113.10", "cannot be encoded as UTF-8 (lone surrogate '\\udcff' at 4)"),
        ("\udcff", "cannot be encoded as UTF-8 (lone surrogate '\\udcff' at 0)"),
        ("10\ud800", "cannot be encoded as UTF-8 (lone surrogate '\\ud800' at 2)"),
        # encodable, but no SIP user char unless percent-encoded
        ("sip:\xff@x", "has '\\xff', which a SIP URI cannot carry"),
        ("\xff", "percent-encode it as %C3%BF"),
        ("", "the extension is empty"),
        ("   ", "the extension is empty"),
        ("sip:", "names no user or host after the scheme"),
        ("9" * 65, "the extension is 65 characters long, at most 64"),
        ("10\x0002", "holds the control character '\\x00'"),
        ("10\x1b[2J", "holds the control character '\\x1b'"),
        ("10\t02", "holds the control character '\\t'"),
        ("10\u200b02", "holds the control character '\\u200b'"),  # zero-width space (Cf)
        ("10 02", "holds whitespace (' ')"),
        ("10\u00a002", "holds whitespace ('\\xa0')"),
        ("sip:<1002>@x", "has '<', which a SIP URI cannot carry"),
        ('"1002"', "has '\"', which a SIP URI cannot carry"),
        ("1002#", "percent-encode it as %23"),
        ("10%2", "has a '%' that is no %XX escape"),
        ("10%zz", "has a '%' that is no %XX escape"),
        ("1002@203.0.113.10", "write a full URI (sip:1002@host) to name a host"),
        ("1002:5060", "write a full URI"),
    ],
)
def test_bad_extensions_are_refused_before_pjsua2_sees_them(ext: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command({"cmd": "call", "ext": ext})

    assert message in str(info.value)
    str(info.value).encode("ascii")  # a surrogate or 'ÿ' never reaches the log or the reply


@pytest.mark.parametrize(
    ("ext", "got"),
    [(None, "null"), (1002, "a number (1002)"), (["1002"], "an array"), ({}, "an object")],
)
def test_an_extension_must_be_a_string(ext: object, got: str) -> None:
    msg = f"the extension must be a string, got {got}"
    with pytest.raises(CommandError, match=f"^{re.escape(msg)}$"):
        parse_command({"cmd": "call", "ext": ext})


def test_a_call_without_an_extension_says_how() -> None:
    with pytest.raises(CommandError, match=r"call needs an extension, e\.g\. phoned call 1002"):
        parse_command({"cmd": "call"})


def test_a_surrogate_escaped_json_request_is_refused() -> None:
    """A client may send `\\ud800` in JSON; json.loads makes a lone surrogate of it."""
    request = json.loads('{"cmd": "call", "ext": "sip:\\ud800@203.0.113.10"}')

    with pytest.raises(CommandError, match="UTF-8"):
        parse_command(request)


# -- hangup -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_id", "message"),
    [
        (True, "call_id must be a call number, got a boolean (true)"),
        (False, "call_id must be a call number, got a boolean (false)"),
        ("1", "call_id must be a call number, got a string ('1')"),
        (1.0, "call_id must be a call number, got a number (1.0)"),
        ([1], "call_id must be a call number, got an array"),
        ({"id": 1}, "call_id must be a call number, got an object"),
        (-1, "call_id must be 0..2147483647, got -1"),
        (2**31, "call_id must be 0..2147483647, got 2147483648"),
        pytest.param(
            10**5000, "call_id must be 0..2147483647, got a number too large to show", id="huge"
        ),
    ],
)
def test_bad_call_ids_are_refused(call_id: object, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command({"cmd": "hangup", "call_id": call_id})

    assert str(info.value) == message


# -- app names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "the app name is empty"),
        ("x" * 65, "the app name is 65 characters long, at most 64"),
        ("con\udcfftacts", "cannot be encoded as UTF-8 (lone surrogate '\\udcff' at 3)"),
        ("\ud800", "cannot be encoded as UTF-8"),
        ("contacts\n", "holds the unprintable '\\n'"),
        ("con\x00tacts", "holds the unprintable '\\x00'"),
        ("\x1b[31m", "holds the unprintable '\\x1b'"),
        (None, "the app name must be a string, got null"),
        (5, "the app name must be a string, got a number (5)"),
        (["contacts"], "the app name must be a string, got an array"),
    ],
)
def test_bad_app_names_are_refused(name: object, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command({"cmd": "app", "name": name})

    assert message in str(info.value)


def test_an_app_request_without_a_name_says_how() -> None:
    with pytest.raises(CommandError, match=r"app needs an app name, e\.g\. phoned app contacts"):
        parse_command({"cmd": "app"})


# -- running a command ------------------------------------------------------------------------


def test_run_safely_returns_the_result() -> None:
    assert run_safely("call", lambda: {"call_id": 1}) == ({"call_id": 1}, "")


def test_an_unexpected_exception_becomes_an_error_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def make_call() -> dict[str, Any]:  # what pjsua2 did with a lone surrogate
        raise TypeError("in method 'Call_makeCall', argument 2 of type 'string const &'")

    with caplog.at_level(logging.ERROR, logger="phoned"):
        result, error = run_safely("call", make_call)

    assert result == {}
    assert error.startswith("call failed: internal error (TypeError: in method 'Call_makeCall'")
    [record] = caplog.records
    assert record.name == "phoned"
    assert record.getMessage() == "control: call failed with TypeError, service goes on"
    assert record.exc_info is not None  # the traceback is in the journal, not the reply


def test_a_phoned_error_is_a_refusal_with_its_own_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def make_call() -> dict[str, Any]:
        raise SipError("sip: cannot call 1002: no server in use")

    with caplog.at_level(logging.WARNING, logger="phoned"):
        result, error = run_safely("call", make_call)

    assert (result, error) == ({}, "sip: cannot call 1002: no server in use")
    assert caplog.messages == ["control: call refused: sip: cannot call 1002: no server in use"]


def test_an_error_message_with_a_surrogate_stays_ascii() -> None:
    def boom() -> dict[str, Any]:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    _, error = run_safely("call", boom)

    error.encode("ascii")
    assert "UnicodeEncodeError" in error


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)])
def test_run_safely_lets_base_exceptions_through(exc: BaseException) -> None:
    def stop() -> dict[str, Any]:
        raise exc

    with pytest.raises(type(exc)):
        run_safely("status", stop)
