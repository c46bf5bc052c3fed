"""New settings reach a running phone without a restart (issue 10: the change path).

`phoned run` in the lab; its settings file is rewritten and the service told to re-read it
(`phoned resync`, or SIGHUP), then the change is judged on the wire: the OPTIONS grid
moves to the new interval from the next cycle, a BLF key added gets its SUBSCRIBE while the
kept one keeps its lamp, and a bad file changes nothing. Force Update (issue 11) puts the
PBX's NOTIFY and the fetched file on top of this same path.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable

from conftest import StartPhone
from test_service import registered

from phonelab.capture import Capture
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, poll_until
from phonelab.phone import RunningPhone, SettingsTables, sip_from_phone, write_config

MakePbx = Callable[..., KamailioPbx]
OLD_KEYS = ["1002"]
NEW_KEYS = ["1002", "1003"]


def settings(users: dict[str, str], keys: list[str]) -> SettingsTables:
    """The lab account with its PBX password, watching `keys`."""
    return {"account": {"password": users["1001"]}, "blf": {"keys": keys}}


def rewrite(phone: RunningPhone, users: dict[str, str], *, interval: int, keys: list[str]) -> None:
    """The phone's settings file as the next apply will read it."""
    write_config(phone.workdir, interval=interval, settings=settings(users, keys))


def options_times(capture: Capture, since: float) -> list[float]:
    """When the phone sent each OPTIONS to the primary after `since` (kernel timestamps)."""
    return [p.ts for p in sip_from_phone(capture.packets(), PBX1_IP, "OPTIONS") if p.ts > since]


def subscribed_keys(capture: Capture) -> list[str]:
    """The extensions of every SUBSCRIBE the phone sent to the primary, in order."""
    found = []
    for packet in sip_from_phone(capture.packets(), PBX1_IP, "SUBSCRIBE"):
        request_line = packet.payload.split(b"\r\n", 1)[0].decode()
        found.append(request_line.split("sip:", 1)[1].split("@", 1)[0])
    return found


def test_interval_and_blf_keys_change_live_and_show_on_the_wire(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    primary = make_pbx("pbx1", users=pbx_users, presence=True)
    make_pbx("pbx2", users=pbx_users, presence=True)
    phone = start_phone(settings=settings(pbx_users, OLD_KEYS))
    registered(phone, "primary")
    primary.publish_dialog("1002", "busy")
    phone.wait_status(lambda s: s["blf"] == {"1002": "busy"}, timeout_s=5)
    assert "1003" not in subscribed_keys(capture_phone)
    pid = phone.proc.pid

    rewrite(phone, pbx_users, interval=4, keys=NEW_KEYS)
    done = phone.cli("resync")
    assert done.returncode == 0, done.stderr
    assert "applied (redundancy, blf)" in done.stdout
    applied_at = max(p.ts for p in capture_phone.packets())

    # BLF: the new key is subscribed on the server in use and gets its lamp; the kept key
    # shows its state again (fresh subscriptions, STACK-NOTES).
    poll_until(lambda: "1003" in subscribed_keys(capture_phone), timeout_s=3)
    phone.wait_status(lambda s: s["blf"] == {"1002": "busy", "1003": "idle"}, timeout_s=5)
    # The grid: from the next cycle on, OPTIONS every 4 s (SPEC §7), no burst of probes.
    poll_until(lambda: len(options_times(capture_phone, applied_at)) >= 4, timeout_s=16)
    times = options_times(capture_phone, applied_at)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(abs(gap - 4.0) < 0.05 for gap in gaps[1:]), gaps
    assert gaps[0] <= 4.05, gaps
    status = phone.status()
    assert status["keepalive"]["interval_s"] == 4
    assert status["active"] == "primary"
    assert status["servers"]["primary"]["registration"] == "registered"
    assert phone.proc.pid == pid
    assert phone.proc.poll() is None
    [event] = phone.events("config", result="applied")
    assert event["changed"] == "redundancy,blf"


def test_a_bad_file_is_rejected_by_sighup_and_nothing_changes(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    make_pbx("pbx1", users=pbx_users, presence=True)
    make_pbx("pbx2", users=pbx_users, presence=True)
    phone = start_phone(settings=settings(pbx_users, OLD_KEYS))
    registered(phone, "primary")
    text = phone.config.read_text()
    phone.config.write_text(
        text.replace("sip_keep_alive_interval = 2", "sip_keep_alive_interval = 0")
    )

    phone.proc.send_signal(signal.SIGHUP)
    rejected = phone.wait_event("config", 5, result="rejected")
    assert "sip_keep_alive_interval must be 1..3600, got 0" in rejected["reason"]
    assert phone.status()["keepalive"]["interval_s"] == 2
    before = max(p.ts for p in capture_phone.packets())
    poll_until(lambda: len(options_times(capture_phone, before)) >= 3, timeout_s=8)
    times = options_times(capture_phone, before)
    assert all(abs((b - a) - 2.0) < 0.05 for a, b in itertools.pairwise(times))
    done = phone.cli("resync")  # the same file through the control socket: refused too
    assert done.returncode == 1
    assert "sip_keep_alive_interval must be 1..3600, got 0" in done.stderr
    assert phone.proc.poll() is None
