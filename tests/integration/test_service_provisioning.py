"""Force Update and Rebuild reach a running phone (SPEC §7), judged on the wire.

`phoned run` in the lab, its local file naming the lab's endpoint manager (nginx in the
prov namespace) as `[provisioning] url`; the PBX (Kamailio) sends the check-sync NOTIFY
to the phone's registered contact, as FreePBX's Force Update does. Each test rewrites the
phone's file on the server, then judges what the phone does from the packets, its status
and its log lines.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from conftest import MakeProv, StartPhone
from provisioning_helpers import PHONE_FILE, local_settings, subscribed
from test_service import registered

from phonelab.capture import Capture
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, poll_until
from phonelab.nginx import NginxServer
from phonelab.phone import RunningPhone, render_toml, sip_from_phone

MakePbx = Callable[..., KamailioPbx]


def provisioned(interval: int = 2, keys: tuple[str, ...] = ("1002",)) -> str:
    """The phone's file as the endpoint manager's Rebuild Configs writes it."""
    return render_toml(
        {"redundancy": {"sip_keep_alive_interval": interval}, "blf": {"keys": list(keys)}}
    )


def options_times(capture: Capture, since: float) -> list[float]:
    """When the phone sent each OPTIONS to the primary after `since` (kernel timestamps)."""
    return [p.ts for p in sip_from_phone(capture.packets(), PBX1_IP, "OPTIONS") if p.ts > since]


def subscribed_at_primary(capture: Capture, *, expires_zero: bool = False) -> list[str]:
    """Extensions the phone SUBSCRIBEd to (or un-SUBSCRIBEd from) at the primary."""
    return subscribed(capture.packets(), PBX1_IP, expires_zero=expires_zero)


def dialogs(capture: Capture, ext: str) -> set[bytes]:
    """The Call-IDs of the phone's SUBSCRIBEs to `ext` at the primary (one per dialog)."""
    found = set()
    for packet in sip_from_phone(capture.packets(), PBX1_IP, "SUBSCRIBE"):
        to = re.search(rb"\r\nTo: <?sip:([^@>;]+)@", packet.payload)
        call_id = re.search(rb"\r\nCall-ID: ([^\r]+)", packet.payload)
        if to is not None and call_id is not None and to.group(1) == ext.encode():
            found.add(call_id.group(1))
    return found


def start(
    start_phone: StartPhone, make_pbx: MakePbx, users: dict[str, str], prov: NginxServer
) -> tuple[RunningPhone, KamailioPbx]:
    primary = make_pbx("pbx1", users=users, presence=True)
    make_pbx("pbx2", users=users, presence=True)
    phone = start_phone(settings=local_settings(prov, users["1001"]))
    registered(phone, "primary")
    return phone, primary


def test_boot_fetches_the_file_and_force_update_applies_a_new_one_live(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    prov.publish(PHONE_FILE, provisioned(interval=2, keys=("1002",)))
    phone, primary = start(start_phone, make_pbx, pbx_users, prov)
    poll_until(lambda: "1002" in subscribed_at_primary(capture_phone), timeout_s=5)
    status = phone.status()
    assert status["config"]["source"] == "local + provisioned"
    assert status["config"]["url"] == f"{prov.url()}/{PHONE_FILE}"
    pid = phone.proc.pid

    etag = prov.publish(PHONE_FILE, provisioned(interval=4, keys=("1003",)))
    assert primary.send_check_sync("1001") == 200
    applied = phone.wait_event("config", 5, result="applied", changed="redundancy,blf")
    assert "redundancy.sip_keep_alive_interval 2 -> 4" in applied["keys"]
    assert 'blf.keys ["1002"] -> ["1003"]' in applied["keys"]
    applied_at = max(p.ts for p in capture_phone.packets())

    # BLF: the removed key un-SUBSCRIBEd, the new one SUBSCRIBEd, nothing else.
    poll_until(lambda: "1003" in subscribed_at_primary(capture_phone), timeout_s=3)
    poll_until(
        lambda: "1002" in subscribed_at_primary(capture_phone, expires_zero=True), timeout_s=3
    )
    assert len(dialogs(capture_phone, "1002")) == 1  # never re-subscribed: one dialog
    # The grid: every 4 s from the next cycle, no burst of probes (SPEC §7).
    poll_until(lambda: len(options_times(capture_phone, applied_at)) >= 3, timeout_s=14)
    gaps = [b - a for a, b in itertools.pairwise(options_times(capture_phone, applied_at))]
    assert all(abs(gap - 4.0) < 0.05 for gap in gaps), gaps
    status = phone.status()
    assert status["keepalive"]["interval_s"] == 4
    assert status["config"]["etag"] == etag
    assert status["config"]["last_result"] == "applied"
    assert status["servers"]["primary"]["registration"] == "registered"
    assert phone.proc.pid == pid
    gets = [hit for hit in prov.hits() if hit.path == f"/{PHONE_FILE}"]
    assert len(gets) == 2  # boot, then the one check-sync
    assert gets[1].if_none_match  # conditional GET with the ETag of the boot's file


def test_a_bad_file_is_rejected_and_nothing_changes(
    make_pbx: MakePbx,
    pbx_users: dict[str, str],
    make_prov: MakeProv,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    prov = make_prov()
    prov.publish(PHONE_FILE, provisioned(interval=2))
    phone, primary = start(start_phone, make_pbx, pbx_users, prov)
    prov.publish(PHONE_FILE, "[redundancy]\nsip_keep_alive_interval = 0\n[service]\n")
    assert primary.send_check_sync("1001") == 200
    rejected = phone.wait_event("config", 5, result="rejected")
    assert (
        f"{PHONE_FILE}:2: redundancy.sip_keep_alive_interval must be 1..3600"
        in (rejected["reason"])
    )
    assert f"{PHONE_FILE}:3: [service] cannot be provisioned" in rejected["reason"]
    status = phone.status()
    assert status["config"]["last_result"] == "rejected"
    assert status["keepalive"]["interval_s"] == 2
    before = max(p.ts for p in capture_phone.packets())
    poll_until(lambda: len(options_times(capture_phone, before)) >= 2, timeout_s=6)
    times = options_times(capture_phone, before)
    assert all(abs((b - a) - 2.0) < 0.05 for a, b in itertools.pairwise(times))
    kept = (phone.workdir / "provisioned.toml").read_text()
    assert "sip_keep_alive_interval = 2" in kept
