"""The `[provisioning]` table of the settings (SPEC §7): its keys, their rules, the pairing.

Owns: which keys `[provisioning]` holds, the rule each follows and the checks between them
(`username` and `password_file` come together); reads the `password_file` (through
`phoned.config.rules`, mode 0600 as for `account.password_file`).
Must not touch: the fetch itself (`phoned.provision`), other tables, line numbers (the
`Checker` knows them). Rule: the password read never appears in a message.
"""

from __future__ import annotations

from dataclasses import fields

from phoned.config import rules as rule
from phoned.config.check import Checker, KeyPath, Table
from phoned.config.settings import ProvisioningSettings

#: The keys `[provisioning]` may hold: every field but `password`, which is read from
#: `password_file` and has no key of its own.
PROVISIONING_KEYS = frozenset(f.name for f in fields(ProvisioningSettings)) - {"password"}

#: SPEC §7: seconds between checks, 0 (off) or 60..604800 (one week).
_RESYNC_INTERVAL = rule.zero_or(60, 604800, " seconds")


def provisioning_settings(check: Checker, data: Table) -> ProvisioningSettings:
    """`[provisioning]` of the parsed settings, its problems recorded in `check`.

    Args:
        check: Collects the problems with their lines.
        data: The parsed settings (all tables).

    Returns:
        The provisioning settings (bad values replaced by their defaults).
    """
    path = ("provisioning",)
    table = check.table(data, path, PROVISIONING_KEYS)
    username, password_file, password = _credentials(check, table, path)
    return ProvisioningSettings(
        url=check.take(table, path, "url", rule.optional(rule.url), ""),
        resync_interval=check.take(table, path, "resync_interval", _RESYNC_INTERVAL, 0),
        tls_ca_file=check.take(table, path, "tls_ca_file", rule.optional(rule.absolute_path), ""),
        username=username,
        password_file=password_file,
        password=password,
        mac_interface=check.take(table, path, "mac_interface", rule.optional(rule.ifname), ""),
        check_sync=check.take(table, path, "check_sync", rule.boolean, True),
    )


def _credentials(check: Checker, table: Table, path: KeyPath) -> tuple[str, str, str]:
    """(username, password_file, password): both keys or neither, the file read and checked."""
    username = check.take(table, path, "username", rule.http_user, "")
    password_file = check.take(table, path, "password_file", rule.optional(rule.absolute_path), "")
    user_path, file_path = (*path, "username"), (*path, "password_file")
    if username and not password_file and file_path not in check.failed:
        check.fail(
            user_path,
            "provisioning.password_file is required when provisioning.username is set",
        )
    if password_file and not username and user_path not in check.failed:
        check.fail(
            file_path,
            "provisioning.username is required when provisioning.password_file is set",
        )
    if not password_file:
        return username, "", ""
    password = check.take(table, path, "password_file", rule.read_password_file, "")
    return username, password_file, password
