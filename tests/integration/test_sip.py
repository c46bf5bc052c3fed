"""The pjsua2 adapter against real Kamailio registrars on loopback (SPEC §2).

Each test runs one pjsua2 library start -> shutdown on the test's own (main) thread:
pjsua2 is one library per process, and `shutdown()` destroys it, so the next test can
create it again. Kamailio asks for digest auth (user 1001, password `PASSWORD`) so that
the credentials path is exercised too. Addresses are 127.0.0.11-13 with free ports.
The helpers and fixtures here are shared with `test_sip_calls.py` and
`test_sip_transports.py`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.account import RetryPolicy, account_config, sip_uri
from phoned.sip.stack import (
    BlfChanged,
    BlfState,
    Leaving,
    PjsuaStack,
    RegistrationChanged,
    RegState,
    SipEvent,
    SipIdentity,
    SipTarget,
)
from phonelab.capture import Capture
from phonelab.kamailio import ConfigExtensions, KamailioPbx, free_udp_port
from phonelab.pcap import sip_summary
from phonelab.proxy import KamailioProxy

PASSWORD = "s3cret-Pw9"  # noqa: S105  # the lab PBX's test password
IDENTITY = SipIdentity(username="1001", password=PASSWORD, auth_username="1001")
#: pjsua binds its UDP transport on all addresses: ports are checked there.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104
#: The lab PBXs' subscriber table: digest auth for REGISTER (401), INVITE/SUBSCRIBE (407).
USERS = {"1001": PASSWORD, "1002": "other-Pw7"}
#: A registrar that cannot serve: 503 to every REGISTER.
REFUSING = ConfigExtensions(
    preamble="""    if (is_method("REGISTER")) {
        sl_send_reply("503", "Service Unavailable");
        exit;
    }"""
)


@dataclass
class Recorder:
    """Collects `on_event` calls with the monotonic time they arrived."""

    events: list[tuple[float, SipEvent]] = field(default_factory=list)

    def __call__(self, event: SipEvent) -> None:
        self.events.append((time.monotonic(), event))

    def registrations(self) -> list[tuple[float, RegistrationChanged]]:
        return [(t, e) for t, e in self.events if isinstance(e, RegistrationChanged)]

    def states(self, server: Server) -> list[RegState]:
        return [e.state for _, e in self.registrations() if e.server is server]

    def first(self, server: Server, state: RegState) -> tuple[float, RegistrationChanged]:
        return next(
            (t, e) for t, e in self.registrations() if e.server is server and e.state is state
        )


@dataclass
class Phone:
    stack: PjsuaStack
    recorder: Recorder
    local_port: int


MakePhone = Callable[..., Phone]


def poll_until(stack: PjsuaStack, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Run the stack's event loop until `condition()` holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.poll(5)
        if condition():
            return True
    return condition()


def target_of(pbx: KamailioPbx) -> SipTarget:
    return SipTarget(pbx.host, pbx.port)


def registered_here(pbx: KamailioPbx, local_port: int) -> bool:
    """Whether the PBX's location table holds a contact of the phone's port."""
    return any(f":{local_port}" in contact for contact in pbx.registrations())


def wait_for(condition: Callable[[], bool], stack: PjsuaStack, timeout_s: float = 2.0) -> None:
    assert poll_until(stack, condition, timeout_s), "condition not reached in time"


def lab_pbx(name: str, host: str, tmp_path: Path, **options: Any) -> KamailioPbx:
    """A (not yet started) lab PBX on a free UDP port of `host`, authenticating `USERS`."""
    port = free_udp_port(None, host)
    options.setdefault("users", USERS)
    return KamailioPbx(name, host, port, workdir=tmp_path, **options)


@pytest.fixture
def pbx1(tmp_path: Path) -> Iterator[KamailioPbx]:
    with lab_pbx("sip-primary", "127.0.0.11", tmp_path) as pbx:
        yield pbx


@pytest.fixture
def pbx2(tmp_path: Path) -> Iterator[KamailioPbx]:
    with lab_pbx("sip-backup", "127.0.0.12", tmp_path) as pbx:
        yield pbx


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[KamailioPbx]:
    with lab_pbx("sip-refusing", "127.0.0.13", tmp_path, extensions=REFUSING) as pbx:
        yield pbx


@pytest.fixture
def make_phone() -> Iterator[MakePhone]:
    """Factory of started stacks (keywords go to `PjsuaStack`); all shut down after."""
    made: list[PjsuaStack] = []

    def make(identity: SipIdentity = IDENTITY, log_level: int = 1, **options: Any) -> Phone:
        recorder = Recorder()
        local_port = free_udp_port(None, ANY_ADDRESS)
        stack = PjsuaStack(
            identity,
            local_port=local_port,
            user_agent="phoned-test/1",
            register_expires=120,
            on_event=recorder,
            log_level=log_level,
            **options,
        )
        made.append(stack)
        stack.start()
        return Phone(stack, recorder, local_port)

    yield make
    for stack in made:
        stack.shutdown(timeout_s=1.0)


def register(phone: Phone, server: Server, pbx: KamailioPbx) -> None:
    phone.stack.use_server(server, target_of(pbx))
    wait_for(lambda: phone.stack.registration(server) is RegState.REGISTERED, phone.stack)


# ------------------------------------------------------------------------------ tests


def test_registers_on_primary_and_shutdown_unregisters(
    make_phone: MakePhone, pbx1: KamailioPbx
) -> None:
    phone = make_phone()
    register(phone, Server.PRIMARY, pbx1)

    assert phone.recorder.states(Server.PRIMARY) == [RegState.REGISTERING, RegState.REGISTERED]
    assert phone.recorder.first(Server.PRIMARY, RegState.REGISTERED)[1].code == 200
    assert registered_here(pbx1, phone.local_port)

    started = time.monotonic()
    phone.stack.shutdown(timeout_s=2.0)
    took_s = time.monotonic() - started

    assert took_s < 2.0
    assert pbx1.registrations() == []  # the un-REGISTER was answered before libDestroy
    assert phone.recorder.states(Server.PRIMARY)[-2:] == [RegState.UNREGISTERING, RegState.IDLE]


def test_failover_registers_backup_within_100ms_and_drops_primary_silently(
    make_phone: MakePhone, pbx1: KamailioPbx, pbx2: KamailioPbx, tmp_path: Path
) -> None:
    phone = make_phone()
    register(phone, Server.PRIMARY, pbx1)
    bpf = f"udp and host {pbx1.host} and port {pbx1.port}"
    with Capture(None, tmp_path / "primary.pcap", bpf=bpf) as capture:
        pbx1.freeze()  # the primary is dead: nothing it receives is answered
        try:
            called = time.monotonic()
            phone.stack.use_server(Server.BACKUP, target_of(pbx2))
            wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.REGISTERED,
                     phone.stack)  # fmt: skip
            took_ms = (phone.recorder.first(Server.BACKUP, RegState.REGISTERED)[0] - called) * 1e3
            # pjsip retransmits a non-INVITE request after 500 ms: watch past that.
            poll_until(phone.stack, lambda: False, 0.7)
        finally:
            pbx1.thaw()
        to_primary = [p for p in capture.packets() if p.sport == phone.local_port]

    assert took_ms < 100.0
    assert registered_here(pbx2, phone.local_port)
    assert [sip_summary(p.payload) for p in to_primary] == []  # no un-REGISTER, no retries
    assert registered_here(pbx1, phone.local_port)  # hence the primary keeps our contact
    assert phone.stack.registration(Server.PRIMARY) is RegState.IDLE
    assert phone.recorder.states(Server.PRIMARY)[-1] is RegState.IDLE


def test_failback_registers_primary_then_unregisters_backup(
    make_phone: MakePhone, pbx1: KamailioPbx, pbx2: KamailioPbx
) -> None:
    phone = make_phone()
    register(phone, Server.BACKUP, pbx2)

    phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
    wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.IDLE, phone.stack)

    assert phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED
    assert registered_here(pbx1, phone.local_port)
    assert pbx2.registrations() == []  # SPEC §2: no stale contact on the backup
    primary_at, _ = phone.recorder.first(Server.PRIMARY, RegState.REGISTERED)
    unregistering_at, _ = phone.recorder.first(Server.BACKUP, RegState.UNREGISTERING)
    assert primary_at <= unregistering_at  # the backup goes only once the primary holds us
    assert phone.recorder.first(Server.BACKUP, RegState.IDLE)[1].code == 200


def test_failback_keeps_backup_while_primary_refuses(
    make_phone: MakePhone, refusing: KamailioPbx, pbx2: KamailioPbx
) -> None:
    phone = make_phone()
    register(phone, Server.BACKUP, pbx2)

    phone.stack.use_server(Server.PRIMARY, target_of(refusing))
    wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.FAILED, phone.stack)
    poll_until(phone.stack, lambda: False, 0.2)  # room for a wrong un-REGISTER to show

    failed = phone.recorder.first(Server.PRIMARY, RegState.FAILED)[1]
    assert (failed.code, failed.reason) == (503, "Service Unavailable")
    assert phone.stack.registration(Server.BACKUP) is RegState.REGISTERED
    assert RegState.UNREGISTERING not in phone.recorder.states(Server.BACKUP)
    assert registered_here(pbx2, phone.local_port)

    phone.stack.use_server(Server.BACKUP, target_of(pbx2))  # the primary stays down: stay
    poll_until(phone.stack, lambda: False, 0.1)

    assert phone.stack.registration(Server.PRIMARY) is RegState.IDLE
    assert phone.stack.registration(Server.BACKUP) is RegState.REGISTERED
    assert phone.recorder.states(Server.BACKUP) == [RegState.REGISTERING, RegState.REGISTERED]


def _requests_from(packets: list[Any], port: int) -> list[str]:
    """Methods of the SIP requests the phone (its local `port`) sent, in order."""
    found = [sip_summary(p.payload) for p in packets if p.sport == port]
    return [summary.method for summary in found if summary is not None and summary.method]


def test_failback_from_a_dead_backup_sends_the_backup_nothing(
    make_phone: MakePhone, pbx1: KamailioPbx, tmp_path: Path
) -> None:
    with lab_pbx("dead-backup", "127.0.0.12", tmp_path, presence=True) as pbx2:
        phone = make_phone(blf_keys=["1002"])
        register(phone, Server.BACKUP, pbx2)
        wait_for(lambda: phone.stack.blf_states() == {"1002": BlfState.IDLE}, phone.stack)
        bpf = f"udp and host {pbx2.host} and port {pbx2.port}"
        with Capture(None, tmp_path / "backup.pcap", bpf=bpf) as capture:
            pbx2.freeze()  # SPEC §10: the backup died; the switch says so
            try:
                phone.stack.use_server(Server.PRIMARY, target_of(pbx1), left=Leaving.DEAD)
                wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED,
                         phone.stack)  # fmt: skip
                poll_until(phone.stack, lambda: False, 0.7)  # past pjsip's first retransmission
            finally:
                pbx2.thaw()
            sent = _requests_from(capture.packets(), phone.local_port)

    assert sent == []  # neither un-REGISTER nor un-SUBSCRIBE, hence no retransmissions
    assert phone.stack.registration(Server.BACKUP) is RegState.IDLE
    assert [r for r in pbx1.requests() if r.startswith("REGISTER")]


@pytest.mark.parametrize("backup_up", [True, False])
def test_failback_before_the_backups_verdict_waits_for_it(
    make_phone: MakePhone, pbx1: KamailioPbx, pbx2: KamailioPbx, tmp_path: Path, backup_up: bool
) -> None:
    phone = make_phone()
    register(phone, Server.BACKUP, pbx2)
    bpf = f"udp and host {pbx2.host} and port {pbx2.port}"
    with Capture(None, tmp_path / "backup.pcap", bpf=bpf) as capture:
        phone.stack.use_server(Server.PRIMARY, target_of(pbx1), left=Leaving.JUDGING)
        wait_for(lambda: phone.stack.registration(Server.PRIMARY) is RegState.REGISTERED,
                 phone.stack)  # fmt: skip
        poll_until(phone.stack, lambda: False, 0.2)  # the primary holds us: the backup waits
        waiting = _requests_from(capture.packets(), phone.local_port)
        still = phone.stack.registration(Server.BACKUP)

        phone.stack.server_judged(Server.BACKUP, up=backup_up)
        wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.IDLE, phone.stack)
        poll_until(phone.stack, lambda: False, 0.2)
        after = _requests_from(capture.packets(), phone.local_port)

    assert (waiting, still) == ([], RegState.REGISTERED)
    if backup_up:  # SPEC §2: un-REGISTERed, no stale contact on the backup
        assert set(after) == {"REGISTER"}
        assert not registered_here(pbx2, phone.local_port)
    else:  # SPEC §10: a dead backup gets nothing; its binding expires there
        assert after == []
        assert registered_here(pbx2, phone.local_port)


def test_digest_auth_answers_the_challenge(make_phone: MakePhone, pbx1: KamailioPbx) -> None:
    phone = make_phone()
    register(phone, Server.PRIMARY, pbx1)

    registers = [r for r in pbx1.requests() if r.startswith("REGISTER")]
    assert len(registers) == 2  # the 401 challenge, then the authenticated REGISTER
    registered = phone.recorder.first(Server.PRIMARY, RegState.REGISTERED)[1]
    assert not registered.rejected


def test_wrong_password_is_rejected_once_without_a_retry_storm(
    make_phone: MakePhone, pbx1: KamailioPbx
) -> None:
    phone = make_phone(SipIdentity(username="1001", password="wrong", auth_username="1001"))  # noqa: S106
    phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
    watched_s = 10.0
    poll_until(phone.stack, lambda: False, watched_s)  # what pjsua does on its own

    failed = [e for _, e in phone.recorder.registrations() if e.state is RegState.FAILED]
    assert len(failed) == 1
    assert failed[0].code in (401, 403)
    assert failed[0].rejected  # the supervisor: "primary rejected credentials for 1001"
    registers = [r for r in pbx1.requests() if r.startswith("REGISTER")]
    assert len(registers) <= 2  # challenge + one authenticated try, nothing more in 10 s
    assert pbx1.registrations() == []
    assert phone.stack.registration(Server.PRIMARY) is RegState.FAILED


def _proxy(name: str, host: str, pbx: KamailioPbx, tmp_path: Path) -> KamailioProxy:
    port = free_udp_port(None, host)
    return KamailioProxy(name, host, port, next_hop=(pbx.host, pbx.port), workdir=tmp_path)


def _registers_from(server: KamailioPbx, port: int) -> list[str]:
    return [r for r in server.requests() if r.startswith("REGISTER") and f":{port} " in r]


def test_register_goes_through_each_servers_outbound_proxy(
    make_phone: MakePhone, pbx1: KamailioPbx, pbx2: KamailioPbx, tmp_path: Path
) -> None:
    phone = make_phone()
    with (
        _proxy("sip-proxy1", "127.0.0.14", pbx1, tmp_path) as proxy1,
        _proxy("sip-proxy2", "127.0.0.15", pbx2, tmp_path) as proxy2,
    ):
        primary = SipTarget(pbx1.host, pbx1.port, proxy=(proxy1.host, proxy1.port))
        phone.stack.use_server(Server.PRIMARY, primary)
        wait_for(lambda: registered_here(pbx1, phone.local_port), phone.stack)

        assert len(_registers_from(proxy1, phone.local_port)) == 2  # challenge + auth
        assert _registers_from(pbx1, phone.local_port) == []  # none came direct
        assert [r for r in pbx1.requests() if r.startswith(f"REGISTER from {proxy1.host}:")]

        backup = SipTarget(pbx2.host, pbx2.port, proxy=(proxy2.host, proxy2.port))
        phone.stack.use_server(Server.BACKUP, backup)
        wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.REGISTERED,
                 phone.stack)  # fmt: skip

        assert registered_here(pbx2, phone.local_port)
        assert len(_registers_from(proxy2, phone.local_port)) == 2
        assert _registers_from(pbx2, phone.local_port) == []
        assert [r for r in pbx2.requests() if r.startswith(f"REGISTER from {proxy2.host}:")]
        assert len(_registers_from(proxy1, phone.local_port)) == 2  # nothing more to proxy1


def test_same_server_again_changes_nothing(make_phone: MakePhone, pbx1: KamailioPbx) -> None:
    phone = make_phone()
    register(phone, Server.PRIMARY, pbx1)
    before = len(pbx1.requests())

    phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
    poll_until(phone.stack, lambda: False, 0.1)

    assert len(pbx1.requests()) == before
    assert phone.recorder.states(Server.PRIMARY) == [RegState.REGISTERING, RegState.REGISTERED]


def test_calls_from_another_thread_raise_instead_of_aborting(
    make_phone: MakePhone, pbx1: KamailioPbx
) -> None:
    phone = make_phone()
    calls: dict[str, Callable[[], object]] = {
        "poll": lambda: phone.stack.poll(1),
        "registration": lambda: phone.stack.registration(Server.PRIMARY),
        "use_server": lambda: phone.stack.use_server(Server.PRIMARY, target_of(pbx1)),
        "shutdown": phone.stack.shutdown,
    }
    raised: dict[str, BaseException | None] = {}

    def worker() -> None:
        for name, call in calls.items():
            try:
                call()
                raised[name] = None
            except BaseException as exc:  # recorded and asserted below
                raised[name] = exc

    thread = threading.Thread(target=worker, name="not-the-owner")
    thread.start()
    thread.join(timeout=5.0)

    assert not thread.is_alive()
    assert {name: type(exc) for name, exc in raised.items()} == dict.fromkeys(calls, SipError)
    register(phone, Server.PRIMARY, pbx1)  # the owner thread still works


def test_start_on_a_taken_port_raises_and_frees_the_library(make_phone: MakePhone) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((ANY_ADDRESS, 0))
        stack = PjsuaStack(
            IDENTITY,
            local_port=holder.getsockname()[1],
            user_agent="phoned-test/1",
            register_expires=120,
            on_event=Recorder(),
        )
        with pytest.raises(SipError, match="Address already in use"):
            stack.start()

    make_phone()  # the failed start destroyed its library: a new one can be created


def test_second_stack_in_the_process_raises_instead_of_aborting(make_phone: MakePhone) -> None:
    make_phone()
    with pytest.raises(SipError, match="already in use"):
        make_phone()


def test_pjsip_log_goes_to_logging_without_secrets(
    make_phone: MakePhone, pbx1: KamailioPbx, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="phoned.pjsip")
    phone = make_phone(log_level=4)
    register(phone, Server.PRIMARY, pbx1)
    phone.stack.shutdown()

    pjsip_lines = [r.getMessage() for r in caplog.records if r.name == "phoned.pjsip"]
    assert any("registration success" in line for line in pjsip_lines)
    assert all(PASSWORD not in line and "Authorization" not in line for line in pjsip_lines)


# ------------------------------------------------- account settings (no library needed)


@pytest.mark.parametrize(
    ("host", "port", "transport", "uri"),
    [
        ("203.0.113.10", 5060, "udp", "sip:203.0.113.10:5060"),
        ("pbx.example.com", 5061, "tls", "sips:pbx.example.com:5061"),
        ("2001:db8::1", 5060, "tcp", "sip:[2001:db8::1]:5060;transport=tcp"),
    ],
)
def test_sip_uri(host: str, port: int, transport: str, uri: str) -> None:
    assert sip_uri(host, port, transport) == uri


def test_sip_uri_rejects_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="got 'sctp'"):
        sip_uri("203.0.113.10", 5060, "sctp")


def test_account_config_uses_proxy_credentials_and_spread_retries() -> None:
    identity = SipIdentity(
        username="1001", password=PASSWORD, auth_username="auth1001", display_name='Desk "7"'
    )
    target = SipTarget("203.0.113.12", 5070, proxy=("198.51.100.5", 5080))
    retry = RetryPolicy(first_interval_s=20, interval_s=40, random_s=7)

    cfg = account_config(identity, target, register_expires=300, retry=retry)

    assert cfg.idUri == '"Desk 7" <sip:1001@203.0.113.12>'  # domain None -> the server
    assert cfg.regConfig.registrarUri == "sip:203.0.113.12:5070"
    assert list(cfg.sipConfig.proxies) == ["sip:198.51.100.5:5080;lr"]
    assert (cfg.regConfig.timeoutSec, cfg.regConfig.dropCallsOnFail) == (300, False)
    reg = cfg.regConfig
    assert (reg.firstRetryIntervalSec, reg.retryIntervalSec, reg.randomRetryIntervalSec) == (
        20,
        40,
        7,
    )
    cred = cfg.sipConfig.authCreds[0]
    assert (cred.scheme, cred.realm, cred.username, cred.data) == (
        "digest",
        "*",
        "auth1001",
        PASSWORD,
    )
    assert PASSWORD not in repr(identity)
    assert cfg.natConfig.udpKaIntervalSec == 0  # no CRLF pings: the OPTIONS are the keep-alive


def test_unknown_transport_is_refused_before_pjsua(make_phone: MakePhone) -> None:
    phone = make_phone()
    with pytest.raises(SipError, match="udp, tcp or tls, got 'sctp'"):
        phone.stack.use_server(Server.PRIMARY, SipTarget("127.0.0.11", 5060, "sctp"))
    assert phone.stack.registration(Server.PRIMARY) is RegState.IDLE


# ------------------------------------------------------------ BLF (sip/subscriptions.py wired in)


def _lamps(phone: Phone) -> list[tuple[str, BlfState]]:
    return [(e.ext, e.state) for _, e in phone.recorder.events if isinstance(e, BlfChanged)]


def test_blf_moves_to_the_backup_on_failover_and_back_on_failback(
    make_phone: MakePhone, tmp_path: Path
) -> None:
    with (
        lab_pbx("blf-primary", "127.0.0.11", tmp_path, presence=True) as pbx1,
        lab_pbx("blf-backup", "127.0.0.12", tmp_path, presence=True) as pbx2,
    ):
        phone = make_phone(blf_keys=["1002"])
        register(phone, Server.PRIMARY, pbx1)
        pbx1.publish_dialog("1002", "busy")
        wait_for(lambda: phone.stack.blf_states() == {"1002": BlfState.BUSY}, phone.stack)

        pbx1.freeze()
        try:
            phone.stack.use_server(Server.BACKUP, target_of(pbx2))
            pbx2.publish_dialog("1002", "ringing")
            wait_for(lambda: phone.stack.blf_states() == {"1002": BlfState.RINGING},
                     phone.stack)  # fmt: skip
        finally:
            pbx1.thaw()
        subscribes_to_primary = [r for r in pbx1.requests() if r.startswith("SUBSCRIBE")]

        phone.stack.use_server(Server.PRIMARY, target_of(pbx1))
        wait_for(lambda: phone.stack.registration(Server.BACKUP) is RegState.IDLE, phone.stack)
        wait_for(lambda: phone.stack.blf_states() == {"1002": BlfState.BUSY}, phone.stack)

    assert len(subscribes_to_primary) == 2  # 407 + authenticated: nothing after the freeze
    assert [r for r in pbx2.requests() if r.startswith("SUBSCRIBE")]
    states = [state for ext, state in _lamps(phone) if ext == "1002"]
    busy = states.index(BlfState.BUSY)
    ringing = states.index(BlfState.RINGING)
    assert BlfState.UNKNOWN in states[busy:ringing]  # failover: the primary's lamps dropped
    assert BlfState.UNKNOWN in states[ringing:]  # failback: the backup's ended
    assert states[-1] is BlfState.BUSY
