"""Which MAC names the provisioning file (SPEC §7 `mac_interface`), on a fake sysfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoned.errors import ProvisioningError
from phoned.provision.mac import interface_mac


def _sysfs(root: Path, addresses: dict[str, str]) -> Path:
    for name, address in addresses.items():
        (root / name).mkdir(parents=True)
        (root / name / "address").write_text(address + "\n")
    return root


@pytest.fixture
def net(tmp_path: Path) -> Path:
    return _sysfs(
        tmp_path / "net",
        {
            "lo": "00:00:00:00:00:00",
            "dummy0": "00:00:00:00:00:00",
            "eth0": "B8:27:EB:12:AB:34",
            "wlan0": "b8:27:eb:56:cd:78",
            "ib0": "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0b:0d:f1",  # 20 bytes
            "wg0": "",  # a tunnel: no hardware address
        },
    )


def test_a_named_interface_gives_12_lowercase_hex_digits(net: Path) -> None:
    assert interface_mac("eth0", sys_class_net=net) == "b827eb12ab34"
    assert interface_mac("wlan0", sys_class_net=net) == "b827eb56cd78"


def test_without_a_name_the_first_by_name_with_a_real_address(net: Path) -> None:
    # dummy0 (zeros) sorts first, lo is skipped: eth0
    assert interface_mac(sys_class_net=net) == "b827eb12ab34"


def test_interfaces_without_an_ethernet_address_are_skipped(tmp_path: Path) -> None:
    net = _sysfs(
        tmp_path / "net", {"a-ib0": "80:" * 19 + "01", "b-wg0": "", "z-eth": "02:00:00:00:00:01"}
    )

    assert interface_mac(sys_class_net=net) == "020000000001"


def test_an_unreadable_address_is_skipped_when_choosing(tmp_path: Path) -> None:
    net = _sysfs(tmp_path / "net", {"eth1": "02:00:00:00:00:01"})
    (net / "eth0" / "address").mkdir(parents=True)  # cannot be read as a file

    assert interface_mac(sys_class_net=net) == "020000000001"


def test_no_interface_with_an_address_is_an_error(tmp_path: Path) -> None:
    net = _sysfs(tmp_path / "net", {"lo": "00:00:00:00:00:00", "wg0": ""})

    with pytest.raises(ProvisioningError) as caught:
        interface_mac(sys_class_net=net)

    assert str(caught.value) == (
        f"provisioning: no network interface with a MAC address in {net} "
        "(set [provisioning] mac_interface)"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("eth9", "provisioning: no network interface eth9 ({net}/eth9/address missing)"),
        ("dummy0", "provisioning: interface dummy0 has no MAC address"),
        ("ib0", "provisioning: interface ib0 has no MAC address"),
        ("wg0", "provisioning: interface wg0 has no MAC address"),
        ("../etc", "provisioning: '../etc' is not a network interface name"),
        ("..", "provisioning: '..' is not a network interface name"),
    ],
)
def test_a_named_interface_without_a_mac_is_an_error(net: Path, name: str, message: str) -> None:
    with pytest.raises(ProvisioningError) as caught:
        interface_mac(name, sys_class_net=net)

    assert str(caught.value) == message.format(net=net)


def test_a_named_unreadable_address_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "eth0" / "address").mkdir(parents=True)

    with pytest.raises(ProvisioningError, match=r"cannot read .*/eth0/address: Is a directory"):
        interface_mac("eth0", sys_class_net=tmp_path)


def test_a_missing_sysfs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match=r"^provisioning: cannot list .*/nothing: No such"):
        interface_mac(sys_class_net=tmp_path / "nothing")


def test_the_real_loopback_has_no_mac() -> None:
    # /sys/class/net/lo exists on every Linux and its address is all zeros
    with pytest.raises(ProvisioningError, match=r"^provisioning: interface lo has no MAC address$"):
        interface_mac("lo")
