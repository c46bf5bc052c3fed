"""Tests of phoned.config.overlay: a provisioned file laid over the local one (SPEC §7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoned.config.check import Checker, Overlay, scan_lines
from phoned.config.loader import SettingsError, parse_settings
from phoned.config.overlay import lay_over, load_layered, parse_layered
from phoned.errors import ConfigError

SECRET = "s3cret-Pa55"  # noqa: S105 (the test password that must never be shown)
WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
WG_KEY_2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
LOCAL_LINES = [
    "[account]",  # 1
    'username = "1001"',  # 2
    f'password = "{SECRET}"',  # 3
    "[server]",  # 4
    'address = "203.0.113.10"',  # 5
    "port = 5060",  # 6
    "[redundancy]",  # 7
    "sip_keep_alive_interval = 15",  # 8
    "failback_cycles = 2",  # 9
    "[blf]",  # 10
    'keys = ["1002", "1003"]',  # 11
    "[apps]",  # 12
    'contacts = "http://203.0.113.10/apps/contacts"',  # 13
    'vm = { url = "https://203.0.113.10/apps/vm", backup_url = "https://203.0.113.20/apps/vm" }',
    "[service]",  # 15
    'state_dir = "/var/lib/phoned"',  # 16
]
#: The local file: 16 lines; text appended to it starts at line 17, still in [service].
LOCAL = "".join(f"{line}\n" for line in LOCAL_LINES)


def lines(*text: str) -> str:
    """`text` as lines of a file, the first at line 1."""
    return "".join(f"{line}\n" for line in text)


def layered_errors(local: str, overlay: str) -> list[str]:
    """The errors parse_layered reports for `overlay` over `local`."""
    with pytest.raises(ConfigError) as info:
        parse_layered(local, "local.toml", overlay, "prov.toml")
    assert isinstance(info.value, SettingsError)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def private_file(tmp_path: Path, content: str, mode: int = 0o600, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content + "\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------- the merge


def test_empty_overlay_gives_the_local_settings() -> None:
    assert parse_layered(LOCAL, "local.toml", "", "prov.toml") == parse_settings(
        LOCAL, "local.toml"
    )


def test_key_left_out_keeps_the_local_value() -> None:
    overlay = lines("[redundancy]", "sip_keep_alive_interval = 4")

    settings = parse_layered(LOCAL, "local.toml", overlay, "prov.toml")

    assert settings.redundancy.sip_keep_alive_interval == 4
    assert settings.redundancy.failback_cycles == 2  # local
    assert settings.server.address == "203.0.113.10"  # local
    assert settings.account.password == SECRET  # local
    assert settings.blf.keys == ("1002", "1003")  # local
    assert settings.source == "local.toml"


def test_nested_tables_merge_key_by_key() -> None:
    overlay = lines("[server]", 'transport = "tcp"', "[account]", 'display_name = "Desk 1"')

    settings = parse_layered(LOCAL, "local.toml", overlay, "prov.toml")

    assert (settings.server.address, settings.server.port) == ("203.0.113.10", 5060)
    assert settings.server.transport == "tcp"
    assert (settings.account.username, settings.account.display_name) == ("1001", "Desk 1")


def test_arrays_replace_wholesale() -> None:
    overlay = lines("[blf]", 'keys = ["2001"]')

    assert parse_layered(LOCAL, "local.toml", overlay, "prov.toml").blf.keys == ("2001",)


def test_apps_merge_by_name() -> None:
    overlay = lines(
        "[apps]",
        'notes = "http://203.0.113.10/apps/notes"',
        "[apps.vm]",
        'url = "https://203.0.113.10/apps/vm2"',
    )

    apps = parse_layered(LOCAL, "local.toml", overlay, "prov.toml").apps

    assert [app.name for app in apps] == ["contacts", "vm", "notes"]
    assert apps[0].url == "http://203.0.113.10/apps/contacts"  # local, untouched
    assert apps[1].url == "https://203.0.113.10/apps/vm2"  # from the overlay
    assert apps[1].backup_url == "https://203.0.113.20/apps/vm"  # kept from the local table
    assert apps[2].url == "http://203.0.113.10/apps/notes"


def test_app_given_as_url_or_table_replaces_the_other_form() -> None:
    overlay = lines(
        "[apps]",
        'contacts = { url = "http://pbx1/c", backup_url = "http://pbx2/c" }',
        'vm = "https://pbx1/vm"',
    )

    apps = parse_layered(LOCAL, "local.toml", overlay, "prov.toml").apps

    assert (apps[0].url, apps[0].backup_url) == ("http://pbx1/c", "http://pbx2/c")
    assert (apps[1].url, apps[1].backup_url) == ("https://pbx1/vm", "")


def vpn_local(key_file: Path) -> str:
    """LOCAL with an enabled [vpn] and both peers from line 17; the primary's address in
    its peer's allowed_ips (SPEC §6)."""
    local = LOCAL.replace('address = "203.0.113.10"', 'address = "198.18.1.10"')
    return local + lines(
        "[vpn]",  # 17
        "enabled = true",
        f'private_key_file = "{key_file}"',
        'address = "198.18.0.2/32"',
        'routes = ["198.18.100.0/24"]',
        "[vpn.primary]",  # 22
        'endpoint = "192.0.2.11:51820"',
        f'public_key = "{WG_KEY}"',
        'allowed_ips = ["198.18.1.0/24"]',
        "[vpn.backup]",  # 26
        'endpoint = "192.0.2.12:51820"',
        f'public_key = "{WG_KEY_2}"',
        'allowed_ips = ["198.18.2.0/24"]',
    )


def test_vpn_peers_merge_key_by_key(tmp_path: Path) -> None:
    local = vpn_local(private_file(tmp_path, WG_KEY))
    overlay = lines(
        "[vpn]",
        'routes = ["198.18.200.0/24"]',
        "[vpn.backup]",
        'endpoint = "192.0.2.99:51820"',
    )

    vpn = parse_layered(local, "local.toml", overlay, "prov.toml").vpn

    assert vpn.routes == ("198.18.200.0/24",)
    assert vpn.address == "198.18.0.2/32"
    assert vpn.primary is not None
    assert vpn.primary.endpoint == "192.0.2.11:51820"
    assert vpn.backup is not None
    assert vpn.backup.endpoint == "192.0.2.99:51820"
    assert vpn.backup.public_key == WG_KEY_2
    assert vpn.backup.allowed_ips == ("198.18.2.0/24",)


def test_vpn_peer_error_names_the_overlay(tmp_path: Path) -> None:
    local = vpn_local(private_file(tmp_path, WG_KEY))
    overlay = lines("[vpn.primary]", 'public_key = "AAAA"')

    assert layered_errors(local, overlay) == [
        "prov.toml:2: vpn.primary.public_key must be a WireGuard key (base64 of 32 bytes),"
        ' got "AAAA"'
    ]


def test_lay_over_changes_neither_input_and_says_what_it_gave() -> None:
    base = {"a": {"b": 1, "c": 2}, "keep": [1]}
    top = {"a": {"b": 3}, "d": {"e": 1}, "keep": [2]}

    merged, given = lay_over(base, top)

    assert merged == {"a": {"b": 3, "c": 2}, "keep": [2], "d": {"e": 1}}
    assert given == {("a", "b"), ("d",), ("keep",)}
    assert base == {"a": {"b": 1, "c": 2}, "keep": [1]}
    assert top == {"a": {"b": 3}, "d": {"e": 1}, "keep": [2]}


def test_overlay_may_set_provisioning() -> None:
    overlay = lines("[provisioning]", 'url = "https://prov.example.com/"', "resync_interval = 60")

    settings = parse_layered(LOCAL, "local.toml", overlay, "prov.toml").provisioning

    assert (settings.url, settings.resync_interval) == ("https://prov.example.com/", 60)
    assert settings.check_sync is True


# ------------------------------------------------------ tables local to the device


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            lines("[sip]", "local_port = 5062", "[service]", 'state_dir = "/tmp/x"'),
            "prov.toml:3: [service] cannot be provisioned (local to the device)",
        ),
        (
            lines("[board]", 'profile = "emulated"'),
            "prov.toml:1: [board] cannot be provisioned (local to the device)",
        ),
        (
            lines("[sip]", "local_port = 5062", "[board.extra]"),
            "prov.toml:3: [board] cannot be provisioned (local to the device)",
        ),
        (
            lines('board.profile = "rpi-st7735"'),
            "prov.toml:1: [board] cannot be provisioned (local to the device)",
        ),
        (
            lines("[sip]", "local_port = 5062", "", "[service]"),
            "prov.toml:4: [service] cannot be provisioned (local to the device)",
        ),
    ],
)
def test_local_tables_are_refused_at_the_overlay_line(overlay: str, message: str) -> None:
    assert layered_errors(LOCAL, overlay) == [message]


def test_both_local_tables_refused_with_other_errors() -> None:
    overlay = lines("[board]", 'profile = "x"', "[sip]", "local_port = 0", "[service]")

    assert layered_errors(LOCAL, overlay) == [
        "prov.toml:1: [board] cannot be provisioned (local to the device)",
        "prov.toml:4: sip.local_port must be 1..65535, got 0",
        "prov.toml:5: [service] cannot be provisioned (local to the device)",
    ]


def test_local_service_keeps_its_value_when_the_overlay_is_refused() -> None:
    overlay = lines("[service]", 'state_dir = "/tmp/elsewhere"')

    with pytest.raises(SettingsError):
        parse_layered(LOCAL, "local.toml", overlay, "prov.toml")
    # and the local [service] alone is fine
    assert parse_settings(LOCAL, "local.toml").service.state_dir == "/var/lib/phoned"


# ------------------------------------------------- each error at its file and line


def test_errors_name_the_file_and_line_of_each_half() -> None:
    local = LOCAL + lines("[sip]", "local_port = 0")  # lines 17, 18
    overlay = lines("[redundancy]", "failback_cycles = 0")

    assert layered_errors(local, overlay) == [
        "local.toml:18: sip.local_port must be 1..65535, got 0",
        "prov.toml:2: redundancy.failback_cycles must be 1..100, got 0",
    ]


def test_errors_local_first_then_overlay_each_by_line() -> None:
    local = LOCAL + lines("[sip]", "register_expires = 1", "local_port = 0")  # 17, 18, 19
    overlay = lines(
        "[sip]", "user_agent = ''", "[redundancy]", "failback_cycles = 0", "[blf]", "keys = [1]"
    )

    assert layered_errors(local, overlay) == [
        "local.toml:18: sip.register_expires must be 30..86400 seconds, got 1",
        "local.toml:19: sip.local_port must be 1..65535, got 0",
        'prov.toml:2: sip.user_agent must be a non-empty string, got ""',
        "prov.toml:4: redundancy.failback_cycles must be 1..100, got 0",
        'prov.toml:6: blf.keys[0] must be a non-empty string of digits, letters, "*", "#" or "+",'
        " got 1",
    ]


def test_overlay_replaces_a_bad_local_value() -> None:
    local = LOCAL + lines("[sip]", "local_port = 0")
    overlay = lines("[sip]", "local_port = 5062")

    assert parse_layered(local, "local.toml", overlay, "prov.toml").sip.local_port == 5062


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            lines("[redundancy]", "backup_destinaton = true"),
            "prov.toml:2: unknown key redundancy.backup_destinaton;"
            " did you mean backup_destination?",
        ),
        (
            lines("[sipp]", "local_port = 5061"),
            "prov.toml:1: unknown table [sipp]; did you mean [sip]?",
        ),
        (lines("", "blf = 3"), "prov.toml:2: blf must be a table, got 3"),
        (
            lines("[apps]", 'vm = "ftp://x/vm"'),
            "prov.toml:2: apps.vm must be an http:// or https:// URL"
            ' or a table { url, backup_url }, got "ftp://x/vm"',
        ),
        (
            lines("[account]", "password = 12345678"),
            "prov.toml:2: account.password must be a string, got <hidden>",
        ),
        (
            lines("[provisioning]", "resync_interval = 30"),
            "prov.toml:2: provisioning.resync_interval must be 0 or 60..604800 seconds, got 30",
        ),
    ],
)
def test_overlay_error_names_the_overlay(overlay: str, message: str) -> None:
    assert layered_errors(LOCAL, overlay) == [message]


def test_merged_whole_is_validated() -> None:
    overlay = lines("[redundancy]", "backup_destination = true")

    assert layered_errors(LOCAL, overlay) == [
        "prov.toml:2: redundancy.backup_destination_address must be set"
        " when redundancy.backup_destination = true"
    ]


def test_merged_whole_takes_a_key_from_each_half() -> None:
    local = LOCAL.replace("[redundancy]\n", '[redundancy]\nbackup_destination_address = "pbx2"\n')
    overlay = lines("[redundancy]", "backup_destination = true")

    settings = parse_layered(local, "local.toml", overlay, "prov.toml")

    assert settings.backup_enabled
    assert settings.redundancy.backup_destination_address == "pbx2"


def test_overlay_clearing_a_needed_local_value_is_refused() -> None:
    local = LOCAL.replace(
        "[redundancy]\n",
        '[redundancy]\nbackup_destination = true\nbackup_destination_address = "pbx2"\n',
    )
    overlay = lines("", "[redundancy]", 'backup_destination_address = ""')

    assert layered_errors(local, overlay) == [
        "prov.toml:3: redundancy.backup_destination_address must be set"
        " when redundancy.backup_destination = true"
    ]


def test_password_and_password_file_across_halves(tmp_path: Path) -> None:
    secret_file = private_file(tmp_path, SECRET)
    overlay = lines("[account]", f'password_file = "{secret_file}"')

    assert layered_errors(LOCAL, overlay) == [
        "prov.toml:2: account.password and account.password_file are both set; give only one"
    ]


def test_missing_required_key_is_reported_against_the_local_file() -> None:
    local = lines("[account]", 'username = "1001"', 'password = "x"', "[server]", "port = 5060")
    overlay = lines("[server]", "port = 5070")

    assert layered_errors(local, overlay) == ["local.toml:4: server.address is required"]


def test_missing_key_of_a_table_only_the_overlay_has_names_the_overlay() -> None:
    overlay = lines(
        "[apps]", 'notes = "http://pbx1/notes"', "[apps.news]", 'backup_url = "http://x/n"'
    )

    assert layered_errors(LOCAL, overlay) == ["prov.toml:3: apps.news.url is required"]


# ---------------------------------------------------------------- syntax, files


def test_syntax_error_in_the_overlay_names_it() -> None:
    overlay = lines("[sip]", "local_port = ")

    assert layered_errors(LOCAL, overlay) == [
        "prov.toml:2: invalid TOML: Invalid value (column 14)"
    ]


def test_syntax_error_in_the_local_file_names_it() -> None:
    local = LOCAL + lines("[sip]", "local_port = ")

    assert layered_errors(local, lines("[sip]", "local_port = 5062")) == [
        "local.toml:18: invalid TOML: Invalid value (column 14)"
    ]


def test_syntax_errors_in_both_halves_are_both_reported() -> None:
    local = LOCAL + "[server]\n"
    overlay = 'x = "abc'

    assert layered_errors(local, overlay) == [
        "local.toml:17: invalid TOML: Cannot declare ('server',) twice (column 8)",
        "prov.toml:1: invalid TOML: Unterminated string (at end of document)",
    ]


def test_load_layered_reads_the_local_file(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(LOCAL)

    settings = load_layered(str(path), lines("[blf]", "keys = []"), "http://prov/b827eb12ab34.toml")

    assert settings.source == str(path)
    assert settings.blf.keys == ()
    assert settings.account.username == "1001"


def test_load_layered_names_both_files(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(LOCAL + lines("[sip]", "local_port = 0"))
    overlay = lines("[sip]", "register_expires = 1")

    with pytest.raises(SettingsError) as info:
        load_layered(str(path), overlay, "http://prov/b827eb12ab34.toml")

    assert info.value.errors == [
        f"{path}:18: sip.local_port must be 1..65535, got 0",
        "http://prov/b827eb12ab34.toml:2: sip.register_expires must be 30..86400 seconds, got 1",
    ]


def test_load_layered_missing_local_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(SettingsError) as info:
        load_layered(str(path), "", "prov.toml")

    assert info.value.errors == [f"cannot read {path}: No such file or directory"]


def test_load_layered_local_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_bytes(LOCAL.encode() + b'[sip]\nuser_agent = "\xff"\n')

    with pytest.raises(SettingsError) as info:
        load_layered(str(path), "", "prov.toml")

    assert info.value.errors == [f"{path}:18: invalid TOML: not UTF-8 text"]


# ------------------------------------------------------- provisioning keys, layered


def test_provisioning_credentials_from_both_halves(tmp_path: Path) -> None:
    secret_file = private_file(tmp_path, "pr0v-pass")
    local = LOCAL + lines(
        "[provisioning]", 'username = "phone"', f'password_file = "{secret_file}"'
    )
    overlay = lines("[provisioning]", 'url = "https://prov.example.com/"', "check_sync = false")

    provisioning = parse_layered(local, "local.toml", overlay, "prov.toml").provisioning

    assert (provisioning.username, provisioning.password) == ("phone", "pr0v-pass")
    assert provisioning.url == "https://prov.example.com/"
    assert provisioning.check_sync is False
    assert "pr0v-pass" not in repr(provisioning)


def test_provisioning_password_file_mode_enforced_in_the_overlay(tmp_path: Path) -> None:
    secret_file = private_file(tmp_path, "pr0v-pass", mode=0o644)
    overlay = lines("[provisioning]", 'username = "phone"', f'password_file = "{secret_file}"')

    errors = layered_errors(LOCAL, overlay)

    assert errors == [
        "prov.toml:3: provisioning.password_file must be a file only its owner can read"
        f' (mode 0600), got "{secret_file}" (mode 0644)'
    ]


def test_provisioning_username_without_password_file_in_the_overlay() -> None:
    overlay = lines("[provisioning]", 'username = "phone"')

    assert layered_errors(LOCAL, overlay) == [
        "prov.toml:2: provisioning.password_file is required when provisioning.username is set"
    ]


def test_check_sync_defaults_to_true_when_layered() -> None:
    overlay = lines("[provisioning]", 'url = "https://prov.example.com/"')

    assert parse_layered(LOCAL, "local.toml", overlay, "prov.toml").provisioning.check_sync


# ------------------------------------------------------------------ the checker


def test_checker_without_overlay_places_everything_in_its_source() -> None:
    check = Checker("local.toml", scan_lines(LOCAL))

    assert check.place_of(("redundancy", "failback_cycles")) == ("local.toml", 9)
    assert check.place_of(("nothing", "here")) == ("local.toml", 1)
    with pytest.raises(ValueError, match="overlay"):
        check.fail_in_overlay(("service",), "x")


def test_checker_places_values_the_overlay_gave_in_the_overlay() -> None:
    overlay_text = lines("[redundancy]", "failback_cycles = 3", "[apps.news]", 'url = "http://x"')
    overlay = Overlay(
        "prov.toml",
        scan_lines(overlay_text),
        frozenset({("redundancy", "failback_cycles"), ("apps", "news")}),
    )
    check = Checker("local.toml", scan_lines(LOCAL), overlay)

    assert check.place_of(("redundancy", "failback_cycles")) == ("prov.toml", 2)
    assert check.place_of(("redundancy", "sip_keep_alive_interval")) == ("local.toml", 8)
    assert check.place_of(("redundancy", "missing")) == ("local.toml", 7)
    assert check.place_of(("apps", "news", "url")) == ("prov.toml", 4)
    assert check.place_of(("apps", "news", "backup_url")) == ("prov.toml", 3)
    assert check.place_of(("apps", "vm", "url")) == ("local.toml", 14)
