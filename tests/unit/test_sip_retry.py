"""Refused REGISTERs (`phoned.sip.registration`): the spread waits, the schedule, and the
registrar's report-and-retry, with a fake clock and a fake account (no pjsua2 library:
only `pj.Error`, which SWIG lets us build, is pjsua2's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pjsua2 as pj
import pytest

from phoned.core.events import Server
from phoned.sip.account import RegState, RetryPolicy, ServerAccount, SipIdentity, SipTarget
from phoned.sip.registration import Registrar, RetrySchedule, refusal_name, retry_delay_s

POLICY = RetryPolicy(first_interval_s=30, interval_s=60, random_s=10, refused_s=1.0)
TARGET = SipTarget("192.0.2.12", 5060)
EBUSY = 171001


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [
        (1, 0.0, 0.5),  # 1 s +- 0.5 s
        (1, 0.5, 1.0),
        (1, 0.999, 1.499),
        (2, 0.0, 1.0),  # 2 s +- 1 s
        (3, 0.999, 5.996),  # 4 s +- 2 s
        (6, 0.0, 20.0),  # capped at first_interval_s (30 s), spread +- random_s (10 s)
        (12, 0.999, 39.98),
    ],
)
def test_waits_double_to_the_first_interval_with_a_spread(
    attempt: int, rand: float, delay: float
) -> None:
    assert retry_delay_s(attempt, POLICY, lambda: rand) == pytest.approx(delay)


def test_the_spread_follows_random_s_when_it_is_smaller() -> None:
    tight = RetryPolicy(first_interval_s=30, random_s=1, refused_s=8.0)
    waits = [retry_delay_s(1, tight, iter([r]).__next__) for r in (0.0, 0.5, 0.999)]
    assert waits == pytest.approx([7.0, 8.0, 8.998])


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("Object is busy (PJSIP_EBUSY)", "PJSIP_EBUSY"),
        ("Invalid URI (PJSIP_EINVALIDURI)", "PJSIP_EINVALIDURI"),
        ("Network is unreachable", "Network is unreachable"),
        ("", "status 120101"),
    ],
)
def test_refusal_name(reason: str, name: str) -> None:
    assert refusal_name(reason, 120101) == name


def test_schedule_counts_refusals_until_cancelled() -> None:
    clock = Clock()
    schedule: RetrySchedule[str] = RetrySchedule(POLICY, clock=clock, rand=lambda: 0.5)

    assert schedule.schedule(Server.BACKUP, "first") == 1.0
    assert schedule.pending(Server.BACKUP) == "first"
    clock.now += 0.99
    assert schedule.take_due() == []
    clock.now += 0.01
    assert schedule.take_due() == [(Server.BACKUP, "first")]
    assert schedule.pending(Server.BACKUP) is None

    assert schedule.schedule(Server.BACKUP, "second") == 2.0  # refused again: doubled
    schedule.cancel(Server.BACKUP)
    assert schedule.pending(Server.BACKUP) is None
    assert schedule.schedule(Server.BACKUP, "third") == 1.0  # a fresh count


@dataclass
class FakeAccount:
    """What `Registrar.register` uses of a `ServerAccount`; refuses `busy_for` times."""

    busy_for: int
    server: Server = Server.BACKUP
    target: SipTarget = TARGET
    state: RegState = RegState.UNREGISTERING
    serial: int = 0
    asked: int = 0
    registrar: Registrar | None = None

    def setRegistration(self, renew: bool) -> None:  # noqa: N802  # pjsua2's name
        assert renew
        self.asked += 1
        if self.asked <= self.busy_for:
            error = pj.Error()
            error.status, error.reason = EBUSY, "Object is busy (PJSIP_EBUSY)"
            raise error
        self.set(RegState.REGISTERING)  # pjsua calls onRegStarted inside

    def set(self, state: RegState) -> None:
        """A pjsua2 callback: the account's state changed."""
        self.state = state
        self.serial += 1
        assert self.registrar is not None
        self.registrar._changed(cast(ServerAccount, self))


@dataclass
class Harness:
    clock: Clock
    registrar: Registrar
    accounts: dict[Server, ServerAccount]
    reports: list[tuple[Server, RegState, int, str]]
    changes: list[RegState]


def _harness() -> Harness:
    clock = Clock()
    accounts: dict[Server, ServerAccount] = {}
    reports: list[tuple[Server, RegState, int, str]] = []
    changes: list[RegState] = []
    registrar = Registrar(
        SipIdentity("1001", "pw"), register_expires=300, retry=POLICY, accounts=accounts,
        on_change=lambda account: changes.append(account.state),
        on_incoming=lambda _account, _call, _source: None,
        report=lambda *report: reports.append(report), tls_rejection=lambda _since: None,
        clock=clock, rand=lambda: 0.8,
    )  # fmt: skip
    return Harness(clock, registrar, accounts, reports, changes)


def _current(h: Harness, busy_for: int) -> FakeAccount:
    fake = FakeAccount(busy_for=busy_for, registrar=h.registrar)
    h.accounts[fake.server] = cast(ServerAccount, fake)
    return fake


def test_a_refused_register_is_reported_and_retried_after_the_spread() -> None:
    h = _harness()
    fake = _current(h, busy_for=2)
    account = cast(ServerAccount, fake)

    assert not h.registrar.register(account)
    assert h.reports == [
        (Server.BACKUP, RegState.FAILED, 0,
         "REGISTER refused by pjsua (PJSIP_EBUSY), retrying in 1.3 s"),
    ]  # fmt: skip
    assert h.registrar.waiting(account)

    fake.set(RegState.IDLE)  # the un-REGISTER is answered: not news while a retry is due
    assert h.changes == []

    h.clock.now += 1.29
    h.registrar.run_due()
    assert fake.asked == 1  # not yet
    h.clock.now += 0.01
    h.registrar.run_due()
    assert fake.asked == 2  # refused again: the wait doubles
    assert h.reports[-1][3] == "REGISTER refused by pjsua (PJSIP_EBUSY), retrying in 2.6 s"

    h.clock.now += 2.6
    h.registrar.run_due()
    assert fake.asked == 3
    assert h.changes == [RegState.REGISTERING]  # it went out
    assert not h.registrar.waiting(account)
    assert len(h.reports) == 2


def test_no_retry_for_an_account_that_is_no_longer_current() -> None:
    h = _harness()
    fake = _current(h, busy_for=5)
    assert not h.registrar.register(cast(ServerAccount, fake))

    del h.accounts[Server.BACKUP]  # released meanwhile (the stack also cancels)
    h.clock.now += 60.0
    h.registrar.run_due()

    assert fake.asked == 1


def test_a_register_that_goes_out_after_all_makes_the_retry_moot() -> None:
    h = _harness()
    fake = _current(h, busy_for=1)
    account = cast(ServerAccount, fake)
    assert not h.registrar.register(account)

    fake.set(RegState.REGISTERING)  # pjsua's own retry timer sent one
    h.clock.now += 60.0
    h.registrar.run_due()

    assert not h.registrar.waiting(account)
    assert fake.asked == 1
    assert h.changes == [RegState.REGISTERING]
