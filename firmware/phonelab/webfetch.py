"""A lab HTTP(S) client that fetches from inside a namespace (SPEC §7, §8).

Owns: one GET with urllib on a throwaway thread that has entered the namespace
(`phonelab.netns.call_in_netns`; the socket is made there), with no proxy (the
environment's `http_proxy` is ignored: lab traffic stays in the lab), TLS verified
against the CA file it is given, optional basic credentials and extra request headers.
Any HTTP status comes back as an `HttpReply`, including 304, 401 and 404.
Must not touch: anything outside the lab's namespaces (it only fetches the URL given).
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from phonelab.netns import call_in_netns

__all__ = ["HttpReply", "basic_authorization", "http_get"]


@dataclass(frozen=True)
class HttpReply:
    """What the server answered."""

    status: int
    #: Response headers by lower-case name (the last one of a name wins).
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def basic_authorization(username: str, password: str) -> str:
    """The `Authorization` header value for HTTP basic auth (RFC 7617)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


def _opener(cafile: Path | None) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def http_get(
    netns: str | None,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    cafile: Path | None = None,
    auth: tuple[str, str] | None = None,
    timeout_s: float = 2.0,
) -> HttpReply:
    """GET `url` from inside `netns` (None: here) and return the answer, whatever its status.

    Args:
        netns: namespace to fetch from (the lab's phone, usually).
        url: http:// or https:// URL (lab addresses only).
        headers: extra request headers (e.g. `If-None-Match`).
        cafile: the CA certificates an https server is verified with (default: system's).
        auth: (username, password) sent as basic credentials.
        timeout_s: connect and read timeout.

    Raises:
        urllib.error.URLError: no HTTP answer (refused, timed out, TLS verification
            failed: `reason` is then an `ssl.SSLCertVerificationError`).
    """
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = basic_authorization(*auth)
    request = urllib.request.Request(url, headers=sent, method="GET")  # noqa: S310 - lab URLs

    def fetch() -> HttpReply:
        try:
            with _opener(cafile).open(request, timeout=timeout_s) as response:
                return HttpReply(response.status, _lower(response.headers), response.read())
        except urllib.error.HTTPError as answer:  # 3xx/4xx/5xx: still an answer
            with answer:
                return HttpReply(answer.code, _lower(answer.headers), answer.read())

    return call_in_netns(netns, fetch)


def _lower(headers: Message) -> dict[str, str]:
    return {name.lower(): str(value) for name, value in headers.items()}
