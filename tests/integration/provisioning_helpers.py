"""Shared pieces of the Force Update tests (SPEC §7): the phone's file, what the wire says.

Helpers over captured packets (`phonelab.pcap.Packet`): which requests the phone sent where
and from which port, whether a REGISTER removed its binding (Expires 0), whether its digest
answer was computed with a given password, what the server answered; a PBX whose passwords
change while it runs; and the checks several tests share (same process, registered where,
no secret written). Waits always poll with a deadline (`poll_until`), never sleep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from phonelab.capture import Capture
from phonelab.kamailio import ConfigExtensions, KamailioPbx
from phonelab.kamailio_cfg import write_db
from phonelab.netns import PBX1_IP, PHONE_IP, PHONE_MAC, poll_until
from phonelab.nginx import NginxServer
from phonelab.pcap import Packet, sip_summary
from phonelab.phone import RunningPhone, SettingsTables, TomlValue, render_toml
from phonelab.sipreq import split_message

#: The phone's file on the provisioning server (SPEC §7: `<mac>.toml`).
PHONE_FILE = PHONE_MAC.replace(":", "") + ".toml"
#: A PBX whose accounts can change while it runs (`set_pbx_users`): db_text in non-caching
#: mode re-reads a table file whose mtime changed.
RELOADING_USERS = ConfigExtensions(modparams=('modparam("db_text", "db_mode", 1)',))
_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


def local_settings(
    prov: NginxServer, password: str, **tables: Mapping[str, TomlValue]
) -> SettingsTables:
    """The phone's local file: account 1001 with `password`, the provisioning server's
    URL, and more tables (`sip={"auto_answer": True}`); a `provisioning` table adds keys."""
    provisioning = {"url": prov.url(), **tables.pop("provisioning", {})}
    return {"account": {"password": password}, "provisioning": provisioning, **tables}


def force_update(prov: NginxServer, pbx: KamailioPbx, tables: SettingsTables) -> str:
    """Rebuild Configs (publish the phone's new file), then Force Update from `pbx`.

    Returns:
        The new file's ETag.
    """
    etag = prov.publish(PHONE_FILE, render_toml(tables))
    assert pbx.send_check_sync("1001") == 200
    return etag


def file_gets(prov: NginxServer) -> int:
    """How many times the phone's file was asked for (GET, any answer)."""
    return sum(1 for hit in prov.hits() if hit.path == f"/{PHONE_FILE}")


def requests_to(
    packets: list[Packet], dst: str, method: str, *, sport: int | None = None
) -> list[Packet]:
    """Requests `method` the phone sent over UDP to `dst:5060` (from `sport` when given)."""
    found = []
    for packet in packets:
        if packet.src != PHONE_IP or packet.dst != dst or packet.dport != 5060:
            continue
        if sport is not None and packet.sport != sport:
            continue
        summary = sip_summary(packet.payload)
        if summary is not None and summary.method == method:
            found.append(packet)
    return found


def from_phone(packets: list[Packet], method: str) -> list[Packet]:
    """Every request `method` the phone sent, to anyone."""
    return [
        p
        for p in packets
        if p.src == PHONE_IP and (s := sip_summary(p.payload)) is not None and s.method == method
    ]


def unregisters(register: Packet) -> bool:
    """Whether a REGISTER removes the binding (`Expires: 0`, or `expires=0` on the Contact)."""
    _, headers, _ = split_message(register.payload)
    contact = headers.get("contact", headers.get("m", ""))
    return headers.get("expires") == "0" or re.search(r";\s*expires=0\b", contact) is not None


def registers(packets: list[Packet], dst: str, *, sport: int | None = None) -> list[Packet]:
    """The REGISTERs to `dst` that bind (not un-REGISTERs)."""
    return [p for p in requests_to(packets, dst, "REGISTER", sport=sport) if not unregisters(p)]


def answer(packets: list[Packet], request: Packet) -> int | None:
    """The final status the server sent the phone for `request` (same Call-ID and CSeq)."""
    asked = sip_summary(request.payload)
    for packet in packets:
        if packet.src != request.dst or packet.dst != PHONE_IP or packet.ts < request.ts:
            continue
        summary = sip_summary(packet.payload)
        if (
            summary is not None
            and summary.status is not None
            and summary.status >= 200
            and asked is not None
            and (summary.call_id, summary.cseq) == (asked.call_id, asked.cseq)
        ):
            return summary.status
    return None


def digest_with(request: Packet, password: str) -> bool:
    """Whether the request's `Authorization` digest was computed with `password` (RFC 2617:
    MD5, with or without qop=auth). False when it carries none."""
    start, headers, _ = split_message(request.payload)
    value = headers.get("authorization", "")
    if not value.startswith("Digest "):
        return False
    params = {str(m[0]).lower(): str(m[1] or m[2]) for m in _DIGEST_PARAM.findall(value[7:])}

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1 = md5(f"{params['username']}:{params['realm']}:{password}")
    ha2 = md5(f"{start.split()[0]}:{params['uri']}")
    if params.get("qop"):
        middle = f"{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}"
        return params["response"] == md5(f"{ha1}:{middle}:{ha2}")
    return params["response"] == md5(f"{ha1}:{params['nonce']}:{ha2}")


def check_sync_answered_at(packets: list[Packet]) -> list[float]:
    """When the phone answered a check-sync NOTIFY 200 (kernel timestamps), oldest first."""
    found = []
    for packet in packets:
        summary = sip_summary(packet.payload)
        if (
            packet.src == PHONE_IP
            and summary is not None
            and summary.status == 200
            and (summary.cseq or "").endswith("NOTIFY")
            and (summary.call_id or "").startswith("lab-check-sync.")
        ):
            found.append(packet.ts)
    return found


def never(condition: Callable[[], bool], during_s: float) -> bool:
    """True when `condition` stayed false for the whole `during_s` (polled, no sleep)."""
    try:
        poll_until(condition, timeout_s=during_s, interval_s=0.1)
    except TimeoutError:
        return True
    return False


def subscribed(packets: list[Packet], dst: str, *, expires_zero: bool = False) -> list[str]:
    """Extensions (the To user) the phone SUBSCRIBEd to at `dst`, or un-SUBSCRIBEd from
    (`Expires: 0`), in order."""
    found = []
    for packet in requests_to(packets, dst, "SUBSCRIBE"):
        _, headers, _ = split_message(packet.payload)
        to = re.search(r"sip:([^@>;]+)@", headers.get("to", headers.get("t", "")))
        if (headers.get("expires") == "0") == expires_zero and to is not None:
            found.append(to.group(1))
    return found


def cycle_started(capture: Capture, dst: str, timeout_s: float) -> float:
    """Wait for the phone's next OPTIONS to `dst` (a new cycle); its kernel timestamp."""
    seen = len(requests_to(capture.packets(), dst, "OPTIONS"))
    packets = capture.wait_packets(
        lambda found: len(requests_to(found, dst, "OPTIONS")) > seen, timeout_s=timeout_s
    )
    return requests_to(packets, dst, "OPTIONS")[seen].ts


def set_pbx_users(pbx: KamailioPbx, users: Mapping[str, str]) -> None:
    """The PBX's administrator changes the accounts' passwords (the PBX must run with
    `RELOADING_USERS`: db_text then re-reads a subscriber table whose mtime moved on)."""
    table = pbx.workdir / f"{pbx.name}-db" / "subscriber"
    later = table.stat().st_mtime + 2  # db_text compares whole seconds
    with tempfile.TemporaryDirectory() as scratch:  # the other tables stay as they are
        write_db(Path(scratch), pbx.host, users, presence=False)
        shutil.copyfile(Path(scratch) / "subscriber", table)
    os.utime(table, (later, later))


def options_after(
    capture: Capture, dst: str, since: float, count: int, timeout_s: float
) -> list[float]:
    """Wait until the phone sent `count` OPTIONS to `dst` after `since`; all their times."""

    def found() -> list[float] | None:
        times = [p.ts for p in requests_to(capture.packets(), dst, "OPTIONS") if p.ts > since]
        return times if len(times) >= count else None

    return poll_until(found, timeout_s=timeout_s, interval_s=0.05)


# ------------------------------------------------------------------ checks shared by tests


def assert_reregistered(
    packets: list[Packet], since: float, *, old: tuple[str, int], new: tuple[str, int]
) -> tuple[Packet, Packet]:
    """After `since`: the binding made from the phone's port `old[1]` at server `old[0]`
    removed (an un-REGISTER answered 200) and one made from `new[1]` at `new[0]` (its last
    REGISTER answered 200). Returns that un-REGISTER and the first new REGISTER."""
    leaving = requests_to(packets, old[0], "REGISTER", sport=old[1])
    removed = [p for p in leaving if p.ts > since and unregisters(p)]
    assert removed, "no un-REGISTER"
    answered = [p for p in removed if answer(packets, p) == 200]
    assert answered, [answer(packets, p) for p in removed]
    joining = [p for p in registers(packets, new[0], sport=new[1]) if p.ts > since]
    assert joining, "no REGISTER"
    assert answer(packets, joining[-1]) == 200
    return answered[0], joining[0]


def same_process(phone: RunningPhone, pid: int, *, restarts: int) -> None:
    """The phone is still the process it was, restarted (re-exec'd) exactly `restarts` times."""
    assert phone.proc.pid == pid
    assert phone.proc.poll() is None
    assert len(phone.events("restart")) == restarts
    assert len(phone.events("started")) == restarts + 1


def restarted(phone: RunningPhone, pid: int, reason: str, timeout_s: float) -> None:
    """Wait for one re-exec (for `reason`) and the registration after it; same PID."""
    restart = phone.wait_event("restart", timeout_s)
    assert reason in restart["reason"]
    phone.wait_count("started", 2, timeout_s)
    phone.wait_count("registration", 2, timeout_s, server="primary", state="registered")
    same_process(phone, pid, restarts=1)


def on_primary_at(phone: RunningPhone, address: str) -> None:
    """`status --json`: registered on the primary, configured at `address`."""
    status = phone.status()
    assert status["active"] == "primary"
    assert status["servers"]["primary"]["address"] == address
    assert status["servers"]["primary"]["registration"] == "registered"


def assert_no_secret(phone: RunningPhone, secrets: tuple[str, ...]) -> None:
    """SPEC §10: no password in the log, the status or the state directory. The two
    settings files (the local one, and the kept provisioned one, mode 0600) hold them by
    design: they are the configuration, not something the service wrote about it."""
    kept = phone.workdir / "provisioned.toml"
    assert kept.stat().st_mode & 0o777 == 0o600
    written = [p for p in phone.workdir.rglob("*") if p.is_file() and p not in {phone.config, kept}]
    assert phone.log_path in written
    status = json.dumps(phone.status())
    for secret in secrets:
        assert secret not in status
        for path in written:
            assert secret.encode() not in path.read_bytes(), path


def assert_probes_moved(
    packets: list[Packet], moved: tuple[str, str], span: tuple[float, float], *, interval_s: float
) -> None:
    """The backup's probes left `moved[0]` for `moved[1]` from the first cycle after the
    apply, on the primary's grid kept from the cycle in flight (no burst, no new anchor);
    the old address got nothing after that. `span`: (the cycle in flight's start, a time
    after the apply)."""
    in_flight, applied_at = span
    cycles = [p.ts for p in requests_to(packets, PBX1_IP, "OPTIONS") if p.ts >= in_flight - 0.01]
    to_old = [p.ts for p in requests_to(packets, moved[0], "OPTIONS")]
    to_new = [p.ts for p in requests_to(packets, moved[1], "OPTIONS")]
    after = [c for c in cycles if c > applied_at]
    assert to_new[0] <= after[0] + 0.01  # from the next cycle at the latest
    for cycle in after:  # each later cycle probes the new address at its start
        assert min(abs(t - cycle) for t in to_new) <= 0.01, (cycle, to_new)
    assert [t for t in to_old if t > to_new[0] - 0.01] == []
    gaps = [b - a for a, b in itertools.pairwise(cycles)]
    assert all(abs(gap - interval_s) < 0.05 for gap in gaps), gaps
