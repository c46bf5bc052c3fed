"""The fuzz targets of `scripts/fuzz`: every parser the phone exposes, one input at a time
(issue 12 item 4, SPEC §10).

Owns: the seven targets (the probe's SIP responses and stream framing, the local and the
fetched settings files, control socket requests, check-sync NOTIFYs, BLF dialog-info
bodies, provisioning HTTP responses) and the hidden `canary` for the harness's tests;
each as a `Target` whose `build(home)` returns its one-input function (the input handed
to `phoned`, its output checked with `invariant`, a documented refusal's message back)
and the error types that are documented refusals; the SPEC §10 time limit (`MAX_MS`).
Targets import `phoned` inside `build`, so that `phonelab.fuzz_run` can instrument those
imports for coverage.
Must not touch: the network (every socket is local: socketpairs, a Unix socket; no address
given to a target is ever connected to), anything outside the target's `home` (the control
target's socket goes under /tmp when `home`'s path is too long for one), the judging and
the running of inputs (`phonelab.fuzz_run`), the command line (`scripts/fuzz`).
"""

# ruff: noqa: PLC0415  # targets import phoned inside atheris.instrument_imports(), late on purpose
from __future__ import annotations

import functools
import json
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: SPEC §10: no input may take longer (ms); the canary is slow past it on purpose.
MAX_MS = 10.0

#: One input in, the documented refusal's message out (None: accepted). Raises the
#: target's documented error types for a refusal, anything else for a crash.
OneInput = Callable[[bytes], "str | None"]
Errors = tuple[type[BaseException], ...]


def invariant(holds: bool, what: object) -> None:
    """A target's check of its output: a broken one is a crash."""
    if not holds:
        raise AssertionError(what)


@dataclass(frozen=True)
class Target:
    """One fuzz target: how to build its one-input function, and its libFuzzer limits."""

    #: makes the one-input function; `home` is the target's scratch directory
    build: Callable[[Path], tuple[OneInput, Errors]]
    max_len: int = 8192
    #: modules instrumented for coverage besides phoned
    instrument: tuple[str, ...] = ()
    about: str = ""


def _sip_response(_home: Path) -> tuple[OneInput, Errors]:
    from phoned.probe.framing import FramingError, StreamFramer
    from phoned.probe.sipmsg import parse_response

    def one(data: bytes) -> str | None:
        response = parse_response(data)
        invariant(response is None or 100 <= response.status_code <= 699, response)
        cut = [
            data[: len(data) // 3],
            data[len(data) // 3 : len(data) // 2],
            data[len(data) // 2 :],
        ]
        whole, pieces = StreamFramer(), StreamFramer()
        messages = whole.feed(data)
        invariant([m for chunk in cut for m in pieces.feed(chunk)] == messages, "framing by chunks")
        for message in messages:
            parse_response(message)
        return None if response is not None else "not a SIP response"

    return one, (FramingError,)


def _config_local(home: Path) -> tuple[OneInput, Errors]:
    from phoned.config.loader import load_settings
    from phoned.errors import ConfigError

    path = home / "phoned.toml"

    def one(data: bytes) -> str | None:
        path.write_bytes(data)
        load_settings(path)
        return None

    return one, (ConfigError,)


#: The local file under a fetched one: a provisioned phone's short local file.
LOCAL_UNDER_FETCHED = """\
[account]
username = "1001"
password = "local-secret"
[server]
address = "192.0.2.11"
[provisioning]
url = "http://192.0.2.40/prov"
"""


def _config_fetched(_home: Path) -> tuple[OneInput, Errors]:
    from phoned.config.loader import SettingsError
    from phoned.config.overlay import parse_layered
    from phoned.errors import ConfigError

    url = "http://192.0.2.40/prov/b827eb12ab34.toml"

    def one(data: bytes) -> str | None:
        try:  # as `configsource` decodes a fetched body
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise SettingsError([f"{url}:{line}: invalid TOML: not UTF-8 text"]) from exc
        parse_layered(LOCAL_UNDER_FETCHED, "/etc/phoned/phoned.toml", text, url)
        return None

    return one, (ConfigError,)


class _Records(logging.Handler):
    """Keeps the log records that mean a bug: errors and anything with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(logging.Formatter().format(record))


def _control(home: Path) -> tuple[OneInput, Errors]:
    from phoned.service.commands import parse_command
    from phoned.service.control import ControlServer

    path = str(home / "control.sock")
    if len(path) > 100:  # sun_path holds 108 bytes
        path = str(Path(tempfile.mkdtemp(prefix="phoned-fuzz-")) / "control.sock")
    records = _Records()
    logging.getLogger().addHandler(records)
    server = ControlServer(path, lambda request: {"cmd": parse_command(request).cmd})
    server.start()

    def one(data: bytes) -> str | None:
        records.bad.clear()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(3.0)
            client.connect(path)
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            reply = b"".join(iter(lambda: client.recv(65536), b""))
        invariant(not records.bad, "\n".join(records.bad))
        if not reply:
            return "closed without a reply"
        answer = json.loads(reply)
        invariant(reply.endswith(b"\n") and reply.count(b"\n") == 1, f"reply {reply[:80]!r}")
        invariant(isinstance(answer, dict) and isinstance(answer.get("ok"), bool), reply[:80])
        if answer["ok"]:
            return None
        error = answer.get("error")
        invariant(isinstance(error, str) and bool(error) and "internal error" not in error, error)
        return str(error)

    return one, ()


def _check_sync(_home: Path) -> tuple[OneInput, Errors]:
    from phoned.sip.checksync import FORBIDDEN, MEMORY_MAX, OK, CheckSyncInbox
    from phoned.sip.pjsip_hooks import parse_request

    inbox = CheckSyncInbox()
    inbox.allow_from(["192.0.2.11", "2001:db8::12"])
    sources = [("192.0.2.11", 5060), ("198.51.100.7", 5060), ("::ffff:192.0.2.11", 5060)]
    clock = [0.0]

    def one(data: bytes) -> str | None:
        clock[0] += 0.25  # four NOTIFYs a second: the 64 s memory fills and empties
        request = parse_request(data, sources[len(data) % len(sources)])
        if request is None:
            return "not a SIP request"
        answer = inbox.handle(request, clock[0])
        invariant(inbox.remembered <= MEMORY_MAX, f"{inbox.remembered} remembered")
        if answer is None:
            return "not a check-sync NOTIFY"
        invariant(answer.status in (OK, FORBIDDEN), f"answered {answer.status}")
        invariant(answer.warning is None or "\n" not in answer.warning, answer.warning)
        return None

    return one, ()


def _dialog_info(_home: Path) -> tuple[OneInput, Errors]:
    from phoned.sip.dialog_info import (
        BlfState,
        DialogInfoError,
        DialogTracker,
        read_dialog_document,
    )

    tracker = DialogTracker()

    def one(data: bytes) -> str | None:
        document = read_dialog_document(data)
        invariant(isinstance(tracker.apply(document), BlfState), "lamp state")
        return None

    return one, (DialogInfoError,)


FUZZ_PASSWORD = "fuzz-secret"  # noqa: S105  # sent to no one: the server is a socketpair


def _http_response(_home: Path) -> tuple[OneInput, Errors]:
    import phoned.provision.http as http_io
    from phoned.provision import fetch as fetching

    served: list[bytes] = [b""]
    peers: list[socket.socket] = []

    def connect(_host: str, _port: int, _deadline: object) -> socket.socket:
        """Every connection of the fetch (redirects, the 401 retry) reads `served`."""
        ours, theirs = socket.socketpair()
        theirs.sendall(served[0])
        theirs.shutdown(socket.SHUT_WR)
        peers.append(theirs)
        return http_io._PlainSocket(fileno=ours.detach())

    http_io._connect = connect  # type: ignore[assignment]
    # Loading the system's CAs takes 40-100 ms: once per fetch on the phone, not a cost of
    # what the server sends; made once here so that an https redirect is judged on parsing.
    setattr(fetching, "tls_context", functools.cache(http_io.tls_context))  # noqa: B010

    def one(data: bytes) -> str | None:
        served[0] = data
        try:
            result = fetching.fetch(
                "http://192.0.2.40/prov/b827eb12ab34.toml",
                username="fuzz",
                password=FUZZ_PASSWORD,
                etag='"v1"',
                timeout_s=5.0,
            )
        finally:
            for peer in peers:
                peer.close()
            peers.clear()
        invariant(result.status in (200, 304), f"status {result.status}")
        invariant(len(result.body) <= fetching.MAX_FILE_BYTES, f"{len(result.body)} bytes")
        return None

    return one, (fetching.FetchError,)


def _canary(_home: Path) -> tuple[OneInput, Errors]:
    """For the tests only: crashes on the empty input (libFuzzer always tries it first)
    and is slow on the first one-byte input, so that the harness is seen to report both."""

    slow_one: list[bytes] = []

    def one(data: bytes) -> str | None:
        if len(data) == 1 and slow_one in ([], [data]):
            slow_one[:] = [data]
            time.sleep(MAX_MS * 1.5 / 1000)
        return f"length {1 // len(data)}"

    return one, ()


TARGETS: dict[str, Target] = {
    "sip-response": Target(_sip_response, 20000, about="probe: datagram and stream parsing"),
    "config-local": Target(_config_local, 10000, ("tomllib",), "the local settings file"),
    "config-fetched": Target(_config_fetched, 10000, ("tomllib",), "a provisioned file"),
    "control": Target(_control, 8192, ("json",), "control socket request lines"),
    "check-sync": Target(_check_sync, 8192, about="NOTIFY Event: check-sync"),
    "dialog-info": Target(_dialog_info, 16384, ("defusedxml",), "BLF NOTIFY bodies"),
    "http-response": Target(_http_response, 8192, ("http.client", "email"), "provisioning"),
}
#: Not run by default: for the tests of the harness itself.
HIDDEN: dict[str, Target] = {"canary": Target(_canary, 64, about="tests: a target that fails")}
ALL_TARGETS = {**TARGETS, **HIDDEN}
