"""The systemd side of the service (SPEC §4): the unit in board/ and the sd_notify protocol."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoned.config.settings import ServiceSettings
from phoned.service import sdnotify

UNIT = Path(__file__).resolve().parents[2] / "board" / "phoned.service"


def directives(text: str) -> dict[str, str]:
    """`Section.Key` -> value of a unit file (later lines win, as in systemd)."""
    found, section = {}, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            found[f"{section}.{key}"] = value
    return found


def test_the_unit_is_a_watched_notify_service_restarted_on_failure() -> None:
    unit = directives(UNIT.read_text())

    assert unit["Service.Type"] == "notify"
    assert unit["Service.WatchdogSec"].endswith("s")
    assert unit["Service.Restart"] == "on-failure"
    assert "phoned run --config /etc/phoned/phoned.toml" in unit["Service.ExecStart"]


def test_the_unit_runs_unprivileged_with_only_the_capabilities_it_needs() -> None:
    unit = directives(UNIT.read_text())

    assert unit["Service.User"] not in {"", "root"}
    wanted = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(unit["Service.AmbientCapabilities"].split()) == wanted
    assert set(unit["Service.CapabilityBoundingSet"].split()) == wanted
    assert unit["Service.ProtectSystem"] == "strict"
    assert unit["Service.NoNewPrivileges"] == "yes"


def test_the_unit_makes_the_default_state_and_socket_directories_writable() -> None:
    unit = directives(UNIT.read_text())
    defaults = ServiceSettings()

    assert f"/var/lib/{unit['Service.StateDirectory']}" == defaults.state_dir
    assert f"/run/{unit['Service.RuntimeDirectory']}" == str(Path(defaults.control_socket).parent)


def test_the_unit_holds_no_secret() -> None:
    text = UNIT.read_text().lower()

    assert "password=" not in text
    assert "privatekey" not in text
    assert "environment=" not in text


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze comes with Debian's systemd"
    unit = tmp_path / "phoned.service"  # the binaries it names are not installed here
    unit.write_text(UNIT.read_text().replace("/usr/bin/phoned", "/bin/true"))

    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(1.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1")
    assert notify_socket.recv(64) == b"READY=1"


def test_the_watchdog_is_pinged_at_half_its_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setattr(sdnotify, "_last_watchdog", 0.0)
    now = [1000.0]
    monkeypatch.setattr("phoned.service.sdnotify.time.monotonic", lambda: now[0])

    sdnotify.watchdog()
    now[0] += 14.9
    sdnotify.watchdog()  # too early: nothing
    now[0] += 0.2
    sdnotify.watchdog()

    assert notify_socket.recv(64) == b"WATCHDOG=1"
    assert notify_socket.recv(64) == b"WATCHDOG=1"
    notify_socket.settimeout(0.05)
    with pytest.raises(TimeoutError):
        notify_socket.recv(64)


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert sdnotify.notify("READY=1") is False
