"""scripts/fuzz (issue 12 item 4, SPEC §10): a short run of every target, through the
script itself, finds no crash, no hang and no input over 10 ms; and the harness is seen
to catch a crash and a slow input (the hidden `canary` target and `Tally` directly).

The long runs (10^6 inputs per target) are `scripts/fuzz` without `--runs`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phonelab.fuzz_run import KEEP_SLOWEST, RECHECKS, Tally
from phonelab.fuzz_targets import MAX_MS, TARGETS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz"
SHORT_RUNS = 2000


def run_script(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------- every target, briefly
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_short_run_finds_nothing(target: str, tmp_path: Path) -> None:
    done = run_script(tmp_path, "--runs", str(SHORT_RUNS), "--target", target)

    assert done.returncode == 0, done.stdout + done.stderr
    stats = json.loads((tmp_path / target / "stats.json").read_text())
    plain = json.loads((tmp_path / target / "plain.json").read_text())
    assert stats["runs"] == SHORT_RUNS
    assert stats["crashes"] == plain["crashes"] == 0, stats["reports"] + plain["reports"]
    assert plain["slow"] == 0, plain["reports"]
    assert 0 < plain["slowest_ms"] <= MAX_MS
    assert plain["retimed"] == KEEP_SLOWEST  # the slowest inputs were re-timed
    assert stats["messages"] >= 1  # hostile inputs were refused, each with a message
    row = next(line for line in done.stdout.splitlines() if line.startswith(target))
    assert row.split()[1:4] == [str(SHORT_RUNS), "0", "0"]
    assert row.endswith("ok")


def test_the_seed_corpus_names_every_target() -> None:
    corpus = SCRIPT.parent.parent / "tests" / "fuzz-corpus"
    assert sorted(p.name for p in corpus.iterdir()) == sorted(TARGETS)
    assert all(any((corpus / name).iterdir()) for name in TARGETS)


# ---------------------------------------------------------------- the harness can fail
def test_a_crash_and_a_slow_input_fail_the_run(tmp_path: Path) -> None:
    done = run_script(tmp_path, "--runs", "100", "--target", "canary")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "canary: crash: 0 bytes b''" in done.stdout
    assert "ZeroDivisionError" in done.stdout
    assert "canary: slow: 1 bytes" in done.stdout
    crash = next(tmp_path.glob("canary/crash-*"))
    assert crash.read_bytes() == b""  # the input is kept to replay


def test_tally_counts_an_undocumented_exception_as_a_crash() -> None:
    tally = Tally("t")

    def one(data: bytes) -> str | None:
        return {b"a": None}[data]  # KeyError for anything else

    tally.feed(one, (ValueError,), b"a")
    tally.feed(one, (ValueError,), b"zz")

    assert (tally.runs, tally.crashes) == (2, 1)
    assert tally.reports[0]["kind"] == "crash"
    assert "KeyError: b'zz'" in tally.reports[0]["detail"]


def test_tally_counts_documented_refusals_by_message_not_as_crashes() -> None:
    tally = Tally("t")

    def one(data: bytes) -> str | None:
        raise ValueError(f"value {len(data)} is wrong\nline '{data.decode()}' too")

    for data in (b"a", b"bb", b"ccc"):
        tally.feed(one, (ValueError,), data)

    assert tally.crashes == 0
    assert tally.messages == {"value _ is wrong", "line _ too"}  # numbers, quotes folded


def test_tally_an_error_without_a_message_is_a_crash() -> None:
    tally = Tally("t")

    def one(_data: bytes) -> str | None:
        raise ValueError

    tally.feed(one, (ValueError,), b"x")
    assert tally.crashes == 1
    assert "without a clear message" in tally.reports[0]["detail"]


def test_tally_rechecks_a_slow_input_and_keeps_the_minimum() -> None:
    tally = Tally("t", max_ms=5.0)
    calls: list[bytes] = []

    def noisy(data: bytes) -> str | None:  # slow the first time only: scheduler noise
        calls.append(data)
        if len(calls) == 1:
            time.sleep(0.02)
        return None

    elapsed_ms = tally.feed(noisy, (), b"n")
    assert len(calls) == 1 + RECHECKS
    assert elapsed_ms < 5.0
    assert tally.over == 0

    def slow(_data: bytes) -> str | None:
        time.sleep(0.01)
        return None

    assert tally.feed(slow, (), b"s") >= 10.0
    assert tally.over == 1
    assert max(tally.slowest)[2] == b"s"  # kept to be re-timed without instrumentation
