"""Tests of phoned.service.applier: an apply on the main thread, what it says and shows."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from fakes import FakeClock
from phoned.config.loader import SettingsError, parse_settings
from phoned.config.settings import Settings
from phoned.core.events import Server, UseServer
from phoned.service.applier import FLASH_S, ConfigApplier
from phoned.service.changeplan import plan_changes
from phoned.service.configsource import Built, ConfigSource
from phoned.service.wiring import Applied

OLD = parse_settings(
    '[account]\nusername = "1001"\npassword = "old-secret"\n[server]\naddress = "192.0.2.11"\n',
    "phoned.toml",
)


class FakeBoard:
    active = Server.PRIMARY
    calls = False

    def has_calls(self) -> bool:
        return self.calls


class FakePhone:
    """`wiring.Phone` as the applier uses it: `apply` and the board."""

    def __init__(self, *, moved: bool = False) -> None:
        self.settings = OLD
        self.board = FakeBoard()
        self.moved = moved

    def apply(self, new: Settings) -> Applied:
        old, self.settings = self.settings, new
        return Applied(plan_changes(old, new), self.moved)


def applier(
    tmp_path: Path, phone: FakePhone, clock: FakeClock
) -> tuple[ConfigApplier, list[UseServer]]:
    used: list[UseServer] = []
    source = ConfigSource(str(tmp_path / "phoned.toml"))
    return ConfigApplier(phone, source, used.append, clock), used  # type: ignore[arg-type]


def built(settings: Settings) -> Built:
    return Built(settings, None, "local")


def test_an_apply_names_every_key_hides_secrets_and_flashes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    apply, _used = applier(tmp_path, FakePhone(), clock)
    new = dataclasses.replace(
        OLD,
        account=dataclasses.replace(OLD.account, password="new-secret"),  # noqa: S106 - a test value
        redundancy=dataclasses.replace(OLD.redundancy, sip_keep_alive_interval=4),
    )
    with caplog.at_level(logging.INFO, logger="phoned"):
        reply = apply.deliver(built(new), "check-sync")
    assert reply["changed"] == ["account", "redundancy"]
    assert reply["keys"] == [
        "account.password *** -> ***",
        "redundancy.sip_keep_alive_interval 15 -> 4",
    ]
    [line] = [r.getMessage() for r in caplog.records if "event=config" in r.getMessage()]
    assert "(check-sync) applied: account.password *** -> ***" in line
    assert "secret" not in caplog.text
    assert apply.flash() == "applied"
    assert apply.restart_for is None
    clock.advance(FLASH_S - 0.1)
    assert not apply.flash_ended()
    clock.advance(0.2)
    assert apply.flash() is None
    assert apply.flash_ended()
    assert not apply.flash_ended()  # once


def test_a_rejection_changes_nothing_says_why_and_flashes_red(tmp_path: Path) -> None:
    apply, _used = applier(tmp_path, phone := FakePhone(), FakeClock())
    error = SettingsError(["prov.toml:2: redundancy.sip_keep_alive_interval must be 1..3600"])
    reply = apply.deliver(error, "resync")
    assert reply == {"error": "prov.toml:2: redundancy.sip_keep_alive_interval must be 1..3600"}
    assert phone.settings is OLD
    assert apply.flash() == "rejected"


def test_keys_that_cannot_change_live_wait_for_the_call_then_restart(tmp_path: Path) -> None:
    phone = FakePhone()
    phone.board.calls = True
    apply, _used = applier(tmp_path, phone, FakeClock())
    new = dataclasses.replace(OLD, sip=dataclasses.replace(OLD.sip, local_port=5070))
    apply.deliver(built(new), "check-sync")
    assert apply.restart_for == "sip.local_port"


def test_a_moved_server_in_use_is_registered_again_there(tmp_path: Path) -> None:
    apply, used = applier(tmp_path, FakePhone(moved=True), FakeClock())
    new = dataclasses.replace(OLD, server=dataclasses.replace(OLD.server, address="192.0.2.21"))
    apply.deliver(built(new), "check-sync")
    assert [u.server for u in used] == [Server.PRIMARY]
    assert "moved" in used[0].reason


def test_nothing_changed_is_said_too(tmp_path: Path) -> None:
    apply, used = applier(tmp_path, FakePhone(), FakeClock())
    reply = apply.deliver(Built(OLD, None, "not modified"), "timer")
    source = str(tmp_path / "phoned.toml")
    assert reply == {"source": source, "changed": [], "keys": [], "fetch": "not modified"}
    assert apply.flash() is None
    assert used == []
