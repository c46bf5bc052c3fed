"""SPEC §2's switch against the ports' fakes: the steps, their order, and a step that fails."""

from __future__ import annotations

import pytest

from fakes import CallLog, FakeApps, FakeSipStack, FakeVpn
from phoned.core.events import Server
from phoned.service.switch import STEPS, Switch, SwitchPlan
from phoned.sip.account import SipTarget

P, B = Server.PRIMARY, Server.BACKUP
BACKUP_SIP = SipTarget("198.51.100.20", 5060)
SOURCES = {P: ("203.0.113.10",), B: ("198.51.100.20",)}
URLS = {
    P: {"contacts": "http://203.0.113.10/apps/contacts"},
    B: {"contacts": "http://198.51.100.20/apps/contacts"},
}


def parts(*, vpn: bool = True) -> tuple[CallLog, FakeSipStack, FakeApps, FakeVpn | None]:
    log = CallLog()
    return log, FakeSipStack(log), FakeApps(URLS, log), FakeVpn(log) if vpn else None


def test_the_steps_run_in_spec_order_vpn_then_sip_then_apps() -> None:
    log, sip, apps, vpn = parts()
    report = Switch(sip, apps, vpn).run(SwitchPlan(B, BACKUP_SIP, SOURCES))
    assert log.names() == [
        "vpn.point_to",
        "sip.accept_calls_from",  # before the REGISTER: a call from the backup is accepted
        "sip.use_server",
        "apps.point_to",
    ]
    assert list(report.steps) == list(STEPS)
    assert report.steps == {
        "vpn": "routes via the backup peer",
        "sip": "registering on backup 198.51.100.20:5060",
        "apps": "1 app(s) on backup",
    }
    assert report.failed == []
    assert (sip.server, sip.target, sip.peers) == (B, BACKUP_SIP, SOURCES)
    assert report.apps == URLS[B]
    assert vpn is not None
    assert vpn.peer is B


def test_without_a_vpn_the_routes_step_says_off_and_the_rest_runs() -> None:
    log, sip, apps, _ = parts(vpn=False)
    report = Switch(sip, apps, None).run(SwitchPlan(B, BACKUP_SIP, SOURCES))
    assert report.steps["vpn"] == "off"
    assert log.names() == ["sip.accept_calls_from", "sip.use_server", "apps.point_to"]


def test_a_failed_vpn_step_is_reported_and_sip_and_apps_still_move() -> None:
    log, sip, apps, vpn = parts()
    assert vpn is not None
    vpn.fail = True
    report = Switch(sip, apps, vpn).run(SwitchPlan(B, BACKUP_SIP, SOURCES))
    assert report.steps["vpn"] == "failed: netlink: operation not permitted"
    assert report.failed == ["vpn"]
    assert log.names()[1:] == ["sip.accept_calls_from", "sip.use_server", "apps.point_to"]
    assert sip.server is B
    assert apps.current == URLS[B]


@pytest.mark.parametrize("method", ["use_server", "accept_calls_from"])
def test_a_failed_sip_step_is_reported_never_raised_and_apps_still_move(method: str) -> None:
    _, sip, apps, vpn = parts()
    sip.fail = method
    report = Switch(sip, apps, vpn).run(SwitchPlan(B, BACKUP_SIP, SOURCES))
    assert report.failed == ["sip"]
    assert report.steps["sip"].startswith("failed: ")
    assert report.steps["apps"] == "1 app(s) on backup"
    assert apps.current == URLS[B]


def test_failback_runs_the_same_steps_towards_the_primary() -> None:
    log, sip, apps, vpn = parts()
    switch = Switch(sip, apps, vpn)
    switch.run(SwitchPlan(B, BACKUP_SIP, SOURCES))
    primary = SipTarget("203.0.113.10", 5060)
    report = switch.run(SwitchPlan(P, primary, SOURCES))
    assert log.calls[4:] == [
        ("vpn", "point_to primary"),
        ("sip", "accept_calls_from"),
        ("sip", "use_server primary 203.0.113.10:5060"),
        ("apps", "point_to primary"),
    ]
    assert report.steps["vpn"] == "routes via the primary peer"
    assert apps.current == URLS[P]
