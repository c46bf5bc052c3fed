"""A Kamailio PBX for the lab: registrar, digest auth, presence/BLF, calls, TCP/TLS (SPEC §8).

Owns: starting one Kamailio in the foreground in its own process group (optionally inside
a network namespace) with a config from `phonelab.kamailio_cfg`, waiting until *it*
answers, freezing/thawing/stopping it by PID, reading what it saw (requests from its log,
contacts from its location table through the `ctl` unix socket and `kamcmd`), publishing
BLF states for an extension (a trusted PUBLISH from inside its namespace), and making it
originate a PBX's "Force Update" (a check-sync NOTIFY to a registered contact, through
tm's `tm.t_uac_wait_block` RPC, see `phonelab.kamctl`).
Must not touch: any other Kamailio. A second Kamailio on the same ip:port starts silently
and both answer (STACK-NOTES), so `start()` refuses a port that is already taken and only
counts as ready once its own log shows its own readiness OPTIONS.

Real-PBX features are keyword options (`users`, `trusted`, `presence`, `routes`, `tcp`,
`tls`, see `PbxFeatures`); raw `ConfigExtensions` still plug in on top of them.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from phonelab.errors import LabError
from phonelab.kamailio_cfg import (
    BASE_MODULES,
    CHECK_SYNC_CALL_ID,
    TLS_PORT,
    ConfigExtensions,
    PbxFeatures,
    render_config,
    render_tls_cfg,
    write_db,
)
from phonelab.kamctl import UlContact, kamcmd, parse_contacts, parse_uac_reply
from phonelab.netns import netns_socket, port_in_use, signal_group
from phonelab.procs import LabProcess
from phonelab.sipreq import (
    check_sync_headers,
    dialog_info_xml,
    publish_request,
    response_status,
    split_message,
)
from phonelab.tls import TlsFiles

__all__ = [
    "BASE_MODULES", "TLS_PORT", "ConfigExtensions", "KamailioPbx", "PbxFeatures", "UlContact",
    "free_udp_port", "options_request", "options_round_trip", "render_config",
]  # fmt: skip

_READY_PREFIX = "lab-ready-"
_SHUTDOWN_MARKERS = ("Thank you for flying", "terminating due to", "signal 15 received")
_CTL_READY = "io_listen_loop"  # logged by the ctl process, the last child to start
_REQ_LINE = re.compile(r"REQ (\S+ from \S+ \S+)\s*$")
#: kamcmd's deadline beyond a check-sync's own: t_uac_wait_block polls every 100 ms.
_UAC_MARGIN_S = 2.0


def options_request(host: str, port: int, local: tuple[str, int], call_id: str) -> bytes:
    """A minimal OPTIONS to `host:port` sent from `local` (lab readiness probe)."""
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:lab@{local[0]}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def options_round_trip(
    netns: str | None, host: str, port: int, call_id: str, timeout_s: float
) -> bytes | None:
    """Send one OPTIONS from a connected socket in `netns`; the reply, or None.

    A refused port (ICMP unreachable) and a silent one both give None.
    """
    with netns_socket(netns) as sock:
        sock.connect((host, port))
        sock.settimeout(timeout_s)
        try:
            sock.send(options_request(host, port, sock.getsockname(), call_id))
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


class KamailioPbx(LabProcess):
    """One lab Kamailio: registrar + OPTIONS responder on UDP `host:port`, and more.

    With `users`: digest auth (401 for REGISTER, 407 for INVITE/SUBSCRIBE/PUBLISH, 403 for
    a wrong password). With `presence`: SUBSCRIBE/PUBLISH for Event dialog and presence.
    INVITEs go to `routes[ext]` or the registered contact, record-routed. With `tcp` or
    `tls`: TCP on `port`, TLS on 5061 (`TLS_PORT`).
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 5060,
        *,
        workdir: Path,
        netns: str | None = None,
        extensions: ConfigExtensions | None = None,
        users: Mapping[str, str] | None = None,
        trusted: Sequence[str] = (),
        presence: bool = False,
        routes: Mapping[str, str] | None = None,
        record_route: bool = True,
        tcp: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        """Args:
        name: label for files and logs (`<workdir>/<name>.cfg`, `<name>.log`).
        host: IP address to listen on (any 127.x works on loopback without setup).
        port: UDP port.
        workdir: where the config and log go (must exist).
        netns: namespace to run in; None for the current one.
        extensions: raw config additions, applied after the features below.
        users: username -> password for digest auth (realm = `host`); None: no auth.
        trusted: source IPs never challenged (call peers); `host` itself always is.
        presence: serve SUBSCRIBE/PUBLISH for `Event: dialog` and `Event: presence`.
        routes: extension -> SIP URI (e.g. a sipp call peer) for INVITEs to it.
        record_route: Record-Route INVITEs so in-dialog requests pass through here.
        tcp: also listen on TCP `port`.
        tls: also listen on TCP `port` and TLS 5061 with these files.
        """
        self.name, self.host, self.port, self.netns = name, host, port, netns
        self.workdir = Path(workdir)
        self.extensions = extensions
        self.features = PbxFeatures(
            users=dict(users) if users is not None else None,
            trusted=tuple(trusted),
            presence=presence,
            routes=dict(routes or {}),
            record_route=record_route,
            tcp=tcp,
            tls=tls,
        )
        self._etags: dict[str, str] = {}
        self._publish_version = 0
        self.config_path = self.workdir / f"{name}.cfg"
        self.log_path = self.workdir / f"{name}.log"
        self.start_time_ms: float | None = None  #: spawn -> first answer, last start
        self._rundir: Path | None = None
        self._log_offset = 0
        self._frozen = False

    def start(self, timeout_s: float = 5.0) -> None:
        """Render the config, start Kamailio and wait until it answers an OPTIONS.

        Raises:
            LabError: already running, port taken, Kamailio exited, or no answer in time.
        """
        if self.running:
            raise LabError(f"kamailio {self.name}: already running (pid {self.pid})")
        if port_in_use(self.netns, self.host, self.port):
            raise LabError(f"kamailio {self.name}: udp {self.host}:{self.port} already in use")
        # unix socket paths are limited to 108 bytes: keep ctl out of a deep workdir.
        self._rundir = Path(tempfile.mkdtemp(prefix=f"phl-{self.name[:12]}-"))
        self._etags.clear()
        self.config_path.write_text(self._render(self._rundir / "ctl.sock"))
        self._log_offset = len(self._log_text())
        argv = ["kamailio", "-DD", "-E", "-f", str(self.config_path)]
        argv += ["-P", str(self._rundir / "kamailio.pid"), "-Y", str(self._rundir)]
        argv += ["-w", str(self._rundir), "-m", "32", "-M", "8", "-n", "2"]
        started = time.monotonic()
        self._spawn(argv)
        try:
            self._wait_ready(started, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _render(self, ctl: Path) -> str:
        """The config text (db_text tables and tls.cfg are written next to it)."""
        dbdir = self.workdir / f"{self.name}-db"
        tls_cfg = self.workdir / f"{self.name}-tls.cfg"
        feats = self.features
        if feats.users is not None or feats.presence:
            write_db(dbdir, self.host, feats.users, feats.presence)
        if feats.tls is not None:
            tls_cfg.write_text(render_tls_cfg(feats.tls))
        return render_config(
            self.host, self.port, ctl, self.extensions, features=feats, dbdir=dbdir, tls_cfg=tls_cfg
        )

    def _wait_ready(self, started: float, timeout_s: float) -> None:
        deadline = started + timeout_s
        attempt = 0
        while time.monotonic() < deadline:
            if not self.running:
                raise LabError(f"kamailio {self.name}: exited at start: {self.log_tail()}")
            attempt += 1
            call_id = f"{_READY_PREFIX}{self.name}-{attempt}-{uuid.uuid4().hex[:8]}"
            reply = options_round_trip(self.netns, self.host, self.port, call_id, 0.05)
            if reply is not None and reply.startswith(b"SIP/2.0 200") and self._saw(call_id):
                self.start_time_ms = (time.monotonic() - started) * 1000.0
                return
            if reply is None:
                time.sleep(0.005)  # a refused send returns at once: pace the next try
        raise LabError(f"kamailio {self.name}: no answer within {timeout_s} s: {self.log_tail()}")

    def _saw(self, call_id: str) -> bool:
        """Our own log shows our OPTIONS, and the last child (ctl) has started.

        Stopping Kamailio while a child is still starting made it hang for seconds on
        shutdown (measured: 2 stops in 60 right after the first answer), hence the ctl line.
        """
        since_start = self._log_text()[self._log_offset :]
        return f" {call_id}\n" in since_start and _CTL_READY in since_start

    def stop(self, timeout_s: float = 3.0) -> int | None:
        """Stop Kamailio (SIGTERM, wait, SIGKILL); idempotent.

        Returns:
            Its exit status, or None when it was not started.
        """
        if self._frozen and self.running:
            self.thaw()
        self._frozen = False
        status = self._stop_child(timeout_s, resend=self._term_lost)
        if self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
            self._rundir = None
        return status

    def _term_lost(self) -> bool:
        """Whether Kamailio has not begun to shut down after our SIGTERM.

        Kamailio's main process keeps one pending-signal slot: a SIGTERM arriving while it
        handles a SIGCHLD (e.g. right after a thaw) is lost and it sleeps on (measured:
        nearly every stop right after freeze/thaw). A second SIGTERM during the shutdown
        itself can deadlock it, so resend only while no shutdown line is in the log.
        """
        since_start = self._log_text()[self._log_offset :]
        return not any(marker in since_start for marker in _SHUTDOWN_MARKERS)

    def freeze(self) -> None:
        """SIGSTOP the whole process group: the port stays bound but nothing answers."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT the process group after `freeze()`."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def _signal(self, signum: int) -> None:
        if self._proc is None or not self.running:
            raise LabError(f"kamailio {self.name}: not running")
        signal_group(self._proc, signum)

    def registrations(self, timeout_s: float = 2.0) -> list[str]:
        """Contact URIs in the location table, for every AOR (`kamcmd ul.dump`).

        Raises:
            LabError: not running, or kamcmd failed (a frozen Kamailio times out).
        """
        return [contact.address for contact in self.contacts(timeout_s=timeout_s)]

    def contacts(self, ext: str | None = None, *, timeout_s: float = 2.0) -> list[UlContact]:
        """The location table's contacts (of extension `ext` only, when given).

        Raises:
            LabError: not running, or kamcmd failed (a frozen Kamailio times out).
        """
        found = parse_contacts(self._ctl("ul.dump", timeout_s=timeout_s))
        return [c for c in found if ext is None or c.aor == ext]

    def send_check_sync(self, ext: str, *, reboot: bool = False, timeout_s: float = 2.0) -> int:
        """Make Kamailio send `ext` a check-sync NOTIFY, like a PBX's Force Update (SPEC §7).

        What FreePBX's `pjsip send notify` does: Kamailio's tm originates an out-of-dialog
        NOTIFY (`Event: check-sync`, or `check-sync;reboot=true`; From this PBX, To
        `sip:<ext>@<host>`, `Subscription-State: terminated`, no body) from this PBX's
        socket to the contact `ext` registered (the most recently saved one; a NAT-fixed
        contact at its received address), retransmitting over UDP until answered.

        Args:
            ext: the extension (AOR) to notify; it must be registered here.
            reboot: ask the phone to restart instead of only re-fetching.
            timeout_s: how long the phone has to answer; then tm gives up with 408.

        Returns:
            The final response code: the phone's (200, 403, ...), or tm's 408.

        Raises:
            LabError: not running, `ext` not registered, or kamcmd failed.
        """
        known = sorted(self.contacts(ext), key=lambda c: c.last_modified)
        if not known:
            raise LabError(f"kamailio {self.name}: check-sync: {ext} is not registered")
        contact = known[-1]
        fr_ms = max(1, round(timeout_s * 1000))  # rule 5 of kamailio_cfg: tm's timeout
        call_id = f"{CHECK_SYNC_CALL_ID}.{fr_ms}.{uuid.uuid4().hex}"
        headers = check_sync_headers(ext, (self.host, self.port), reboot=reboot, call_id=call_id)
        params = ("NOTIFY", contact.address, contact.received or ".", ".", headers, "")
        out = self._ctl("tm.t_uac_wait_block", *params, timeout_s=timeout_s + _UAC_MARGIN_S)
        return parse_uac_reply(out).code

    def _ctl(self, method: str, *params: str, timeout_s: float) -> str:
        """One RPC on this Kamailio's ctl socket (`phonelab.kamctl.kamcmd`)."""
        if self._rundir is None or not self.running:
            raise LabError(f"kamailio {self.name}: not running")
        try:
            return kamcmd(self._rundir / "ctl.sock", method, *params, timeout_s=timeout_s)
        except LabError as exc:
            raise LabError(f"kamailio {self.name}: {exc}") from exc

    def requests(self, *, include_lab: bool = False) -> list[str]:
        """Requests received so far, as `<METHOD> from <ip>:<port> <call-id>`, oldest first.

        The log, hence this list, spans every start of this object (a restart keeps the
        history). The readiness OPTIONS `start()` sends (Call-IDs `lab-ready-...`) are
        left out unless `include_lab`.
        """
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        found = [m.group(1) for m in map(_REQ_LINE.search, text.splitlines()) if m]
        return [r for r in found if include_lab or f" {_READY_PREFIX}" not in r]

    def publish_dialog(self, ext: str, state: str, timeout_s: float = 2.0) -> None:
        """Publish BLF `state` (idle|ringing|busy) of `sip:<ext>@<host>`; wait for its 200.

        Sent from `host` itself inside the PBX namespace (trusted: no challenge). Later
        publishes for the same extension refresh the same publication (SIP-If-Match), so
        watchers see only the latest state.

        Raises:
            LabError: bad state, not running, no answer in time, or not 200.
        """
        if not self.running:
            raise LabError(f"kamailio {self.name}: not running")
        self._publish_version += 1
        aor = f"sip:{ext}@{self.host}"
        body = dialog_info_xml(aor, state, self._publish_version)
        with netns_socket(self.netns) as sock:
            sock.bind((self.host, 0))
            sock.connect((self.host, self.port))
            sock.settimeout(timeout_s)
            etag = self._etags.get(ext)
            sock.send(publish_request(aor, sock.getsockname(), body, etag=etag))
            reply = self._final_reply(sock, timeout_s)
        status = response_status(reply)
        if status != 200:
            raise LabError(f"kamailio {self.name}: PUBLISH {ext} {state} -> {status}")
        self._etags[ext] = split_message(reply)[1].get("sip-etag", "")

    def _final_reply(self, sock: socket.socket, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                reply = sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError) as exc:
                raise LabError(f"kamailio {self.name}: no answer to PUBLISH") from exc
            status = response_status(reply)
            if status is not None and status >= 200:
                return reply

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of Kamailio's log, for error messages."""
        return self._tail(lines)


def free_udp_port(netns: str | None, host: str) -> int:
    """A UDP port on `host` that nothing holds right now (for loopback demos)."""
    with netns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
