"""`phoned demo` (SPEC §8): the phone against two Kamailio PBXs on loopback.

Owns: the demo's story — start a primary and a backup PBX (and the endpoint manager's
nginx), start the phone as a child process, stop the primary, watch the failover, bring the
primary back, watch the failback, then a Force Update and a bad file
(`phonelab.demo_provisioning`) — and the exit code. The timeline, the display and
`phoned status` are printed by `phonelab.demo_phone`.
Must not touch: the service's internals; it reads only what an installer would: the
service's log lines and `phoned status`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from phonelab.demo_phone import PhoneProcess, PhoneStatus, registered
from phonelab.demo_provisioning import (
    BLF_KEYS,
    EXT,
    ForceUpdate,
    endpoint_manager,
    find_phone_file,
)
from phonelab.errors import LabError
from phonelab.kamailio import KamailioPbx

PRIMARY = ("127.0.0.11", 5060)
BACKUP = ("127.0.0.12", 5060)
PHONE_PORT = 5062

CONFIG = """\
[account]
username = "{ext}"
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
keys = [{keys}]

[board]
profile = "emulated"

[service]
control_socket = "{workdir}/control.sock"
state_dir = "{workdir}"
{provisioning}"""


def run_demo(interval_s: int = 2) -> int:
    """Run the whole story; 0 when the phone failed over and back as it should (and, where
    the machine allows a Force Update, applied the new file and rejected the bad one)."""
    workdir = Path(tempfile.mkdtemp(prefix="phoned-demo-"))
    primary = KamailioPbx("primary", *PRIMARY, workdir=workdir, presence=True)
    backup = KamailioPbx("backup", *BACKUP, workdir=workdir, presence=True)
    force = _force_update(workdir, interval_s)
    config = workdir / "phoned.toml"
    config.write_text(_config_text(workdir, interval_s, force))
    os.chmod(config, 0o600)
    print(f"demo: PBXs primary {PRIMARY[0]} and backup {BACKUP[0]} (Kamailio) on loopback")
    try:
        with primary, backup, contextlib.ExitStack() as servers:  # all stopped on the way out
            if force is not None:
                force.publish_boot_file()
                force.prov.start()
                servers.callback(force.prov.stop)
            code = _run_phone(config, primary, force, interval_s)
    except LabError as exc:
        print(f"demo: {exc} (the PBXs' and nginx's logs are in {workdir})", file=sys.stderr)
        return 1
    frames = sorted((workdir / "frames").glob("frame-*.png"))
    print(f"demo: phone stopped (exit {code}); its display's {len(frames)} frames are PNGs in")
    print(f"      {workdir / 'frames'} (logs in {workdir})")
    return 0 if code == 0 else 1


def _force_update(workdir: Path, interval_s: int) -> ForceUpdate | None:
    """The Force Update part, or None (and why) where this machine cannot show it."""
    file = find_phone_file()
    if file is None:
        print("demo: this machine has no network interface with a MAC address (only lo?),")
        print("      which the phone's file is named after: the Force Update is left out")
        return None
    if shutil.which("nginx") is None:
        print("demo: nginx is not installed (`make deps`): the Force Update is left out")
        return None
    return ForceUpdate(endpoint_manager(workdir / "nginx"), file, interval_s)


def _config_text(workdir: Path, interval_s: int, force: ForceUpdate | None) -> str:
    return CONFIG.format(
        ext=EXT,
        primary=PRIMARY[0],
        primary_port=PRIMARY[1],
        backup=BACKUP[0],
        backup_port=BACKUP[1],
        interval=interval_s,
        phone_port=PHONE_PORT,
        keys=", ".join(f'"{key}"' for key in BLF_KEYS),
        workdir=workdir,
        provisioning="" if force is None else "\n" + force.config_section(),
    )


def _run_phone(
    config: Path, primary: KamailioPbx, force: ForceUpdate | None, interval_s: int
) -> int:
    """Start the phone, tell the story, stop the phone; its exit code."""
    phone = PhoneProcess(config)
    status = PhoneStatus(str(config.parent / "control.sock"))
    try:
        _story(phone, primary, interval_s, status)
        if force is not None:
            force.apply(phone, primary, status)
            force.reject(phone, primary, status)
        print("\ndemo: done; stopping")
    finally:
        code = phone.stop()
    return code


def _story(phone: PhoneProcess, primary: KamailioPbx, interval_s: int, status: PhoneStatus) -> None:
    budget = interval_s * 3 + 10
    print("demo: phone starting")
    phone.wait_for(registered("primary"), budget)
    phone.wait_for(lambda f: f.get("event") == "cycle" and f.get("server") == "backup", budget)
    status.show("the phone on its primary PBX")
    print("\ndemo: >>> stopping the primary PBX")
    primary.stop()
    phone.wait_for(registered("backup"), budget)
    status.show("failed over: the phone on the BACKUP")
    print("\ndemo: >>> starting the primary PBX again")
    primary.start()
    phone.wait_for(registered("primary"), budget)
    phone.wait_for(lambda f: f.get("event") == "registration" and f.get("server") == "backup", 5)
    status.show("failed back: the phone on its primary again")
    print("\ndemo: failed over and back")
