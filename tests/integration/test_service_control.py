"""The control socket cannot end the service (issue 10): every command is validated at
the socket, and nothing a command raises on the pjsua2 thread reaches the main loop.

Before the fix, `phoned call` with an extension not encodable as UTF-8 was answered `ok`,
then pjsua2's makeCall raised a TypeError on the pjsua2 thread and the process died
without an un-REGISTER.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from conftest import StartPhone
from test_service import registered

from phonelab.kamailio import KamailioPbx
from phonelab.phone import RunningPhone

MakePbx = Callable[..., KamailioPbx]


def raw_request(phone: RunningPhone, line: bytes) -> dict[str, object]:
    """Send one raw request line to the phone's control socket; its decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(phone.control_socket)
        sock.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    assert isinstance(answer, dict)
    return answer


def still_serving(phone: RunningPhone) -> None:
    assert phone.proc.poll() is None, phone.tail()
    status = phone.status()
    assert status["servers"]["primary"]["registration"] == "registered"
    assert not [line for line in phone.lines() if "Traceback" in line], phone.tail()


def test_an_extension_not_encodable_as_utf8_is_refused_and_the_service_goes_on(
    make_pbx: MakePbx, start_phone: StartPhone
) -> None:
    make_pbx("pbx1")
    make_pbx("pbx2")
    phone = start_phone()
    registered(phone, "primary")

    # $'sip:\xff@...' from a shell: Python's argv holds a lone surrogate for the \xff byte
    done = phone.cli("call", "sip:\udcff@203.0.113.10")
    assert done.returncode == 1
    assert "ext" in done.stderr
    assert "Traceback" not in done.stderr
    for line in (
        b'{"cmd": "call", "ext": "\\ud800"}\n',  # a JSON lone surrogate
        b'{"cmd": "call", "ext": "sip:\xff@x"}\n',  # not even UTF-8
        b'{"cmd": "call", "ext": 1002}\n',
        b'{"cmd": "hangup", "call_id": true}\n',
        b"[" * 50000 + b"\n",  # nested past the decoder's recursion limit
    ):
        answer = raw_request(phone, line)
        assert answer["ok"] is False, (line[:40], answer)
        assert isinstance(answer["error"], str)
        assert answer["error"]
    still_serving(phone)
    code, took_s = phone.stop()
    assert code == 0  # SIGTERM still un-REGISTERs and exits cleanly
    assert took_s < 2.5


def test_a_second_phoned_run_refuses_to_start_and_the_first_keeps_its_socket(
    make_pbx: MakePbx, start_phone: StartPhone
) -> None:
    """Issue 12: a second `phoned run` with the same settings deleted the running
    service's control socket ("Address already in use", then the live socket was gone)."""
    make_pbx("pbx1")
    make_pbx("pbx2")
    phone = start_phone()
    registered(phone, "primary")

    second = phone.cli("run")
    assert second.returncode == 1, second.stderr
    assert "phoned is already running (its control socket" in second.stderr
    assert "Traceback" not in second.stderr
    still_serving(phone)
