"""One fuzz target's run in this process: atheris's worker, the re-timing, and the judge.

Owns: judging each input by SPEC §10 (`Tally`); fuzzing one target under atheris until a
number of inputs (`work`, coverage-guided by libFuzzer, seeded from
`tests/fuzz-corpus/<target>/`); timing its slowest inputs again without instrumentation
(`retime`); and what each leaves in `<workdir>/<target>/` for the driver (`stats.json`,
`plain.json`, `slowest/`, crash and slow inputs).
Must not touch: the tests' seed corpora (libFuzzer writes what it learns to
`<workdir>/<target>/corpus`), anything outside the workdir, the targets themselves
(`phonelab.fuzz_targets`), the command line, child processes and the report
(`scripts/fuzz`).

Judged per input (SPEC §10: no crash, no hang, no input slower than 10 ms, a clear error):
- a crash is any exception but the target's documented error types, a documented error
  without a message, or a broken invariant (an AssertionError of the target);
- slow: over `max_ms` (`--max-ms`) in the worker and in its three re-runs (their minimum:
  scheduler noise), and again without instrumentation (atheris slows Python code several times;
  SPEC §10 is about the phone's code); the `KEEP_SLOWEST` slowest inputs are re-timed;
- a hang is an input libFuzzer's `-timeout` kills the worker for.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from phonelab.fuzz_targets import ALL_TARGETS, MAX_MS, Errors, OneInput

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "fuzz-corpus"
RECHECKS = 3
#: libFuzzer's -timeout: an input still running after this is a hang (kills the worker).
HANG_S = 10
PROGRESS_EVERY = 100_000
MAX_REPORTS = 5  #: crash or slow inputs reported in full per target (all are counted)
MAX_MESSAGES = 100_000  #: distinct error messages remembered per target
#: The slowest inputs under instrumentation, timed again without it (see the docstring).
KEEP_SLOWEST = 20


# ----------------------------------------------------------------------------- judging
@dataclass
class Tally:
    """What one target's inputs did; `feed` judges one input, `retime` a kept one."""

    name: str
    max_ms: float = MAX_MS
    artifacts: Path | None = None  #: crash and slow inputs are saved here when set
    runs: int = 0
    crashes: int = 0
    #: inputs over `max_ms` (after the re-checks); under instrumentation only candidates
    over: int = 0
    messages: set[str] = field(default_factory=set)
    reports: list[dict[str, str]] = field(default_factory=list)
    #: the `KEEP_SLOWEST` slowest inputs as a min-heap of (ms, run number, input)
    slowest: list[tuple[float, int, bytes]] = field(default_factory=list)
    _signatures: set[str] = field(default_factory=set)

    def feed(self, one: OneInput, errors: Errors, data: bytes) -> float:
        """Run `one` on `data` and judge it; its time in ms (the re-checks' minimum when
        over `max_ms`: scheduler noise or a slow input? the minimum says)."""
        self.runs += 1
        elapsed_ms, problem = _timed(one, errors, data, self)
        if problem is not None:
            self._report("crash", data, problem)
            return elapsed_ms
        if elapsed_ms > self.max_ms:
            elapsed_ms = min(elapsed_ms, *(_timed(one, errors, data)[0] for _ in range(RECHECKS)))
            self.over += elapsed_ms > self.max_ms
        entry = (elapsed_ms, self.runs, data)
        if len(self.slowest) < KEEP_SLOWEST:
            heapq.heappush(self.slowest, entry)
        elif entry > self.slowest[0]:
            heapq.heapreplace(self.slowest, entry)
        return elapsed_ms

    def slow(self, data: bytes, elapsed_ms: float) -> None:
        """Report `data` as slow: `elapsed_ms` is its time without instrumentation."""
        self._report("slow", data, f"{elapsed_ms:.2f} ms (minimum of {RECHECKS + 1} runs)")

    def refused(self, message: str) -> None:
        """Count a documented refusal's message (digits and quoted values folded)."""
        for line in message.splitlines():
            if len(self.messages) < MAX_MESSAGES:
                self.messages.add(_MESSAGE_VALUES.sub("_", line)[:160])

    def _report(self, kind: str, data: bytes, detail: str) -> None:
        self.crashes += kind == "crash"
        last = detail.strip().splitlines()[-1] if detail.strip() else kind
        signature = f"crash:{last[:80]}" if kind == "crash" else f"slow:{data!r}"
        if signature in self._signatures or len(self.reports) >= MAX_REPORTS:
            return
        self._signatures.add(signature)
        path = save(self.artifacts, kind, data) if self.artifacts is not None else None
        self.reports.append(
            {
                "kind": kind,
                "input": repr(data[:200]),
                "size": str(len(data)),
                "path": str(path or "-"),
                "detail": detail,
            }
        )

    def summary(self) -> dict[str, Any]:
        """The counts as JSON-able data (what a worker hands the driver)."""
        ms, _, data = max(self.slowest, default=(0.0, 0, b""))
        return {
            "name": self.name,
            "runs": self.runs,
            "crashes": self.crashes,
            "over": self.over,
            "slowest_ms": round(ms, 3),
            "slowest_input": repr(data[:80]),
            "slowest_size": len(data),
            "messages": len(self.messages),
            "reports": self.reports,
        }


_MESSAGE_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'|\d+")


def save(directory: Path, kind: str, data: bytes) -> Path:
    """`data` kept in `directory` as `<kind>-<sha1>`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{hashlib.sha1(data).hexdigest()}"  # noqa: S324  # a name
    path.write_bytes(data)
    return path


def _timed(
    one: OneInput, errors: Errors, data: bytes, tally: Tally | None = None
) -> tuple[float, str | None]:
    """(milliseconds, crash text or None) of one run; refusals counted in `tally`."""
    start = time.perf_counter()
    try:
        message = one(data)
    except errors as exc:
        message = str(exc)
        if not message.strip() or "Traceback" in message:
            return _ms(start), f"{type(exc).__name__} without a clear message: {message!r}"
    except Exception:  # SPEC §10: whatever it is, it is a finding
        return _ms(start), traceback.format_exc()
    if tally is not None and message:
        tally.refused(message)
    return _ms(start), None


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# ----------------------------------------------------------------------------- worker
def work(name: str, runs: int, seed: int, workdir: Path, max_ms: float) -> NoReturn:
    """Fuzz one target in this process until `runs` inputs; never returns."""
    import atheris  # noqa: PLC0415  # worker only: `retime` and the tests run without it

    target, home = ALL_TARGETS[name], workdir / name
    with atheris.instrument_imports(include=["phoned", *target.instrument]):
        one, errors = target.build(home)
    tally = Tally(name, max_ms, artifacts=home)
    started = time.monotonic()

    def test_one_input(data: bytes) -> None:
        tally.feed(one, errors, data)
        if tally.runs % PROGRESS_EVERY == 0:
            rate = tally.runs / max(time.monotonic() - started, 1e-9)
            print(f"fuzz: {name}: {tally.runs} inputs, {tally.crashes} crashes, {tally.over} "
                  f"over {max_ms:g} ms instrumented, {rate:.0f}/s", flush=True)  # fmt: skip
            _keep(tally, home, started)
        if tally.runs >= runs:
            _keep(tally, home, started)
            os._exit(0)  # libFuzzer would go on: the count is ours

    _keep(tally, home, started)
    atheris.Setup(_libfuzzer_argv(name, target.max_len, home, runs, seed), test_one_input)
    atheris.Fuzz()
    _keep(tally, home, started)  # libFuzzer ran out of -runs first (not expected)
    os._exit(0)


def _libfuzzer_argv(name: str, max_len: int, home: Path, runs: int, seed: int) -> list[str]:
    """libFuzzer's options for a worker; its corpus directory made afresh."""
    corpus = home / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    argv = [sys.argv[0], f"-runs={runs * 2 + 10_000}", f"-seed={seed}", f"-timeout={HANG_S}",
            f"-max_len={max_len}", "-rss_limit_mb=2048", "-print_final_stats=0",
            f"-artifact_prefix={home}/", str(corpus)]  # fmt: skip
    if (CORPUS / name).is_dir():
        argv.append(str(CORPUS / name))  # read only: new inputs go to the first directory
    return argv


def _keep(tally: Tally, home: Path, started: float) -> None:
    """The worker's summary in `stats.json` and its slowest inputs in `slowest/`."""
    shutil.rmtree(home / "slowest", ignore_errors=True)
    for _, number, data in tally.slowest:
        save(home / "slowest", str(number), data)
    summary = {**tally.summary(), "seconds": round(time.monotonic() - started, 1)}
    (home / "stats.json").write_text(json.dumps(summary))


def retime(name: str, workdir: Path, max_ms: float) -> None:
    """Time the worker's slowest inputs again in this process, without instrumentation;
    those still over `max_ms` (minimum of the re-checks) are slow."""
    home = workdir / name
    one, errors = ALL_TARGETS[name].build(home)
    tally = Tally(name, max_ms, artifacts=home)
    kept = sorted((home / "slowest").iterdir()) if (home / "slowest").is_dir() else []
    slowest_ms, slowest = 0.0, b""
    for path in kept:
        data = path.read_bytes()
        elapsed_ms = tally.feed(one, errors, data)
        if elapsed_ms > max_ms:
            tally.slow(data, elapsed_ms)
        if elapsed_ms >= slowest_ms:
            slowest_ms, slowest = elapsed_ms, data
    plain = {
        "retimed": len(kept),
        "slow": tally.over,
        "crashes": tally.crashes,
        "slowest_ms": round(slowest_ms, 3),
        "slowest_input": repr(slowest[:80]),
        "slowest_size": len(slowest),
        "reports": tally.reports,
    }
    (home / "plain.json").write_text(json.dumps(plain))
