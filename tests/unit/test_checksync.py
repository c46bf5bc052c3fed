"""check-sync (SPEC §7 Force Update), the pure half: which NOTIFYs are check-syncs, the
answer each gets, what is reported, retransmissions, and the bounded memory.

Requests are parsed from raw bytes by the request hook's own parser (`parse_request`),
so header names in any case and compact forms go through the same path as on the wire.
Time is an input: tests jump `now` instead of sleeping.
"""

from __future__ import annotations

import pytest

from phoned.sip.checksync import (
    FORBIDDEN,
    MEMORY_MAX,
    MEMORY_S,
    OK,
    CheckSyncInbox,
    CheckSyncReceived,
    check_sync_reboot,
    format_source,
)
from phoned.sip.pjsip_hooks import IncomingRequest, parse_request

SERVER = ("192.0.2.11", 5060)
PROXY = ("192.0.2.21", 5060)
STRANGER = ("198.51.100.7", 5060)
ALLOWED = ("192.0.2.11", "192.0.2.21", "192.0.2.12", "192.0.2.22")


def notify(
    event_line: str | None = "Event: check-sync",
    *,
    source: tuple[str, int] = SERVER,
    call_id: str = "cs-1@192.0.2.11",
    cseq: str = "1 NOTIFY",
    method: str = "NOTIFY",
) -> IncomingRequest:
    """A request as the hook hands it over, parsed from its raw text."""
    lines = [
        f"{method} sip:1001@192.0.2.2:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK-{call_id}",
        f"From: <sip:pbx@{source[0]}>;tag=pbx",
        "To: <sip:1001@192.0.2.2>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
        *([event_line] if event_line is not None else []),
        "Content-Length: 0",
    ]
    request = parse_request(("\r\n".join(lines) + "\r\n\r\n").encode(), source)
    assert request is not None
    return request


@pytest.fixture
def inbox() -> CheckSyncInbox:
    made = CheckSyncInbox()
    made.allow_from(ALLOWED)
    return made


# ------------------------------------------------------------------ Rule 1: recognising


@pytest.mark.parametrize(
    "line",
    [
        "Event: check-sync",
        "event: check-sync",
        "EVENT:check-sync",
        "o: check-sync",
        "O : check-sync",
        "Event:    check-sync   ",
        "Event: Check-Sync",
        "Event: check-sync;reboot=false",
        "Event: check-sync ;vendor=x",
    ],
)
def test_event_header_variants_are_check_sync_without_reboot(
    inbox: CheckSyncInbox, line: str
) -> None:
    answer = inbox.handle(notify(line), now=10.0)

    assert answer is not None
    assert answer.status == OK
    assert answer.report == CheckSyncReceived(SERVER, reboot=False, call_id="cs-1@192.0.2.11")


@pytest.mark.parametrize(
    "line",
    [
        "Event: check-sync;reboot=true",
        "Event: check-sync; reboot=TRUE",
        "event: check-sync;Reboot=True",
        'Event: check-sync;reboot="true"',
        "Event: check-sync;vendor=x;reboot=true",
        "o: check-sync ; reboot = true",
    ],
)
def test_reboot_true_in_any_case_asks_for_a_restart(inbox: CheckSyncInbox, line: str) -> None:
    answer = inbox.handle(notify(line), now=10.0)

    assert answer is not None
    assert answer.report is not None
    assert answer.report.reboot is True


@pytest.mark.parametrize(
    "value",
    ["check-sync;reboot", "check-sync;reboot=yes", "check-sync;noreboot=true", "check-sync;x=1"],
)
def test_anything_but_reboot_true_is_no_reboot(value: str) -> None:
    assert check_sync_reboot(value) is False


@pytest.mark.parametrize(
    "line",
    [
        None,
        "Event: dialog",
        "Event: presence",
        "Event: check-sync-x",
        "Event: xcheck-sync",
        "Event:",
        "X-Event: check-sync",
    ],
)
def test_other_events_are_not_ours(inbox: CheckSyncInbox, line: str | None) -> None:
    assert inbox.handle(notify(line), now=10.0) is None
    assert inbox.handle(notify(line, source=STRANGER), now=10.0) is None
    assert (inbox.refused, inbox.remembered) == (0, 0)


@pytest.mark.parametrize("method", ["OPTIONS", "INVITE", "SUBSCRIBE", "MESSAGE", "PUBLISH"])
def test_other_methods_with_a_check_sync_event_are_not_ours(
    inbox: CheckSyncInbox, method: str
) -> None:
    request = notify(method=method, cseq=f"1 {method}", source=STRANGER)

    assert inbox.handle(request, now=10.0) is None
    assert (inbox.refused, inbox.remembered) == (0, 0)


# ------------------------------------------------------------------ Rule 2: 200 or 403


@pytest.mark.parametrize("source", [SERVER, PROXY, ("192.0.2.12", 5062), ("192.0.2.22", 1)])
def test_a_configured_server_or_proxy_gets_200_and_a_report(
    inbox: CheckSyncInbox, source: tuple[str, int]
) -> None:
    answer = inbox.handle(notify(source=source, call_id="abc"), now=1.0)

    assert answer is not None
    assert (answer.status, answer.warning) == (OK, None)
    assert answer.report == CheckSyncReceived(source, reboot=False, call_id="abc")
    assert inbox.refused == 0


def test_anyone_else_gets_403_no_report_a_warning_and_a_count(
    inbox: CheckSyncInbox,
) -> None:
    answer = inbox.handle(notify(source=STRANGER), now=1.0)

    assert answer is not None
    assert (answer.status, answer.report) == (FORBIDDEN, None)
    assert answer.warning == (
        "sip: check-sync from 198.51.100.7:5060 refused (not a configured server) -> 403"
    )
    assert inbox.refused == 1


def test_the_warning_comes_once_per_source_while_every_refusal_counts(
    inbox: CheckSyncInbox,
) -> None:
    warnings = []
    for n, source in enumerate([STRANGER, STRANGER, ("198.51.100.7", 5070), STRANGER]):
        answer = inbox.handle(notify(source=source, call_id=f"c{n}"), now=float(n))
        assert answer is not None
        warnings.append(answer.warning)

    assert warnings[0] is not None
    assert warnings[1] is None
    assert warnings[2] == (
        "sip: check-sync from 198.51.100.7:5070 refused (not a configured server) -> 403"
    )
    assert warnings[3] is None
    assert inbox.refused == 4


def test_nothing_is_allowed_until_told() -> None:
    answer = CheckSyncInbox().handle(notify(), now=1.0)

    assert answer is not None
    assert answer.status == FORBIDDEN


def test_allow_from_replaces_the_set_and_names_never_match(inbox: CheckSyncInbox) -> None:
    inbox.allow_from(["pbx1.example", "192.0.2.12"])

    assert inbox.allowed == frozenset({"pbx1.example", "192.0.2.12"})
    first = inbox.handle(notify(source=SERVER, call_id="a"), now=1.0)
    second = inbox.handle(notify(source=("192.0.2.12", 5060), call_id="b"), now=1.0)
    assert first is not None
    assert second is not None
    assert (first.status, second.status) == (FORBIDDEN, OK)


def test_ipv6_and_v4_mapped_addresses_compare_canonically() -> None:
    inbox = CheckSyncInbox()
    inbox.allow_from(["2001:DB8::0:11", "[2001:db8::21]", "::ffff:192.0.2.11"])

    for n, host in enumerate(["2001:db8::11", "2001:db8::21", "192.0.2.11"]):
        answer = inbox.handle(notify(source=(host, 5060), call_id=f"v6-{n}"), now=1.0)
        assert answer is not None
        assert answer.status == OK, host


def test_format_source_brackets_ipv6() -> None:
    assert format_source(("2001:db8::7", 5060)) == "[2001:db8::7]:5060"
    assert format_source(("198.51.100.7", 5060)) == "198.51.100.7:5060"


# ------------------------------------------------------------------ Rule 3: retransmissions


def test_a_retransmission_is_answered_again_but_reported_once(inbox: CheckSyncInbox) -> None:
    answers = [inbox.handle(notify(), now=t) for t in (0.0, 0.5, 1.5, 63.9)]

    assert [a.status for a in answers if a] == [OK] * 4
    assert [a.report is not None for a in answers if a] == [True, False, False, False]


def test_cseq_whitespace_and_case_do_not_make_a_new_notify(inbox: CheckSyncInbox) -> None:
    inbox.handle(notify(cseq="7 NOTIFY"), now=0.0)
    again = inbox.handle(notify(cseq="7   notify"), now=0.1)

    assert again is not None
    assert again.report is None


def test_a_refused_retransmission_is_refused_again_but_counted_once(
    inbox: CheckSyncInbox,
) -> None:
    first = inbox.handle(notify(source=STRANGER), now=0.0)
    again = inbox.handle(notify(source=STRANGER), now=0.5)

    assert first is not None
    assert again is not None
    assert (again.status, again.report, again.warning) == (FORBIDDEN, None, None)
    assert inbox.refused == 1


@pytest.mark.parametrize(
    ("call_id", "cseq", "source"),
    [
        ("cs-2@192.0.2.11", "1 NOTIFY", SERVER),
        ("cs-1@192.0.2.11", "2 NOTIFY", SERVER),
        ("cs-1@192.0.2.11", "1 NOTIFY", ("192.0.2.11", 5070)),
        ("cs-1@192.0.2.11", "1 NOTIFY", PROXY),
    ],
)
def test_another_call_id_cseq_or_source_is_a_new_notify(
    inbox: CheckSyncInbox, call_id: str, cseq: str, source: tuple[str, int]
) -> None:
    inbox.handle(notify(), now=0.0)
    other = inbox.handle(notify(call_id=call_id, cseq=cseq, source=source), now=0.1)

    assert other is not None
    assert other.report is not None


def test_after_64_s_the_same_notify_is_new_again(inbox: CheckSyncInbox) -> None:
    inbox.handle(notify(), now=100.0)
    later = inbox.handle(notify(), now=100.0 + MEMORY_S)

    assert later is not None
    assert later.report is not None
    assert inbox.remembered == 1  # the old entry was forgotten, not kept beside the new one


def test_memory_is_bounded_and_forgets_the_oldest_first(inbox: CheckSyncInbox) -> None:
    for n in range(MEMORY_MAX + 36):
        inbox.handle(notify(call_id=f"flood-{n}"), now=n / 1000)

    assert inbox.remembered == MEMORY_MAX
    newest = inbox.handle(notify(call_id=f"flood-{MEMORY_MAX + 35}"), now=1.0)
    oldest = inbox.handle(notify(call_id="flood-0"), now=1.0)
    assert newest is not None
    assert oldest is not None
    assert newest.report is None  # still remembered: a retransmission
    assert oldest.report is not None  # forgotten under the flood: reported again
    assert inbox.remembered == MEMORY_MAX


def test_expired_entries_are_dropped_as_time_passes(inbox: CheckSyncInbox) -> None:
    for n in range(10):
        inbox.handle(notify(call_id=f"old-{n}"), now=float(n))

    inbox.handle(notify(call_id="new"), now=9.0 + MEMORY_S)

    assert inbox.remembered == 1


@pytest.mark.parametrize(("memory_s", "memory_max"), [(-1.0, 64), (64.0, 0)])
def test_nonsense_memory_settings_are_refused(memory_s: float, memory_max: int) -> None:
    with pytest.raises(ValueError, match="check-sync memory"):
        CheckSyncInbox(memory_s=memory_s, memory_max=memory_max)
