"""The watchdog's gate (STYLE §3): WATCHDOG=1 only after every worker beat since the last."""

from __future__ import annotations

import threading
import time

import pytest

from fakes import FakeClock
from phoned.errors import PhonedError
from phoned.service.watchdog import Heartbeats, UnknownWorkerError

WORKERS = ("keepalive", "control")


def _beat_all(hb: Heartbeats) -> None:
    for worker in hb.workers:
        hb.beat(worker)


def test_no_ping_before_every_worker_has_beaten() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)

    assert not hb.due()  # registering is not a beat
    hb.beat("keepalive")
    assert not hb.due()
    hb.beat("control")
    assert hb.due()


def test_a_ping_resets_so_every_worker_must_beat_again() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)
    _beat_all(hb)

    hb.ping_sent()

    assert not hb.due()
    hb.beat("control")
    hb.beat("control")  # one worker beating twice does not vouch for the other
    assert not hb.due()
    hb.beat("keepalive")
    assert hb.due()


def test_due_does_not_reset_by_itself() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)
    _beat_all(hb)

    assert hb.due()
    assert hb.due()  # only ping_sent() resets: a ping that did not go out changes nothing


def test_a_stuck_worker_stops_the_pings_for_good_and_is_named() -> None:
    clock = FakeClock()
    hb = Heartbeats(clock, WORKERS)
    _beat_all(hb)
    hb.ping_sent()
    for _ in range(40):  # control keeps beating; keepalive is alive but wedged
        clock.advance(1.0)
        hb.beat("control")
        assert not hb.due()

    assert hb.stuck(older_than_s=30.0) == ["keepalive"]
    assert hb.silent_s("keepalive") == pytest.approx(40.0)
    assert hb.silent_s("control") == 0.0


def test_stuck_counts_silence_from_the_last_beat_and_is_strictly_older() -> None:
    clock = FakeClock()
    hb = Heartbeats(clock, WORKERS)
    clock.advance(10.0)
    hb.beat("control")
    clock.advance(31.0)

    assert hb.stuck(older_than_s=31.0) == ["keepalive"]  # 41 s; control's 31 s is not older
    assert hb.stuck(older_than_s=30.0) == ["keepalive", "control"]  # registration order
    assert hb.stuck(older_than_s=60.0) == []


def test_a_worker_that_never_beat_is_silent_since_it_was_registered() -> None:
    clock = FakeClock()
    hb = Heartbeats(clock, ["keepalive"])
    clock.advance(20.0)
    hb.add("vpn")
    clock.advance(5.0)

    assert hb.stuck(older_than_s=10.0) == ["keepalive"]
    assert hb.silent_s("vpn") == 5.0


def test_an_added_worker_must_beat_before_the_next_ping() -> None:
    hb = Heartbeats(FakeClock(), ["keepalive"])
    hb.beat("keepalive")
    assert hb.due()

    hb.add("vpn")

    assert not hb.due()
    hb.beat("vpn")
    assert hb.due()


def test_re_adding_a_restarted_worker_forgets_its_old_beat() -> None:
    clock = FakeClock()
    hb = Heartbeats(clock, WORKERS)
    _beat_all(hb)
    clock.advance(3.0)

    hb.add("keepalive")  # restarted: its beat before the restart vouches for nothing

    assert not hb.due()
    assert hb.silent_s("keepalive") == 0.0
    assert hb.workers == WORKERS  # still one entry, in its place


def test_removing_a_worker_no_longer_waits_for_it() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)
    hb.beat("control")
    assert not hb.due()

    hb.remove("keepalive")

    assert hb.due()
    assert hb.workers == ("control",)
    assert hb.stuck(older_than_s=-1.0) == ["control"]


def test_with_no_worker_left_the_loop_alone_vouches() -> None:
    hb = Heartbeats(FakeClock(), [])

    assert hb.due()
    hb.ping_sent()
    assert hb.due()
    assert hb.stuck(older_than_s=0.0) == []


def test_an_unknown_worker_is_a_clear_error() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)

    with pytest.raises(UnknownWorkerError) as info:
        hb.beat("keepalve")

    assert str(info.value) == (
        "watchdog: no worker 'keepalve' registered (workers: keepalive, control)"
    )
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, PhonedError)


@pytest.mark.parametrize("method", ["remove", "silent_s"])
def test_other_lookups_of_an_unknown_worker_raise_too(method: str) -> None:
    hb = Heartbeats(FakeClock(), WORKERS)
    hb.remove("control")

    with pytest.raises(KeyError, match="no worker 'control' registered"):
        getattr(hb, method)("control")


def test_a_removed_worker_cannot_beat() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)
    hb.remove("keepalive")

    with pytest.raises(UnknownWorkerError, match=r"\(workers: control\)"):
        hb.beat("keepalive")


@pytest.mark.parametrize("workers", [["a", "a"], [""]])
def test_bad_worker_names_are_refused_at_registration(workers: list[str]) -> None:
    with pytest.raises(ValueError, match="watchdog: "):
        Heartbeats(FakeClock(), workers)


def test_add_refuses_an_empty_name() -> None:
    hb = Heartbeats(FakeClock(), WORKERS)

    with pytest.raises(ValueError, match="non-empty"):
        hb.add("")


def test_workers_beating_on_their_own_threads_while_the_loop_pings() -> None:
    """Smoke test with real threads: no beat is lost or torn while pings reset."""
    names = [f"worker-{n}" for n in range(8)]
    hb = Heartbeats(FakeClock(), names)
    start = threading.Barrier(len(names) + 1, timeout=10.0)
    beats = 2000

    def work(name: str) -> None:
        start.wait()
        for _ in range(beats):
            hb.beat(name)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    start.wait()
    pings = 0
    give_up_at = time.monotonic() + 10.0  # a deadlock fails the test instead of hanging
    while any(thread.is_alive() for thread in threads) and time.monotonic() < give_up_at:
        if hb.due():
            hb.ping_sent()
            pings += 1
    for thread in threads:
        thread.join(timeout=10.0)
        assert not thread.is_alive()

    assert pings <= beats  # never more pings than any single worker's beats
    _beat_all(hb)
    assert hb.due()  # the state is consistent after the storm
    hb.ping_sent()
    assert not hb.due()
