"""A restart (the watchdog's, or a crash's) is back on the right server within one cycle
(issue 12): the service keeps a record of the server in use beside its control socket
and, restarted, resumes there with its first cycle at once."""

from __future__ import annotations

import time

from conftest import StartPhone

from phonelab.capture import Capture
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, Lab
from phonelab.phone import RunningPhone, sip_from_phone

INTERVAL_S = 4


def test_killed_on_the_backup_and_restarted_it_registers_there_within_one_cycle(
    lab: Lab,
    primary: KamailioPbx,
    backup: KamailioPbx,
    faults: Faults,
    capture_phone: Capture,
    start_phone: StartPhone,
) -> None:
    phone = start_phone(interval=INTERVAL_S)
    phone.wait_event("registration", 10, server="primary", state="registered")
    faults.blackhole(lab.pbx1)
    phone.wait_event("registration", 2 * INTERVAL_S + 4, server="backup", state="registered")

    phone.proc.kill()  # SIGKILL: what a watchdog restart or a crash leaves behind
    phone.proc.wait()
    restarted_at = time.time()
    again = RunningPhone(lab, phone.workdir, phone.config)
    try:
        again.wait_event("registration", INTERVAL_S, server="backup", state="registered")
        packets = capture_phone.packets()
        to_backup = [p.ts for p in sip_from_phone(packets, PBX2_IP, "REGISTER")]
        to_primary = [p.ts for p in sip_from_phone(packets, PBX1_IP, "REGISTER")]
        first = min(t for t in to_backup if t > restarted_at)
        print(f"restart -> REGISTER to the backup: {(first - restarted_at) * 1000:.0f} ms")
        assert first - restarted_at < INTERVAL_S  # within one cycle
        assert not [t for t in to_primary if t > restarted_at]  # nothing to the dead primary
        assert again.events("use_server", server="backup")
        assert any("resumed after a restart -> backup" in line for line in again.lines())
        assert again.status()["active"] == "backup"
    finally:
        again.stop()
