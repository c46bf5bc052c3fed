"""The rules one settings value must follow (SPEC §3, §6), as small converters.

Owns: what a valid host, port, URL, CIDR, WireGuard key, private file... is, and how a
value is shown in a message. Each rule takes the raw TOML value and returns the value to
store or raises `Invalid(expected)`; `phoned.config.loader` turns that into
"<file>:<line>: <key> must be <expected>, got <value>".
Must not touch: line numbers, tables, settings objects. Only `read_password_file` and
`private_key_file` read files (through `phoned.config.files`), and no rule puts a file's
content in a message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import os
import pwd
import re
import stat
from collections.abc import Callable
from urllib.parse import urlsplit

from phoned.config.files import FileRefused, read_regular

#: Longest path an AF_UNIX socket address holds on Linux (sun_path minus the NUL).
MAX_SOCKET_PATH_BYTES = 107
#: A secret file larger than this is not a password or key file.
MAX_SECRET_FILE_BYTES = 4096
#: The user the service runs as (board/phoned.service `User=phoned`; scripts/build-image
#: creates it): a secret file it owns is accepted whoever checks the settings.
SERVICE_USER = "phoned"
#: An integer wider than this is shown by its size, not its digits: its 78 digits fit
#: the 80 characters a shown value has anyway.
_SHOWN_INT_BITS = 256

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SIP_USER = re.compile(r"[^\s@:;<>\"]+")
_BLF_KEY = re.compile(r"[A-Za-z0-9*#+]+")
_PROFILE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class Invalid(Exception):  # noqa: N818 (a verdict, not an error the service raises)
    """A value broke its rule: it `must be {expected}`; `detail` is appended to "got ..."."""

    def __init__(self, expected: str, detail: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.detail = detail


def show(value: object) -> str:
    """A TOML value as TOML would write it, cut at 80 characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{key} = {show(item)}" for key, item in value.items()) + " }"
    elif isinstance(value, int) and value.bit_length() > _SHOWN_INT_BITS:
        # str() of an integer of thousands of digits raises (sys.int_info): say its size
        text = f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------ generic


def string(value: object) -> str:
    """Any TOML string without control characters (they would corrupt SIP headers)."""
    if not isinstance(value, str):
        raise Invalid("a string")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise Invalid("a string without control characters")
    return value


def boolean(value: object) -> bool:
    """A TOML boolean: `true` or `false`, never "yes" or 1."""
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def integer(low: int, high: int, note: str = "") -> Callable[[object], int]:
    """A TOML integer in low..high; `note` follows the range in messages."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"an integer {low}..{high}{note}")
        if not low <= value <= high:
            raise Invalid(f"{low}..{high}{note}")
        return value

    return convert


def zero_or(low: int, high: int, note: str = "") -> Callable[[object], int]:
    """0 (off), or a TOML integer in low..high; `note` follows the range in messages.

    A value outside 0..high gets the message of `integer(0, high)`; one in the gap between
    0 and `low` is told "0 or low..high".
    """
    within = integer(0, high, note)

    def convert(value: object) -> int:
        number = within(value)
        if 0 < number < low:
            raise Invalid(f"0 or {low}..{high}{note}")
        return number

    return convert


def choice(*options: str) -> Callable[[object], str]:
    """One of `options`, spelt exactly."""

    def convert(value: object) -> str:
        if value not in options:
            raise Invalid(f"one of {', '.join(options)}")
        return str(value)

    return convert


def optional(convert: Callable[[object], str]) -> Callable[[object], str]:
    """`convert`, except that "" (not set) passes as is."""
    return lambda value: "" if value == "" else convert(value)


def non_empty(convert: Callable[[object], str]) -> Callable[[object], str]:
    """`convert`, refusing ""."""

    def check(value: object) -> str:
        if value == "":
            raise Invalid("a non-empty string")
        return convert(value)

    return check


# ------------------------------------------------------------------ names, network


def is_host(text: str) -> bool:
    """An IP literal (v4 or v6, no brackets) or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    name = text.removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    # RFC 3696 §2: a top-level label is never all digits, so "203.0.113.300" is a typo.
    return not labels[-1].isdigit()


def host(value: object) -> str:
    """An IP literal or a host name."""
    if not is_host(string(value)):
        raise Invalid("an IP address or host name")
    return str(value)


def sip_user(value: object) -> str:
    """A SIP user part: no spaces, "@", ":", ";", "<", ">" or quotes."""
    if not _SIP_USER.fullmatch(string(value)):
        raise Invalid('a SIP user name (no spaces, "@" or ":")')
    return str(value)


def http_user(value: object) -> str:
    """An HTTP auth user name: no ":" (RFC 7617 basic auth splits on it), no controls."""
    if ":" in string(value):
        raise Invalid('a user name without ":"')
    return str(value)


def url(value: object) -> str:
    """An http:// or https:// URL with a valid host (and port, if any)."""
    expected = "an http:// or https:// URL"
    try:
        parts = urlsplit(string(value))
        _ = parts.port  # raises ValueError when out of range
    except ValueError as exc:
        raise Invalid(expected) from exc
    if parts.scheme not in ("http", "https") or not is_host(parts.hostname or ""):
        raise Invalid(expected)
    return str(value)


def url_or_table(value: object) -> str:
    """A Phone App: its URL (a table `{url, backup_url}` is handled by the caller)."""
    try:
        return url(value)
    except Invalid as exc:
        raise Invalid("an http:// or https:// URL or a table { url, backup_url }") from exc


def blf_key(value: object) -> str:
    """An extension a BLF key watches: digits, letters, "*", "#" or "+"."""
    if not isinstance(value, str) or not _BLF_KEY.fullmatch(value):
        raise Invalid('a non-empty string of digits, letters, "*", "#" or "+"')
    return value


def profile(value: object) -> str:
    """A board profile name (a file name under board/profiles/, no path)."""
    if not isinstance(value, str) or not _PROFILE.fullmatch(value):
        raise Invalid('"emulated" or a profile name (a-z, 0-9, "_", "-")')
    return value


def ifname(value: object) -> str:
    """A Linux interface name: 1..15 of letters, digits, "_", "-", "."."""
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise Invalid('an interface name (1..15 letters, digits, "_", "-" or ".")')
    return value


def interface_address(value: object) -> str:
    """An address with its prefix length, e.g. "198.18.0.2/32" (normalised)."""
    try:
        return str(ipaddress.ip_interface(string(value)))
    except ValueError as exc:
        raise Invalid("an address with prefix length, e.g. 198.18.0.2/32") from exc


def network(value: object) -> str:
    """A network in CIDR notation without host bits, e.g. "198.18.1.0/24" (normalised)."""
    try:
        return str(ipaddress.ip_network(string(value)))
    except ValueError as exc:
        raise Invalid("a network in CIDR notation, e.g. 198.18.1.0/24") from exc


def endpoint(value: object) -> str:
    """A WireGuard endpoint "host:port", IPv6 as "[addr]:port"."""
    expected = "host:port, e.g. 192.0.2.11:51820"
    name, _, port = string(value).rpartition(":")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        if ":" not in name:
            raise Invalid(expected)
    elif ":" in name:
        raise Invalid(expected)  # a bare IPv6 address must be bracketed
    if not is_host(name) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid(expected)
    return str(value)


def wireguard_key(value: object) -> str:
    """A WireGuard key: base64 of exactly 32 bytes."""
    expected = "a WireGuard key (base64 of 32 bytes)"
    try:
        key = base64.b64decode(string(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid(expected) from exc
    if len(key) != 32:
        raise Invalid(expected)
    return str(value)


# -------------------------------------------------------------------------- files


def absolute_path(value: object) -> str:
    """An absolute path (the service's working directory is "/")."""
    if not string(value).startswith("/"):
        raise Invalid("an absolute path")
    return str(value)


def socket_path(value: object) -> str:
    """An absolute path short enough for an AF_UNIX socket address."""
    path = absolute_path(value)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise Invalid(f"an absolute path of at most {MAX_SOCKET_PATH_BYTES} bytes")
    return path


def _read_private(path: str, what: str) -> bytes:
    """The content of a secret file holding `what` (SPEC §6, §7, §10): a regular file, not
    a symbolic link, only its owner may read (mode & 0o077 == 0), owned by one of
    `secret_owners()` (no one else may have read or written it), at most
    MAX_SECRET_FILE_BYTES."""
    try:
        return read_regular(path, MAX_SECRET_FILE_BYTES, follow_symlinks=False, vet=_private)
    except FileRefused as exc:
        if exc.too_large:
            raise Invalid(f"a file holding {what}", f" ({exc.reason}: too large)") from exc
        raise Invalid("a readable file", f" ({exc.reason})") from exc


def _private(info: os.stat_result) -> None:
    """Refuse a secret file others may read, or that another user owns (and may change)."""
    if info.st_mode & 0o077:
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        raise Invalid("a file only its owner can read (mode 0600)", f" (mode {mode})")
    owners = secret_owners()
    if info.st_uid not in owners:
        expected = f"a file owned by {' or '.join(owners.values())}"
        raise Invalid(expected, f" (owned by {_user(info.st_uid)})")


def secret_owners() -> dict[int, str]:
    """Who may own a secret file, uid -> name for messages: root, the service's user
    (SERVICE_USER, when it exists: so that root's `phoned check-config` accepts the files
    the service reads) and the user running phoned."""
    owners = {0: "root"}
    try:
        service = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        pass
    else:
        owners.setdefault(service, f"{SERVICE_USER} (uid {service}, the service's user)")
    me = os.geteuid()
    owners.setdefault(me, f"{_user(me)} (the user running phoned)")
    return owners


def _user(uid: int) -> str:
    """'phoned (uid 999)', or 'uid 999' when no user has that id."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _secret_text(path: str, what: str) -> str:
    """The stripped text of a private file holding `what`; never shown in a message."""
    content = _read_private(path, what)
    try:
        text = content.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise Invalid(f"a file holding {what}", " (not UTF-8 text)") from exc
    if not text:
        raise Invalid(f"a file holding {what}", " (empty)")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise Invalid(f"a file holding {what}", " (it holds control characters)")
    return text


def read_password_file(value: object) -> str:
    """The password held by the private file at absolute path `value`."""
    return _secret_text(absolute_path(value), "the password")


def private_key_file(value: object) -> str:
    """`value` itself, once checked: a private file holding a WireGuard key (SPEC §6)."""
    path = absolute_path(value)
    try:
        wireguard_key(_secret_text(path, "a WireGuard private key"))
    except Invalid as exc:
        if exc.detail:
            raise
        raise Invalid(
            "a file holding a WireGuard private key", " (not base64 of 32 bytes)"
        ) from exc
    return path
