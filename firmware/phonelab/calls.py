"""sipp call peers for the lab: a UAS that answers calls and a UAC that places them (SPEC §8).

Owns: the two call scenarios, starting one sipp per peer in the foreground (its own process
group, in a namespace), and reading what each call did from the scenario's own log lines
(`<log>` actions written to `<name>.events`, one line per event, flushed per line by sipp).
Must not touch: other sipp instances, ports it was not given; no RTP is sent (the SDP
offers a port nobody listens on: the phone's RTP gets ICMP unreachable, which is harmless).

Events logged (`<event> <call-id>`): `invite` (received / sent), `answered` (UAS got the ACK
of its 200, UAC got a 200 and sent the ACK), `bye-sent` (its BYE got 200), `bye-received`
(the other side hung up and got our 200). In-dialog requests follow the Record-Route set
(`rrs="true"`, `[routes]`, `[next_url]`), so a PBX that record-routed stays in the path.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

from phonelab.errors import LabError
from phonelab.netns import call_in_netns, port_in_use
from phonelab.procs import LabProcess

_SDP = """v=0
      o=lab 1 1 IN IP4 [local_ip]
      s=lab
      c=IN IP4 [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
"""
_REPLY_HEADERS = """      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]lab[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:peer@[local_ip]:[local_port]>"""


def udp_bound(netns: str | None, host: str, port: int) -> bool:
    """Whether a UDP socket is bound to `host:port` in `netns` (from its socket table)."""
    packed = socket.inet_aton(host)
    wanted = f"{struct.unpack('=I', packed)[0]:08X}:{port:04X}"
    # /proc/thread-self/net follows the calling thread's namespace (set by call_in_netns).
    table = call_in_netns(netns, lambda: Path("/proc/thread-self/net/udp").read_text())
    return any(line.split()[1] == wanted for line in table.splitlines()[1:])


def _log(event: str) -> str:
    return f'<action><log message="{event} [call_id]"/></action>'


def _bye_or_wait(hangup_after_ms: int | None, uac: bool) -> str:
    """Scenario tail: our BYE after `hangup_after_ms`, or wait for theirs (None)."""
    if hangup_after_ms is None:
        return f"""  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
    {_log("bye-received")}
  </send>
"""
    # UAS: our From is the INVITE's To (with our tag), To is the INVITE's From; a UAC keeps them.
    local, remote = ("[$from]", "[$to]") if uac else ("[$to];tag=[pid]lab[call_number]", "[$from]")
    return f"""  <pause milliseconds="{hangup_after_ms}"/>
  <send>
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: {local}
      To: {remote}
      Call-ID: [call_id]
      CSeq: [cseq] BYE
      Max-Forwards: 70
      Contact: <sip:peer@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <recv response="200">{_log("bye-sent")}</recv>
"""


def _capture(header: str, var: str) -> str:
    return (
        f'<ereg regexp=".*" search_in="hdr" header="{header}:" check_it="true" assign_to="{var}"/>'
    )


def render_uas(hangup_after_ms: int | None) -> str:
    """Scenario: answer one INVITE (180, 200 + SDP), take ACK, then BYE or wait for one."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phoned lab call peer (UAS)">
  <recv request="INVITE" rrs="true">
    <action>{_capture("From", "from")}{_capture("To", "to")}<log message="invite [call_id]"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
{_REPLY_HEADERS}
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
{_REPLY_HEADERS}
      Content-Type: application/sdp
      Content-Length: [len]

{_SDP}
    ]]>
  </send>
  <recv request="ACK">{_log("answered")}</recv>
{_bye_or_wait(hangup_after_ms, uac=False)}
  <Reference variables="from,to"/>
</scenario>
"""


def render_uac(target: str, hangup_after_ms: int | None) -> str:
    """Scenario: INVITE `target` (e.g. `sip:1001@192.0.2.11`), ACK its 200, then BYE."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phoned lab caller (UAC)">
  <send retrans="500" start_txn="invite">
    <![CDATA[

      INVITE {target} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:peer@[local_ip]:[local_port]>;tag=[pid]lab[call_number]
      To: <{target}>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:peer@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{_SDP}
    ]]>
    {_log("invite")}
  </send>
  <recv response="100" optional="true" response_txn="invite"/>
  <recv response="180" optional="true" response_txn="invite"/>
  <recv response="183" optional="true" response_txn="invite"/>
  <recv response="200" rrs="true" response_txn="invite">
    <action>{_capture("From", "from")}{_capture("To", "to")}</action>
  </recv>
  <send ack_txn="invite">
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: [$from]
      To: [$to]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
    {_log("answered")}
  </send>
{_bye_or_wait(hangup_after_ms, uac=True)}
  <Reference variables="from,to"/>
</scenario>
"""


class _SippPeer(LabProcess):
    """One sipp process running a call scenario; counts its logged events."""

    def __init__(
        self, name: str, host: str, port: int, *, netns: str | None, workdir: Path
    ) -> None:
        self.name, self.host, self.port, self.netns = name, host, port, netns
        self.workdir = Path(workdir)
        self.scenario_path = self.workdir / f"{name}.xml"
        self.events_path = self.workdir / f"{name}.events"
        self.log_path = self.workdir / f"{name}.log"
        self.error_path = self.workdir / f"{name}.err"

    def _start(self, scenario: str, extra: list[str]) -> None:
        if self.running:
            raise LabError(f"sipp {self.name}: already running")
        if port_in_use(self.netns, self.host, self.port):
            raise LabError(f"sipp {self.name}: udp {self.host}:{self.port} already in use")
        self.scenario_path.write_text(scenario)
        self.events_path.write_text("")
        argv = ["sipp", "-sf", str(self.scenario_path), "-i", self.host, "-p", str(self.port)]
        argv += ["-t", "u1", "-nostdin", "-mp", str(self.port + 2000), "-trace_err"]
        argv += ["-error_file", str(self.error_path), "-trace_logs", "-log_file"]
        argv += [str(self.events_path), *extra]
        self._spawn(argv)
        self._wait_bound()

    def _wait_bound(self, timeout_s: float = 5.0) -> None:
        """Until sipp holds its port (a UAS cannot be probed with SIP without aborting a
        scenario call, and a test bind would race sipp's own bind: read the socket table)."""
        deadline = time.monotonic() + timeout_s
        while not udp_bound(self.netns, self.host, self.port):
            if not self.running:
                raise LabError(f"sipp {self.name}: exited at start: {self._tail()}")
            if time.monotonic() >= deadline:
                self.stop()
                raise LabError(f"sipp {self.name}: port not bound within {timeout_s} s")
            time.sleep(0.005)  # polling with a deadline

    def events(self, kind: str) -> list[str]:
        """Call-IDs of the logged `kind` events (invite, answered, bye-sent, bye-received)."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text(errors="replace").splitlines()
        return [w[1] for w in (line.split() for line in lines) if len(w) == 2 and w[0] == kind]

    def calls_answered(self) -> int:
        """Calls that reached the confirmed state (200 + ACK)."""
        return len(self.events("answered"))

    def byes_sent(self) -> int:
        """BYEs this peer sent that got a 200."""
        return len(self.events("bye-sent"))

    def byes_received(self) -> int:
        """BYEs from the other side that this peer answered with 200."""
        return len(self.events("bye-received"))

    def _tail(self, lines: int = 10) -> str:
        """The last lines of sipp's output and error file, on one line."""
        paths = (self.log_path, self.error_path)
        texts = [p.read_text(errors="replace") for p in paths if p.exists()]
        return " | ".join("\n".join(texts).splitlines()[-lines:]) or "(no output)"


class SippCallPeer(_SippPeer):
    """sipp UAS on UDP `host:port`: answers each INVITE, hangs up after a while or waits."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 5060,
        *,
        netns: str | None,
        workdir: Path,
        hangup_after_ms: int | None,
    ) -> None:
        """Args:
        name: label for files (`<workdir>/<name>.xml`, `.events`, `.log`, `.err`).
        host, port: UDP address to answer on (media port: `port + 2000`, unused).
        netns: namespace to run in; None for the current one.
        workdir: where scenario and logs go (must exist).
        hangup_after_ms: after the ACK, wait this long and send BYE; None: wait for a BYE.
        """
        super().__init__(name, host, port, netns=netns, workdir=workdir)
        self.hangup_after_ms = hangup_after_ms

    @property
    def uri(self) -> str:
        """Where a PBX route should send calls for this peer."""
        return f"sip:{self.host}:{self.port}"

    def start(self) -> None:
        """Write the scenario and start sipp; returns once its port is bound.

        Raises:
            LabError: already running, port taken, or sipp exited at start.
        """
        self._start(render_uas(self.hangup_after_ms), [])


class SippCaller(_SippPeer):
    """sipp UAC: one call to `target` through a PBX, hung up after `hangup_after_ms`."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        target: str,
        via: tuple[str, int],
        netns: str | None,
        workdir: Path,
        hangup_after_ms: int | None,
    ) -> None:
        """Args:
        name: label for files.
        host, port: local UDP address of the caller.
        target: the request URI, e.g. `sip:1001@192.0.2.11`.
        via: the PBX (ip, port) the INVITE is sent to.
        netns: namespace to run in; workdir: where files go.
        hangup_after_ms: BYE this long after the ACK; None: wait for the callee's BYE.
        """
        super().__init__(name, host, port, netns=netns, workdir=workdir)
        self.target, self.via, self.hangup_after_ms = target, via, hangup_after_ms

    def start(self) -> None:
        """Start sipp placing exactly one call (`-m 1`); it exits when the call ends.

        Raises:
            LabError: already running, port taken, or sipp exited at start.
        """
        remote = f"{self.via[0]}:{self.via[1]}"
        self._start(render_uac(self.target, self.hangup_after_ms), ["-m", "1", remote])

    def wait(self, timeout_s: float) -> int:
        """Wait until the call is over and sipp exited; its exit status (0: call passed).

        Raises:
            LabError: still running after `timeout_s`.
        """
        if self._proc is None:
            raise LabError(f"sipp {self.name}: not started")
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"sipp {self.name}: call not over after {timeout_s} s") from exc
