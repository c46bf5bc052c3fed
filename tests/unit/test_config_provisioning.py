"""Tests of the `[provisioning]` keys of SPEC §7 in one settings file: rules and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phoned.config.loader import REDACTED, ProvisioningSettings, SettingsError, parse_settings

SECRET = "pr0v-Pa55"  # noqa: S105 (the test password that must never be shown)
#: Lines 1..5; `[provisioning]` is line 6 and its keys start at line 7.
BASE = '[account]\nusername = "1001"\npassword = "x"\n[server]\naddress = "203.0.113.10"\n'


def provisioning(*lines: str) -> str:
    """BASE plus `[provisioning]` at line 6 and `lines` from line 7."""
    return BASE + "[provisioning]\n" + "".join(f"{line}\n" for line in lines)


def errors_of(text: str) -> list[str]:
    """The errors parse_settings reports for `text` (source "phoned.toml")."""
    with pytest.raises(SettingsError) as info:
        parse_settings(text, "phoned.toml")
    return info.value.errors


def password_file(tmp_path: Path, mode: int = 0o600, content: str = SECRET) -> Path:
    path = tmp_path / "prov"  # short: messages cut a value at 80 characters
    path.write_text(content + "\n")
    path.chmod(mode)
    return path


def test_defaults() -> None:
    settings = parse_settings(BASE, "x").provisioning

    assert settings == ProvisioningSettings()
    assert (settings.url, settings.resync_interval, settings.tls_ca_file) == ("", 0, "")
    assert (settings.username, settings.password_file, settings.password) == ("", "", "")
    assert settings.mac_interface == ""
    assert settings.check_sync is True


def test_every_key_given(tmp_path: Path) -> None:
    secret_file = password_file(tmp_path)
    text = provisioning(
        'url = "https://prov.example.com/phones"',
        "resync_interval = 3600",
        'tls_ca_file = "/etc/phoned/prov-ca.pem"',
        'username = "phone-b827eb12ab34"',
        f'password_file = "{secret_file}"',
        'mac_interface = "eth0"',
        "check_sync = false",
    )

    settings = parse_settings(text, "x").provisioning

    assert settings == ProvisioningSettings(
        url="https://prov.example.com/phones",
        resync_interval=3600,
        tls_ca_file="/etc/phoned/prov-ca.pem",
        username="phone-b827eb12ab34",
        password_file=str(secret_file),
        password=SECRET,
        mac_interface="eth0",
        check_sync=False,
    )


@pytest.mark.parametrize("seconds", [0, 60, 86400, 604800])
def test_resync_interval_accepted(seconds: int) -> None:
    text = provisioning(f"resync_interval = {seconds}")

    assert parse_settings(text, "x").provisioning.resync_interval == seconds


RULES = [
    (
        "resync_interval = 30",
        "7: provisioning.resync_interval must be 0 or 60..604800 seconds, got 30",
    ),
    (
        "resync_interval = 1",
        "7: provisioning.resync_interval must be 0 or 60..604800 seconds, got 1",
    ),
    (
        "resync_interval = 59",
        "7: provisioning.resync_interval must be 0 or 60..604800 seconds, got 59",
    ),
    (
        "resync_interval = 604801",
        "7: provisioning.resync_interval must be 0..604800 seconds, got 604801",
    ),
    (
        'resync_interval = "60"',
        '7: provisioning.resync_interval must be an integer 0..604800 seconds, got "60"',
    ),
    (
        'tls_ca_file = "ca.pem"',
        '7: provisioning.tls_ca_file must be an absolute path, got "ca.pem"',
    ),
    (
        'username = "a:b"',
        '7: provisioning.username must be a user name without ":", got "a:b"',
    ),
    (
        "username = 42",
        "7: provisioning.username must be a string, got 42",
    ),
    (
        'password_file = "prov.pass"',
        '7: provisioning.password_file must be an absolute path, got "prov.pass"',
    ),
    (
        'mac_interface = "eth0 "',
        '7: provisioning.mac_interface must be an interface name (1..15 letters, digits, "_",'
        ' "-" or "."), got "eth0 "',
    ),
    ('check_sync = "yes"', '7: provisioning.check_sync must be true or false, got "yes"'),
    (
        'password = "x"',
        "7: unknown key provisioning.password; did you mean password_file?",
    ),
    (
        'username = "phone"',
        "7: provisioning.password_file is required when provisioning.username is set",
    ),
]


@pytest.mark.parametrize(("line", "message"), RULES)
def test_rule_is_enforced_with_exact_message(line: str, message: str) -> None:
    assert errors_of(provisioning(line)) == [f"phoned.toml:{message}"]


def test_password_file_without_username(tmp_path: Path) -> None:
    secret_file = password_file(tmp_path)

    errors = errors_of(provisioning(f'password_file = "{secret_file}"'))

    assert errors == [
        "phoned.toml:7: provisioning.username is required when provisioning.password_file is set"
    ]


def test_username_bad_and_password_file_alone_is_one_error() -> None:
    text = provisioning('username = "a:b"', 'password_file = "/nonexistent/prov.pass"')

    errors = errors_of(text)

    assert (
        errors[0]
        == 'phoned.toml:7: provisioning.username must be a user name without ":", got "a:b"'
    )
    assert all("is required when" not in error for error in errors)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_password_file_must_be_mode_0600(tmp_path: Path, mode: int) -> None:
    secret_file = password_file(tmp_path, mode)
    text = provisioning('username = "phone"', f'password_file = "{secret_file}"')

    errors = errors_of(text)

    assert errors == [
        "phoned.toml:8: provisioning.password_file must be a file only its owner can read"
        f' (mode 0600), got "{secret_file}" (mode {mode:04o})'
    ]


def test_password_file_missing_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    text = provisioning('username = "phone"', f'password_file = "{missing}"')

    assert errors_of(text) == [
        f'phoned.toml:8: provisioning.password_file must be a readable file, got "{missing}"'
        " (No such file or directory)"
    ]


def test_password_never_shown(tmp_path: Path) -> None:
    secret_file = password_file(tmp_path)
    text = provisioning('username = "phone"', f'password_file = "{secret_file}"')

    settings = parse_settings(text, "x")

    assert settings.provisioning.password == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in repr(settings.provisioning)
    redacted = settings.redacted()
    assert redacted["provisioning"]["password"] == REDACTED
    assert redacted["provisioning"]["password_file"] == str(secret_file)
    assert SECRET not in json.dumps(redacted)


def test_password_file_with_control_characters_not_shown(tmp_path: Path) -> None:
    secret_file = password_file(tmp_path, content=f"{SECRET}\nmore")
    text = provisioning('username = "phone"', f'password_file = "{secret_file}"')

    errors = errors_of(text)

    assert errors == [
        "phoned.toml:8: provisioning.password_file must be a file holding the password,"
        f' got "{secret_file}" (it holds control characters)'
    ]
    assert SECRET not in "".join(errors)
