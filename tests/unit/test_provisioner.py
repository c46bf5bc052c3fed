"""Tests of phoned.service.provisioning: the worker that fetches off the pjsua2 thread."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fakes import FakeClock
from phoned.config.live import LiveSettings
from phoned.config.loader import SettingsError, parse_settings
from phoned.errors import PhonedError
from phoned.provision.lastgood import LastGood
from phoned.service.commands import CommandError
from phoned.service.configsource import Built
from phoned.service.provisioning import Provisioner

SETTINGS = parse_settings(
    '[account]\nusername = "1001"\npassword = "pw"\n[server]\naddress = "192.0.2.11"\n'
    '[provisioning]\nurl = "http://192.0.2.40/"\nresync_interval = 60\n',
    "phoned.toml",
)
FILE = LastGood(b"", "http://192.0.2.40/b827eb12ab34.toml", '"e1"', "", 1.0e9)


class FakeSource:
    """A `ConfigSource` stand-in: `refresh()` returns or raises what the test says."""

    def __init__(self) -> None:
        self.outcome: Built | Exception = Built(SETTINGS, FILE, "fetched")
        self.refreshed = 0
        self.kept: list[Built] = []

    def refresh(self) -> Built:
        self.refreshed += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def keep(self, built: Built) -> None:
        self.kept.append(built)


class Deliveries:
    """The main thread's side: records what it was handed; may hold the worker."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def __call__(self, built: Built | SettingsError, why: str) -> dict[str, Any]:
        self.calls.append((built, why))
        self.entered.set()
        self.hold.wait(5)
        if isinstance(built, SettingsError):
            raise CommandError(str(built))
        return {"changed": ["redundancy"], "why": why}


@pytest.fixture
def parts() -> Iterator[tuple[Provisioner, FakeSource, Deliveries, FakeClock, list[int]]]:
    source, deliver, clock, beats = FakeSource(), Deliveries(), FakeClock(), [0]

    def beat() -> None:
        beats[0] += 1

    worker = Provisioner(
        source,  # type: ignore[arg-type]
        LiveSettings(SETTINGS),
        deliver,
        clock,
        on_beat=beat,
    )
    worker.start()
    yield worker, source, deliver, clock, beats
    deliver.hold.set()
    worker.stop()
    assert not worker.alive


def test_resync_fetches_applies_then_keeps(parts: Any) -> None:
    worker, source, deliver, _clock, beats = parts
    assert worker.resync(5) == {"changed": ["redundancy"], "why": "resync"}
    assert source.refreshed == 1
    assert [why for _, why in deliver.calls] == ["resync"]
    assert source.kept == [source.outcome]
    assert beats[0] >= 1


def test_nothing_new_fetched_is_not_kept(parts: Any) -> None:
    worker, source, _deliver, _clock, _beats = parts
    source.outcome = Built(SETTINGS, None, "not modified")
    worker.resync(5)
    assert source.kept == []


def test_a_rejected_file_is_delivered_as_such_and_resync_says_why(parts: Any) -> None:
    worker, source, deliver, _clock, _beats = parts
    source.outcome = SettingsError(["x.toml:2: redundancy.sip_keep_alive_interval ..."])
    with pytest.raises(PhonedError, match=r"x\.toml:2: redundancy"):
        worker.resync(5)
    assert isinstance(deliver.calls[0][0], SettingsError)
    assert source.kept == []


def test_requests_during_a_fetch_are_coalesced_into_one_more(parts: Any) -> None:
    worker, source, deliver, _clock, _beats = parts
    deliver.hold.clear()
    worker.request("check-sync")
    assert deliver.entered.wait(5)  # the first round is being applied, held
    worker.request("check-sync")
    worker.request("SIGHUP")
    deliver.hold.set()
    assert worker.resync(5)["why"] in {"SIGHUP, check-sync, resync", "resync"}
    whys = [why for _, why in deliver.calls]
    assert whys[0] == "check-sync"
    # the two queued while the first ran went out as one round (with the resync, or
    # just before it): never one fetch per request
    assert whys[1:] in (["SIGHUP, check-sync, resync"], ["SIGHUP, check-sync", "resync"])
    assert source.refreshed == len(whys)


def test_an_unexpected_error_does_not_end_the_worker(parts: Any) -> None:
    worker, source, _deliver, _clock, _beats = parts
    source.outcome = RuntimeError("boom")
    with pytest.raises(PhonedError, match="provisioning failed: RuntimeError"):
        worker.resync(5)
    assert worker.alive
    source.outcome = Built(SETTINGS, None, "not modified")
    assert worker.resync(5)["why"] == "resync"


def test_resync_interval_fetches_on_its_own(parts: Any) -> None:
    worker, source, deliver, clock, _beats = parts
    clock.advance(59.0)
    clock.advance(2.0)
    assert deliver.entered.wait(5)  # the worker wakes at least every second
    assert [why for _, why in deliver.calls] == ["timer"]
    assert source.refreshed == 1
    assert worker.alive


def test_no_url_means_no_timer() -> None:
    clock = FakeClock()
    settings = dataclasses.replace(
        SETTINGS, provisioning=dataclasses.replace(SETTINGS.provisioning, url="")
    )
    deliver = Deliveries()
    worker = Provisioner(
        FakeSource(),  # type: ignore[arg-type]
        LiveSettings(settings),
        deliver,
        clock,
        on_beat=lambda: None,
    )
    worker.start()
    clock.advance(1000.0)
    assert not deliver.entered.wait(1.2)  # more than one turn of the loop
    worker.stop()


def test_busy_from_the_request_until_the_apply_is_done(parts: Any) -> None:
    worker, _source, deliver, _clock, _beats = parts
    assert not worker.busy
    deliver.hold.clear()
    worker.request("check-sync")
    assert worker.busy  # at once: the main loop polls pjsua2 briskly for the apply
    assert deliver.entered.wait(5)
    assert worker.busy
    deliver.hold.set()
    poll_deadline = threading.Event()
    for _ in range(200):  # the round ends right after the delivery returns
        if not worker.busy:
            break
        poll_deadline.wait(0.01)
    assert not worker.busy
