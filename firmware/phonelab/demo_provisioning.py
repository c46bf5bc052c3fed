"""The demo's Force Update (SPEC §7, §8): the endpoint manager rewrites the phone's file.

Owns: the loopback demo's endpoint manager (nginx on 127.0.0.40: port 80 when this process
may take it, else a free high port), the phone's file on it (`<mac>.toml`, named by the MAC
of the machine's first non-loopback interface, which the phone's config names as
`mac_interface`), and two steps of the story, told after the failback: a new file (the
keep-alive interval doubled, one more BLF key) pushed with a check-sync from the primary,
then a bad one (interval 0) pushed the same way.
Must not touch: the service's internals (each step is judged on what an installer sees: the
phone's answer to the NOTIFY, its log lines, `phoned status`, and on the servers' side the
endpoint manager's access log and the PBX's log), or any other nginx (NginxServer stops its
own by PID).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from phoned.errors import ProvisioningError
from phoned.provision.mac import SYS_CLASS_NET, interface_mac
from phonelab.demo_phone import LogMatch, PhoneStatus, Timeline
from phonelab.errors import LabError
from phonelab.netns import poll_until
from phonelab.nginx import HTTP_PORT, NginxServer

#: The endpoint manager's address on loopback (the PBXs are 127.0.0.11 and .12).
PROV_HOST = "127.0.0.40"
#: The phone's account, to which the PBX sends the check-sync.
EXT = "1001"
#: The BLF keys of the local config and of the file at boot; the Force Update adds NEW_KEY.
BLF_KEYS = ("1002", "1003")
NEW_KEY = "1004"
#: SPEC §3: the keep-alive interval must be 1..3600 s; 0 is a template error.
BAD_FILE = "[redundancy]\nsip_keep_alive_interval = 0\n"
#: How far a cycle may start from the new interval (a loaded 2-core lab machine).
_SLACK_S = 0.5


class Pbx(Protocol):
    """What the Force Update needs of a PBX (`phonelab.kamailio.KamailioPbx`)."""

    def send_check_sync(self, ext: str) -> int: ...

    def requests(self) -> list[str]: ...


class ProvServer(Protocol):
    """What it needs of the endpoint manager (`phonelab.nginx.NginxServer`)."""

    def start(self) -> None: ...

    def stop(self) -> object: ...

    def url(self) -> str: ...

    def publish(self, name: str, content: str) -> str: ...

    def requests(self) -> list[str]: ...


@dataclass(frozen=True)
class PhoneFile:
    """The phone's file on the endpoint manager, and the interface whose MAC names it."""

    interface: str
    mac: str  #: 12 lowercase hex digits

    @property
    def name(self) -> str:
        """`<mac>.toml` (SPEC §7)."""
        return f"{self.mac}.toml"


def find_phone_file(sys_class_net: Path = SYS_CLASS_NET) -> PhoneFile | None:
    """The first interface by name, not `lo`, with a MAC (the phone's default choice).

    Returns:
        Its file, or None when the machine has no such interface.
    """
    try:
        names = sorted(entry.name for entry in sys_class_net.iterdir())
    except OSError:
        return None
    for name in names:
        if name == "lo":
            continue
        try:
            return PhoneFile(name, interface_mac(name, sys_class_net=sys_class_net))
        except ProvisioningError:
            continue  # no MAC (a tunnel, a down bridge without one): not a name for the file
    return None


def free_http_port(host: str) -> int:
    """80 when this process may bind it on `host` and nothing holds it, else a free port."""
    for port in (HTTP_PORT, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as nginx binds: a previous demo's connections in TIME_WAIT do not hold the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue  # privileged (not root) or taken
            found: int = sock.getsockname()[1]
            return found
    raise LabError(f"no free TCP port on {host}")


def endpoint_manager(workdir: Path) -> NginxServer:
    """The loopback demo's nginx (not started: the demo's `with` starts and stops it)."""
    return NginxServer(None, PROV_HOST, workdir=workdir, port=free_http_port(PROV_HOST))


def phone_file_text(interval_s: int, keys: Sequence[str]) -> str:
    """The phone's file as the endpoint manager's Rebuild Configs writes it."""
    listed = ", ".join(f'"{key}"' for key in keys)
    return f"[redundancy]\nsip_keep_alive_interval = {interval_s}\n\n[blf]\nkeys = [{listed}]\n"


class ForceUpdate:
    """The endpoint manager's side of the story, and what the demo checks of the phone.

    Args:
        prov: the endpoint manager (nginx).
        file: the phone's file on it.
        interval_s: the keep-alive interval in force before the Force Update.
    """

    def __init__(self, prov: ProvServer, file: PhoneFile, interval_s: int) -> None:
        self.prov, self.file = prov, file
        self.old_s, self.new_s = interval_s, interval_s * 2

    def config_section(self) -> str:
        """The phone's `[provisioning]` table."""
        url, iface = self.prov.url(), self.file.interface
        return f'[provisioning]\nurl = "{url}"\nmac_interface = "{iface}"\n'

    def publish_boot_file(self) -> None:
        """Rebuild Configs before the phone boots: the same settings as its local file."""
        self.prov.publish(self.file.name, phone_file_text(self.old_s, BLF_KEYS))
        print(
            f"demo: endpoint manager (nginx) {self.prov.url()} serves the phone's file "
            f"{self.file.name} (MAC of {self.file.interface})"
        )

    def apply(self, phone: Timeline, pbx: Pbx, status: PhoneStatus) -> None:
        """The new file and a check-sync: `config applied`, the new key subscribed, then
        the keep-alive on its new grid.

        Raises:
            LabError: the phone did not answer 200, apply, subscribe or move its grid.
        """
        phone.catch_up()
        print(
            f"\ndemo: >>> Force Update: the endpoint manager rewrites {self.file.name} "
            f"(keep-alive every {self.new_s} s, was {self.old_s}; BLF key {NEW_KEY} added)"
            "\n      and the primary PBX sends the phone a check-sync NOTIFY"
        )
        self.prov.publish(self.file.name, phone_file_text(self.new_s, (*BLF_KEYS, NEW_KEY)))
        before = self._check_sync(phone, pbx, status, "applied", also=[_lamp(NEW_KEY)])
        after = status.show("Force Update applied: the display flashes `config applied` (3 s)")
        print(f"    keepalive: every {after['keepalive']['interval_s']:g} s")
        self._said_by_servers(pbx, before)
        phone.grid_server = "primary"
        gap = self._wait_for_grid(phone, cycles=3)
        print(
            f"demo: the phone's OPTIONS to the primary now go {gap:.3f} s apart (every "
            f"{self.old_s} s before): the grid re-anchored at the first cycle after the apply"
        )

    def reject(self, phone: Timeline, pbx: Pbx, status: PhoneStatus) -> None:
        """A bad file and a check-sync: `config rejected`, and nothing changes.

        Raises:
            LabError: the phone did not answer 200 or reject it, or something changed.
        """
        phone.catch_up()
        print(
            f"\ndemo: >>> a bad file: the endpoint manager publishes {self.file.name} with"
            " sip_keep_alive_interval = 0\n      and the primary PBX sends check-sync again"
        )
        self.prov.publish(self.file.name, BAD_FILE)
        before = self._check_sync(phone, pbx, status, "rejected")
        after = status.show("bad file rejected: the display flashes `config rejected` (3 s)")
        print(f"    keepalive: every {after['keepalive']['interval_s']:g} s")
        self._said_by_servers(pbx, before)
        gap = self._wait_for_grid(phone, cycles=1)
        kept = after["keepalive"]["interval_s"] == self.new_s and NEW_KEY in after.get("blf", {})
        if not kept or (after.get("config") or {}).get("last_result") != "rejected":
            raise LabError(f"the bad file changed the phone: {after.get('config')}")
        print(
            f"demo: nothing changed: OPTIONS still {gap:.3f} s apart, key {NEW_KEY} still "
            "watched; the phone runs on the last good file"
        )

    def _check_sync(
        self,
        phone: Timeline,
        pbx: Pbx,
        status: PhoneStatus,
        result: str,
        also: Sequence[LogMatch] = (),
    ) -> _Before:
        """The primary's check-sync, the phone's `config <result>` line (and `also`), and
        the display's next frame (the flash); what the servers had seen before."""
        before = _Before(len(self.prov.requests()), pbx.requests())
        frames = _frames(status.get())
        code = pbx.send_check_sync(EXT)
        if code != 200:
            raise LabError(f"the phone answered the check-sync NOTIFY {code}, not 200")
        print(f"demo: the phone answered the check-sync NOTIFY {code}")
        fields = phone.wait_for(lambda f: f.get("event") == "config", timeout_s=5)
        if fields.get("result") != result:
            why = fields.get("reason") or fields.get("keys") or "no detail"
            raise LabError(f"the phone's settings: {fields.get('result')}, not {result}: {why}")
        for what in also:  # logged after the config line (the apply sends the SUBSCRIBE)
            phone.wait_for(what, timeout_s=5)
        try:
            poll_until(lambda: _frames(status.get()) > frames, timeout_s=2, interval_s=0.05)
        except TimeoutError as exc:
            raise LabError(f"the display did not change after `config {result}`") from exc
        return before

    def _said_by_servers(self, pbx: Pbx, before: _Before) -> None:
        """What the endpoint manager served and the PBX received since `before`."""
        for hit in self.prov.requests()[before.hits :]:
            print(f"demo: the endpoint manager served {hit}")
        known = {_call_id(r) for r in before.pbx}
        subscribes = [r for r in pbx.requests()[len(before.pbx) :] if r.startswith("SUBSCRIBE")]
        new = sum(_call_id(r) not in known for r in subscribes)
        if not subscribes:
            print("demo: the primary PBX received no SUBSCRIBE: the BLF keys are untouched")
            return
        print(
            f"demo: the primary PBX received {new} SUBSCRIBE opening a new dialog and "
            f"{len(subscribes) - new} in the phone's existing dialogs"
        )

    def _wait_for_grid(self, phone: Timeline, cycles: int) -> float:
        """Wait for the primary's next cycles until one starts `new_s` after the last (at
        most `cycles`); that gap.

        Raises:
            LabError: none of them did.
        """
        gap = None
        for _ in range(cycles):
            phone.wait_for(_cycle_start("primary"), timeout_s=self.new_s + 3)
            gap = phone.gap_s("primary")
            if gap is not None and abs(gap - self.new_s) <= _SLACK_S:
                return gap
        went = "no second cycle" if gap is None else f"{gap:.3f} s"
        raise LabError(f"the phone's OPTIONS to the primary went {went} apart, not {self.new_s} s")


@dataclass(frozen=True)
class _Before:
    hits: int  #: the endpoint manager's requests so far
    pbx: list[str]  #: the PBX's requests so far


def _lamp(ext: str) -> LogMatch:
    return lambda f: f.get("event") == "blf" and f.get("ext") == ext


def _cycle_start(server: str) -> LogMatch:
    return lambda f: (
        f.get("event") == "probe_sent" and f.get("server") == server and f.get("attempt") == "1"
    )


def _frames(status: dict[str, Any]) -> int:
    frames: int = status.get("device", {}).get("frames", 0)
    return frames


def _call_id(request: str) -> str:
    """The Call-ID of `<METHOD> from <ip>:<port> <call-id>` (KamailioPbx.requests)."""
    return request.rsplit(" ", 1)[-1]
