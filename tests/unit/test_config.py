"""Tests of phoned.config.loader: loading, defaults, every validation rule and its message."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import phoned
from phoned.config.check import scan_lines
from phoned.config.loader import (
    REDACTED,
    AccountSettings,
    ServerSettings,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
)
from phoned.config.rules import is_host
from phoned.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "board" / "phoned.toml"
SECRET = "s3cret-Pa55"  # noqa: S105 (the test password that must never be shown)
ACCOUNT = f'[account]\nusername = "1001"\npassword = "{SECRET}"\n'
SERVER = '[server]\naddress = "203.0.113.10"\n'
#: Lines 1..5; text appended to it starts at line 6, still inside [server].
BASE = ACCOUNT + SERVER
WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def errors_of(text: str) -> list[str]:
    """The errors parse_settings reports for `text` (source "phoned.toml")."""
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "phoned.toml")
    assert isinstance(info.value, SettingsError)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def in_table(table: str, *lines: str) -> str:
    """BASE plus `[table]` at line 6 and `lines` from line 7."""
    return BASE + f"[{table}]\n" + "".join(f"{line}\n" for line in lines)


def lines(*text: str) -> str:
    """`text` as lines of a file."""
    return "".join(f"{line}\n" for line in text)


def in_account(*lines: str) -> str:
    """[account] with `lines` from line 4, then [server]."""
    return ACCOUNT + "".join(f"{line}\n" for line in lines) + SERVER


def private_file(tmp_path: Path, content: str, mode: int, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


# ------------------------------------------------------------------ good files


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)

    assert settings.source == str(EXAMPLE)
    assert settings.backup_enabled
    assert settings.redundancy.backup_destination_address == "203.0.113.20"
    assert settings.blf.keys == ("1002", "1003")
    assert [app.name for app in settings.apps] == ["contacts", "voicemail"]
    assert settings.apps[1].backup_url == "https://203.0.113.20/apps/vm"
    assert not settings.vpn.enabled


def test_example_config_names_every_key() -> None:
    text = EXAMPLE.read_text()
    named = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    named |= set(re.findall(r"^\[vpn\.([a-z]+)\]", text, flags=re.MULTILINE))
    minimal = parse_settings(BASE, "x").redacted()
    expected = {key for section in minimal.values() if isinstance(section, dict) for key in section}
    assert expected - named == set()


def test_example_config_with_vpn_enabled_loads(tmp_path: Path) -> None:
    key_file = private_file(tmp_path, WG_KEY + "\n", 0o600, "wg.key")
    text = EXAMPLE.read_text().replace("enabled = false", "enabled = true")
    text = text.replace('"/etc/phoned/wg.key"', f'"{key_file}"')
    # SPEC §6: with the VPN on, each server lies in its peer's allowed_ips
    text = text.replace('address = "203.0.113.10"', 'address = "198.18.1.10"')
    text = text.replace('address = "203.0.113.20"', 'address = "198.18.2.10"')

    vpn = parse_settings(text, "phoned.toml").vpn

    assert vpn.enabled
    assert vpn.private_key_file == str(key_file)
    assert vpn.address == "198.18.0.2/32"
    assert vpn.routes == ("198.18.100.0/24",)
    assert vpn.primary is not None
    assert vpn.primary.endpoint == "192.0.2.11:51820"
    assert vpn.primary.allowed_ips == ("198.18.1.0/24",)
    assert vpn.backup is not None
    assert vpn.backup.public_key == "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="


def test_minimal_file_takes_every_default() -> None:
    settings = parse_settings(BASE, "phoned.toml")

    assert settings.account.auth_username == "1001"  # default: username
    assert settings.account.domain == ""  # default: the address of the server in use
    assert (settings.server.port, settings.server.transport) == (5060, "udp")
    red = settings.redundancy
    assert not red.backup_destination
    assert not settings.backup_enabled
    assert red.backup_destination_port == red.outbound_proxy_port == 5060
    assert red.backup_outbound_proxy_port == 5060
    assert red.sip_keep_alive_mode
    assert (red.sip_keep_alive_interval, red.failback_cycles) == (15, 1)
    assert (settings.sip.local_port, settings.sip.register_expires) == (5060, 300)
    assert settings.sip.user_agent == f"phoned/{phoned.__version__}"
    assert settings.blf.keys == ()
    assert settings.apps == ()
    assert (settings.vpn.enabled, settings.vpn.interface) == (False, "wg-phoned")
    assert (settings.provisioning.url, settings.provisioning.resync_interval) == ("", 0)
    assert settings.board.profile == "emulated"
    assert settings.service.control_socket == "/run/phoned/control.sock"
    assert settings.service.state_dir == "/var/lib/phoned"
    assert settings.source == "phoned.toml"


def test_backup_enabled_needs_switch_and_address() -> None:
    on = in_table(
        "redundancy", "backup_destination = true", 'backup_destination_address = "pbx2.example.com"'
    )
    off = in_table("redundancy", 'backup_destination_address = "pbx2.example.com"')

    assert parse_settings(on, "x").backup_enabled
    assert not parse_settings(off, "x").backup_enabled


@pytest.mark.parametrize(
    "address", ["203.0.113.10", "2001:db8::10", "pbx.example.com", "pbx.example.com.", "pbx-1"]
)
def test_server_address_accepts_ip_or_host_name(address: str) -> None:
    text = ACCOUNT + f'[server]\naddress = "{address}"\n'

    assert parse_settings(text, "x").server.address == address


def test_inline_app_table_and_ipv6_endpoint(tmp_path: Path) -> None:
    key_file = private_file(tmp_path, WG_KEY, 0o600)
    text = (
        ACCOUNT
        + '[server]\naddress = "2001:db8:1::10"\n'
        + lines(
            "[vpn]",
            "enabled = true",
            f'private_key_file = "{key_file}"',
            'address = "2001:db8:ff::2/128"',
            f'primary = {{ endpoint = "[2001:db8::1]:51820", public_key = "{WG_KEY}",'
            ' allowed_ips = ["2001:db8:1::/48"] }',
        )
    )

    vpn = parse_settings(text, "x").vpn

    assert vpn.primary is not None
    assert vpn.primary.endpoint == "[2001:db8::1]:51820"
    assert vpn.backup is None


def test_disabled_vpn_keys_are_not_checked() -> None:
    text = in_table("vpn", "enabled = false", 'address = "nonsense"', "[vpn.primary]", "x = 1")

    errors = errors_of(text)

    assert errors == ["phoned.toml:10: unknown key vpn.primary.x"]


# ---------------------------------------------------------------- one rule each

RULES = [
    # [server]: the key is appended to BASE at line 6
    (BASE + "port = 70000\n", "6: server.port must be 0..65535 (0 = DNS SRV), got 70000"),
    (BASE + "port = -1\n", "6: server.port must be 0..65535 (0 = DNS SRV), got -1"),
    (BASE + 'transport = "sctp"\n', '6: server.transport must be one of udp, tcp, tls, got "sctp"'),
    (BASE + 'transport = "UDP"\n', '6: server.transport must be one of udp, tcp, tls, got "UDP"'),
    (
        BASE + 'tls_ca_file = "ca.pem"\n',
        '6: server.tls_ca_file must be an absolute path, got "ca.pem"',
    ),
    (
        ACCOUNT + '[server]\naddress = "pbx_1.example.com"\n',
        '5: server.address must be an IP address or host name, got "pbx_1.example.com"',
    ),
    (
        ACCOUNT + '[server]\naddress = "203.0.113.300"\n',
        '5: server.address must be an IP address or host name, got "203.0.113.300"',
    ),
    (ACCOUNT + "[server]\naddress = 203\n", "5: server.address must be a string, got 203"),
    (ACCOUNT, "1: server.address is required"),
    # [account]: extra lines start at line 4
    ('[account]\npassword = "x"\n' + SERVER, "1: account.username is required"),
    (
        '[account]\nusername = "10 01"\npassword = "x"\n' + SERVER,
        '2: account.username must be a SIP user name (no spaces, "@" or ":"), got "10 01"',
    ),
    (
        in_account('auth_username = "a@b"'),
        '4: account.auth_username must be a SIP user name (no spaces, "@" or ":"), got "a@b"',
    ),
    (
        in_account('domain = "pbx..example.com"'),
        '4: account.domain must be an IP address or host name, got "pbx..example.com"',
    ),
    (
        in_account(r'display_name = "Bob\u0007"'),
        '4: account.display_name must be a string without control characters, got "Bob\\u0007"',
    ),
    (
        in_account('password_file = "sip.pass"'),
        '4: account.password_file must be an absolute path, got "sip.pass"',
    ),
    (
        in_account('password_file = "/etc/phoned/sip.pass"'),
        "4: account.password and account.password_file are both set; give only one",
    ),
    (
        '[account]\nusername = "1001"\n' + SERVER,
        "1: account.password or account.password_file is required",
    ),
    (
        '[account]\nusername = "1001"\npassword = ""\n' + SERVER,
        "3: account.password or account.password_file is required",
    ),
    # [redundancy] at line 6, keys from line 7
    (
        in_table("redundancy", "sip_keep_alive_interval = 0"),
        "7: redundancy.sip_keep_alive_interval must be 1..3600, got 0",
    ),
    (
        in_table("redundancy", "sip_keep_alive_interval = 3601"),
        "7: redundancy.sip_keep_alive_interval must be 1..3600, got 3601",
    ),
    (
        in_table("redundancy", "sip_keep_alive_interval = 1.5"),
        "7: redundancy.sip_keep_alive_interval must be an integer 1..3600, got 1.5",
    ),
    (
        in_table("redundancy", 'sip_keep_alive_interval = "15"'),
        '7: redundancy.sip_keep_alive_interval must be an integer 1..3600, got "15"',
    ),
    (
        in_table("redundancy", "failback_cycles = 0"),
        "7: redundancy.failback_cycles must be 1..100, got 0",
    ),
    (
        in_table("redundancy", "failback_cycles = 101"),
        "7: redundancy.failback_cycles must be 1..100, got 101",
    ),
    (
        in_table("redundancy", "backup_destination_port = 0"),
        "7: redundancy.backup_destination_port must be 1..65535, got 0",
    ),
    (
        in_table("redundancy", "outbound_proxy_port = 65536"),
        "7: redundancy.outbound_proxy_port must be 1..65535, got 65536",
    ),
    (
        in_table("redundancy", "backup_outbound_proxy_port = true"),
        "7: redundancy.backup_outbound_proxy_port must be an integer 1..65535, got true",
    ),
    (
        in_table("redundancy", 'backup_destination = "yes"'),
        '7: redundancy.backup_destination must be true or false, got "yes"',
    ),
    (
        in_table("redundancy", "sip_keep_alive_mode = 1"),
        "7: redundancy.sip_keep_alive_mode must be true or false, got 1",
    ),
    (
        in_table("redundancy", 'outbound_proxy = "-proxy.example.com"'),
        '7: redundancy.outbound_proxy must be an IP address or host name, got "-proxy.example.com"',
    ),
    (
        in_table("redundancy", "backup_outbound_proxy = 42"),
        "7: redundancy.backup_outbound_proxy must be a string, got 42",
    ),
    (
        in_table("redundancy", "backup_destination = true"),
        "7: redundancy.backup_destination_address must be set"
        " when redundancy.backup_destination = true",
    ),
    (
        in_table("redundancy", "backup_destination = true", 'backup_destination_address = ""'),
        "8: redundancy.backup_destination_address must be set"
        " when redundancy.backup_destination = true",
    ),
    # [sip]
    (in_table("sip", "local_port = 0"), "7: sip.local_port must be 1..65535, got 0"),
    (
        in_table("sip", "register_expires = 29"),
        "7: sip.register_expires must be 30..86400 seconds, got 29",
    ),
    (
        in_table("sip", "register_expires = 86401"),
        "7: sip.register_expires must be 30..86400 seconds, got 86401",
    ),
    (in_table("sip", 'user_agent = ""'), '7: sip.user_agent must be a non-empty string, got ""'),
    (
        in_table("sip", r'user_agent = "a\r\nX: y"'),
        '7: sip.user_agent must be a string without control characters, got "a\\r\\nX: y"',
    ),
    # [blf]
    (in_table("blf", 'keys = "1002"'), '7: blf.keys must be a list of extensions, got "1002"'),
    (
        in_table("blf", "keys = [1002]"),
        '7: blf.keys[0] must be a non-empty string of digits, letters, "*", "#" or "+", got 1002',
    ),
    (in_table("blf", 'keys = ["1002", "1002"]'), '7: blf.keys[1] repeats "1002"'),
    # [apps]
    (
        in_table("apps", 'contacts = "ftp://203.0.113.10/c"'),
        '7: apps.contacts must be an http:// or https:// URL or a table { url, backup_url }, got "ftp://203.0.113.10/c"',
    ),
    (in_table("apps", 'vm = { backup_url = "https://pbx2/vm" }'), "7: apps.vm.url is required"),
    (
        in_table("apps", 'vm = { url = "https://pbx1:99999/vm" }'),
        '7: apps.vm.url must be an http:// or https:// URL, got "https://pbx1:99999/vm"',
    ),
    (
        in_table("apps", 'vm = { url = "https://pbx1/vm", backup_url = "pbx2/vm" }'),
        '7: apps.vm.backup_url must be an http:// or https:// URL, got "pbx2/vm"',
    ),
    (
        in_table("apps", 'vm = { url = "https://pbx1/vm", backup = "x" }'),
        "7: unknown key apps.vm.backup; did you mean backup_url?",
    ),
    # [provisioning], [board], [service]
    (
        in_table("provisioning", 'url = "tftp://203.0.113.10/"'),
        '7: provisioning.url must be an http:// or https:// URL, got "tftp://203.0.113.10/"',
    ),
    (
        in_table("provisioning", "resync_interval = -1"),
        "7: provisioning.resync_interval must be 0..604800 seconds, got -1",
    ),
    (
        in_table("board", 'profile = "../etc/x"'),
        '7: board.profile must be "emulated" or a profile name (a-z, 0-9, "_", "-"),'
        ' got "../etc/x"',
    ),
    (
        in_table("service", 'state_dir = "var/lib"'),
        '7: service.state_dir must be an absolute path, got "var/lib"',
    ),
    (
        in_table("service", f'control_socket = "/{"s" * 107}"'),
        "7: service.control_socket must be an absolute path of at most 107 bytes,"
        f' got "/{"s" * 75}...',
    ),
    # unknown and misplaced tables and keys
    (
        in_table("redundancy", "backup_destinaton = true"),
        "7: unknown key redundancy.backup_destinaton; did you mean backup_destination?",
    ),
    (in_table("sip", "frobnicate = 1"), "7: unknown key sip.frobnicate"),
    (in_table("sipp", "local_port = 5061"), "6: unknown table [sipp]; did you mean [sip]?"),
    ("sip = 3\n" + BASE, "1: sip must be a table, got 3"),
    (
        'usernme = "1001"\n' + BASE,
        "1: unknown key usernme outside any table; did you mean account.username?",
    ),
    ('frobnicate = "1001"\n' + BASE, "1: unknown key frobnicate outside any table"),
    (in_table("vpn", "enabled = 1"), "7: vpn.enabled must be true or false, got 1"),
]


@pytest.mark.parametrize(("text", "message"), RULES)
def test_rule_is_enforced_with_exact_message(text: str, message: str) -> None:
    assert errors_of(text) == [f"phoned.toml:{message}"]


# ------------------------------------------------------------------------- vpn


PEER = {
    "endpoint": '"192.0.2.12:51820"',
    "public_key": f'"{WG_KEY}"',
    "allowed_ips": '["198.18.2.0/24"]',
}


#: BASE with the primary inside [vpn.primary] allowed_ips of `vpn_text` (SPEC §6).
VPN_BASE = ACCOUNT + '[server]\naddress = "198.18.1.10"\n'


def vpn_text(key_file: Path, vpn_line: str = 'interface = "wg-phoned"', **backup: str) -> str:
    """An enabled, valid [vpn] with `vpn_line` at line 10 and the backup peer's endpoint,
    public_key and allowed_ips at lines 16, 17 and 18 (overridden by `backup`)."""
    return VPN_BASE + lines(
        "[vpn]",
        "enabled = true",
        f'private_key_file = "{key_file}"',
        'address = "198.18.0.2/32"',
        vpn_line,
        "[vpn.primary]",
        'endpoint = "192.0.2.11:51820"',
        f'public_key = "{WG_KEY}"',
        'allowed_ips = ["198.18.1.0/24"]',
        "[vpn.backup]",
        *(f"{key} = {value}" for key, value in (PEER | backup).items()),
    )


def test_vpn_text_is_valid(tmp_path: Path) -> None:
    vpn = parse_settings(vpn_text(private_file(tmp_path, WG_KEY, 0o600)), "x").vpn

    assert vpn.backup is not None
    assert vpn.backup.allowed_ips == ("198.18.2.0/24",)


VPN_LINE_RULES = [
    (
        'routes = ["198.18.100.1/24"]',
        "10: vpn.routes[0] must be a network in CIDR notation, e.g. 198.18.1.0/24,"
        ' got "198.18.100.1/24"',
    ),
    (
        'routes = "198.18.100.0/24"',
        '10: vpn.routes must be a list of networks (CIDR), got "198.18.100.0/24"',
    ),
    (
        'interface = "wg-phoned-too-long"',
        '10: vpn.interface must be an interface name (1..15 letters, digits, "_", "-" or "."),'
        ' got "wg-phoned-too-long"',
    ),
]


@pytest.mark.parametrize(("vpn_line", "message"), VPN_LINE_RULES)
def test_enabled_vpn_key_rule(tmp_path: Path, vpn_line: str, message: str) -> None:
    text = vpn_text(private_file(tmp_path, WG_KEY, 0o600), vpn_line)

    assert errors_of(text) == [f"phoned.toml:{message}"]


VPN_PEER_RULES = [
    (
        {"endpoint": '"192.0.2.12"'},
        '16: vpn.backup.endpoint must be host:port, e.g. 192.0.2.11:51820, got "192.0.2.12"',
    ),
    (
        {"endpoint": '"2001:db8::1:51820"'},
        '16: vpn.backup.endpoint must be host:port, e.g. 192.0.2.11:51820, got "2001:db8::1:51820"',
    ),
    (
        {"endpoint": '"192.0.2.12:0"'},
        '16: vpn.backup.endpoint must be host:port, e.g. 192.0.2.11:51820, got "192.0.2.12:0"',
    ),
    (
        {"public_key": '"base64..."'},
        '17: vpn.backup.public_key must be a WireGuard key (base64 of 32 bytes), got "base64..."',
    ),
    (
        {"public_key": '"AAAA"'},
        '17: vpn.backup.public_key must be a WireGuard key (base64 of 32 bytes), got "AAAA"',
    ),
    ({"allowed_ips": "[]"}, "18: vpn.backup.allowed_ips must not be empty"),
    (
        {"allowed_ips": '["198.18.2.0/33"]'},
        "18: vpn.backup.allowed_ips[0] must be a network in CIDR notation, e.g. 198.18.1.0/24,"
        ' got "198.18.2.0/33"',
    ),
]


@pytest.mark.parametrize(("backup", "message"), VPN_PEER_RULES)
def test_enabled_vpn_peer_rule(tmp_path: Path, backup: dict[str, str], message: str) -> None:
    text = vpn_text(private_file(tmp_path, WG_KEY, 0o600), **backup)

    assert errors_of(text) == [f"phoned.toml:{message}"]


def test_enabled_vpn_requires_its_keys() -> None:
    errors = errors_of(in_table("vpn", "enabled = true"))

    assert errors == [
        "phoned.toml:6: vpn.private_key_file is required",
        "phoned.toml:6: vpn.address is required",
        "phoned.toml:6: vpn.primary is required",
    ]


@pytest.mark.parametrize(
    ("content", "mode", "detail"),
    [
        (
            WG_KEY,
            0o640,
            "must be a file only its owner can read (mode 0600), got {path} (mode 0640)",
        ),
        (
            "not a key",
            0o600,
            "must be a file holding a WireGuard private key, got {path} (not base64 of 32 bytes)",
        ),
        (
            "",
            0o600,
            "must be a file holding a WireGuard private key, got {path} (empty)",
        ),
    ],
)
def test_vpn_private_key_file_is_checked(
    tmp_path: Path, content: str, mode: int, detail: str
) -> None:
    key_file = private_file(tmp_path, content, mode)

    errors = errors_of(vpn_text(key_file))

    assert errors == [
        f"phoned.toml:8: vpn.private_key_file {detail.format(path=json.dumps(str(key_file)))}"
    ]
    assert content not in errors[0] or not content


# ------------------------------------------------------------------- passwords


def make_fifo(tmp_path: Path) -> Path:
    """A named pipe with no writer: opening it plainly would block forever."""
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    return path


def with_password_file(path: Path) -> str:
    """[account] whose password_file (line 3) is `path`."""
    return f'[account]\nusername = "1001"\npassword_file = "{path}"\n' + SERVER


def test_password_file_0600_gives_the_password(tmp_path: Path) -> None:
    secret_file = private_file(tmp_path, f"  {SECRET}\n", 0o600)

    account = parse_settings(with_password_file(secret_file), "x").account

    assert account.password == SECRET
    assert account.password_file == str(secret_file)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret_file = private_file(tmp_path, SECRET, mode)

    errors = errors_of(with_password_file(secret_file))

    assert errors == [
        "phoned.toml:3: account.password_file must be a file only its owner can read"
        f' (mode 0600), got "{secret_file}" (mode {mode:04o})'
    ]


def test_password_file_0400_is_accepted(tmp_path: Path) -> None:
    secret_file = private_file(tmp_path, SECRET, 0o400)

    assert parse_settings(with_password_file(secret_file), "x").account.password == SECRET


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda tmp: tmp / "missing", "a readable file, got {path} (No such file or directory)"),
        (lambda tmp: tmp, "a readable file, got {path} (a directory, not a regular file)"),
        (make_fifo, "a readable file, got {path} (a FIFO, not a regular file)"),
        (
            lambda tmp: private_file(tmp, " \n", 0o600),
            "a file holding the password, got {path} (empty)",
        ),
        (
            lambda tmp: private_file(tmp, "a\nb", 0o600),
            "a file holding the password, got {path} (it holds control characters)",
        ),
    ],
)
def test_bad_password_file_is_refused(
    tmp_path: Path, make: Callable[[Path], Path], detail: str
) -> None:
    path = make(tmp_path)

    errors = errors_of(with_password_file(path))

    assert errors == [
        f"phoned.toml:3: account.password_file must be {detail.format(path=json.dumps(str(path)))}"
    ]


# ------------------------------------------------------ whole-file behaviour


def test_all_errors_are_reported_together_in_line_order() -> None:
    text = (
        "[sip]\n"
        "local_port = 0\n"
        "[account]\n"
        'username = "1001"\n'
        "[redundancy]\n"
        "backup_destinaton = true\n"
        "sip_keep_alive_interval = 0\n"
    )

    assert errors_of(text) == [
        "phoned.toml:1: server.address is required",
        "phoned.toml:2: sip.local_port must be 1..65535, got 0",
        "phoned.toml:3: account.password or account.password_file is required",
        "phoned.toml:6: unknown key redundancy.backup_destinaton; did you mean backup_destination?",
        "phoned.toml:7: redundancy.sip_keep_alive_interval must be 1..3600, got 0",
    ]


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ("[sip]\nlocal_port = \n", "7: invalid TOML: Invalid value (column 14)"),
        ('[sip]\nuser_agent = "abc\n', "7: invalid TOML: Illegal character '\\n' (column 18)"),
        ("[server]\n", "6: invalid TOML: Cannot declare ('server',) twice (column 8)"),
        ('x = "abc', "6: invalid TOML: Unterminated string (at end of document)"),
    ],
)
def test_toml_syntax_error_names_file_and_line(tail: str, message: str) -> None:
    assert errors_of(BASE + tail) == [f"phoned.toml:{message}"]


def test_load_settings_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(in_table("sip", "local_port = 0"))

    with pytest.raises(ConfigError) as info:
        load_settings(path)

    assert str(info.value) == f"{path}:7: sip.local_port must be 1..65535, got 0"


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(SettingsError) as info:
        load_settings(path)

    assert info.value.errors == [f"cannot read {path}: No such file or directory"]


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_bytes(BASE.encode() + b'[sip]\nuser_agent = "\xff"\n')

    with pytest.raises(SettingsError) as info:
        load_settings(path)

    assert info.value.errors == [f"{path}:7: invalid TOML: not UTF-8 text"]


def test_secret_never_shown(tmp_path: Path) -> None:
    settings = parse_settings(BASE, "x")
    redacted = settings.redacted()

    assert SECRET not in repr(settings)
    assert SECRET not in repr(settings.account)
    assert redacted["account"]["password"] == REDACTED
    assert REDACTED == "***"
    assert SECRET not in json.dumps(redacted)
    assert settings.account.password == SECRET


def test_secret_never_in_errors() -> None:
    bad_type = '[account]\nusername = "1001"\npassword = 12345678\n' + SERVER
    control = f'[account]\nusername = "1001"\npassword = "{SECRET}\\u0007"\n' + SERVER
    typo = f'[account]\nusername = "1001"\npassword = "x"\npasword = "{SECRET}"\n' + SERVER

    assert errors_of(bad_type) == ["phoned.toml:3: account.password must be a string, got <hidden>"]
    assert errors_of(control) == [
        "phoned.toml:3: account.password must be a string without control characters, got <hidden>"
    ]
    assert errors_of(typo) == ["phoned.toml:4: unknown key account.pasword; did you mean password?"]


def test_redacted_is_json_with_every_table() -> None:
    redacted = json.loads(
        json.dumps(parse_settings(in_table("blf", 'keys = ["1002"]'), "x").redacted())
    )

    assert redacted["blf"] == {"keys": ["1002"]}
    assert redacted["redundancy"]["sip_keep_alive_interval"] == 15
    assert set(redacted) == {
        "account", "server", "redundancy", "sip", "blf", "apps", "vpn", "provisioning",
        "board", "service", "source",
    }  # fmt: skip


def test_settings_can_be_built_in_code_with_defaults() -> None:
    settings = Settings(
        account=AccountSettings(username="1001", password=SECRET),
        server=ServerSettings(address="203.0.113.10"),
    )

    assert settings.redundancy.sip_keep_alive_interval == 15
    assert not settings.backup_enabled


# ------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.10", True),
        ("2001:db8::1", True),
        ("pbx.example.com", True),
        ("pbx.example.com.", True),
        ("a" * 63 + ".example", True),
        ("a" * 64 + ".example", False),
        (".".join(["a" * 63] * 4), False),  # 255 characters
        ("pbx_1.example.com", False),
        ("-pbx.example.com", False),
        ("pbx-.example.com", False),
        ("pbx..example.com", False),
        ("203.0.113.300", False),
        ("[2001:db8::1]", False),
        ("", False),
    ],
)
def test_is_host(text: str, expected: bool) -> None:
    assert is_host(text) is expected


def test_scan_lines_maps_tables_and_keys() -> None:
    text = (
        "# comment = 1\n"
        "top = 1\n"
        "[vpn]\n"
        "  enabled = true  # why\n"
        'note = """\n'
        "fake = 2\n"
        '"""\n'
        "primary.endpoint = 'x'\n"
        '[apps."my.app"]\n'
        "url = 'y'\n"
        'line_sep = "\u2028"\n'
        "[[list]]\n"
        "keys = [\n"
        '  "1002",\n'
        "]\n"
    )

    assert scan_lines(text) == {
        ("top",): 2,
        ("vpn",): 3,
        ("vpn", "enabled"): 4,
        ("vpn", "note"): 5,
        ("vpn", "primary"): 8,
        ("vpn", "primary", "endpoint"): 8,
        ("apps", "my.app"): 9,
        ("apps", "my.app", "url"): 10,
        ("apps", "my.app", "line_sep"): 11,
        ("list",): 12,
        ("list", "keys"): 13,
    }
