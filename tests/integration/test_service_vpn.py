"""The VPN through `phoned run` (issue 4, SPEC §2 and §6): each PBX reachable only through
its own WireGuard tunnel; failover moves the shared `routes`, SIP and apps to the backup's."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import MakePbx, StartPhone
from test_service import SWITCH_TIMEOUT_S, registered

from phonelab.apps import http_get
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import Lab, poll_until
from phonelab.phone import RunningPhone
from phonelab.wireguard import PHONE_TUNNEL_IP, SHARED_IP, VpnLab

PHONED_RTPROT = "80"  # phoned.net.routes.PHONED_RTPROT, as `ip route` prints it


def vpn_phone(start_phone: StartPhone, vpn_lab: VpnLab) -> RunningPhone:
    """A phone whose PBXs are the tunnel addresses, with the lab's [vpn] and one app."""
    settings = {
        **vpn_lab.settings_tables(),
        "apps": {"contacts": f"http://{vpn_lab.primary_host}/apps/contacts"},
    }
    return start_phone(primary=vpn_lab.primary_host, backup=vpn_lab.backup_host, settings=settings)


def our_routes(lab: Lab) -> list[str]:
    """Routes in the phone namespace marked with phoned's protocol number."""
    done = subprocess.run(
        ["ip", "-n", lab.phone, "route", "show", "proto", PHONED_RTPROT],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split("\n")[:-1]


def shared_answer(lab: Lab) -> str:
    """Who serves the shared `routes` network (198.18.100.1) for the phone right now."""
    return http_get(lab.phone, SHARED_IP, 80, "/").split()[0]


@pytest.fixture
def tunnel_pbxs(make_tunnel_pbx: MakePbx) -> tuple[KamailioPbx, KamailioPbx]:
    """Primary on 198.18.1.1 and backup on 198.18.2.1, each only behind its tunnel."""
    return make_tunnel_pbx("pbx1"), make_tunnel_pbx("pbx2")


def test_failover_and_failback_move_routes_sip_and_apps_through_the_tunnels(
    lab: Lab,
    vpn_lab: VpnLab,
    tunnel_pbxs: tuple[KamailioPbx, KamailioPbx],
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    primary, backup = tunnel_pbxs
    phone = vpn_phone(start_phone, vpn_lab)
    registered(phone, "primary")
    assert any(f"from {PHONE_TUNNEL_IP}:" in r for r in primary.requests())  # via the tunnel
    assert shared_answer(lab) == "pbx1"
    assert phone.cli("app", "contacts").stdout == "pbx1 /apps/contacts\n"

    faults.blackhole(lab.pbx1)  # the primary's SIP dies; its tunnel and web server stay up
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=2)
    registers_on_primary = len([r for r in primary.requests() if r.startswith("REGISTER")])

    assert any(r.startswith("REGISTER") and PHONE_TUNNEL_IP in r for r in backup.requests())
    assert shared_answer(lab) == "pbx2"
    assert phone.cli("app", "contacts").stdout == "pbx2 /apps/contacts\n"
    status = phone.status()
    assert status["switch_steps"]["vpn"] == "routes via the backup peer"
    assert status["vpn"]["active"] == "backup"
    # nothing for the primary's registrar while on the backup (its log would show it)
    assert len([r for r in primary.requests() if r.startswith("REGISTER")]) == registers_on_primary

    faults.unblackhole(lab.pbx1)
    poll_until(
        lambda: len(phone.events("use_server", server="primary")) >= 2,
        timeout_s=SWITCH_TIMEOUT_S,
        interval_s=0.05,
    )
    poll_until(lambda: shared_answer(lab) == "pbx1", timeout_s=2, interval_s=0.05)
    assert phone.cli("app", "contacts").stdout == "pbx1 /apps/contacts\n"


@pytest.mark.usefixtures("tunnel_pbxs")
def test_routes_are_removed_at_sigterm(lab: Lab, vpn_lab: VpnLab, start_phone: StartPhone) -> None:
    phone = vpn_phone(start_phone, vpn_lab)
    registered(phone, "primary")
    assert any("198.18.100.0/24" in route for route in our_routes(lab))

    code, _ = phone.stop()

    assert code == 0
    assert our_routes(lab) == []


@pytest.mark.usefixtures("tunnel_pbxs")
def test_stale_routes_of_a_killed_phone_are_cleaned_at_the_next_start(
    lab: Lab, vpn_lab: VpnLab, start_phone: StartPhone
) -> None:
    first = vpn_phone(start_phone, vpn_lab)
    registered(first, "primary")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    assert our_routes(lab) != []  # left behind by the crash

    second = vpn_phone(start_phone, vpn_lab)
    registered(second, "primary", timeout_s=15)
    routes = our_routes(lab)
    assert sorted(routes) == sorted(set(routes))  # each once: the stale ones were replaced
    assert shared_answer(lab) == "pbx1"
    second.stop()
    assert our_routes(lab) == []


def test_a_world_readable_key_file_is_refused(
    vpn_lab: VpnLab, start_phone: StartPhone, tmp_path: Path
) -> None:
    vpn_lab.phone_key_file.chmod(0o644)
    try:
        phone = vpn_phone(start_phone, vpn_lab)
        code = phone.proc.wait(timeout=10)
        log = "\n".join(phone.lines())
    finally:
        vpn_lab.phone_key_file.chmod(0o600)

    assert code == 1
    assert "private_key_file" in log
    assert "0644" in log or "group or others" in log
    assert "Traceback" not in log
    assert vpn_lab.phone_key_file.read_text().strip() not in log
