"""Where a problem in a settings file is, and the list of problems found (SPEC §3).

Owns: a small, pure scanner that maps each table header (`[a.b]`, `[[a]]`) and `key =`
line of a TOML text to its line number (tomllib does not say), and `Checker`, which takes
values out of parsed tables through the rules of `phoned.config.rules` and collects every
problem as "<file>:<line>: <message>". Must not touch: files, settings classes, logging.

The scanner trusts that the text already parsed with tomllib and is best effort beyond
that: a key inside an inline table maps to the line of the key holding the table, list
items to the line of their key, anything unknown to the nearest table above it, or line 1.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from phoned.config.rules import Invalid, show

T = TypeVar("T")
#: A parsed TOML table.
Table = dict[str, Any]

#: A table or key as the tuple of its dotted parts: ("redundancy", "failback_cycles").
KeyPath = tuple[str, ...]

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"\s*({_DOTTED})\s*=(.*)$")


def split_key(dotted: str) -> KeyPath:
    """`a."b.c".d` -> ("a", "b.c", "d"), with TOML's own unquoting."""
    parts: list[str] = []
    for part in re.findall(_PART, dotted):
        quoted = part[0] in "\"'"
        parts.append(tomllib.loads(f"k = {part}")["k"] if quoted else part)
    return tuple(parts)


def _opens_multiline(rest: str) -> str:
    """The delimiter of a multi-line string left open on this line, else ""."""
    value = rest.strip()
    for delimiter in ('"""', "'''"):
        if value.startswith(delimiter) and value.count(delimiter) == 1:
            return delimiter
    return ""


def scan_lines(text: str) -> dict[KeyPath, int]:
    """Map every table and key path of `text` to its 1-based line number.

    A dotted key `a.b = 1` in table `[t]` also maps its prefix ("t", "a") to that line
    when nothing defined it earlier.
    """
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    open_string = ""
    # Split on "\n" only, as TOML does: str.splitlines() also splits on U+2028 and others.
    for number, line in enumerate(text.split("\n"), start=1):
        if open_string:
            if open_string in line:
                open_string = ""
            continue
        header = _HEADER.match(line)
        if header:
            table = split_key(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = table + split_key(key.group(1))
            for end in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:end], number)
            open_string = _opens_multiline(key.group(2))
    return lines


# -------------------------------------------------------------------------- checker


def did_you_mean(word: str, choices: Iterable[str], fmt: str = "{}") -> str:
    """ "; did you mean X?" for the choice closest to `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


class Checker:
    """Collects every problem with its line while values are taken out of the data."""

    def __init__(self, source: str, lines: dict[KeyPath, int]) -> None:
        self.source = source
        self.lines = lines
        #: (line, message) of each problem found so far.
        self.found: list[tuple[int, str]] = []
        #: Key paths that already have a problem (to avoid a second, derived one).
        self.failed: set[KeyPath] = set()

    def line_of(self, path: KeyPath) -> int:
        """Line of the key, else of its nearest table or key above it, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def fail(self, path: KeyPath, text: str) -> None:
        """Record a problem about `path`."""
        line = self.line_of(path)
        self.failed.add(path)
        self.found.append((line, f"{self.source}:{line}: {text}"))

    def invalid(
        self, path: KeyPath, exc: Invalid, value: object, label: str = "", secret: bool = False
    ) -> None:
        """Record "<label> must be <expected>, got <value>" (value hidden when secret)."""
        shown = "<hidden>" if secret else show(value)
        self.fail(
            path, f"{label or '.'.join(path)} must be {exc.expected}, got {shown}{exc.detail}"
        )

    def table(self, data: Table, path: KeyPath, allowed: frozenset[str] | None) -> Table:
        """The sub-table at `path` ({} when absent or not a table), unknown keys refused."""
        value = data.get(path[-1], {})
        if not isinstance(value, dict):
            self.invalid(path, Invalid("a table"), value)
            return {}
        unknown = [key for key in value if key not in allowed] if allowed is not None else []
        for key in unknown:
            hint = did_you_mean(key, allowed or ())
            self.fail((*path, key), f"unknown key {'.'.join((*path, key))}{hint}")
        return value

    def take(
        self,
        table: Table,
        path: KeyPath,
        key: str,
        convert: Callable[[object], T],
        default: T,
        *,
        secret: bool = False,
    ) -> T:
        """`convert(value)` of `key` in `table` (found at `path`), `default` if absent or bad."""
        if key not in table:
            return default
        try:
            return convert(table[key])
        except Invalid as exc:
            self.invalid((*path, key), exc, table[key], secret=secret)
            return default

    def take_list(
        self, table: Table, path: KeyPath, key: str, convert: Callable[[object], T], noun: str
    ) -> tuple[T, ...]:
        """A list of `noun`s, each through `convert`; bad items are reported by index."""
        value = table.get(key, [])
        if not isinstance(value, list):
            self.invalid((*path, key), Invalid(f"a list of {noun}"), value)
            return ()
        items: list[T] = []
        for index, item in enumerate(value):
            try:
                items.append(convert(item))
            except Invalid as exc:
                label = f"{'.'.join((*path, key))}[{index}]"
                self.invalid((*path, key), exc, item, label=label)
        return tuple(items)

    def require(self, table: Table, path: KeyPath, key: str) -> bool:
        """True if `key` is in the table, else record "<key> is required"."""
        if key in table:
            return True
        self.fail((*path, key), f"{'.'.join((*path, key))} is required")
        return False
