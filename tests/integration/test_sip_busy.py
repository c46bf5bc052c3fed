"""A switch back to a server whose account is still leaving ends registered there (SPEC §2).

The issue: under loss, a REGISTER (or un-REGISTER) of one server was still pending when the
stack switched; pjsua answered with `PJSIP_EBUSY` and the phone believed itself on the
backup while the backup held no binding. Here the backup is made silent with an nftables
drop (`phonelab.faults`) so that its account's request stays pending, the stack switches
away and back, and Kamailio's location table says whether the phone ended registered.

Same lab as `test_sip.py` (Kamailio on loopback, digest auth, one pjsua2 library per
test on the test's thread); every wait polls the stack's event loop with a deadline.
"""

from __future__ import annotations

import time

from test_sip import (
    MakePhone,
    Phone,
    make_phone,
    pbx1,
    pbx2,
    poll_until,
    register,
    registered_here,
    target_of,
)

from phoned.core.events import Server
from phoned.sip.stack import RegistrationChanged, RegState
from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx

__all__ = ["make_phone", "pbx1", "pbx2"]  # fixtures shared with test_sip.py

#: pjsip retransmits a pending request at +0.5, +1.5, +3.5 s: a stale un-REGISTER lands
#: within this after the switch (measured: 0.3-1.3 s).
STALE_WINDOW_S = 4.0
#: The switch must end registered within this (a pending request retransmits up to 4 s).
REGISTERED_WITHIN_S = 10.0


def _backup_events(phone: Phone, since: float) -> list[RegistrationChanged]:
    return [
        e for t, e in phone.recorder.registrations() if t >= since and e.server is Server.BACKUP
    ]


def _assert_stays_registered(phone: Phone, pbx: KamailioPbx) -> None:
    """Registered on `pbx` now, and still after any stale request has landed."""
    stack = phone.stack
    assert poll_until(
        stack,
        lambda: (
            stack.registration(Server.BACKUP) is RegState.REGISTERED
            and registered_here(pbx, phone.local_port)
        ),
        REGISTERED_WITHIN_S,
    ), f"not registered on the backup in time: {stack.registration(Server.BACKUP)}"
    lost = poll_until(stack, lambda: not registered_here(pbx, phone.local_port), STALE_WINDOW_S)
    assert not lost, (
        f"the backup lost our binding; the stack says {stack.registration(Server.BACKUP)}"
    )
    assert stack.registration(Server.BACKUP) is RegState.REGISTERED


def test_switch_back_during_unregister_registers_once_that_is_answered(
    pbx1: KamailioPbx, pbx2: KamailioPbx, faults: Faults, make_phone: MakePhone
) -> None:
    """pjsua refuses a REGISTER while the un-REGISTER is pending (PJSIP_EBUSY), and a
    refusal waits out a random spread (issue 12's fault matrix: 0.5-11 s late under loss):
    the account REGISTERs the moment its un-REGISTER is answered instead, never refused."""
    phone = make_phone()
    stack = phone.stack
    register(phone, Server.BACKUP, pbx2)
    faults.blackhole(None, pbx2.port, host=pbx2.host)  # the un-REGISTER stays pending
    stack.use_server(Server.PRIMARY, target_of(pbx1))
    assert poll_until(
        stack, lambda: stack.registration(Server.BACKUP) is RegState.UNREGISTERING, 2.0
    )
    faults.unblackhole(None)  # its next retransmission gets through
    switched = time.monotonic()

    stack.use_server(Server.BACKUP, target_of(pbx2))  # the primary failed again

    _assert_stays_registered(phone, pbx2)
    timed = [
        (t, e)
        for t, e in phone.recorder.registrations()
        if t >= switched and e.server is Server.BACKUP
    ]
    states = [e.state for _, e in timed]
    assert RegState.FAILED not in states, f"a refusal reported: {timed}"
    answered_at = next(t for t, e in timed if e.state is RegState.IDLE)  # un-REGISTER's 200
    registered_at = next(t for t, e in timed if e.state is RegState.REGISTERED)
    assert 0 <= registered_at - answered_at < 0.5, timed
    assert phone.stack.registration(Server.PRIMARY) is RegState.IDLE  # dropped: failover


def test_switch_back_while_register_pending_keeps_that_registration(
    pbx1: KamailioPbx, pbx2: KamailioPbx, faults: Faults, make_phone: MakePhone
) -> None:
    phone = make_phone()
    stack = phone.stack
    register(phone, Server.PRIMARY, pbx1)
    faults.blackhole(None, pbx2.port, host=pbx2.host)  # the backup's REGISTER pends
    stack.use_server(Server.BACKUP, target_of(pbx2))
    stack.use_server(Server.PRIMARY, target_of(pbx1))  # the primary is back at once
    assert poll_until(stack, lambda: stack.registration(Server.PRIMARY) is RegState.REGISTERED, 2.0)
    faults.unblackhole(None)
    switched = time.monotonic()

    stack.use_server(Server.BACKUP, target_of(pbx2))  # and gone again

    _assert_stays_registered(phone, pbx2)
    states = [e.state for e in _backup_events(phone, switched)]
    assert RegState.UNREGISTERING not in states  # nothing removed our binding
