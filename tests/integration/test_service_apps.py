"""Phone Apps through `phoned run` (SPEC §2 step 3, §4): `phoned app NAME` is served by the
server in use, and the status shows each app's current URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartPhone
from test_service import SWITCH_TIMEOUT_S, registered

from phonelab.apps import AppServer
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, Lab

APPS = {
    "contacts": f"http://{PBX1_IP}/apps/contacts",
    "vm": {"url": f"http://{PBX1_IP}/apps/vm", "backup_url": f"http://{PBX2_IP}/voicemail"},
}


@pytest.fixture
def app_servers(lab: Lab, tmp_path: Path) -> Iterator[None]:
    """An HTTP app server on each PBX's address, answering with its own name."""
    with (
        AppServer("pbx1", lab.pbx1, PBX1_IP, workdir=tmp_path),
        AppServer("pbx2", lab.pbx2, PBX2_IP, workdir=tmp_path),
    ):
        yield


@pytest.mark.usefixtures("app_servers")
def test_apps_follow_the_server_in_use(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    phone = start_phone(settings={"apps": APPS})
    registered(phone, "primary")

    on_primary = phone.cli("app", "contacts")
    assert (on_primary.returncode, on_primary.stdout) == (0, "pbx1 /apps/contacts\n")
    assert phone.status()["apps"] == {
        "contacts": APPS["contacts"],
        "vm": f"http://{PBX1_IP}/apps/vm",
    }

    faults.blackhole(lab.pbx1)  # SIP only: the primary's web server still answers
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")

    assert phone.cli("app", "contacts").stdout == "pbx2 /apps/contacts\n"
    assert phone.cli("app", "vm").stdout == "pbx2 /voicemail\n"  # backup_url wins
    status = phone.status()
    assert status["apps"]["contacts"] == f"http://{PBX2_IP}/apps/contacts"
    assert status["switch_steps"]["apps"] == "2 app(s) on backup"


def test_an_unknown_app_or_an_unreachable_one_is_a_clear_error(
    primary: KamailioPbx, backup: KamailioPbx, start_phone: StartPhone
) -> None:
    phone = start_phone(settings={"apps": {"contacts": f"http://{PBX1_IP}:1/apps"}})
    registered(phone, "primary")

    unknown = phone.cli("app", "weather")
    unreachable = phone.cli("app", "contacts")

    assert unknown.returncode == 1
    assert "no app 'weather' (apps: contacts)" in unknown.stderr
    assert unreachable.returncode == 1
    assert "app contacts: cannot fetch" in unreachable.stderr
    assert "Traceback" not in unknown.stderr + unreachable.stderr
