"""Tests of phoned.service.changeplan: which part of a running phone takes which key (SPEC §7)."""

from __future__ import annotations

import dataclasses

import pytest

from phoned.config.loader import parse_settings
from phoned.config.settings import AppLink, Settings
from phoned.service.changeplan import ChangePlan, plan_changes

BASE = parse_settings(
    '[account]\nusername = "1001"\npassword = "pw-one"\n'
    '[server]\naddress = "192.0.2.11"\n'
    '[redundancy]\nbackup_destination = true\nbackup_destination_address = "192.0.2.12"\n'
    '[blf]\nkeys = ["1002"]\n',
    "phoned.toml",
)


def changed(table: str, **values: object) -> Settings:
    """BASE with `values` changed in `table`."""
    part = getattr(BASE, table)
    return dataclasses.replace(BASE, **{table: dataclasses.replace(part, **values)})


def test_no_change_is_an_empty_plan() -> None:
    plan = plan_changes(BASE, BASE)
    assert plan.empty
    assert plan == ChangePlan(changes=())
    assert plan.tables == []


@pytest.mark.parametrize(
    ("table", "values", "flag"),
    [
        ("redundancy", {"sip_keep_alive_interval": 4}, "retarget"),
        ("redundancy", {"failback_cycles": 3}, "retarget"),
        ("redundancy", {"backup_destination_address": "192.0.2.13"}, "retarget"),
        ("server", {"address": "192.0.2.14"}, "retarget"),
        ("server", {"port": 5070}, "retarget"),
        ("account", {"password": "pw-two"}, "account"),
        ("account", {"username": "1009"}, "account"),
        ("account", {"display_name": "Desk"}, "account"),
        ("sip", {"register_expires": 600}, "account"),
        ("sip", {"auto_answer": True}, "auto_answer"),
        ("blf", {"keys": ("1002", "1003")}, "blf"),
    ],
)
def test_each_live_key_reaches_its_part_and_nothing_restarts(
    table: str, values: dict[str, object], flag: str
) -> None:
    plan = plan_changes(BASE, changed(table, **values))
    assert getattr(plan, flag) is True
    others = {"retarget", "account", "blf", "apps", "vpn", "auto_answer"} - {flag}
    assert [name for name in sorted(others) if getattr(plan, name)] == []
    assert plan.restart == ()
    assert plan.tables == [table]


@pytest.mark.parametrize(
    ("table", "values", "key"),
    [
        ("sip", {"local_port": 5062}, "sip.local_port"),
        ("sip", {"user_agent": "desk/2"}, "sip.user_agent"),
        ("server", {"transport": "tcp"}, "server.transport"),
        ("server", {"tls_ca_file": "/etc/ca.pem"}, "server.tls_ca_file"),
        ("board", {"profile": "rpi-st7735"}, "board.profile"),
        ("service", {"state_dir": "/tmp/elsewhere"}, "service.state_dir"),
    ],
)
def test_keys_that_cannot_change_live_ask_for_a_restart(
    table: str, values: dict[str, object], key: str
) -> None:
    plan = plan_changes(BASE, changed(table, **values))
    assert plan.restart == (key,)
    assert not plan.account
    assert not plan.blf


def test_apps_and_provisioning() -> None:
    new = dataclasses.replace(BASE, apps=(AppLink("contacts", "http://192.0.2.11/c"),))
    plan = plan_changes(BASE, new)
    assert plan.apps
    assert plan.tables == ["apps"]
    quiet = plan_changes(BASE, changed("provisioning", resync_interval=60))
    assert quiet.tables == ["provisioning"]
    assert (quiet.retarget, quiet.account, quiet.restart) == (False, False, ())


def test_several_tables_keep_the_file_order() -> None:
    new = dataclasses.replace(
        changed("blf", keys=("1003",)),
        redundancy=dataclasses.replace(BASE.redundancy, sip_keep_alive_interval=4),
    )
    plan = plan_changes(BASE, new)
    assert plan.tables == ["redundancy", "blf"]
    assert [c.key for c in plan.changes] == ["redundancy.sip_keep_alive_interval", "blf.keys"]
    assert plan.retarget
    assert plan.blf
