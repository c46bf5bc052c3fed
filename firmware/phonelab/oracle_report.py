"""The wire oracle's result: one row per cycle, the discrepancies, and a table to print.

Owns: the data `phonelab.oracle` hands back (`Report`, `CycleRow`, `ServerRow`) and its
text for a person (`Report.table()`, one line per cycle). Pure.
Must not touch: the judgement itself (`oracle`, `oracle_rule`), packets, files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phonelab.oracle_rule import Verdict
from phonelab.oracle_wire import Switch, Wire


@dataclass
class ServerRow:
    """One server in one cycle: attempts, the first counting reply, the verdict."""

    server: str
    attempts: dict[int, float]  #: attempt -> sent at, seconds from the cycle's t0
    reply_s: float | None  #: first counting reply's arrival from t0 (may be past 1.6)
    reply_attempt: int | None  #: the attempt it answered
    refused: int  #: 503 replies to this cycle's attempts
    verdict: Verdict

    def summary(self) -> str:
        """`#1+0 #2+801 r=+850(#1) up` style."""
        sent = " ".join(f"#{k}{v * 1000:+.0f}" for k, v in self.attempts.items()) or "no probe"
        reply = (
            "-" if self.reply_s is None else f"{self.reply_s * 1000:+.0f}(#{self.reply_attempt})"
        )
        refused = f" 503x{self.refused}" if self.refused else ""
        return f"{sent} r={reply}{refused} {self.verdict.value}"


@dataclass
class CycleRow:
    """One cycle on the grid: its start and each server's row; what the rule implies and
    what the phone did (filled in by the decision walk)."""

    number: int
    t0: float  #: attempt 1 (capture time), or the grid time when nothing was sent
    servers: dict[str, ServerRow]
    rule: str = ""
    phone: str = "-"
    service: str = "ok"  #: expected service state after the cycle


@dataclass
class Report:
    """What the oracle found (see `phonelab.oracle.judge`)."""

    origin: float  #: the first probe's capture time; the table counts from it
    rows: list[CycleRow]
    discrepancies: list[str]
    switches: list[Switch]  #: the phone's switches as its REGISTERs show them
    wire: Wire
    late_replies: int = 0  #: replies that arrived after their cycle's 1600 ms
    unmatched_replies: int = 0  #: responses to OPTIONS that answer no probe
    notes: list[str] = field(default_factory=list)

    def verdicts(self, server: str) -> list[Verdict]:
        """`server`'s verdict in each cycle, in order."""
        return [row.servers[server].verdict for row in self.rows if server in row.servers]

    @property
    def final_server(self) -> str:
        """The server the phone registered with last (primary when it never switched)."""
        return self.switches[-1].server if self.switches else "primary"

    @property
    def final_service(self) -> str:
        """The service state the last judged cycle implies."""
        return self.rows[-1].service if self.rows else "ok"

    def table(self) -> str:
        """One line per cycle, then the reply counts and the discrepancies."""
        names = sorted({name for row in self.rows for name in row.servers}, reverse=True)
        head = f"{'cycle':>5} {'t0 s':>8}  " + "".join(f"{n:<43} " for n in names)
        lines = [head + f"{'rule':<32}phone"]
        for row in self.rows:
            cells = "".join(f"{row.servers[n].summary():<43} " for n in names if n in row.servers)
            start = row.t0 - self.origin
            lines.append(f"{row.number:>5} {start:>8.3f}  {cells}{row.rule:<32}{row.phone}")
        lines.append(
            f"replies after 1600 ms: {self.late_replies}; unmatched: {self.unmatched_replies}"
        )
        lines += [f"DISCREPANCY: {d}" for d in self.discrepancies] or ["no discrepancy"]
        return "\n".join(lines)
