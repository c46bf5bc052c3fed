"""SPEC §10: the SIP password, the provisioning password and the VPN private key never
appear anywhere the phone writes: its log at debug level, `status`, the display's frames
and everything else in its state directory, through a registration with digest auth, a
provisioning fetch with basic auth, a resync and a failover through the tunnels."""

from __future__ import annotations

from pathlib import Path

from conftest import MakePbx, MakeProv, StartPhone
from provisioning_helpers import PHONE_FILE, assert_no_secret
from test_service import SWITCH_TIMEOUT_S, registered

from phonelab.faults import Faults
from phonelab.netns import Lab
from phonelab.phone import render_toml
from phonelab.wireguard import VpnLab

SIP_PASSWORD = "sip-Secret-7f3a9c"  # noqa: S105 - a lab secret to look for
PROV_PASSWORD = "prov-Secret-2b8e41"  # noqa: S105 - a lab secret to look for


def test_no_secret_in_the_log_status_frames_or_state_directory(
    tmp_path: Path,
    lab: Lab,
    vpn_lab: VpnLab,
    make_tunnel_pbx: MakePbx,
    make_prov: MakeProv,
    faults: Faults,
    start_phone: StartPhone,
) -> None:
    users = {"1001": SIP_PASSWORD}
    make_tunnel_pbx("pbx1", users=users)
    make_tunnel_pbx("pbx2", users=users)
    prov = make_prov(users={"phone": PROV_PASSWORD})
    prov.publish(PHONE_FILE, render_toml({"blf": {"keys": ["1002"]}}))
    prov_password_file = tmp_path / "prov.pw"
    prov_password_file.write_text(PROV_PASSWORD + "\n")
    prov_password_file.chmod(0o600)
    settings = {
        **vpn_lab.settings_tables(),
        "account": {"username": "1001", "password": SIP_PASSWORD},
        "provisioning": {
            "url": prov.url(),
            "username": "phone",
            "password_file": str(prov_password_file),
        },
    }
    phone = start_phone(primary=vpn_lab.primary_host, backup=vpn_lab.backup_host, settings=settings)
    registered(phone, "primary")  # after a 401: the digest was computed
    assert phone.status()["config"]["last_result"] == "applied"
    assert phone.cli("resync").returncode == 0  # basic auth again, on the running phone
    faults.blackhole(lab.pbx1)
    phone.wait_event("use_server", SWITCH_TIMEOUT_S, server="backup")
    registered(phone, "backup", timeout_s=3)

    private_key = vpn_lab.phone_key_file.read_text().strip()
    assert_no_secret(phone, (SIP_PASSWORD, PROV_PASSWORD, private_key))
    assert list((phone.workdir / "frames").glob("frame-*.png"))  # the frames were looked at
