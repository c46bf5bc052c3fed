"""The VPN lab itself (issue 4): WireGuard endpoints, app servers, shared network, SIP.

The phone side is a `wireguard-go` set up by hand here (`phone_wg`), not the service, so
these tests say whether the lab is sound before the service is judged against it.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phoned.config.settings import VpnSettings
from phonelab.apps import AppServer, http_get
from phonelab.errors import LabError
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx, options_round_trip
from phonelab.netns import PBX1_IP, PHONE_IP, Lab, netns_socket
from phonelab.phone import render_toml
from phonelab.wireguard import (
    PHONE_TUNNEL_CIDR,
    PHONE_TUNNEL_IP,
    SHARED_IP,
    SHARED_NET,
    VpnLab,
    WireGuardEndpoint,
    make_keypair,
    open_vpn_lab,
    unique_ifname,
)

MakePbx = Callable[..., KamailioPbx]
PRIMARY_NET = "198.18.1.0/24"
BACKUP_NET = "198.18.2.0/24"


@pytest.fixture
def phone_wg(lab: Lab, vpn_lab: VpnLab, tmp_path: Path) -> Iterator[WireGuardEndpoint]:
    """The phone's side by hand: both peers, the shared network on the primary's."""
    end = WireGuardEndpoint(
        "phone", lab.phone, host=PHONE_IP, tunnel_cidr=PHONE_TUNNEL_CIDR, workdir=tmp_path,
        ifname=vpn_lab.phone_ifname, private_key_file=vpn_lab.phone_key_file,
    )  # fmt: skip
    with end:
        primary, backup = vpn_lab.primary, vpn_lab.backup
        end.add_peer(primary.public_key, [PRIMARY_NET, SHARED_NET], endpoint=primary.endpoint)
        end.add_peer(backup.public_key, [BACKUP_NET], endpoint=backup.endpoint)
        yield end


def _get(lab: Lab, host: str, path: str) -> str:
    return http_get(lab.phone, host, 80, path, timeout_s=3.0)


def test_make_keypair_writes_a_0600_key_whose_public_half_is_returned(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the key's mode
    try:
        path, public = make_keypair(tmp_path, "k")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    derived = subprocess.run(
        ["wg", "pubkey"], input=path.read_text(), capture_output=True, text=True, check=True
    ).stdout.strip()
    assert public == derived
    assert len(base64.b64decode(public)) == 32
    with pytest.raises(LabError, match="cannot create key file"):
        make_keypair(tmp_path, "k")  # never overwrites a key


def test_unique_ifnames_are_distinct_and_fit_linux() -> None:
    names = {unique_ifname("ph") for _ in range(50)}
    assert len(names) == 50
    assert all(len(name) <= 15 for name in names)
    with pytest.raises(LabError, match="over 15"):
        unique_ifname("much-too-long")


def test_handshake_completes_with_each_endpoint(
    lab: Lab, vpn_lab: VpnLab, phone_wg: WireGuardEndpoint
) -> None:
    assert phone_wg.latest_handshakes() == {
        vpn_lab.primary.public_key: 0,
        vpn_lab.backup.public_key: 0,
    }
    for host in (vpn_lab.primary_host, vpn_lab.backup_host):
        with netns_socket(lab.phone) as sock:  # any packet into the tunnel starts it
            sock.sendto(b"knock", (host, 9))
    for pbx in (vpn_lab.primary, vpn_lab.backup):
        assert phone_wg.wait_handshake(pbx.public_key) > 0
        assert pbx.wait_handshake(vpn_lab.phone_public_key) > 0


def test_apps_answer_through_each_tunnel_with_their_pbx_name(
    lab: Lab, vpn_lab: VpnLab, phone_wg: WireGuardEndpoint
) -> None:
    assert _get(lab, vpn_lab.primary_host, "/apps/contacts") == "pbx1 /apps/contacts\n"
    assert _get(lab, vpn_lab.backup_host, "/apps/vm?x=1") == "pbx2 /apps/vm?x=1\n"
    first = vpn_lab.primary_apps.requests()
    assert [(r.path, r.client, r.local) for r in first] == [
        ("/apps/contacts", PHONE_TUNNEL_IP, vpn_lab.primary_host)
    ]
    assert [r.client for r in vpn_lab.backup_apps.requests()] == [PHONE_TUNNEL_IP]


def test_apps_are_not_reachable_outside_the_tunnel(lab: Lab, vpn_lab: VpnLab) -> None:
    # No tunnel on the phone: no route to 198.18.1.0/24.
    with pytest.raises(OSError, match="Network is unreachable"):
        _get(lab, vpn_lab.primary_host, "/apps/contacts")
    with pytest.raises(ConnectionRefusedError):  # the underlay address serves no apps
        _get(lab, PBX1_IP, "/apps/contacts")
    assert vpn_lab.primary_apps.requests() == []


def test_shared_address_answers_from_the_peer_holding_the_routes(
    lab: Lab, vpn_lab: VpnLab, phone_wg: WireGuardEndpoint
) -> None:
    primary, backup = vpn_lab.primary, vpn_lab.backup
    assert _get(lab, SHARED_IP, "/who") == "pbx1 /who\n"

    # SPEC §6 failover: the routes move to the backup's peer (WireGuard takes them off
    # the primary's: an allowed IP belongs to one peer only).
    phone_wg.add_peer(backup.public_key, [BACKUP_NET, SHARED_NET])
    assert phone_wg.allowed_ips()[primary.public_key] == [PRIMARY_NET]
    assert _get(lab, SHARED_IP, "/who") == "pbx2 /who\n"

    phone_wg.add_peer(primary.public_key, [PRIMARY_NET, SHARED_NET])  # failback
    assert _get(lab, SHARED_IP, "/who") == "pbx1 /who\n"
    assert [r.local for r in vpn_lab.backup_apps.requests()] == [SHARED_IP]
    assert [r.local for r in vpn_lab.primary_apps.requests()] == [SHARED_IP, SHARED_IP]


@pytest.mark.parametrize("role", ["pbx1", "pbx2"])
def test_kamailio_on_the_tunnel_address_answers_options_through_the_tunnel(
    lab: Lab,
    vpn_lab: VpnLab,
    phone_wg: WireGuardEndpoint,
    make_tunnel_pbx: MakePbx,
    role: str,
) -> None:
    pbx = make_tunnel_pbx(role)
    call_id = f"vpn-{uuid.uuid4().hex}"
    reply = options_round_trip(lab.phone, pbx.host, 5060, call_id, timeout_s=2.0)
    assert reply is not None
    assert reply.startswith(b"SIP/2.0 200")
    seen = [r for r in pbx.requests() if r.endswith(f" {call_id}")]
    assert len(seen) == 1
    assert seen[0].startswith(f"OPTIONS from {PHONE_TUNNEL_IP}:")


def test_blackholing_the_pbx_namespace_silences_sip_through_its_tunnel(
    lab: Lab,
    vpn_lab: VpnLab,
    phone_wg: WireGuardEndpoint,
    make_tunnel_pbx: MakePbx,
    faults: Faults,
) -> None:
    pbx = make_tunnel_pbx("pbx1")
    faults.blackhole(lab.pbx1)  # udp dport 5060: decrypted tunnel traffic is dropped too
    assert options_round_trip(lab.phone, pbx.host, 5060, f"vpn-{uuid.uuid4().hex}", 0.5) is None
    # ...while the tunnel and the apps behind it stay up (only SIP is silenced).
    assert _get(lab, vpn_lab.primary_host, "/still") == "pbx1 /still\n"


def test_settings_tables_parse_as_an_enabled_vpn(vpn_lab: VpnLab, tmp_path: Path) -> None:
    from phoned.config.loader import parse_settings  # noqa: PLC0415 - only this test needs it

    text = render_toml(
        {"account": {"username": "1001", "password": "x"}, "server": {"address": "198.18.1.1"}}
    )
    text += "\n" + render_toml(vpn_lab.settings_tables())
    vpn: VpnSettings = parse_settings(text, "phoned.toml").vpn
    assert vpn.enabled
    assert vpn.interface == vpn_lab.phone_ifname
    assert vpn.address == PHONE_TUNNEL_CIDR
    assert vpn.routes == (SHARED_NET,)
    assert vpn.primary is not None
    assert vpn.backup is not None
    assert (vpn.primary.endpoint, vpn.primary.allowed_ips) == ("192.0.2.11:51820", (PRIMARY_NET,))
    assert (vpn.backup.endpoint, vpn.backup.allowed_ips) == ("192.0.2.12:51820", (BACKUP_NET,))
    assert vpn.backup.public_key == vpn_lab.backup.public_key


def _addresses(lab: Lab, role: str, dev: str) -> str:
    return lab.run(role, ["ip", "-4", "-o", "addr", "show", "dev", dev]).stdout


def test_everything_is_torn_down(lab: Lab, tmp_path: Path) -> None:
    with open_vpn_lab(lab, tmp_path) as built:
        ends = (built.primary, built.backup)
        apps: tuple[AppServer, ...] = (built.primary_apps, built.backup_apps)
        assert all(end.uapi_socket.is_socket() for end in ends)
        assert SHARED_IP in _addresses(lab, "pbx1", "lo")
        assert all(server.running for server in apps)
    assert not any(end.running or end.uapi_socket.exists() for end in ends)
    assert not any(server.running for server in apps)
    for role, end in (("pbx1", built.primary), ("pbx2", built.backup)):
        assert SHARED_IP not in _addresses(lab, role, "lo")
        links = lab.run(role, ["ip", "-o", "link", "show"]).stdout
        assert end.ifname not in links
