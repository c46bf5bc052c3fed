"""Settings of phoned (SPEC §3, §6, §7): one TOML file, parsed and validated into frozen data.

Owns: loading a settings file, which tables and keys exist, which rule each key follows,
how many apps and BLF keys there may be, and the checks that span keys. Reads the settings
file, the `password_file`s and (when the VPN is enabled) the `private_key_file` it names,
nothing else. Must not touch: the network, the SIP stack, logging, any process-wide state.
The dataclasses live in `phoned.config.settings` (re-exported here: import them from here),
reading the file, the bounds of any settings text, the TOML parser and `SettingsError` in
`phoned.config.parsing` (re-exported here), the rules for single values in
`phoned.config.rules`, line numbers and the collection of
problems in `phoned.config.check`, the `[vpn]` and `[provisioning]` tables in
`phoned.config.vpn_table` and `phoned.config.provisioning_table`; a provisioned file laid
over the local one is `phoned.config.overlay`'s.

Rule 1: every problem found is reported at once, not just the first (`SettingsError.errors`),
sorted by line, each shaped `<file>:<line>: <table>.<key> must be <expected>, got <value>`.
Rule 2: a password never appears in an error, a `repr` or `Settings.redacted()`.
Rule 3: unknown tables and keys are errors: a typo must not silently become a default.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import fields

from phoned.config import rules as rule
from phoned.config.check import Checker, KeyPath, Table, did_you_mean, scan_lines
from phoned.config.parsing import SettingsError, parse_toml, read_settings_text
from phoned.config.provisioning_table import PROVISIONING_KEYS, provisioning_settings
from phoned.config.settings import (
    REDACTED,
    AccountSettings,
    AppLink,
    BlfSettings,
    BoardSettings,
    ProvisioningSettings,
    RedundancySettings,
    ServerSettings,
    ServiceSettings,
    Settings,
    SipSettings,
    VpnPeer,
    VpnSettings,
)
from phoned.config.vpn_table import VPN_KEYS, check_server_tunnels, vpn_settings

__all__ = [
    "REDACTED",
    "AccountSettings",
    "AppLink",
    "BlfSettings",
    "BoardSettings",
    "ProvisioningSettings",
    "RedundancySettings",
    "ServerSettings",
    "ServiceSettings",
    "Settings",
    "SettingsError",
    "SipSettings",
    "VpnPeer",
    "VpnSettings",
    "load_settings",
    "parse_settings",
    "read_settings_text",
    "settings_from",
]


# ------------------------------------------------------------------------- loading


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate the settings file at `path`.

    Args:
        path: The settings file; its path names it in messages and `Settings.source`.

    Returns:
        The valid settings.

    Raises:
        SettingsError: (a ConfigError) the file is unreadable, not a regular file, too
            large, not TOML, or breaks rules.
    """
    source = os.fspath(path)
    return parse_settings(read_settings_text(source), source)


def parse_settings(text: str, source: str) -> Settings:
    """Parse and validate settings text.

    Args:
        text: The TOML text.
        source: Its name in messages and `Settings.source`.

    Returns:
        The valid settings.

    Raises:
        SettingsError: (a ConfigError) listing every problem found.
    """
    data = parse_toml(text, source)
    return settings_from(Checker(source, scan_lines(text)), data, source)


def settings_from(check: Checker, data: Table, source: str) -> Settings:
    """Validate parsed settings as a whole, every problem recorded in `check`.

    Args:
        check: Where problems go; it knows the line (and text) each value came from.
        data: The parsed TOML tables.
        source: `Settings.source` of the result.

    Returns:
        The valid settings.

    Raises:
        SettingsError: (a ConfigError) listing every problem `check` holds, those found
            before the call included.
    """
    _top_level(check, data)
    server = _server(check, data)
    redundancy = _redundancy(check, data)
    settings = Settings(
        account=_account(check, data),
        server=server,
        redundancy=redundancy,
        sip=_sip(check, data),
        blf=BlfSettings(_blf_keys(check, data)),
        apps=_apps(check, data),
        vpn=vpn_settings(check, data),
        provisioning=provisioning_settings(check, data),
        board=_board(check, data),
        service=_service(check, data),
        source=source,
    )
    check_server_tunnels(check, settings)
    if check.found:
        raise SettingsError(check.messages())
    return settings


# ----------------------------------------------------------------------- checking


#: Phone Apps: each is a name in the phone's menu and a URL rewritten on every failover
#: (SPEC §2 step 3, within §9's 250 ms); a menu of more than 64 is no longer a menu.
MAX_APPS = 64
#: Extensions watched: more than the line keys of a desk phone with its expansion modules;
#: each is a SUBSCRIBE to re-establish on every failover within §9's 250 ms.
MAX_BLF_KEYS = 128


def _keys(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


#: Top-level tables and the keys each may hold (None: any key, as in `[apps]`).
_TABLES: dict[str, frozenset[str] | None] = {
    "account": _keys(AccountSettings),
    "server": _keys(ServerSettings),
    "redundancy": _keys(RedundancySettings),
    "sip": _keys(SipSettings),
    "blf": _keys(BlfSettings),
    "apps": None,
    "vpn": VPN_KEYS,
    "provisioning": PROVISIONING_KEYS,
    "board": _keys(BoardSettings),
    "service": _keys(ServiceSettings),
}


#: Each key of a fixed table, to its dotted name: "username" -> "account.username".
_KEY_HOMES = {
    key: f"{table}.{key}" for table, keys in reversed(_TABLES.items()) for key in keys or ()
}


def _top_level(check: Checker, data: Table) -> None:
    """Refuse unknown top-level tables, and keys outside any table."""
    for name, value in data.items():
        if name in _TABLES:
            continue
        if isinstance(value, dict):
            hint = did_you_mean(name, _TABLES, "[{}]")
            check.fail((name,), f"unknown table [{name}]{hint}")
        else:
            close = difflib.get_close_matches(name, sorted(_KEY_HOMES), n=1)
            hint = f"; did you mean {_KEY_HOMES[close[0]]}?" if close else ""
            check.fail((name,), f"unknown key {name} outside any table{hint}")


# ------------------------------------------------------------------------- tables


def _server(check: Checker, data: Table) -> ServerSettings:
    path = ("server",)
    table = check.table(data, path, _TABLES["server"])
    check.require(table, path, "address")
    return ServerSettings(
        address=check.take(table, path, "address", rule.host, ""),
        port=check.take(table, path, "port", rule.integer(0, 65535, " (0 = DNS SRV)"), 5060),
        transport=check.take(table, path, "transport", rule.choice("udp", "tcp", "tls"), "udp"),
        tls_ca_file=check.take(table, path, "tls_ca_file", rule.optional(rule.absolute_path), ""),
    )


def _account(check: Checker, data: Table) -> AccountSettings:
    path = ("account",)
    table = check.table(data, path, _TABLES["account"])
    check.require(table, path, "username")
    username = check.take(table, path, "username", rule.sip_user, "")
    password, password_file = _password(check, table, path)
    return AccountSettings(
        username=username,
        password=password,
        password_file=password_file,
        auth_username=check.take(table, path, "auth_username", rule.optional(rule.sip_user), "")
        or username,
        display_name=check.take(table, path, "display_name", rule.string, ""),
        domain=check.take(table, path, "domain", rule.optional(rule.host), ""),
    )


def _password(check: Checker, table: Table, path: KeyPath) -> tuple[str, str]:
    """(password, password_file): exactly one of the two keys, the file read and checked."""
    password = check.take(table, path, "password", rule.string, "", secret=True)
    password_file = check.take(table, path, "password_file", rule.optional(rule.absolute_path), "")
    if password and password_file:
        check.fail(
            (*path, "password_file"),
            "account.password and account.password_file are both set; give only one",
        )
        return "", ""
    if password_file:
        return check.take(table, path, "password_file", rule.read_password_file, ""), password_file
    if not password and not check.failed & {(*path, "password"), (*path, "password_file")}:
        check.fail((*path, "password"), "account.password or account.password_file is required")
    return password, ""


def _redundancy(check: Checker, data: Table) -> RedundancySettings:
    path = ("redundancy",)
    table = check.table(data, path, _TABLES["redundancy"])
    host = rule.optional(rule.host)
    port = rule.integer(1, 65535)
    settings = RedundancySettings(
        backup_destination=check.take(table, path, "backup_destination", rule.boolean, False),
        backup_destination_address=check.take(table, path, "backup_destination_address", host, ""),
        backup_destination_port=check.take(table, path, "backup_destination_port", port, 5060),
        outbound_proxy=check.take(table, path, "outbound_proxy", host, ""),
        outbound_proxy_port=check.take(table, path, "outbound_proxy_port", port, 5060),
        backup_outbound_proxy=check.take(table, path, "backup_outbound_proxy", host, ""),
        backup_outbound_proxy_port=check.take(
            table, path, "backup_outbound_proxy_port", port, 5060
        ),
        sip_keep_alive_mode=check.take(table, path, "sip_keep_alive_mode", rule.boolean, True),
        sip_keep_alive_interval=check.take(
            table, path, "sip_keep_alive_interval", rule.integer(1, 3600), 15
        ),
        failback_cycles=check.take(table, path, "failback_cycles", rule.integer(1, 100), 1),
    )
    address_path = (*path, "backup_destination_address")
    if (
        settings.backup_destination
        and not settings.backup_destination_address
        and address_path not in check.failed
    ):
        where = address_path if address_path[-1] in table else (*path, "backup_destination")
        check.fail(
            where,
            "redundancy.backup_destination_address must be set"
            " when redundancy.backup_destination = true",
        )
    return settings


def _sip(check: Checker, data: Table) -> SipSettings:
    path = ("sip",)
    table = check.table(data, path, _TABLES["sip"])
    return SipSettings(
        local_port=check.take(table, path, "local_port", rule.integer(1, 65535), 5060),
        register_expires=check.take(
            table, path, "register_expires", rule.integer(30, 86400, " seconds"), 300
        ),
        user_agent=check.take(
            table, path, "user_agent", rule.non_empty(rule.string), SipSettings().user_agent
        ),
        auto_answer=check.take(table, path, "auto_answer", rule.boolean, False),
    )


def _blf_keys(check: Checker, data: Table) -> tuple[str, ...]:
    path = ("blf",)
    table = check.table(data, path, _TABLES["blf"])
    keys = check.take_list(table, path, "keys", rule.blf_key, "extensions")
    if len(keys) > MAX_BLF_KEYS:
        check.fail(
            (*path, "keys"),
            f"blf.keys must have at most {MAX_BLF_KEYS} extensions, got {len(keys)}",
        )
        return ()
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            check.fail((*path, "keys"), f'blf.keys[{index}] repeats "{key}"')
        seen.add(key)
    return keys


def _apps(check: Checker, data: Table) -> tuple[AppLink, ...]:
    path = ("apps",)
    table = check.table(data, path, None)
    if len(table) > MAX_APPS:
        check.fail(path, f"[apps] must have at most {MAX_APPS} apps, got {len(table)}")
        return ()
    apps: list[AppLink] = []
    for name, value in table.items():
        if isinstance(value, dict):
            app_path = (*path, name)
            app = check.table(table, app_path, _keys(AppLink) - {"name"})
            check.require(app, app_path, "url")
            primary = check.take(app, app_path, "url", rule.url, "")
            backup = check.take(app, app_path, "backup_url", rule.optional(rule.url), "")
        else:
            primary = check.take(table, path, name, rule.url_or_table, "")
            backup = ""
        if primary:
            apps.append(AppLink(name=name, url=primary, backup_url=backup))
    return tuple(apps)


def _board(check: Checker, data: Table) -> BoardSettings:
    path = ("board",)
    table = check.table(data, path, _TABLES["board"])
    return BoardSettings(profile=check.take(table, path, "profile", rule.profile, "emulated"))


def _service(check: Checker, data: Table) -> ServiceSettings:
    path = ("service",)
    table = check.table(data, path, _TABLES["service"])
    defaults = ServiceSettings()
    return ServiceSettings(
        control_socket=check.take(
            table, path, "control_socket", rule.socket_path, defaults.control_socket
        ),
        state_dir=check.take(table, path, "state_dir", rule.absolute_path, defaults.state_dir),
    )
