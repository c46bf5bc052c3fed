"""A sipp UAS that stands in for a PBX answering OPTIONS late or badly (SPEC §8).

Owns: generating the UAS scenario, starting one sipp in the foreground (its own process
group, optionally in a network namespace), waiting until it answers, stopping it by PID.
Must not touch: other sipp instances or ports it was not given.

Each received OPTIONS is answered after `delay_ms` with `status`, echoing Via, From, To
(plus a tag), Call-ID and CSeq. sipp keys its calls by Call-ID: every OPTIONS must carry a
fresh Call-ID (phoned's prober does). A second OPTIONS with the same Call-ID arriving
during the delay makes sipp abort that call and answer neither (measured, sipp 3.6.1).
"""

from __future__ import annotations

import contextlib
import http
import socket
import time
import uuid
from pathlib import Path

from phonelab.errors import LabError
from phonelab.kamailio import options_request
from phonelab.netns import netns_socket, port_in_use
from phonelab.procs import LabProcess

_READY_PREFIX = "lab-sipp-ready-"
#: sipp's cap on simultaneous calls: each OPTIONS is a call that lives `delay_ms`.
MAX_CALLS = 100_000


def render_scenario(delay_ms: int, status: int, reason: str) -> str:
    """The sipp UAS scenario XML: receive OPTIONS, wait `delay_ms`, answer `status`."""
    pause = f'  <pause milliseconds="{delay_ms}"/>\n' if delay_ms > 0 else ""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phoned lab OPTIONS responder: {status} after {delay_ms} ms">
  <recv request="OPTIONS"/>
{pause}  <send>
    <![CDATA[

      SIP/2.0 {status} {reason}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]lab[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Server: phoned-lab-sipp
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase or "Status"
    except ValueError:
        return "Status"


class SippResponder(LabProcess):
    """sipp answering every OPTIONS on UDP `host:port` after `delay_ms` with `status`."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 5060,
        *,
        netns: str | None,
        workdir: Path,
        delay_ms: int,
        status: int = 200,
    ) -> None:
        """Args:
        name: label for files (`<workdir>/<name>.xml`, `.log`, `.err`).
        host, port: UDP address to answer on.
        netns: namespace to run in; None for the current one.
        workdir: where scenario and logs go (must exist).
        delay_ms: time from receiving an OPTIONS to sending its answer.
        status: SIP status of the answer (e.g. 200, 503).
        """
        if delay_ms < 0 or not 100 <= status <= 699:
            raise LabError(f"sipp {name}: bad delay_ms={delay_ms} or status={status}")
        self.name, self.host, self.port, self.netns = name, host, port, netns
        self.delay_ms, self.status = delay_ms, status
        self.workdir = Path(workdir)
        self.scenario_path = self.workdir / f"{name}.xml"
        self.log_path = self.workdir / f"{name}.log"
        self.error_path = self.workdir / f"{name}.err"

    def start(self, timeout_s: float = 5.0) -> None:
        """Write the scenario, start sipp and wait until it answers an OPTIONS.

        Raises:
            LabError: already running, port taken, sipp exited, or no answer in time.
        """
        if self.running:
            raise LabError(f"sipp {self.name}: already running (pid {self.pid})")
        if port_in_use(self.netns, self.host, self.port):
            raise LabError(f"sipp {self.name}: udp {self.host}:{self.port} already in use")
        self.scenario_path.write_text(
            render_scenario(self.delay_ms, self.status, _reason(self.status))
        )
        argv = ["sipp", "-sf", str(self.scenario_path), "-i", self.host, "-p", str(self.port)]
        argv += ["-t", "u1", "-nostdin", "-l", str(MAX_CALLS)]
        argv += ["-trace_err", "-error_file", str(self.error_path)]
        self._spawn(argv)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with netns_socket(self.netns) as sock:
            sock.connect((self.host, self.port))
            local = sock.getsockname()
            while time.monotonic() < deadline:
                if not self.running:
                    raise LabError(f"sipp {self.name}: exited at start: {self._tail()}")
                call_id = f"{_READY_PREFIX}{uuid.uuid4().hex}"
                # Not bound yet: the ICMP error of the last send surfaces on this one.
                with contextlib.suppress(ConnectionRefusedError):
                    sock.send(options_request(self.host, self.port, local, call_id))
                if self._answered(sock, min(0.1, max(0.0, deadline - time.monotonic()))):
                    return
        raise LabError(f"sipp {self.name}: no answer within {timeout_s} s: {self._tail()}")

    @staticmethod
    def _answered(sock: socket.socket, wait_s: float) -> bool:
        sock.settimeout(wait_s)
        try:
            reply = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return False
        return f"Call-ID: {_READY_PREFIX}".encode() in reply

    def _tail(self, lines: int = 10) -> str:
        """The last lines of sipp's output and error file, on one line."""
        paths = (self.log_path, self.error_path)
        texts = [p.read_text(errors="replace") for p in paths if p.exists()]
        return " | ".join("\n".join(texts).splitlines()[-lines:]) or "(no output)"
