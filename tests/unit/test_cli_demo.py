"""`phoned demo`: without the lab it says so; with it, what it prints of the Force Update.

The Force Update part (`phonelab.demo_provisioning`) runs here against fakes of the PBX,
the endpoint manager and `phoned status`; the fake PBX's check-sync makes the phone's log
lines appear as the real phone logs them, with the phone's own timestamps, so the printed
story is checked line by line without Kamailio, nginx or a phone.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from phoned.__main__ import main
from phoned.config.loader import SettingsError
from phoned.config.overlay import parse_layered
from phoned.logfmt import render
from phonelab import demo
from phonelab.demo_phone import PhoneStatus, Timeline
from phonelab.demo_provisioning import (
    BAD_FILE,
    BLF_KEYS,
    NEW_KEY,
    PROV_HOST,
    ForceUpdate,
    PhoneFile,
    find_phone_file,
    free_http_port,
    phone_file_text,
)
from phonelab.errors import LabError
from phonelab.nginx import NginxServer, render_nginx_conf

FILE = PhoneFile("eth0", "02fc00000001")
APPLIED_KEYS = 'redundancy.sip_keep_alive_interval 2 -> 4, blf.keys ["1002", "1003"] -> [...]'
REJECTED = (
    "http://127.0.0.40/02fc00000001.toml:2: redundancy.sip_keep_alive_interval must be "
    "1..3600, got 0"
)


def logged(at_s: float, message: str, **fields: str) -> str:
    """A phone log line as `phoned.logfmt` writes it, stamped `at_s` seconds past 10:00."""
    minutes, seconds = divmod(at_s, 60)
    stamp = f"10:{int(minutes):02d}:{seconds:06.3f}"
    return f"{stamp} INFO phoned: {message} {render({'event': fields.pop('event'), **fields})}"


def cycle(at_s: float, n: int) -> str:
    message = "probe: OPTIONS #1 to primary 127.0.0.11"
    return logged(at_s, message, event="probe_sent", server="primary", cycle=str(n), attempt="1")


class FakeProv:
    """The endpoint manager: what it publishes, what it served."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.served: list[str] = []

    def url(self) -> str:
        return "http://127.0.0.40"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(self, name: str, content: str) -> str:
        self.published.append((name, content))
        return '"1-2"'

    def requests(self) -> list[str]:
        return list(self.served)


class FakePbx:
    """The primary: each check-sync makes the phone log the next script and fetch once."""

    def __init__(self, phone: Timeline, prov: FakeProv, scripts: list[list[str]]) -> None:
        self.phone, self.prov, self.scripts = phone, prov, scripts
        self.received = ["SUBSCRIBE from 127.0.0.1:5062 old-1", "OPTIONS from 127.0.0.1:4 p"]
        self.answer = 200
        self.subscribes: list[str] = []  # what the phone SUBSCRIBEs with each check-sync

    def send_check_sync(self, ext: str) -> int:
        assert ext == "1001"
        if self.answer == 200:
            self.prov.served.append(f"GET /{FILE.name} 200 http inm=yes")
            self.received += self.subscribes
            for line in self.scripts.pop(0):
                self.phone.lines.put(line)
        return self.answer

    def requests(self) -> list[str]:
        return list(self.received)


class FakeStatus(PhoneStatus):
    """`phoned status`: a new frame at each look (the flash drawn), the given facts."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/control.sock")
        self.frames = 10
        self.facts: dict[str, Any] = {"keepalive": {"interval_s": 4.0}}

    def get(self) -> dict[str, Any]:
        self.frames += 1
        return {"device": {"frames": self.frames}, **self.facts}

    def show(self, title: str) -> dict[str, Any]:
        print(f"  --- {title} ---")
        return self.get()


@pytest.fixture
def phone() -> Timeline:
    timeline = Timeline(queue.Queue())
    timeline.lines.put(cycle(100.0, 7))  # the last cycle before the Force Update
    return timeline


def applied_script() -> list[str]:
    return [
        logged(100.2, "check-sync from 127.0.0.11:5060: fetching the settings",
               event="check_sync", result="fetch"),
        logged(100.3, f"config: http://127.0.0.40/{FILE.name} (check-sync) applied: "
               f"{APPLIED_KEYS}", event="config", result="applied", keys=APPLIED_KEYS),
        logged(100.31, f"blf: {NEW_KEY} idle", event="blf", ext=NEW_KEY, state="idle"),
        cycle(102.0, 8),  # the cycle already due: on the old grid
        cycle(106.0, 9),
    ]  # fmt: skip


def rejected_script() -> list[str]:
    return [
        logged(106.1, f"config: http://127.0.0.40/{FILE.name} (check-sync) rejected, nothing "
               f"changed: {REJECTED}", event="config", result="rejected", reason=REJECTED),
        cycle(110.0, 10),
    ]  # fmt: skip


def test_demo_without_the_lab_says_plainly_that_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "phonelab.demo", None)  # import fails as on the image
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "the lab is not installed here" in err
    assert "Traceback" not in err


def test_the_timeline_times_probes_by_the_phones_own_stamps_and_shows_the_grid_asked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    timeline = Timeline(queue.Queue())
    retry = logged(50.8, "probe: OPTIONS #2", event="probe_sent", server="primary",
                   cycle="3", attempt="2")  # fmt: skip
    for line in (cycle(50.0, 3), retry, cycle(52.0, 4)):
        timeline.lines.put(line)
    timeline.wait_for(lambda f: f.get("cycle") == "4", timeout_s=1)
    out = capsys.readouterr().out
    assert "probe: OPTIONS #2 to primary at +800 ms" in out
    assert "after the last cycle's" not in out  # no grid asked for
    assert timeline.gap_s("primary") == pytest.approx(2.0)

    timeline.grid_server = "primary"
    timeline.lines.put(cycle(56.0, 5))
    timeline.wait_for(lambda f: f.get("cycle") == "5", timeout_s=1)
    assert "probe: OPTIONS #1 to primary (cycle 5), 4.000 s after the last cycle's" in (
        capsys.readouterr().out
    )


def test_force_update_prints_the_apply_the_servers_side_and_the_new_grid(
    phone: Timeline, capsys: pytest.CaptureFixture[str]
) -> None:
    prov, status = FakeProv(), FakeStatus()
    pbx = FakePbx(phone, prov, [applied_script()])
    pbx.subscribes = [f"SUBSCRIBE from 127.0.0.1:5062 new-{NEW_KEY}"]
    ForceUpdate(prov, FILE, interval_s=2).apply(phone, pbx, status)

    assert prov.published == [(FILE.name, phone_file_text(4, (*BLF_KEYS, NEW_KEY)))]
    out = capsys.readouterr().out
    story = [
        f"demo: >>> Force Update: the endpoint manager rewrites {FILE.name} (keep-alive every "
        f"4 s, was 2; BLF key {NEW_KEY} added)",
        "demo: the phone answered the check-sync NOTIFY 200",
        "check-sync from 127.0.0.11:5060: fetching the settings",
        f"config: http://127.0.0.40/{FILE.name} (check-sync) applied: {APPLIED_KEYS}",
        f"blf: {NEW_KEY} idle",
        "--- Force Update applied: the display flashes `config applied` (3 s) ---",
        "keepalive: every 4 s",
        f"demo: the endpoint manager served GET /{FILE.name} 200 http inm=yes",
        "demo: the primary PBX received 1 SUBSCRIBE opening a new dialog and 0 in the phone's "
        "existing dialogs",
        "probe: OPTIONS #1 to primary (cycle 8), 2.000 s after the last cycle's",
        "probe: OPTIONS #1 to primary (cycle 9), 4.000 s after the last cycle's",
        "demo: the phone's OPTIONS to the primary now go 4.000 s apart (every 2 s before)",
    ]
    at = [out.find(line) for line in story]
    assert -1 not in at, [line for line, where in zip(story, at, strict=True) if where < 0]
    assert at == sorted(at)  # in the order of the story


def test_a_bad_file_prints_config_rejected_and_that_nothing_changed(
    phone: Timeline, capsys: pytest.CaptureFixture[str]
) -> None:
    prov, status = FakeProv(), FakeStatus()
    pbx = FakePbx(phone, prov, [applied_script(), rejected_script()])
    force = ForceUpdate(prov, FILE, interval_s=2)
    force.apply(phone, pbx, status)
    capsys.readouterr()
    status.facts.update(blf={"1002": "idle", "1003": "idle", NEW_KEY: "idle"},
                        config={"last_result": "rejected"})  # fmt: skip

    force.reject(phone, pbx, status)
    assert prov.published[-1] == (FILE.name, BAD_FILE)
    out = capsys.readouterr().out
    story = [
        f"demo: >>> a bad file: the endpoint manager publishes {FILE.name} with "
        "sip_keep_alive_interval = 0",
        "demo: the phone answered the check-sync NOTIFY 200",
        f"rejected, nothing changed: {REJECTED}",
        "--- bad file rejected: the display flashes `config rejected` (3 s) ---",
        "keepalive: every 4 s",
        f"demo: the endpoint manager served GET /{FILE.name} 200 http inm=yes",
        "demo: the primary PBX received no SUBSCRIBE: the BLF keys are untouched",
        "probe: OPTIONS #1 to primary (cycle 10), 4.000 s after the last cycle's",
        f"demo: nothing changed: OPTIONS still 4.000 s apart, key {NEW_KEY} still watched",
    ]
    at = [out.find(line) for line in story]
    assert -1 not in at, [line for line, where in zip(story, at, strict=True) if where < 0]
    assert at == sorted(at)


def test_a_check_sync_the_phone_refuses_stops_the_demo_with_its_code(phone: Timeline) -> None:
    prov = FakeProv()
    pbx = FakePbx(phone, prov, [])
    pbx.answer = 403
    with pytest.raises(LabError, match="answered the check-sync NOTIFY 403, not 200"):
        ForceUpdate(prov, FILE, interval_s=2).apply(phone, pbx, FakeStatus())


def test_a_phone_whose_keep_alive_stays_put_fails_the_demo(
    phone: Timeline, capsys: pytest.CaptureFixture[str]
) -> None:
    script = applied_script()
    script[-2:] = [cycle(102.0, 8), cycle(104.0, 9), cycle(106.0, 10)]  # still every 2 s
    pbx = FakePbx(phone, FakeProv(), [script])
    with pytest.raises(LabError, match=r"went 2\.000 s apart, not 4 s"):
        ForceUpdate(pbx.prov, FILE, interval_s=2).apply(phone, pbx, FakeStatus())


def test_the_demos_files_mean_what_the_demo_says(tmp_path: Path) -> None:
    force = ForceUpdate(FakeProv(), FILE, interval_s=2)
    local = demo._config_text(tmp_path, 2, force)  # the demo's own config
    assert 'url = "http://127.0.0.40"\nmac_interface = "eth0"' in local

    boot = parse_layered(local, "phoned.toml", phone_file_text(2, BLF_KEYS), "boot.toml")
    assert boot.redundancy.sip_keep_alive_interval == 2
    assert boot.blf.keys == BLF_KEYS
    new = parse_layered(local, "phoned.toml", phone_file_text(4, (*BLF_KEYS, NEW_KEY)), "f")
    assert new.redundancy.sip_keep_alive_interval == 4
    assert new.blf.keys == (*BLF_KEYS, NEW_KEY)
    with pytest.raises(SettingsError, match=r"bad\.toml:2: redundancy\.sip_keep_alive_interval"):
        parse_layered(local, "phoned.toml", BAD_FILE, "bad.toml")


def test_the_phones_file_is_named_by_the_first_interface_with_a_mac(tmp_path: Path) -> None:
    for name, address in [("lo", "00:00:00:00:00:00"), ("wg0", ""), ("wlan0", "b8:27:eb:00:00:02"),
                          ("eth0", "B8:27:EB:12:AB:34")]:  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(address + "\n")
    assert find_phone_file(tmp_path) == PhoneFile("eth0", "b827eb12ab34")
    assert find_phone_file(tmp_path).name == "b827eb12ab34.toml"  # type: ignore[union-attr]


def test_a_machine_with_only_loopback_has_no_file_to_name(tmp_path: Path) -> None:
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "address").write_text("00:00:00:00:00:00\n")
    assert find_phone_file(tmp_path) is None
    assert find_phone_file(tmp_path / "missing") is None


def test_the_endpoint_manager_on_a_high_port_listens_there_and_says_so(tmp_path: Path) -> None:
    assert NginxServer(None, "127.0.0.40", workdir=tmp_path).url() == "http://127.0.0.40"
    server = NginxServer(None, "127.0.0.40", workdir=tmp_path, port=8080)
    assert server.url() == "http://127.0.0.40:8080"
    conf = render_nginx_conf(tmp_path, "127.0.0.40", port=8080)
    assert "listen 127.0.0.40:8080;" in conf
    assert "listen 127.0.0.40:80;" in render_nginx_conf(tmp_path, "127.0.0.40")


def test_a_file_the_phone_rejects_when_it_should_apply_stops_the_demo_with_the_reason(
    phone: Timeline,
) -> None:
    pbx = FakePbx(phone, FakeProv(), [rejected_script()])
    with pytest.raises(LabError, match=r"settings: rejected, not applied: .*got 0"):
        ForceUpdate(pbx.prov, FILE, interval_s=2).apply(phone, pbx, FakeStatus())


def test_the_endpoint_manager_never_takes_a_port_80_that_is_held(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # not root, or held already: 80 is not ours either way
            holder.bind((PROV_HOST, 80))
            holder.listen()
        port = free_http_port(PROV_HOST)
    assert port != 80
    assert NginxServer(None, PROV_HOST, workdir=tmp_path, port=port).url().endswith(f":{port}")


def test_a_machine_without_a_mac_runs_the_demo_without_the_force_update(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "find_phone_file", lambda: None)
    assert demo._force_update(tmp_path, 2) is None
    assert "no network interface with a MAC address" in capsys.readouterr().out
    assert "[provisioning]" not in demo._config_text(tmp_path, 2, None)
