"""What the tunnel reads from `[vpn]` when it starts (SPEC §6, §10): its private key file and
each peer's endpoint address.

Owns: opening and checking the key file (a regular file, mode 0600, owned as the loader
checks: again here, so a file swapped in since the load is refused too) and turning
`host:port` into the address and port WireGuard takes, resolving a name once.
Rule: nothing secret leaves this module but the key itself, to `vpn`: never the file's
content in a message or a log line.
Must not touch: the interface, its peers or routes (`vpn`, `routes`), or the file it reads.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat

from wireguard_tools import WireguardKey

from phoned.config.rules import secret_owners
from phoned.errors import VpnError


def read_private_key(path: str) -> WireguardKey:
    """The WireGuard private key in `path` (base64 as `wg genkey` writes it).

    Raises:
        VpnError: missing, not a regular file, readable by group or others (SPEC §6:
            0600 or refused), or not a key. The message never holds the file's content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise VpnError(f"vpn: cannot open private key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise VpnError(f"vpn: private key file {path} is not a regular file")
        if info.st_mode & 0o077:
            mode = f"{stat.S_IMODE(info.st_mode):04o}"
            raise VpnError(
                f"vpn: private key file {path} has mode {mode}, readable by others -> "
                f"refused; make it 0600 (chmod 600 {path})"
            )
        if info.st_uid not in (owners := secret_owners()):  # as checked at load (SPEC §10)
            allowed = " or ".join(owners.values())
            raise VpnError(f"vpn: private key file {path} is not owned by {allowed} -> refused")
        text = handle.read(256).strip()
    try:
        return WireguardKey(text)
    except (ValueError, TypeError):
        # the cause would quote the content: drop it
        raise VpnError(f"vpn: private key file {path} holds no WireGuard key") from None


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """("192.0.2.11", 51820) from "192.0.2.11:51820", "[2001:db8::1]:51820" or "pbx:51820".

    A name is resolved once, here (WireGuard takes addresses only).

    Raises:
        VpnError: no port, or a name that does not resolve.
    """
    host, sep, port_text = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not host:
        raise VpnError(f"vpn: endpoint {endpoint!r} is not host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise VpnError(f"vpn: endpoint {endpoint} does not resolve: {exc}") from exc
        host = str(infos[0][4][0])
    return host, int(port_text)
