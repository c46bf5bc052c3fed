"""Work handed to the pjsua2 thread: answered, and never able to end the service."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from phoned.errors import SipError
from phoned.service.commands import CommandError
from phoned.service.handover import MainThreadWork


def serve(work: MainThreadWork, stop: threading.Event) -> threading.Thread:
    """A stand-in main thread draining `work` until `stop`."""

    def loop() -> None:
        while not stop.is_set():
            work.drain()
            stop.wait(0.001)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_work_runs_on_the_draining_thread_and_its_result_comes_back() -> None:
    work, stop = MainThreadWork(), threading.Event()
    thread = serve(work, stop)
    try:
        result = work.submit("call", lambda: {"thread": threading.get_ident()})
    finally:
        stop.set()
        thread.join(1)
    assert result == {"thread": thread.ident}


def test_a_type_error_in_the_work_is_an_error_reply_and_drain_goes_on() -> None:
    def makecall() -> dict[str, Any]:
        raise TypeError("in method 'Call_makeCall', argument 2 of type 'string const &'")

    work, stop = MainThreadWork(), threading.Event()
    thread = serve(work, stop)
    try:
        with pytest.raises(CommandError, match=r"call failed: internal error \(TypeError"):
            work.submit("call", makecall)
        assert work.submit("status", lambda: {"ok": 1}) == {"ok": 1}  # still serving
    finally:
        stop.set()
        thread.join(1)
    assert not thread.is_alive()


def test_a_phoned_error_is_its_message() -> None:
    def refuse() -> dict[str, Any]:
        raise SipError("sip: no account on the backup")

    work = MainThreadWork()
    work.post("call", refuse)  # a line key: nobody waits, the drain must not raise
    work.drain()
    stop = threading.Event()
    thread = serve(work, stop)
    try:
        with pytest.raises(CommandError, match="no account on the backup"):
            work.submit("hangup", refuse)
    finally:
        stop.set()
        thread.join(1)


def test_nobody_draining_is_a_timeout_not_a_hang() -> None:
    with pytest.raises(CommandError, match="did not answer within 0 s"):
        MainThreadWork().submit("call", dict, timeout_s=0.05)
