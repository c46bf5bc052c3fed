"""Structured log lines: a sentence for a person, then `key=value` facts for a machine.

Owns: the one-line log format of every state change and probe result (SPEC §4), e.g.
`failover: primary 192.0.2.11 missed 3 probes, backup answered in 4 ms -> backup
event=use_server server=backup`. Must not touch: what is logged (callers decide) or any
secret (callers never pass one).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')

Scalar = str | int | float | bool | None


def render(fields: Mapping[str, Scalar]) -> str:
    """Render fields as `k=v` pairs; values with spaces or quotes are double-quoted."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.1f}"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        if not _BARE.match(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse(line: str) -> dict[str, str]:
    """Read back the `k=v` pairs of a line written by `render` (for the demo and tests)."""
    found = {}
    for key, value in _PAIR.findall(line):
        quoted = value.startswith('"')
        found[key] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\") if quoted else value
    return found


def log_event(
    logger: logging.Logger, event: str, message: str, level: int = logging.INFO, **fields: Scalar
) -> None:
    """Log `message` followed by `event=<event>` and the fields, on one line."""
    logger.log(level, "%s %s", message, render({"event": event, **fields}))


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr (journald on a device): time, level, logger, message; one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pyroute2 logs every netlink message at DEBUG: noise, and slow on the switch path.
    logging.getLogger("pyroute2").setLevel(max(level, logging.INFO))
