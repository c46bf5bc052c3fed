"""Tests of phoned.config.changes: every leaf key, apps, VPN peers, secrets, order."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import phoned
from phoned.config.changes import Change, describe_changes, render, setting_changes
from phoned.config.loader import (
    AccountSettings,
    AppLink,
    BlfSettings,
    ProvisioningSettings,
    RedundancySettings,
    ServerSettings,
    Settings,
    VpnPeer,
    VpnSettings,
    parse_settings,
)

SECRET = "s3cret-Pa55"  # noqa: S105 (the SIP password that must never be shown)
PROV_SECRET = "pr0v-Pa55"  # noqa: S105 (the provisioning password, never shown)
WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
WG_KEY_2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
AGENT = f"phoned/{phoned.__version__}"

PRIMARY = VpnPeer("192.0.2.11:51820", WG_KEY, ("198.18.1.0/24",))
BACKUP = VpnPeer("192.0.2.12:51820", WG_KEY_2, ("198.18.2.0/24",))
#: Settings with a value in every table, both VPN peers and two apps.
BASE = Settings(
    account=AccountSettings(username="1001", password=SECRET, auth_username="1001"),
    server=ServerSettings(address="203.0.113.10"),
    redundancy=RedundancySettings(sip_keep_alive_interval=2),
    blf=BlfSettings(("1002",)),
    apps=(
        AppLink("contacts", "http://203.0.113.10/apps/contacts"),
        AppLink("vm", "https://pbx1/vm", "https://pbx2/vm"),
    ),
    vpn=VpnSettings(
        enabled=True,
        private_key_file="/etc/phoned/wg.key",
        address="198.18.0.2/32",
        routes=("198.18.100.0/24",),
        primary=PRIMARY,
        backup=BACKUP,
    ),
    provisioning=ProvisioningSettings(
        url="https://prov.example.com/",
        username="phone",
        password_file="/etc/phoned/prov.pass",  # noqa: S106 (a path, not a password)
        password=PROV_SECRET,
    ),
    source="/etc/phoned/phoned.toml",
)

#: Every leaf key, a new value for it, and how the change is described.
CASES: list[tuple[str, object, str]] = [
    ("account.username", "1009", 'account.username "1001" -> "1009"'),
    ("account.password", "other-pass", "account.password *** -> ***"),
    (
        "account.password_file",
        "/etc/phoned/sip.pass",
        'account.password_file "" -> "/etc/phoned/sip.pass"',
    ),
    ("account.auth_username", "auth1", 'account.auth_username "1001" -> "auth1"'),
    ("account.display_name", "Desk 1", 'account.display_name "" -> "Desk 1"'),
    ("account.domain", "pbx.example.com", 'account.domain "" -> "pbx.example.com"'),
    ("server.address", "203.0.113.11", 'server.address "203.0.113.10" -> "203.0.113.11"'),
    ("server.port", 0, "server.port 5060 -> 0"),
    ("server.transport", "tls", 'server.transport "udp" -> "tls"'),
    ("server.tls_ca_file", "/etc/ssl/ca.pem", 'server.tls_ca_file "" -> "/etc/ssl/ca.pem"'),
    ("redundancy.backup_destination", True, "redundancy.backup_destination false -> true"),
    (
        "redundancy.backup_destination_address",
        "203.0.113.20",
        'redundancy.backup_destination_address "" -> "203.0.113.20"',
    ),
    ("redundancy.backup_destination_port", 5070, "redundancy.backup_destination_port 5060 -> 5070"),
    ("redundancy.outbound_proxy", "proxy1", 'redundancy.outbound_proxy "" -> "proxy1"'),
    ("redundancy.outbound_proxy_port", 5080, "redundancy.outbound_proxy_port 5060 -> 5080"),
    (
        "redundancy.backup_outbound_proxy",
        "proxy2",
        'redundancy.backup_outbound_proxy "" -> "proxy2"',
    ),
    (
        "redundancy.backup_outbound_proxy_port",
        5090,
        "redundancy.backup_outbound_proxy_port 5060 -> 5090",
    ),
    ("redundancy.sip_keep_alive_mode", False, "redundancy.sip_keep_alive_mode true -> false"),
    ("redundancy.sip_keep_alive_interval", 4, "redundancy.sip_keep_alive_interval 2 -> 4"),
    ("redundancy.failback_cycles", 3, "redundancy.failback_cycles 1 -> 3"),
    ("sip.local_port", 5062, "sip.local_port 5060 -> 5062"),
    ("sip.register_expires", 600, "sip.register_expires 300 -> 600"),
    ("sip.user_agent", "desk/2", f'sip.user_agent "{AGENT}" -> "desk/2"'),
    ("sip.auto_answer", True, "sip.auto_answer false -> true"),
    ("blf.keys", ("1002", "1003"), 'blf.keys ["1002"] -> ["1002", "1003"]'),
    (
        "apps.contacts.url",
        "http://203.0.113.10/c2",
        'apps.contacts.url "http://203.0.113.10/apps/contacts" -> "http://203.0.113.10/c2"',
    ),
    (
        "apps.contacts.backup_url",
        "http://pbx2/c",
        'apps.contacts.backup_url "" -> "http://pbx2/c"',
    ),
    ("apps.vm.url", "https://pbx1/vm2", 'apps.vm.url "https://pbx1/vm" -> "https://pbx1/vm2"'),
    ("apps.vm.backup_url", "", 'apps.vm.backup_url "https://pbx2/vm" -> ""'),
    ("vpn.enabled", False, "vpn.enabled true -> false"),
    ("vpn.interface", "wg0", 'vpn.interface "wg-phoned" -> "wg0"'),
    (
        "vpn.private_key_file",
        "/etc/phoned/wg2.key",
        'vpn.private_key_file "/etc/phoned/wg.key" -> "/etc/phoned/wg2.key"',
    ),
    ("vpn.address", "198.18.0.3/32", 'vpn.address "198.18.0.2/32" -> "198.18.0.3/32"'),
    ("vpn.routes", (), 'vpn.routes ["198.18.100.0/24"] -> []'),
    (
        "vpn.primary.endpoint",
        "192.0.2.21:51820",
        'vpn.primary.endpoint "192.0.2.11:51820" -> "192.0.2.21:51820"',
    ),
    ("vpn.primary.public_key", WG_KEY_2, f'vpn.primary.public_key "{WG_KEY}" -> "{WG_KEY_2}"'),
    (
        "vpn.primary.allowed_ips",
        ("198.18.1.0/24", "198.18.3.0/24"),
        'vpn.primary.allowed_ips ["198.18.1.0/24"] -> ["198.18.1.0/24", "198.18.3.0/24"]',
    ),
    (
        "vpn.backup.endpoint",
        "[2001:db8::2]:51820",
        'vpn.backup.endpoint "192.0.2.12:51820" -> "[2001:db8::2]:51820"',
    ),
    ("vpn.backup.public_key", WG_KEY, f'vpn.backup.public_key "{WG_KEY_2}" -> "{WG_KEY}"'),
    (
        "vpn.backup.allowed_ips",
        ("198.18.4.0/24",),
        'vpn.backup.allowed_ips ["198.18.2.0/24"] -> ["198.18.4.0/24"]',
    ),
    (
        "provisioning.url",
        "",
        'provisioning.url "https://prov.example.com/" -> ""',
    ),
    ("provisioning.resync_interval", 3600, "provisioning.resync_interval 0 -> 3600"),
    (
        "provisioning.tls_ca_file",
        "/etc/ssl/prov.pem",
        'provisioning.tls_ca_file "" -> "/etc/ssl/prov.pem"',
    ),
    ("provisioning.username", "phone2", 'provisioning.username "phone" -> "phone2"'),
    (
        "provisioning.password_file",
        "/etc/phoned/p2.pass",
        'provisioning.password_file "/etc/phoned/prov.pass" -> "/etc/phoned/p2.pass"',
    ),
    ("provisioning.password", "new-pass", "provisioning.password *** -> ***"),
    ("provisioning.mac_interface", "eth1", 'provisioning.mac_interface "" -> "eth1"'),
    ("provisioning.check_sync", False, "provisioning.check_sync true -> false"),
    ("board.profile", "rpi-st7735", 'board.profile "emulated" -> "rpi-st7735"'),
    (
        "service.control_socket",
        "/run/phoned/c.sock",
        'service.control_socket "/run/phoned/control.sock" -> "/run/phoned/c.sock"',
    ),
    ("service.state_dir", "/data/phoned", 'service.state_dir "/var/lib/phoned" -> "/data/phoned"'),
]
SECRETS = {"account.password", "provisioning.password"}


def value_at(settings: Settings, key: str) -> Any:
    """The value of dotted `key` in `settings` (apps by name)."""
    table, *rest = key.split(".")
    if table == "apps":
        name, attribute = rest
        return next(getattr(app, attribute) for app in settings.apps if app.name == name)
    value: Any = getattr(settings, table)
    for part in rest:
        value = getattr(value, part)
    return value


def with_value(settings: Settings, key: str, new: Any) -> Settings:
    """`settings` with dotted `key` set to `new`, nothing else changed."""
    table, *rest = key.split(".")
    if table == "apps":
        name, attribute = rest
        changed: dict[str, Any] = {attribute: new}
        apps = tuple(replace(app, **changed) if app.name == name else app for app in settings.apps)
        return replace(settings, apps=apps)
    return replace(settings, **{table: _set(getattr(settings, table), rest, new)})


def _set(table: Any, parts: list[str], new: object) -> Any:
    head, *tail = parts
    return replace(table, **{head: _set(getattr(table, head), tail, new) if tail else new})


def leaf_keys(settings: Settings) -> set[str]:
    """Every leaf key of `settings`, found from the dataclasses themselves."""
    keys: set[str] = set()
    for table in fields(Settings):
        value = getattr(settings, table.name)
        if table.name == "apps":
            keys |= {f"apps.{app.name}.{attr}" for app in value for attr in ("url", "backup_url")}
        elif is_dataclass(value):
            keys |= _leaves(table.name, value)
    return keys


def _leaves(prefix: str, table: Any) -> set[str]:
    keys: set[str] = set()
    for field in fields(table):
        value = getattr(table, field.name)
        if is_dataclass(value):
            keys |= _leaves(f"{prefix}.{field.name}", value)
        else:
            keys.add(f"{prefix}.{field.name}")
    return keys


# ------------------------------------------------------------- every leaf key


def test_cases_cover_every_leaf_key() -> None:
    assert {key for key, _, _ in CASES} == leaf_keys(BASE)


@pytest.mark.parametrize(("key", "new", "described"), CASES, ids=[key for key, _, _ in CASES])
def test_each_leaf_key_is_one_change(key: str, new: object, described: str) -> None:
    old = value_at(BASE, key)
    assert old != new

    changes = setting_changes(BASE, with_value(BASE, key, new))

    assert changes == [Change(key, old, new, secret=key in SECRETS)]
    assert changes[0].table == key.partition(".")[0]
    assert changes[0].describe() == described
    assert describe_changes(changes) == described


@pytest.mark.parametrize("key", sorted(SECRETS))
def test_secrets_are_never_shown(key: str) -> None:
    change = setting_changes(BASE, with_value(BASE, key, "brand-new-pass"))[0]

    assert change.secret
    for shown in (change.describe(), repr(change), describe_changes([change])):
        assert "***" in shown
        assert "brand-new-pass" not in shown
        assert SECRET not in shown
        assert PROV_SECRET not in shown


def test_password_read_from_a_file_that_changed_is_a_secret_change(tmp_path: Path) -> None:
    secret_file = tmp_path / "sip.pass"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    text = f'[account]\nusername = "1001"\npassword_file = "{secret_file}"\n'
    text += '[server]\naddress = "203.0.113.10"\n'
    before = parse_settings(text, "x")
    secret_file.write_text("rotated-pass")

    changes = setting_changes(before, parse_settings(text, "x"))

    assert [change.key for change in changes] == ["account.password"]
    assert describe_changes(changes) == "account.password *** -> ***"


def test_repr_of_a_plain_change_shows_its_values() -> None:
    change = Change("redundancy.failback_cycles", 1, 3)

    assert repr(change) == "Change(key='redundancy.failback_cycles', old=1, new=3, secret=False)"


# ---------------------------------------------------------------- apps, peers


def test_app_added() -> None:
    apps = (*BASE.apps, AppLink("notes", "http://203.0.113.10/notes"))

    changes = setting_changes(BASE, replace(BASE, apps=apps))

    assert changes == [Change("apps.notes", None, apps[-1])]
    assert changes[0].describe() == (
        'apps.notes (none) -> { url = "http://203.0.113.10/notes", backup_url = "" }'
    )


def test_app_removed() -> None:
    changes = setting_changes(BASE, replace(BASE, apps=BASE.apps[:1]))

    assert changes == [Change("apps.vm", BASE.apps[1], None)]
    assert changes[0].describe() == (
        'apps.vm { url = "https://pbx1/vm", backup_url = "https://pbx2/vm" } -> (none)'
    )


def test_apps_changed_removed_and_added_in_order() -> None:
    apps = (
        AppLink("vm", "https://pbx1/vm", "https://pbx3/vm"),
        AppLink("notes", "http://pbx1/notes"),
    )

    changes = setting_changes(BASE, replace(BASE, apps=apps))

    assert [change.key for change in changes] == [
        "apps.contacts",
        "apps.vm.backup_url",
        "apps.notes",
    ]


def test_apps_reordered_is_no_change() -> None:
    assert setting_changes(BASE, replace(BASE, apps=BASE.apps[::-1])) == []


def test_vpn_peer_appears_and_disappears() -> None:
    gone = setting_changes(BASE, replace(BASE, vpn=replace(BASE.vpn, backup=None)))
    back = setting_changes(replace(BASE, vpn=replace(BASE.vpn, backup=None)), BASE)

    assert gone == [Change("vpn.backup", BACKUP, None)]
    assert gone[0].describe() == (
        f'vpn.backup {{ endpoint = "192.0.2.12:51820", public_key = "{WG_KEY_2}",'
        ' allowed_ips = ["198.18.2.0/24"] } -> (none)'
    )
    assert back == [Change("vpn.backup", None, BACKUP)]
    assert back[0].describe().startswith("vpn.backup (none) -> { endpoint = ")


def test_vpn_peer_changed_key_by_key() -> None:
    peer = replace(PRIMARY, endpoint="192.0.2.21:51820", allowed_ips=("198.18.9.0/24",))

    changes = setting_changes(BASE, replace(BASE, vpn=replace(BASE.vpn, primary=peer)))

    assert [change.key for change in changes] == ["vpn.primary.endpoint", "vpn.primary.allowed_ips"]


# -------------------------------------------------------------- the whole list


def test_no_change() -> None:
    assert setting_changes(BASE, BASE) == []
    assert setting_changes(BASE, replace(BASE)) == []
    assert describe_changes([]) == "no change"


def test_source_is_not_a_setting() -> None:
    assert setting_changes(BASE, replace(BASE, source="<provisioning>")) == []


def test_changes_follow_the_file_order() -> None:
    new = with_value(BASE, "service.state_dir", "/data")
    new = with_value(new, "blf.keys", ())
    new = with_value(new, "redundancy.sip_keep_alive_interval", 4)
    new = with_value(new, "account.password", "other")
    new = with_value(new, "redundancy.backup_destination", True)
    new = with_value(new, "provisioning.check_sync", False)

    changes = setting_changes(BASE, new)

    assert describe_changes(changes) == (
        "account.password *** -> ***, "
        "redundancy.backup_destination false -> true, "
        "redundancy.sip_keep_alive_interval 2 -> 4, "
        'blf.keys ["1002"] -> [], '
        "provisioning.check_sync true -> false, "
        'service.state_dir "/var/lib/phoned" -> "/data"'
    )
    assert [change.table for change in changes] == [
        "account", "redundancy", "redundancy", "blf", "provisioning", "service",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", '""'),
        ('a"b', '"a\\"b"'),
        ("Zoë", '"Zoë"'),
        (True, "true"),
        (0, "0"),
        ((), "[]"),
        (("1002", "1003"), '["1002", "1003"]'),
        (None, "(none)"),
        (AppLink("c", "http://x/c"), '{ url = "http://x/c", backup_url = "" }'),
    ],
)
def test_render(value: object, shown: str) -> None:
    assert render(value) == shown


def test_quotes_in_a_value_are_escaped() -> None:
    changes = setting_changes(BASE, with_value(BASE, "account.display_name", 'Desk "1"'))

    assert describe_changes(changes) == 'account.display_name "" -> "Desk \\"1\\""'
