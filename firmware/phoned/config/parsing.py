"""A settings text to TOML tables, within bounds, every failure a message (SPEC §3, §10).

Owns: the limits every settings text obeys, local or fetched (its size, lines, keys and
items, how deep its values nest, how long its strings, keys, dotted keys and numbers are,
64-bit integers),
reading the settings file (through `phoned.config.files`: a regular file, bounded),
`SettingsError`, and turning whatever tomllib raises or refuses into one
"<file>:<line>: ..." line, never a traceback.
Must not touch: the schema (which tables and keys exist: `phoned.config.loader`), the rules
of single values (`phoned.config.rules`), logging.

Rule 1: tomllib only ever sees a text that cannot make it slow or greedy: at most
`MAX_SETTINGS_FILE_BYTES`, `MAX_LINES`, `MAX_ENTRIES` and `MAX_ITEMS`, no dotted key of
more than `MAX_KEY_PARTS` parts (tomllib's cost grows with the square of that count), no
bare word (number, date) of more than `MAX_BARE_CHARS` characters (its patterns keep
state per character). These are counted on the text with its strings and comments
blanked, in a few passes of `re`.
Rule 2: what tomllib returns is walked once, without recursion, before any other code
sees it: beyond these bounds nothing else in `phoned.config` needs a limit of its own.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from typing import Any

from phoned.config.check import KeyPath, Table, capped, line_in, scan_lines, syntax_error
from phoned.config.files import FileRefused, read_regular
from phoned.config.rules import show
from phoned.errors import ConfigError

#: The most a settings file may hold, local or fetched (`phoned.provision.fetch` caps
#: its downloads with it), so both obey one bound. The annotated example with every key
#: (board/phoned.toml) is under 9 KiB.
MAX_SETTINGS_FILE_BYTES = 256 * 1024
#: Tables and arrays inside one another: the schema's deepest value is 3 levels down
#: (`vpn.primary.allowed_ips[0]`, `apps.<name>.url`); 8 leaves room and keeps every
#: recursive helper (messages, the overlay's merge) shallow. tomllib itself recurses per
#: level and would fail at about 300.
MAX_NESTING = 8
#: Parts of one dotted key or table header (`a.b.c` has 3): the schema needs 3; tomllib
#: spends time and memory in the square of this count (8,000 parts: 0.8 s and 260 MB).
MAX_KEY_PARTS = MAX_NESTING
#: Characters of a string value: enough for a Linux path (PATH_MAX 4096) and for any URL
#: a browser keeps; nothing in the schema is longer.
MAX_STRING_CHARS = 4096
#: Characters of a key: the schema's longest is under 30; an app name is a label on a
#: small display.
MAX_KEY_CHARS = 128
#: Characters of a bare word outside strings (a number, a date, a dotted key): a 64-bit
#: integer in binary with "_" between digits is 130, `apps.<name>.backup_url` at most 150;
#: tomllib's number and date patterns keep about 130 bytes per character matched
#: (240,000 digits: 32 MB).
MAX_BARE_CHARS = 256
#: Keys given and tables opened (each "=" and "[" header) in one text: the schema has
#: about 60 keys, plus at most 3 per app; tomllib keeps state per table (10,000 headers of
#: 8 parts: 0.5 s and 77 MB).
MAX_ENTRIES = 1024
#: Array items and inline-table entries (each ","): `blf.keys` allows 128, the VPN's
#: networks a few; tomllib takes about 5 us per item.
MAX_ITEMS = 4096
#: Lines: the annotated example (board/phoned.toml) has under 200; tomllib and the line
#: scanner take about 0.6 us per line even when empty.
MAX_LINES = 8192
#: TOML's integers are 64-bit signed (TOML 1.0 "Integer"); tomllib keeps any size.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Appended to a size refused: what the limit is.
_TOO_LARGE = " (256 KiB, the most a settings file may hold)"
#: Strings and comments, each matched in one pass (possessive: no backtracking).
_SKIPPED = re.compile(
    r'"""(?:[^"\\]++|\\.|"(?!""))*+"""'
    r"|'''(?:[^']++|'(?!''))*+'''"
    r'|"(?:[^"\\\n]++|\\.)*+"'
    r"|'[^'\n]*+'"
    r"|#[^\n]*+",
    re.DOTALL,
)
#: A run of what a dotted key is made of once its quoted parts are blanked to "k".
_KEY_RUN = re.compile(r"[A-Za-z0-9_\-. \t]++")
#: A bare word once strings are blanked: a key (or dotted key), a number, a date.
_BARE_WORD = re.compile(r"[A-Za-z0-9_\-.:+]++")
#: What opens an entry once strings are blanked: a "=", or a "[" starting a line (a header).
_ENTRY = re.compile(r"=|^[ \t]*\[", re.MULTILINE)
#: What separates items once strings are blanked: array items, inline-table entries.
_ITEM = re.compile(",")


class SettingsError(ConfigError):
    """A settings file cannot be read or breaks rules; `errors` has one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        #: Every problem found, each "<file>:<line>: <what is wrong>", sorted by line.
        self.errors = errors


def read_settings_text(source: str) -> str:
    """The text of the settings file at path `source`.

    Args:
        source: Path of the file, also its name in messages.

    Returns:
        The file's text.

    Raises:
        SettingsError: (a ConfigError) the file cannot be read, is not a regular file, is
            larger than `MAX_SETTINGS_FILE_BYTES` or is not UTF-8 text.
    """
    try:
        # A symbolic link is followed here (unlike for secret files): the path is the
        # installer's choice on the command line, and a link is a common way to switch files.
        raw = read_regular(source, MAX_SETTINGS_FILE_BYTES)
    except FileRefused as exc:
        why = f"{exc.reason}{_TOO_LARGE}" if exc.too_large else exc.reason
        raise SettingsError([f"cannot read {source}: {why}"]) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SettingsError([f"{source}:{line}: invalid TOML: not UTF-8 text"]) from exc


def parse_toml(text: str, source: str) -> Table:
    """The tables of the settings text `text`, checked against every bound above.

    Args:
        text: The TOML text.
        source: Its name in messages.

    Returns:
        The parsed tables; every value within the bounds.

    Raises:
        SettingsError: (a ConfigError) the text is too large, not TOML, or out of bounds;
            one line per problem, "<source>:<line>: ...".
    """
    if len(text) > MAX_SETTINGS_FILE_BYTES or len(text.encode()) > MAX_SETTINGS_FILE_BYTES:
        raise SettingsError([f"{source}:1: more than {MAX_SETTINGS_FILE_BYTES} bytes{_TOO_LARGE}"])
    too_much = _too_much_for_tomllib(text)
    if too_much:
        raise SettingsError([f"{source}:{too_much}"])
    data = _loads(text, source)
    problems = _out_of_bounds(data)
    if problems:
        lines = scan_lines(text)
        found = sorted((line_in(lines, path), why) for path, why in problems)
        raise SettingsError(capped([f"{source}:{line}: {why}" for line, why in found], source))
    return data


def _loads(text: str, source: str) -> Table:
    """tomllib's tables of `text`; anything it raises as a SettingsError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([syntax_error(text, source, exc)]) from exc
    except RecursionError as exc:  # beyond MAX_NESTING by far: tomllib recurses per level
        line = _deep_line(text)
        raise SettingsError(
            [f"{source}:{line}: arrays or tables nested more than {MAX_NESTING} levels deep"]
        ) from exc
    except ValueError as exc:  # not a TOMLDecodeError, e.g. int() of 5,000 digits (the
        # bare-word bound stops those first): one line all the same
        raise SettingsError([f"{source}:1: invalid TOML: {exc}"]) from exc


def _blank_strings(text: str) -> str:
    """`text` with each string a "k" (then its newlines, so lines keep their numbers) and
    each comment gone: what is left is keys, punctuation and bare values."""
    return _SKIPPED.sub(lambda m: "" if m[0][0] == "#" else "k" + "\n" * m[0].count("\n"), text)


def _too_much_for_tomllib(text: str) -> str:
    """ "<line>: <problem>" for the first place beyond a bound tomllib would pay for (Rule 1):
    too many lines, entries or items, a dotted key of too many parts or a bare word (number,
    date, key) too long; else "".

    Outside strings and comments, dots only join the parts of a key (and the two halves of
    a float), so a run of key characters holding MAX_KEY_PARTS dots is such a key.
    """
    if text.count("\n") > MAX_LINES:
        return f"{MAX_LINES + 1}: more than {MAX_LINES} lines"
    bare = _blank_strings(text)
    for pattern, limit, what in (
        (_ENTRY, MAX_ENTRIES, f"more than {MAX_ENTRIES} keys and tables"),
        (_ITEM, MAX_ITEMS, f"more than {MAX_ITEMS} array items"),
    ):
        beyond = next(itertools.islice(pattern.finditer(bare), limit, None), None)
        if beyond is not None:
            line = bare.count("\n", 0, beyond.start()) + 1
            return f"{line}: {what}"
    for pattern, measure, most, what in (
        (_KEY_RUN, _dots, MAX_KEY_PARTS - 1, f"a dotted key of more than {MAX_KEY_PARTS} parts"),
        (_BARE_WORD, len, MAX_BARE_CHARS, f"a word of more than {MAX_BARE_CHARS} characters"),
    ):
        runs = pattern.findall(bare)
        if runs and max(map(measure, runs)) > most:
            run = next(r for r in pattern.finditer(bare) if measure(r[0]) > most)
            line = bare.count("\n", 0, run.start()) + 1
            return f"{line}: {what} (key, number or date): {show(run[0].strip())}"
    return ""


def _dots(run: str) -> int:
    return run.count(".")


def _deep_line(text: str) -> int:
    """Best effort: the line where brackets outside strings first nest too deep, else 1."""
    bare = _blank_strings(text)
    depth = 0
    for bracket in re.finditer(r"[\[\]{}]", bare):
        depth += 1 if bracket[0] in "[{" else -1
        if depth > MAX_NESTING + 1:  # + 1: a table header's own bracket
            return bare.count("\n", 0, bracket.start()) + 1
    return 1


def _out_of_bounds(data: Table) -> list[tuple[KeyPath, str]]:
    """(path, problem) for every value of `data` beyond a bound; walked without recursion."""
    problems: list[tuple[KeyPath, str]] = []
    stack: list[tuple[KeyPath, str, Any, int]] = [((), "", data, 0)]
    while stack:
        path, label, value, depth = stack.pop()
        problem = _bound_problem(label, ".".join(path), value, depth)
        if problem:
            problems.append((path, problem))
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                if len(key) > MAX_KEY_CHARS:
                    why = f"a key longer than {MAX_KEY_CHARS} characters: {show(key)}"
                    problems.append((path, why))
                    continue
                dotted = f"{label}.{key}" if label else key
                stack.append(((*path, key), dotted, item, depth + 1))
        elif isinstance(value, list):
            stack.extend((path, f"{label}[{i}]", item, depth + 1) for i, item in enumerate(value))
    return problems


def _bound_problem(label: str, key: str, value: object, depth: int) -> str:
    """What is out of bounds in `value` itself (not below it), or "".

    `label` names the value (`blf.keys[3]`), `key` the key holding it (`blf.keys`).
    """
    if isinstance(value, dict | list) and depth > MAX_NESTING:
        return f"{key} holds arrays or tables nested more than {MAX_NESTING} levels deep"
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return f"{label} must be at most {MAX_STRING_CHARS} characters, got {len(value)}"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"{label} must be a 64-bit integer (TOML), got {show(value)}"
    return ""
