"""What a settings change asks of each part of a running phone (SPEC §7 "Applied live").

Owns: the pure rule from (old settings, new settings) to a `ChangePlan`: which parts take
the change live (the core and prober, the SIP account, BLF keys, apps, the VPN, call
answering) and which keys cannot change live, so that the service re-execs itself.
Must not touch: the parts themselves (`wiring.Phone.apply` carries the plan out), or the
comparison of values (`phoned.config.changes` lists what differs).

Rule: a key not named below never changes anything on its own but the settings in force
(e.g. `[provisioning]`, read at each fetch). A key that needs a restart is listed, never
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from phoned.config.changes import Change, setting_changes
from phoned.config.settings import Settings

#: Keys that only a new process can take: the SIP transports are bound and the user agent
#: set when pjsua2 starts; the prober's transport is chosen once; board and service are
#: the device's own (SPEC §7: re-exec "as for reboot=true, and says so in the log").
RESTART_KEYS = frozenset(
    {"sip.local_port", "sip.user_agent", "server.transport", "server.tls_ca_file"}
)
RESTART_TABLES = frozenset({"board", "service"})
#: Keys that reach the core and the prober from the next cycle (SPEC §7).
RETARGET_TABLES = frozenset({"server", "redundancy"})
#: Keys that the SIP account takes by registering again on the server in use.
ACCOUNT_KEYS = frozenset({"sip.register_expires"})


@dataclass(frozen=True)
class ChangePlan:
    """What one apply does; every field False/empty when nothing changed."""

    changes: tuple[Change, ...]  #: every key that differs, in the file's order
    retarget: bool = False  #: new timing or server addresses: core and prober
    account: bool = False  #: re-register on the server in use with the new account
    blf: bool = False  #: BLF keys added or removed
    apps: bool = False  #: app URLs
    vpn: bool = False  #: the tunnel's settings: applied by difference
    auto_answer: bool = False  #: how incoming calls are answered
    restart: tuple[str, ...] = ()  #: keys that need a re-exec, in the file's order

    @property
    def tables(self) -> list[str]:
        """The tables that changed, in the file's order, each once."""
        return list(dict.fromkeys(change.table for change in self.changes))

    @property
    def empty(self) -> bool:
        """Nothing changed."""
        return not self.changes


def plan_changes(old: Settings, new: Settings) -> ChangePlan:
    """The plan that puts `new` in force over `old`."""
    changes = tuple(setting_changes(old, new))
    keys = {change.key for change in changes}
    tables = {change.table for change in changes}
    restart = tuple(
        change.key
        for change in changes
        if change.key in RESTART_KEYS or change.table in RESTART_TABLES
    )
    return ChangePlan(
        changes=changes,
        retarget=bool(tables & RETARGET_TABLES),
        account="account" in tables or bool(keys & ACCOUNT_KEYS),
        blf="blf" in tables,
        apps="apps" in tables,
        vpn="vpn" in tables,
        auto_answer="sip.auto_answer" in keys,
        restart=restart,
    )
