"""`phoned demo` (SPEC §8): the phone against two Kamailio PBXs on loopback.

Owns: the demo's story — start a primary and a backup PBX, start the phone as a child
process, stop the primary, watch the failover, bring the primary back, watch the failback —
and the timeline printed on the terminal. Must not touch: the service's internals; it
reads only what an installer would: the service's log lines and `phoned status`.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from phoned.device.display import to_ansi
from phoned.logfmt import parse
from phoned.service import control
from phoned.service.status import render_text
from phonelab.errors import LabError
from phonelab.kamailio import KamailioPbx

PRIMARY = ("127.0.0.11", 5060)
BACKUP = ("127.0.0.12", 5060)
PHONE_PORT = 5062
_SHOWN = {"use_server", "registration", "service", "probe_failed", "blf", "started"}

CONFIG = """\
[account]
username = "1001"
password = "demo-secret"

[server]
address = "{primary}"
port = {primary_port}

[redundancy]
backup_destination = true
backup_destination_address = "{backup}"
backup_destination_port = {backup_port}
sip_keep_alive_interval = {interval}

[sip]
local_port = {phone_port}

[blf]
keys = ["1002", "1003"]

[board]
profile = "emulated"

[service]
control_socket = "{workdir}/control.sock"
state_dir = "{workdir}"
"""


class PhoneProcess:
    """`phoned run` as a child process whose log lines arrive on a queue."""

    def __init__(self, config: Path) -> None:
        argv = [sys.executable, "-m", "phoned", "run", "--config", str(config)]
        argv += ["--log-level", "debug"]  # every probe sent, for the offsets
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.t0 = time.monotonic()
        self._attempt_1: dict[tuple[str, str], float] = {}  # (server, cycle) -> when
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr or ():
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, what: Callable[[dict[str, str]], bool], timeout_s: float) -> None:
        """Print the timeline until a log line matches `what`."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            fields = parse(line)
            shown = self._shown(fields, time.monotonic())
            if shown is not None:
                print(f"  +{time.monotonic() - self.t0:7.3f} s  {shown or _message(line)}")
            if what(fields):
                return
        raise LabError(f"demo: the phone did not get there within {timeout_s:.0f} s")

    def _shown(self, fields: dict[str, str], now: float) -> str | None:
        """What the timeline says of a log line: None to skip it, "" for its message."""
        event = fields.get("event")
        if event == "probe_sent":
            key = (fields.get("server", ""), fields.get("cycle", ""))
            if fields.get("attempt") == "1":
                self._attempt_1[key] = now
                return None
            offset_ms = (now - self._attempt_1.get(key, now)) * 1000
            return f"probe: OPTIONS #{fields.get('attempt')} to {key[0]} at +{offset_ms:.0f} ms"
        if event == "cycle":
            return "" if fields.get("up") == "false" else None
        return "" if event in _SHOWN else None

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _message(line: str) -> str:
    text = line.split(": ", 1)[-1] if " phoned" in line else line
    return text.split(" event=", 1)[0]


def _registered(server: str) -> Callable[[dict[str, str]], bool]:
    return lambda f: (
        f.get("event") == "registration"
        and f.get("state") == "registered"
        and (f.get("server") == server)
    )


def run_demo(interval_s: int = 2) -> int:
    """Run the whole story; 0 when the phone failed over and back as it should."""
    workdir = Path(tempfile.mkdtemp(prefix="phoned-demo-"))
    primary = KamailioPbx("primary", *PRIMARY, workdir=workdir, presence=True)
    backup = KamailioPbx("backup", *BACKUP, workdir=workdir, presence=True)
    config = workdir / "phoned.toml"
    config.write_text(
        CONFIG.format(
            primary=PRIMARY[0],
            primary_port=PRIMARY[1],
            backup=BACKUP[0],
            backup_port=BACKUP[1],
            interval=interval_s,
            phone_port=PHONE_PORT,
            workdir=workdir,
        )
    )
    os.chmod(config, 0o600)
    print(f"demo: PBXs primary {PRIMARY[0]} and backup {BACKUP[0]} (Kamailio) on loopback")
    with primary, backup:  # both started here, stopped on the way out
        phone = PhoneProcess(config)
        try:
            _story(phone, primary, interval_s, str(workdir / "control.sock"))
        finally:
            code = phone.stop()
    frames = sorted((workdir / "frames").glob("frame-*.png"))
    print(f"demo: phone stopped (exit {code}); its display's {len(frames)} frames are PNGs in")
    print(f"      {workdir / 'frames'} (logs in {workdir})")
    return 0 if code == 0 else 1


def _story(phone: PhoneProcess, primary: KamailioPbx, interval_s: int, sock: str) -> None:
    budget = interval_s * 3 + 10
    print("demo: phone starting")
    phone.wait_for(_registered("primary"), budget)
    phone.wait_for(lambda f: f.get("event") == "cycle" and f.get("server") == "backup", budget)
    _show_phone(sock, "the phone on its primary PBX")
    print("\ndemo: >>> stopping the primary PBX")
    primary.stop()
    phone.wait_for(_registered("backup"), budget)
    _show_phone(sock, "failed over: the phone on the BACKUP")
    print("\ndemo: >>> starting the primary PBX again")
    primary.start()
    phone.wait_for(_registered("primary"), budget)
    phone.wait_for(lambda f: f.get("event") == "registration" and f.get("server") == "backup", 5)
    _show_phone(sock, "failed back: the phone on its primary again")
    print("\ndemo: failed over and back; stopping")


def _show_phone(sock: str, title: str) -> None:
    """The phone's display as it is now (its last PNG frame, drawn in the terminal), and
    what `phoned status` says."""
    status = control.request(sock, "status")
    print(f"\n  --- {title} ---")
    frame = status.get("device", {}).get("last_frame")
    if frame and sys.stdout.isatty():
        with Image.open(frame) as image:
            print(to_ansi(image.convert("RGB")))
    elif frame:
        print(f"    (display frame: {frame})")
    print(_indent(render_text(status)))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
