"""Where a problem in a settings file is, and the list of problems found (SPEC §3).

Owns: a small, pure scanner that maps each table header (`[a.b]`, `[[a]]`) and `key =`
line of a TOML text to its line number (tomllib does not say), and `Checker`, which takes
values out of parsed tables through the rules of `phoned.config.rules` and collects every
problem as "<file>:<line>: <message>". When settings are laid together from two texts (SPEC §7:
the local file and the provisioned one), `Overlay` says which paths the second text gave, so
each problem names the text, and the line, where its value was written.
Must not touch: files, settings classes, logging.

The scanner trusts that the text already parsed with tomllib and is best effort beyond
that: a key inside an inline table maps to the line of the key holding the table, list
items to the line of their key, anything unknown to the nearest table above it, or line 1.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from phoned.config.rules import Invalid, show

T = TypeVar("T")
#: A parsed TOML table.
Table = dict[str, Any]

#: A table or key as the tuple of its dotted parts: ("redundancy", "failback_cycles").
KeyPath = tuple[str, ...]
#: Where a value was written: (source, 1-based line).
Place = tuple[str, int]

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"\s*({_DOTTED})\s*=(.*)$")


def split_key(dotted: str) -> KeyPath:
    """`a."b.c".d` -> ("a", "b.c", "d"), with TOML's own unquoting.

    Best effort, never raising: a line inside a multi-line string that the scanner took
    for a key may hold a quoted "part" TOML refuses (`"\\q" = 1`); it is kept unquoted as is.
    """
    parts: list[str] = []
    for part in re.findall(_PART, dotted):
        parts.append(_unquote(part) if part[0] in "\"'" else part)
    return tuple(parts)


def _unquote(part: str) -> str:
    try:
        value = tomllib.loads(f"k = {part}")["k"]
    except tomllib.TOMLDecodeError:
        return part[1:-1]
    return value if isinstance(value, str) else part[1:-1]


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


def line_in(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """Line of `path` in `lines`, else of its nearest table or key above it, else 1."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


_SYNTAX_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def syntax_error(text: str, source: str, exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's "Invalid value (at line 3, column 7)" as "<file>:3: invalid TOML: ...".

    Args:
        text: The text that failed to parse.
        source: Its name in the message.
        exc: tomllib's error.

    Returns:
        The message, naming `source` and the line.
    """
    reason = str(exc)
    match = _SYNTAX_AT.search(reason)
    if match is None:
        return f"{source}:1: invalid TOML: {reason}"
    if match.group(1) is None:
        line, where = text.rstrip("\n").count("\n") + 1, "at end of document"
    else:
        line, where = int(match.group(1)), f"column {match.group(2)}"
    return f"{source}:{line}: invalid TOML: {reason[: match.start()]} ({where})"


@dataclass(frozen=True)
class Overlay:
    """The second text of a layered settings (SPEC §7): which values came from it."""

    #: Its name in messages (e.g. the URL it was fetched from).
    source: str
    #: Its tables and keys to line numbers (`scan_lines` of its text).
    lines: dict[KeyPath, int]
    #: Paths whose whole value this text gave (a scalar, an array, or a table the first
    #: text lacks); everything at or below them was written here.
    paths: frozenset[KeyPath]

    def gave(self, path: KeyPath) -> bool:
        """True when the value at `path` was written in this text."""
        return any(path[:end] in self.paths for end in range(len(path), 0, -1))


# -------------------------------------------------------------------------- checker

#: Problems told at most for one text: an installer fixes the first few and checks again;
#: a hostile file with thousands of bad keys must not write a megabyte into the journal.
MAX_REPORTED_PROBLEMS = 20


def capped(messages: list[str], source: str) -> list[str]:
    """The first MAX_REPORTED_PROBLEMS of `messages`, then one line saying how many more."""
    if len(messages) <= MAX_REPORTED_PROBLEMS:
        return messages
    more = len(messages) - MAX_REPORTED_PROBLEMS
    return [*messages[:MAX_REPORTED_PROBLEMS], f"{source}: {more} more problems not shown"]


def did_you_mean(word: str, choices: Iterable[str], fmt: str = "{}") -> str:
    """ "; did you mean X?" for the choice closest to `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


class Checker:
    """Collects every problem with its line while values are taken out of the data.

    Args:
        source: Name of the text in messages.
        lines: `scan_lines` of that text.
        overlay: When the data was laid together from two texts, the second one; a problem
            about a value it gave names it, every other problem names `source`.
    """

    def __init__(
        self, source: str, lines: dict[KeyPath, int], overlay: Overlay | None = None
    ) -> None:
        self.source = source
        self.lines = lines
        self.overlay = overlay
        #: (line, message) of each problem found so far, in the order found.
        self.found: list[tuple[int, str]] = []
        #: Key paths that already have a problem (to avoid a second, derived one).
        self.failed: set[KeyPath] = set()
        self._in_overlay: list[bool] = []

    def line_of(self, path: KeyPath) -> int:
        """Line of the key in `source`, else of its nearest table or key above it, else 1."""
        return line_in(self.lines, path)

    def _from_overlay(self, path: KeyPath) -> bool:
        return self.overlay is not None and self.overlay.gave(path)

    def place_of(self, path: KeyPath) -> Place:
        """(source, line) of the text and line where the value at `path` was written."""
        if self.overlay is not None and self._from_overlay(path):
            return self.overlay.source, line_in(self.overlay.lines, path)
        return self.source, self.line_of(path)

    def fail(self, path: KeyPath, text: str) -> None:
        """Record a problem about `path`, at the text and line its value was written."""
        source, line = self.place_of(path)
        self._record(path, source, line, text, in_overlay=self._from_overlay(path))

    def fail_in_overlay(self, path: KeyPath, text: str) -> None:
        """Record a problem about `path` as the overlay wrote it (a key it must not set).

        The line is the first that writes `path` or anything below it (`[board.x]` sets
        `board` too), else that of the nearest table above it.

        Raises:
            ValueError: this checker has no overlay.
        """
        if self.overlay is None:
            raise ValueError("fail_in_overlay() needs a Checker with an overlay")
        lines = self.overlay.lines
        below = (line for key, line in lines.items() if key[: len(path)] == path)
        line = min(below, default=line_in(lines, path))
        self._record(path, self.overlay.source, line, text, in_overlay=True)

    def _record(
        self, path: KeyPath, source: str, line: int, text: str, *, in_overlay: bool
    ) -> None:
        self.failed.add(path)
        self.found.append((line, f"{source}:{line}: {text}"))
        self._in_overlay.append(in_overlay)

    def messages(self) -> list[str]:
        """The problems found (`capped`): those in `source` by line, then the overlay's."""
        order = sorted(
            range(len(self.found)), key=lambda i: (self._in_overlay[i], self.found[i][0])
        )
        return capped([self.found[i][1] for i in order], self.source)

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
