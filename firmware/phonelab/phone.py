"""The phone under test: `phoned run` started in the lab's phone namespace.

Owns: the phone process of tests and benchmarks, its settings file and log. Must not
touch: the service's internals.

Tests judge it the way the acceptance lab does: from the packets it puts on the wire
(captured in its namespace), from `phoned status` over its control socket, and from its
structured log lines. Nothing here reaches into the service's internals.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from phoned.errors import ControlError
from phoned.logfmt import parse
from phoned.service import control_client
from phonelab.errors import LabError
from phonelab.netns import PBX1_IP, PBX2_IP, PHONE_IP, Lab, poll_until
from phonelab.pcap import Packet, sip_summary

#: A TOML value `write_config` can render.
TomlValue = str | int | bool | Sequence[str] | Mapping[str, "TomlValue"]
#: Settings by table, then key: `{"redundancy": {"outbound_proxy": "192.0.2.21"}}`.
SettingsTables = Mapping[str, Mapping[str, TomlValue]]


def base_settings(workdir: Path, **overrides: object) -> dict[str, dict[str, TomlValue]]:
    """The lab phone's settings: account 1001, primary pbx1, backup pbx2, 2 s cycles.

    Keyword arguments (the issue-2 knobs): `primary`, `backup`, `backup_enabled` ("true"
    or "false", or a bool), `interval`, `failback_cycles`, `workdir`.
    """
    values: dict[str, object] = {
        "primary": PBX1_IP,
        "backup": PBX2_IP,
        "backup_enabled": "true",
        "interval": 2,
        "failback_cycles": 1,
        "workdir": workdir,
    }
    unknown = set(overrides) - set(values)
    if unknown:
        raise LabError(f"write_config: unknown override(s) {sorted(unknown)}")
    values.update(overrides)
    return {
        "account": {"username": "1001", "password": "lab-secret"},
        "server": {"address": str(values["primary"])},
        "redundancy": {
            "backup_destination": str(values["backup_enabled"]).lower() == "true",
            "backup_destination_address": str(values["backup"]),
            "sip_keep_alive_interval": int(str(values["interval"])),
            "failback_cycles": int(str(values["failback_cycles"])),
        },
        "service": {
            "control_socket": f"{values['workdir']}/control.sock",
            "state_dir": str(values["workdir"]),
        },
    }


def render_toml(tables: SettingsTables) -> str:
    """TOML text of tables (strings, integers, booleans, lists of strings, inline tables)."""
    chunks = []
    for table, keys in tables.items():
        lines = [f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in keys.items())]
        chunks.append("\n".join(lines) + "\n")
    return "\n".join(chunks)


def _toml(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, Mapping):  # an inline table, e.g. an app with a backup_url
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def write_config(
    workdir: Path, *, settings: SettingsTables | None = None, **overrides: object
) -> Path:
    """A settings file for the lab's addresses, written to `workdir/phoned.toml`.

    `overrides` are `base_settings`' knobs; `settings` then adds or replaces keys per
    table (e.g. `{"sip": {"auto_answer": True}, "blf": {"keys": ["1002"]}}`).
    """
    tables = base_settings(workdir, **overrides)
    for table, keys in (settings or {}).items():
        tables.setdefault(table, {}).update(keys)
    path = workdir / "phoned.toml"
    path.write_text(render_toml(tables))
    return path


class RunningPhone:
    """One `phoned run` process in the phone namespace, its log in a file."""

    def __init__(self, lab: Lab, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.log_path = workdir / "phoned.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "phoned", "run", "--config", str(config)]
        self.proc = lab.popen(lab.phone, [*argv, "--log-level", "debug"], stderr=self._log)
        self.control_socket = str(workdir / "control.sock")

    def lines(self) -> list[str]:
        """Every log line so far."""
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, name: str, **fields: str) -> list[dict[str, str]]:
        """Structured log records with `event=name` and the given field values."""
        records = [parse(line) for line in self.lines()]
        return [
            r
            for r in records
            if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, name: str, timeout_s: float, **fields: str) -> dict[str, str]:
        """Wait until a log record `event=name` with these fields appears; return it."""

        def found() -> dict[str, str] | None:
            if self.proc.poll() is not None:
                raise LabError(f"phoned exited {self.proc.returncode}:\n{self.tail()}")
            matches = self.events(name, **fields)
            return matches[0] if matches else None

        try:
            return poll_until(found, timeout_s=timeout_s, interval_s=0.02)
        except TimeoutError:
            message = f"no event={name} {fields} in {timeout_s} s:\n{self.tail()}"
            raise LabError(message) from None

    def wait_more_cycles(self, count: int, interval_s: float) -> None:
        """Wait until `count` more cycles are judged for the primary (`event=cycle`): at
        most one interval each, one more for the cycle in flight, and 3 s."""
        done = len(self.events("cycle", server="primary"))
        self.wait_count("cycle", done + count, (count + 1) * interval_s + 3, server="primary")

    def wait_count(self, name: str, count: int, timeout_s: float, **fields: str) -> None:
        """Wait until at least `count` log records `event=name` with these fields exist."""
        try:
            poll_until(
                lambda: len(self.events(name, **fields)) >= count,
                timeout_s=timeout_s,
                interval_s=0.05,
            )
        except TimeoutError:
            found = len(self.events(name, **fields))
            message = f"{found} of {count} event={name} {fields} in {timeout_s} s:\n{self.tail()}"
            raise LabError(message) from None

    def cli(self, *args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run `phoned <args> --config <this phone's settings>` to completion (any exit code).

        The CLI talks to the service over the control socket (a file): it runs here, not
        in the phone namespace.
        """
        argv = [sys.executable, "-m", "phoned", *args, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)

    def status(self) -> dict[str, Any]:
        """`phoned status --json`, through the control socket."""
        return control_client.request(self.control_socket, "status")

    def wait_status(self, check: Callable[[dict[str, Any]], bool], timeout_s: float) -> None:
        """Wait until the status satisfies `check`."""

        def ready() -> bool:
            try:
                return check(self.status())
            except ControlError:
                return False

        try:
            poll_until(ready, timeout_s=timeout_s, interval_s=0.05)
        except TimeoutError:
            message = f"status never matched; last: {self._last_status()}"
            raise LabError(message) from None

    def _last_status(self) -> object:
        try:
            return self.status()
        except ControlError as exc:
            return exc

    def stop(self, timeout_s: float = 5.0) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code, time.monotonic() - started

    def tail(self, count: int = 40) -> str:
        """The last log lines, for failure messages."""
        return "\n".join(self.lines()[-count:])


def sip_from_phone(
    packets: list[Packet], dst: str, method: str, *, dport: int = 5060
) -> list[Packet]:
    """Requests `method` sent by the phone over UDP to `dst:dport`, in capture order."""
    found = []
    for packet in packets:
        if packet.src != PHONE_IP or packet.dst != dst or packet.dport != dport:
            continue
        summary = sip_summary(packet.payload)
        if summary is not None and summary.method == method:
            found.append(packet)
    return found
