"""Which MAC names the provisioning file (SPEC §7 `mac_interface`): `b827eb12ab34`.

Owns: reading an interface's hardware address from sysfs and choosing the interface when
none is configured: the first by name that is not `lo` and has a non-zero Ethernet address.
Must not touch: the interfaces themselves (read only), anything outside the sysfs root.
"""

from __future__ import annotations

import re
from pathlib import Path

from phoned.errors import ProvisioningError

#: Where Linux lists the network interfaces.
SYS_CLASS_NET = Path("/sys/class/net")

_ETHERNET = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_NO_ADDRESS = "000000000000"


def interface_mac(name: str = "", *, sys_class_net: Path = SYS_CLASS_NET) -> str:
    """The MAC address of interface `name`, or of the first suitable one when `name` is "".

    Args:
        name: `[provisioning] mac_interface`; "" = the first interface, sorted by name,
            that is not `lo` and whose address is a non-zero Ethernet (6-byte) address.
        sys_class_net: the sysfs directory of the interfaces (tests hand in a fake one).

    Returns:
        12 lowercase hex digits, no colons: "b827eb12ab34".

    Raises:
        ProvisioningError: no such interface, its address cannot be read or is not an
            Ethernet address, or (with `name` "") no interface has one.
    """
    if name:
        return _named(name, sys_class_net)
    try:
        names = sorted(entry.name for entry in sys_class_net.iterdir())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProvisioningError(f"provisioning: cannot list {sys_class_net}: {reason}") from exc
    for candidate in names:
        if candidate == "lo":
            continue
        try:
            mac = _read(sys_class_net / candidate / "address")
        except OSError:
            continue  # an interface without a readable address cannot name the file
        if mac is not None and mac != _NO_ADDRESS:
            return mac
    raise ProvisioningError(
        f"provisioning: no network interface with a MAC address in {sys_class_net} "
        "(set [provisioning] mac_interface)"
    )


def _named(name: str, sys_class_net: Path) -> str:
    if "/" in name or name in {".", ".."}:
        raise ProvisioningError(f"provisioning: {name!r} is not a network interface name")
    path = sys_class_net / name / "address"
    if not (sys_class_net / name).exists():
        raise ProvisioningError(f"provisioning: no network interface {name} ({path} missing)")
    try:
        mac = _read(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProvisioningError(f"provisioning: cannot read {path}: {reason}") from exc
    if mac is None or mac == _NO_ADDRESS:
        raise ProvisioningError(f"provisioning: interface {name} has no MAC address")
    return mac


def _read(path: Path) -> str | None:
    """The 12 hex digits in a sysfs `address` file; None when it holds no Ethernet address.

    Raises:
        OSError: the file cannot be read.
    """
    text = path.read_text(encoding="ascii", errors="replace").strip().lower()
    if not _ETHERNET.fullmatch(text):
        return None
    return text.replace(":", "")
