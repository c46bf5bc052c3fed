"""SPEC §10: the SIP password, the provisioning password and the VPN private key never
appear anywhere the phone writes: its log at debug level, `status`, the display's frames
and everything else in its state directory, through a registration with digest auth, a
provisioning fetch with basic auth, a resync and a failover through the tunnels; nor in
its crash output when it then aborts (SIGABRT, as pjsip's own assertions do), which
leaves no core file either."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from conftest import MakePbx, MakeProv, StartPhone
from provisioning_helpers import PHONE_FILE, assert_no_secret
from test_service import SWITCH_TIMEOUT_S, registered

from phonelab.faults import Faults
from phonelab.netns import Lab
from phonelab.phone import RunningPhone, render_toml
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
    secrets = (SIP_PASSWORD, PROV_PASSWORD, private_key)
    assert_no_secret(phone, secrets)
    assert list((phone.workdir / "frames").glob("frame-*.png"))  # the frames were looked at
    try:
        assert_a_crash_prints_no_secret(phone, secrets)
    finally:  # as systemd does with the service's cgroup: its tunnel process goes too
        subprocess.run(["pkill", "-f", f"wireguard-go -f {vpn_lab.phone_ifname}"], check=False)


def assert_a_crash_prints_no_secret(phone: RunningPhone, secrets: tuple[str, ...]) -> None:
    """Abort the phone; its crash output (stderr, in its log) names no secret and no
    core file is left (the limit is 0: `phoned.crash`)."""
    limits = Path(f"/proc/{phone.proc.pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.MULTILINE), limits
    before = len(phone.lines())
    phone.proc.send_signal(signal.SIGABRT)
    assert phone.proc.wait(5) == -signal.SIGABRT
    crash = "\n".join(phone.lines()[before:])
    assert "Fatal Python error: Aborted" in crash  # the stacks were printed
    assert "Current thread" in crash or "Thread 0x" in crash
    for secret in secrets:
        assert secret not in crash
    assert [*Path.cwd().glob("core*"), *phone.workdir.glob("core*")] == []
