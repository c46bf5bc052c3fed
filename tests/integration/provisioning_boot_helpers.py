"""Helpers of test_service_provisioning_boot.py: phones restarted on one workdir, the files
the endpoint manager serves, times read from /proc and from the phone's log, a raw HTTP
server that cuts its answer short, and raw check-sync NOTIFYs from any lab namespace.

Owns: nothing that outlives a test: every phone, server and socket made here is stopped by
the fixture or the `with` block that made it.
Must not touch: the service's internals (phones are judged from the wire, `phoned status`,
the provisioning server's access log and the phone's log lines, as the acceptance lab does).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from provisioning_helpers import PHONE_FILE

from phoned.logfmt import parse
from phoned.provision.lastgood import LastGood, load_last_good
from phonelab.capture import Capture
from phonelab.netns import PBX1_IP, PHONE_IP, Lab, netns_socket, poll_until
from phonelab.nginx import NginxServer
from phonelab.pcap import Packet
from phonelab.phone import RunningPhone, SettingsTables, render_toml, sip_from_phone
from phonelab.sipreq import response_status, split_message

#: The local file's keep-alive interval (`phonelab.phone.base_settings`).
LOCAL_INTERVAL_S = 2
#: The local file's User-Agent (a provisioned file replaces it: seen in every OPTIONS).
LOCAL_UA = "phoned-local"
#: The provisioning fetch's size cap (256 KiB): a larger file is refused.
MAX_FILE_BYTES = 256 * 1024


def provisioned(interval: int = 3, user_agent: str = "phoned-provisioned") -> str:
    """A valid file of the endpoint manager: a keep-alive interval (in `status`) and a
    User-Agent (on the wire, in every OPTIONS) that differ from the local file's."""
    return render_toml(
        {"redundancy": {"sip_keep_alive_interval": interval}, "sip": {"user_agent": user_agent}}
    )


def local(url: str, **provisioning: str | int | bool) -> SettingsTables:
    """The phone's local settings: the lab's, a User-Agent of its own, `[provisioning]`."""
    return {"sip": {"user_agent": LOCAL_UA}, "provisioning": {"url": url, **provisioning}}


def last_good_file(phone: RunningPhone) -> Path:
    """SPEC §7: `<state_dir>/provisioned.toml` (the lab's state_dir is the workdir)."""
    return phone.workdir / "provisioned.toml"


def last_good(phone: RunningPhone) -> LastGood:
    """The phone's last good file as the service reads it (it must exist and be whole)."""
    kept = load_last_good(str(phone.workdir))
    assert kept is not None, f"no {last_good_file(phone)}"
    return kept


def phone_gets(prov: NginxServer) -> list[int]:
    """The status of every GET of the phone's file in the access log, oldest first."""
    return [hit.status for hit in prov.hits() if hit.path == f"/{PHONE_FILE}"]


def first_options(capture: Capture, since: float, timeout_s: float) -> Packet:
    """The phone's first OPTIONS to the primary captured after `since` (waited for)."""
    return poll_until(
        lambda: next(
            (p for p in sip_from_phone(capture.packets(), PBX1_IP, "OPTIONS") if p.ts > since),
            None,
        ),
        timeout_s=timeout_s,
    )


def user_agent(packet: Packet) -> str:
    """The User-Agent header of a captured SIP message."""
    return split_message(packet.payload)[1].get("user-agent", "")


def booted(phone: RunningPhone, source: str) -> dict[str, Any]:
    """Wait until the phone runs, its status says where its settings came from, and it
    took a server in use (check-syncs are accepted from then on); its status."""
    phone.wait_event("started", 8)
    phone.wait_status(lambda s: s["config"]["source"] == source, timeout_s=3)
    phone.wait_event("use_server", 5)
    return phone.status()


def nth_config(phone: RunningPhone, result: str, nth: int, timeout_s: float = 8) -> dict[str, str]:
    """The `nth` (1-based) `event=config` record with this result after boot (the boot's
    own `applied at=boot` left out), waited for."""

    def found() -> dict[str, str] | None:
        records = [r for r in phone.events("config", result=result) if r.get("at") != "boot"]
        return records[nth - 1] if len(records) >= nth else None

    try:
        return poll_until(found, timeout_s=timeout_s, interval_s=0.02)
    except TimeoutError:
        raise AssertionError(f"no config result={result} #{nth}:\n{phone.tail()}") from None


def password_file(directory: Path, password: str) -> Path:
    """A private file (0600, SPEC §7) holding `password`."""
    path = directory / "prov-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ phones on one workdir


class Phones:
    """Phones restarted on the workdir (state_dir, last good file) of an earlier one."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._started: list[RunningPhone] = []

    def restart(self, phone: RunningPhone) -> RunningPhone:
        """`phone` stopped (SIGTERM) if it still runs, and started again with the same
        settings file and workdir; the earlier log is kept as `phoned.<n>.log`."""
        phone.stop()
        kept = phone.workdir / f"phoned.{len(self._started)}.log"
        shutil.copyfile(phone.log_path, kept)
        again = RunningPhone(self._lab, phone.workdir, phone.config)
        self._started.append(again)
        return again

    def stop_all(self) -> None:
        """Stop every phone started here (idempotent)."""
        for phone in self._started:
            phone.stop()


# ------------------------------------------------------------------ times


def process_started_at(pid: int) -> float:
    """When process `pid` started, in unix time (to 1/CLK_TCK s, from /proc/<pid>/stat).

    `ip netns exec` exec()s the phone, so this is the fork of the command, a little before
    Python itself started: a bound in the phone's disfavour.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, ticks
    # starttime counts from boot on CLOCK_BOOTTIME; now on both clocks maps it to unix time
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_s)


def log_time(line: str, near: float) -> float:
    """The unix time of a phone log line (`HH:MM:SS.mmm ...`, local time), on the day
    that puts it nearest to `near` (a line logged just after midnight stays after it)."""
    clock, _, millis = line.split(" ", 1)[0].partition(".")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    day = time.localtime(near)
    candidates = [
        time.mktime((day.tm_year, day.tm_mon, day.tm_mday + shift, hours, minutes, seconds,
                     0, 0, -1)) + int(millis) / 1000
        for shift in (-1, 0, 1)
    ]  # fmt: skip
    return min(candidates, key=lambda candidate: abs(candidate - near))


def first_cycle_delay_s(phone: RunningPhone) -> float:
    """SPEC §1's random offset of the first cycle, as the phone logged it."""
    for line in phone.lines():
        found = re.search(r"keepalive: first cycle in (\d+) ms", line)
        if found:
            return int(found.group(1)) / 1000
    raise AssertionError(f"no first-cycle offset in the log:\n{phone.tail()}")


def event_line(phone: RunningPhone, name: str, **fields: str) -> str:
    """The first log line with `event=name` and these fields (it must be there)."""
    for line in phone.lines():
        record = parse(line)
        if record.get("event") == name and all(record.get(k) == v for k, v in fields.items()):
            return line
    raise AssertionError(f"no event={name} {fields} line:\n{phone.tail()}")


# ------------------------------------------------------------------ a server cut short


class CutShortServer:
    """A raw HTTP server in a namespace: every request gets `answer`, then the connection
    closes (`truncated_answer`: a Content-Length larger than the body it carries)."""

    def __init__(self, netns: str, host: str, port: int, answer: bytes) -> None:
        self._listener = netns_socket(netns, kind=socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(8)
        self._answer = answer
        self._stop = threading.Event()
        self.requests: list[bytes] = []  #: the request heads received, oldest first
        self._thread = threading.Thread(target=self._serve, name="cut-short-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            conn, _ = self._listener.accept()
            with conn:
                try:
                    self.requests.append(_request_head(conn))
                    conn.sendall(self._answer)
                except OSError:  # the phone gave up first: nothing more to say to it
                    continue

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self._stop.set()
        self._thread.join(timeout=3)
        if self._thread.is_alive():
            raise RuntimeError("cut-short-http: the server thread did not stop")
        self._listener.close()

    def __enter__(self) -> CutShortServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _request_head(conn: socket.socket) -> bytes:
    """The request line and headers read from `conn` (up to the blank line)."""
    conn.settimeout(2.0)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def truncated_answer(body: bytes, announced: int) -> bytes:
    """A 200 whose Content-Length announces `announced` bytes but carries only `body`."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {announced}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


# ------------------------------------------------------------------ raw check-sync NOTIFYs


def check_sync_notify(source: tuple[str, int], call_id: str, cseq: int = 1) -> bytes:
    """A Force Update NOTIFY (SPEC §7) to the phone's SIP port 5060 from `source`."""
    host, port = source
    lines = [
        f"NOTIFY sip:1001@{PHONE_IP}:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{uuid.uuid4().hex};rport",
        "Max-Forwards: 70",
        f"From: <sip:provisioning@{host}>;tag={uuid.uuid4().hex[:10]}",
        f"To: <sip:1001@{PHONE_IP}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} NOTIFY",
        "Event: check-sync",
        "Subscription-State: terminated",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class NotifySocket:
    """A UDP socket in a lab namespace, bound to `host:port`, that sends NOTIFYs to the
    phone and reads the final answers."""

    def __init__(self, netns: str, host: str, port: int) -> None:
        self.source = (host, port)
        self.sock = netns_socket(netns)
        self.sock.bind(self.source)

    def notify(self, call_id: str | None = None) -> bytes:
        """A new check-sync NOTIFY datagram from this socket (a fresh Call-ID)."""
        return check_sync_notify(self.source, call_id or f"lab-cs-{uuid.uuid4().hex}")

    def send(self, datagram: bytes) -> None:
        """Send `datagram` to the phone's SIP port."""
        self.sock.sendto(datagram, (PHONE_IP, 5060))

    def exchange(self, datagram: bytes, timeout_s: float = 3.0) -> int:
        """Send `datagram` to the phone; the final status of its answer (provisional ones
        and answers to other requests skipped)."""
        self.send(datagram)
        call_id = split_message(datagram)[1]["call-id"]
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                reply = self.sock.recv(65535)
            except TimeoutError:
                break
            status = response_status(reply)
            answered = split_message(reply)[1].get("call-id") == call_id
            if status is not None and status >= 200 and answered:
                return status
        raise AssertionError(f"no final answer to NOTIFY {call_id} in {timeout_s} s")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@contextmanager
def notify_socket(netns: str, host: str, port: int) -> Iterator[NotifySocket]:
    """A `NotifySocket`, closed at the end of the block."""
    sender = NotifySocket(netns, host, port)
    try:
        yield sender
    finally:
        sender.close()
