"""TCP and TLS for the pjsua2 adapter, and the shortened REGISTER timeout (SPEC §1, §3).

Loopback like `test_sip.py`: Kamailio PBXs on 127.0.0.11/12 listening on UDP and TCP
(free port) and TLS 5061 with a certificate from the session's lab CA (`lab_ca`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_sip import (
    MakePhone,
    lab_pbx,
    make_phone,
    pbx1,
    poll_until,
    register,
    wait_for,
)

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.stack import RegState, SipTarget
from phonelab.kamailio import TLS_PORT, KamailioPbx
from phonelab.tls import CertAuthority, self_signed

__all__ = ["make_phone", "pbx1"]  # fixtures shared with test_sip.py


def test_registers_over_tcp(make_phone: MakePhone, tmp_path: Path) -> None:
    with lab_pbx("tcp-primary", "127.0.0.11", tmp_path, tcp=True) as pbx:
        phone = make_phone()
        phone.stack.use_server(Server.PRIMARY, SipTarget(pbx.host, pbx.port, "tcp"))
        wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED,
                 phone.stack)  # fmt: skip

        contacts = pbx.registrations()
        assert len(contacts) == 1
        assert "transport=tcp" in contacts[0].lower()


def test_registers_over_tls_verified_by_the_ca(
    make_phone: MakePhone, lab_ca: CertAuthority, tmp_path: Path
) -> None:
    files = lab_ca.issue("tls-primary", ["127.0.0.11"])
    with lab_pbx("tls-primary", "127.0.0.11", tmp_path, tls=files) as pbx:
        phone = make_phone(tls_ca_file=str(lab_ca.cert))
        phone.stack.use_server(Server.PRIMARY, SipTarget(pbx.host, TLS_PORT, "tls"))
        wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED,
                 phone.stack, timeout_s=5.0)  # fmt: skip

        assert len(pbx.registrations()) == 1
        assert any(r.startswith("REGISTER") for r in pbx.requests())


@pytest.mark.parametrize("bad", ["unknown issuer", "wrong name"])
def test_bad_tls_certificate_is_refused_with_a_clear_reason(
    make_phone: MakePhone, lab_ca: CertAuthority, tmp_path: Path, bad: str
) -> None:
    if bad == "unknown issuer":
        files = self_signed(tmp_path, "rogue", ["127.0.0.11"])
    else:
        files = lab_ca.issue("misnamed", ["pbx.example.net"])
    with lab_pbx("tls-bad", "127.0.0.11", tmp_path, tls=files) as pbx:
        phone = make_phone(tls_ca_file=str(lab_ca.cert))
        phone.stack.use_server(Server.PRIMARY, SipTarget(pbx.host, TLS_PORT, "tls"))
        wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.FAILED,
                 phone.stack, timeout_s=5.0)  # fmt: skip

        failed = phone.recorder.first(Server.PRIMARY, RegState.FAILED)[1]
        assert failed.reason.startswith("TLS certificate rejected by 127.0.0.11:5061")
        assert pbx.registrations() == []
        assert not failed.rejected  # not a credentials problem


def test_tls_without_a_listening_server_fails_without_crash(make_phone: MakePhone) -> None:
    phone = make_phone(tls_ca_file="/nonexistent/ca.pem", register_timeout_s=2.0)
    phone.stack.use_server(Server.PRIMARY, SipTarget("127.0.0.19", TLS_PORT, "tls"))
    wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.FAILED,
             phone.stack, timeout_s=5.0)  # fmt: skip


def _time_to_failure(phone_maker: MakePhone, pbx: KamailioPbx, **options: object) -> float:
    phone = phone_maker(**options)
    register(phone, Server.PRIMARY, pbx)
    pbx.freeze()
    try:
        started = time.monotonic()
        phone.stack.use_server(Server.BACKUP, SipTarget(pbx.host, pbx.port))  # to the dead one
        assert poll_until(
            phone.stack, lambda: phone.stack.registration(Server.BACKUP) is RegState.FAILED, 40.0
        )
        failed_at, failed = phone.recorder.first(Server.BACKUP, RegState.FAILED)
        assert failed.code == 408
        phone.stack.shutdown(timeout_s=0.2)
        return failed_at - started
    finally:
        pbx.thaw()


def test_register_timeout_is_shortened(make_phone: MakePhone, pbx1: KamailioPbx) -> None:
    took_s = _time_to_failure(make_phone, pbx1, register_timeout_s=3.0)
    assert 2.9 <= took_s <= 3.3  # pjsip's default would be 32 s (Timer F = 64*T1)


def test_register_timeout_is_range_checked(make_phone: MakePhone) -> None:
    with pytest.raises(SipError, match=r"1\.\.32, got 0.2"):
        make_phone(register_timeout_s=0.2)


def test_tcp_target_fails_fast_when_the_server_refuses(make_phone: MakePhone) -> None:
    phone = make_phone()
    phone.stack.use_server(Server.PRIMARY, SipTarget("127.0.0.19", 5099, "tcp"))
    wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.FAILED, phone.stack)
    # SPEC §1: a refused connection is a failure at once, not after 32 s.
    assert phone.recorder.first(Server.PRIMARY, RegState.FAILED)[1].code == 503
