"""The control socket cannot end the service (issue 10): every command is validated at
the socket, and nothing a command raises on the pjsua2 thread reaches the main loop. No
client can hold it up or use it without being root or in group `phoned` (issue 12, SPEC
§10).

Before the fix, `phoned call` with an extension not encodable as UTF-8 was answered `ok`,
then pjsua2's makeCall raised a TypeError on the pjsua2 thread and the process died
without an un-REGISTER.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable

from conftest import StartPhone
from test_service import registered

from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, Lab, netns_socket
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


def timed_status(phone: RunningPhone) -> float:
    started = time.monotonic()
    assert phone.status()["servers"]["primary"]["registration"] == "registered"
    return time.monotonic() - started


def test_slow_silent_and_oversized_clients_never_hold_up_status(
    lab: Lab, make_pbx: MakePbx, start_phone: StartPhone
) -> None:
    """Issue 12: the control socket served one client at a time, 2 s each; a slow Phone
    App server stalled `app` and `status` for 16 s; requests up to 64 KiB were read."""
    make_pbx("pbx1")
    make_pbx("pbx2")
    app_server = netns_socket(lab.pbx1, socket.AF_INET, socket.SOCK_STREAM)
    app_server.bind((PBX1_IP, 8089))
    app_server.listen(4)
    app_server.settimeout(10)
    phone = start_phone(settings={"apps": {"slow": f"http://{PBX1_IP}:8089/slow"}})
    registered(phone, "primary")
    app = subprocess.Popen(
        [sys.executable, "-m", "phoned", "app", "slow", "--config", str(phone.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    with (
        app_server,
        socket.socket(socket.AF_UNIX) as silent,
        socket.socket(socket.AF_UNIX) as trickler,
    ):
        fetch, _ = app_server.accept()  # phoned is fetching the app: it gets no answer
        silent.connect(phone.control_socket)
        trickler.connect(phone.control_socket)
        trickler.sendall(b'{"cmd"')
        took = [timed_status(phone) for _ in range(5)]
        too_long = raw_request(phone, b'{"cmd": "status"' + b" " * 4080 + b"}\n")
        longest = raw_request(phone, b'{"cmd": "status"' + b" " * 4078 + b"}\n")
        fetch.close()  # the app server hangs up without a word
        _, app_error = app.communicate(timeout=10)
        silent.settimeout(5)
        silent_told = silent.recv(4096)

    assert max(took) < 0.3, took
    assert too_long == {"ok": False, "error": "request longer than 4096 bytes"}
    assert longest["ok"] is True  # 4096 bytes, newline included
    assert app.returncode == 1
    assert f"app slow: cannot fetch http://{PBX1_IP}:8089/slow" in app_error
    assert silent_told == b'{"ok": false, "error": "no whole request line within 2 s"}\n'
    still_serving(phone)


def test_the_socket_is_0660_and_in_group_phoned_when_there_is_one(
    make_pbx: MakePbx, start_phone: StartPhone
) -> None:
    make_pbx("pbx1")
    make_pbx("pbx2")
    phone = start_phone()
    registered(phone, "primary")

    mode = os.stat(phone.control_socket)
    try:
        expected_gid = grp.getgrnam("phoned").gr_gid
    except KeyError:  # a machine without the image's group: the service keeps root's
        expected_gid = 0
    told = [line for line in phone.lines() if "control: no group 'phoned' here" in line]

    assert stat.S_IMODE(mode.st_mode) == 0o660
    assert mode.st_gid == expected_gid
    assert len(told) == (1 if expected_gid == 0 else 0)
