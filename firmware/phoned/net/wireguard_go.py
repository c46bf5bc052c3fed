"""wireguard-go, the user-space WireGuard the VPN falls back on (no kernel module here).

Owns: the `wireguard-go -f IFNAME` child process (started, watched, stopped by PID) and a
UAPI device whose `set_config` applies only the difference: wireguard-tools' own sends
`replace_peers=true`, which resets every session (measured), and SPEC §6 wants both tunnels
kept warm across a switch. Must not touch: routes, settings or which peer is active
(`vpn` decides).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from wireguard_tools import WireguardConfig, WireguardPeer
from wireguard_tools.wireguard_uapi import WG_UAPI_SOCKET_DIR, WireguardUAPIDevice

from phoned.errors import VpnError

log = logging.getLogger("phoned.vpn")

WIREGUARD_GO = "wireguard-go"
_START_TIMEOUT_S = 3.0
_STOP_TIMEOUT_S = 1.0  # SPEC §4: the whole service exits within 2 s of SIGTERM
_POLL_S = 0.01


class WarmUapiDevice(WireguardUAPIDevice):
    """The UAPI backend with a `set_config` that applies only the difference.

    No `replace_peers`: unchanged peers are not mentioned, changed ones get only their
    changed fields (allowed_ips replaced as a set), missing ones `remove=true`.
    """

    def set_config(self, config: WireguardConfig) -> None:
        current = self.get_config()
        lines = ["set=1"]
        if config.private_key is not None and config.private_key != current.private_key:
            lines.append(f"private_key={config.private_key.hex}")
        if config.listen_port is not None and config.listen_port != current.listen_port:
            lines.append(f"listen_port={config.listen_port}")
        for key, peer in config.peers.items():
            lines.extend(peer_lines(peer, current.peers.get(key)))
        lines.extend(
            f"public_key={key.hex}\nremove=true" for key in current.peers if key not in config.peers
        )
        if len(lines) == 1:
            return
        self.uapi_socket.sendall(("\n".join(lines) + "\n\n").encode())
        reply = dict(self._recvmsg())
        if reply.get("errno") != "0":
            raise RuntimeError(f"UAPI set failed with errno {reply.get('errno')}")


def peer_lines(peer: WireguardPeer, current: WireguardPeer | None) -> list[str]:
    lines: list[str] = []
    endpoint = f"{peer.endpoint_host}:{peer.endpoint_port}"
    if ":" in str(peer.endpoint_host):
        endpoint = f"[{peer.endpoint_host}]:{peer.endpoint_port}"
    if current is None or (current.endpoint_host, current.endpoint_port) != (
        peer.endpoint_host,
        peer.endpoint_port,
    ):
        lines.append(f"endpoint={endpoint}")
    if current is None or current.persistent_keepalive != peer.persistent_keepalive:
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive or 0}")
    if current is None or set(current.allowed_ips) != set(peer.allowed_ips):
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    if not lines:
        return []
    return [f"public_key={peer.public_key.hex}", *lines]


class WireguardGoProcess:
    """A `wireguard-go -f IFNAME` child: started, watched and stopped by PID."""

    def __init__(self, ifname: str, *, netns: str | None, log_path: Path) -> None:
        self.ifname = ifname
        self._netns = netns
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        argv = [WIREGUARD_GO, "-f", self.ifname]
        if self._netns:  # tests only: `ip netns exec` exec()s, the PID stays wireguard-go's
            argv = ["ip", "netns", "exec", self._netns, *argv]
        try:
            with self._log_path.open("wb") as sink:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    env={**os.environ, "LOG_LEVEL": "error"},
                    start_new_session=True,  # our terminal's ^C must not cut the tunnel
                )
        except OSError as exc:
            raise VpnError(f"vpn: cannot start {WIREGUARD_GO}: {exc}") from exc
        wait_for(self._uapi_ready, f"{WIREGUARD_GO} {self.ifname} UAPI socket", self._died)

    def _uapi_ready(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(WG_UAPI_SOCKET_DIR / f"{self.ifname}.sock"))
            return True
        return False

    def _died(self) -> str | None:
        if self._proc is None or self._proc.poll() is None:
            return None
        tail = self._log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return f"exited with {self._proc.returncode}: {' | '.join(tail)}"

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL. Returns the exit status (None if never started)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "vpn: %s ignored SIGTERM for %s s -> SIGKILL", self.ifname, _STOP_TIMEOUT_S
                )
                self._proc.kill()
        status = self._proc.wait()
        if not self._uapi_ready():  # killed hard, it leaves its socket file behind
            (WG_UAPI_SOCKET_DIR / f"{self.ifname}.sock").unlink(missing_ok=True)
        return status


def wait_for(ready: Callable[[], bool], what: str, failed: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not ready():
        reason = failed()
        if reason is not None:
            raise VpnError(f"vpn: {what} never came: {reason}")
        if time.monotonic() >= deadline:
            raise VpnError(f"vpn: {what} not ready within {_START_TIMEOUT_S} s")
        time.sleep(_POLL_S)  # polling with a deadline: the child gives no other signal
