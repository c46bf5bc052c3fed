"""Answers to an HTTP 401 challenge: basic (RFC 7617) and digest (RFC 7616) authentication.

Owns: parsing `WWW-Authenticate`, choosing the strongest scheme the server offers (digest
SHA-256, then digest MD5, then basic) and building the `Authorization` value. Pure: no IO.
Must not touch: sockets, redirects (whether credentials may be sent at all is decided by
`phoned.provision.fetch`), and never a password in an error message.

Digest: `qop=auth` (and RFC 2069 servers that offer no qop), `userhash`, `opaque`; one
request per challenge (nc=00000001). Not supported: `auth-int`, the `-sess` algorithms,
SHA-512-256; a server that offers only those gets a clear error.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: Digest algorithms supported, strongest first, with their hash (RFC 7616 §3.2).
_HASHES: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
}

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"({_TCHARS})(?=[\s,]|$)")
_PARAM = re.compile(rf'\s*({_TCHARS})\s*=\s*("(?:[^"\\]|\\.)*"|{_TCHARS})\s*(?:,|$)')
_ESCAPED = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header."""

    #: The scheme, lower case ("digest", "basic", ...).
    scheme: str
    #: Its parameters: names lower case, values unquoted.
    params: Mapping[str, str]

    def describe(self) -> str:
        """The scheme as a person reads it: "Basic", "Digest SHA-256"."""
        if self.scheme != "digest":
            return self.scheme.capitalize()
        return f"Digest {self.params.get('algorithm', 'MD5')}"


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the `WWW-Authenticate` header values, in order.

    A header may hold several challenges (`Basic realm="a", Digest realm="a", ...`); parsing
    of a header stops at the first thing that is neither a scheme nor a parameter.
    """
    found: list[Challenge] = []
    for value in values:
        pos = _skip_separators(value, 0)
        while (scheme := _SCHEME.match(value, pos)) is not None:
            params: dict[str, str] = {}
            pos = scheme.end()
            while (param := _PARAM.match(value, pos)) is not None:
                params[param.group(1).lower()] = _unquote(param.group(2))
                pos = param.end()
            found.append(Challenge(scheme.group(1).lower(), params))
            pos = _skip_separators(value, pos)
    return found


def _skip_separators(value: str, pos: int) -> int:
    """Where the next challenge starts: after blanks and commas."""
    while pos < len(value) and (value[pos].isspace() or value[pos] == ","):
        pos += 1
    return pos


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _ESCAPED.sub(r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    values: Iterable[str],
    username: str,
    password: str,
    *,
    method: str,
    uri: str,
    cnonce: str = "",
) -> str:
    """The `Authorization` value answering the strongest supported challenge in `values`.

    Args:
        values: the `WWW-Authenticate` header values of the 401 answer.
        username: the user name; password: its password (UTF-8 on the wire).
        method: the request method; uri: the request-target, as sent.
        cnonce: the client nonce for digest; "" = a fresh random one.

    Returns:
        "Digest username=..., response=..." or "Basic <base64>".

    Raises:
        ValueError: no challenge can be answered; the message says what the server offered
            (never the password).
    """
    challenges = parse_challenges(values)
    for algorithm in _HASHES:  # strongest first
        for challenge in challenges:
            if challenge.scheme == "digest" and _digest_usable(challenge, algorithm):
                return digest(challenge, username, password, method=method, uri=uri, cnonce=cnonce)
    if any(challenge.scheme == "basic" for challenge in challenges):
        return basic(username, password)
    offered = ", ".join(challenge.describe() for challenge in challenges) or "no challenge"
    raise ValueError(f"no supported authentication scheme offered ({offered})")


def _digest_usable(challenge: Challenge, algorithm: str) -> bool:
    params = challenge.params
    qop = params.get("qop")
    return (
        params.get("algorithm", "MD5").upper() == algorithm
        and "nonce" in params
        and (qop is None or "auth" in _qop_options(qop))
    )


def _qop_options(qop: str) -> list[str]:
    return [option.strip().lower() for option in qop.split(",")]


def basic(username: str, password: str) -> str:
    """The `Authorization` value for basic authentication (RFC 7617, UTF-8).

    Raises:
        ValueError: the user name holds a ":", which basic authentication cannot carry.
    """
    if ":" in username:
        raise ValueError("a user name with ':' cannot use basic authentication")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def digest(
    challenge: Challenge,
    username: str,
    password: str,
    *,
    method: str,
    uri: str,
    cnonce: str = "",
) -> str:
    """The `Authorization` value answering one digest challenge (RFC 7616 §3.4).

    Raises:
        ValueError: the challenge's algorithm or qop is not supported, or it has no nonce.
    """
    params = challenge.params
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES or not _digest_usable(challenge, algorithm):
        raise ValueError(f"cannot answer the digest challenge ({challenge.describe()})")
    hash_hex = _HASHES[algorithm]

    def h(*parts: str) -> str:
        return hash_hex(":".join(parts).encode())

    realm, nonce = params.get("realm", ""), params["nonce"]
    ha1, ha2 = h(username, realm, password), h(method, uri)
    userhash = params.get("userhash", "").lower() == "true"
    fields = [
        ("username", _quote(h(username, realm) if userhash else username)),
        ("realm", _quote(realm)),
        ("uri", _quote(uri)),
        ("algorithm", algorithm),
        ("nonce", _quote(nonce)),
    ]
    if "qop" in params:  # RFC 7616; without qop, the RFC 2069 response
        cnonce = cnonce or secrets.token_hex(16)
        fields += [("nc", "00000001"), ("cnonce", _quote(cnonce)), ("qop", "auth")]
        response = h(ha1, nonce, "00000001", cnonce, "auth", ha2)
    else:
        response = h(ha1, nonce, ha2)
    fields.append(("response", _quote(response)))
    if "opaque" in params:
        fields.append(("opaque", _quote(params["opaque"])))
    if userhash:
        fields.append(("userhash", "true"))
    return "Digest " + ", ".join(f"{name}={value}" for name, value in fields)
