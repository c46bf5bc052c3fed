"""The device view derived from the status (SPEC §5)."""

from __future__ import annotations

from phoned.core.events import Server, Service, Verdict
from phoned.device.view import view_from_snapshot
from phoned.service.status import BoardFacts, LedState, StatusBoard


def board() -> StatusBoard:
    facts = BoardFacts(
        "1001",
        {Server.PRIMARY: ("192.0.2.11", 5060), Server.BACKUP: ("192.0.2.12", 5060)},
        keepalive=True,
        interval_s=15,
    )
    status = StatusBoard(lambda: facts)
    status.watch_blf(("1002", "1003"))
    return status


def test_registering_after_boot_blinks_green() -> None:
    view = view_from_snapshot(board().snapshot())

    assert (view.top_line, view.status_led) == ("1001  registering", LedState("green", True))
    assert view.blf == (("1002", "unknown"), ("1003", "unknown"))
    assert (view.vpn_up, view.last_event) == (None, "")


def test_on_the_backup_amber_steady_with_the_reason_as_last_event() -> None:
    status = board()
    status.set_active(Server.BACKUP, "primary missed 3 probes, backup answered in 4 ms")
    status.set_registration(Server.BACKUP, "registered", "200 OK")
    status.set_service(Service.OK)
    status.set_cycle(4, (Verdict(Server.BACKUP, up=True, attempts=1, rtt_ms=4.0),))
    status.set_blf("1002", "busy")

    view = view_from_snapshot(status.snapshot())

    assert (view.top_line, view.status_led) == ("1001  BACKUP", LedState("amber"))
    assert (view.server, view.server_address, view.registration) == (
        "backup",
        "192.0.2.12",
        "registered",
    )
    assert view.last_event == "failover: primary missed 3 probes, backup answered in 4 ms"
    assert view.blf[0] == ("1002", "busy")


def test_no_service_blinks_red_and_the_vpn_state_shows() -> None:
    status = board()
    status.set_service(Service.NO_SERVICE)
    status.set_vpn({"up": False, "active": "primary"})

    view = view_from_snapshot(status.snapshot())

    assert (view.top_line, view.status_led, view.vpn_up) == (
        "NO SERVICE",
        LedState("red", True),
        False,
    )
