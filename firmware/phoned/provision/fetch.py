"""Fetching the provisioning file `<url>/<mac>.toml` over HTTP or HTTPS (SPEC §7).

Owns: the policy of one fetch: which URLs are fetched, redirects, when credentials are sent,
conditional GET, the limits, which answers are errors, and `FetchError`, whose one-line
message names the URL and the reason. Standard library only (http.client, ssl).
Must not touch: what the file says (`phoned.config` parses it), the last good copy
(`phoned.provision.lastgood`), the running service.

Rule 1: bounded. One deadline (`timeout_s`) covers connecting, TLS, every redirect, every
challenge and the whole body; at most `max_bytes` bytes, at most `max_redirects` redirects.
Rule 2: certificates are always verified, names included; an https URL never redirects to
http; only http and https are fetched.
Rule 3: credentials are sent only in answer to a 401 challenge, and never to another
origin (scheme, host, port) than the first URL's, even after a redirect. A password never
appears in a message, a `repr` or a URL; a URL with credentials in it is refused.
Rule 4: a body cut short (Content-Length not met) is an error, never a shorter file.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from phoned.config.parsing import MAX_SETTINGS_FILE_BYTES
from phoned.errors import ProvisioningError
from phoned.provision import auth
from phoned.provision.http import Answer, Deadline, get, request_target, tls_context

#: SPEC §7: a provisioning file larger than this is refused (256 KiB, as a local file).
MAX_FILE_BYTES = MAX_SETTINGS_FILE_BYTES

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SCHEMES = ("http", "https")


class FetchError(ProvisioningError):
    """The provisioning file could not be fetched; the message says where and why.

    Its message is `provisioning: <url>: <reason>`, e.g.
    `provisioning: http://192.0.2.40/b827eb12ab34.toml: 404 Not Found`.
    """

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"provisioning: {url}: {reason}")
        #: The URL that failed (after redirects), never with credentials.
        self.url = url
        #: Why, as in the message after the URL.
        self.reason = reason
        #: The HTTP status of the answer that failed, None when there was none (unreachable,
        #: timed out, TLS refused, cut short before the status line).
        self.status = status

    def __reduce__(self) -> tuple[type[FetchError], tuple[str, str, int | None]]:
        """Pickle by the constructor's arguments (OSError's default would pass the message)."""
        return type(self), (self.url, self.reason, self.status)


@dataclass(frozen=True)
class FetchResult:
    """A provisioning file fetched, or the server's word that it has not changed."""

    #: The URL finally fetched (after redirects), never with credentials.
    url: str
    #: 200 (a new file in `body`) or 304 (not modified since `etag` / `last_modified`).
    status: int
    #: The file exactly as served; b"" on 304. Not in the repr: it may hold passwords.
    body: bytes = field(repr=False)
    #: The answer's ETag ("" if none); on 304 the one sent when the answer has none.
    etag: str
    #: The answer's Last-Modified ("" if none); on 304 the one sent when it has none.
    last_modified: str


def file_url(base_url: str, mac: str) -> str:
    """The provisioning file's URL: `<base_url>/<mac>.toml` (SPEC §7).

    Args:
        base_url: `[provisioning] url`, with or without a trailing "/".
        mac: 12 lowercase hex digits (`phoned.provision.mac.interface_mac`).
    """
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{mac}.toml"))


def fetch(
    url: str,
    *,
    ca_file: str = "",
    username: str = "",
    password: str = "",
    etag: str = "",
    last_modified: str = "",
    timeout_s: float = 5.0,
    max_bytes: int = MAX_FILE_BYTES,
    max_redirects: int = 3,
) -> FetchResult:
    """GET the provisioning file at `url`, conditionally when `etag` or `last_modified` given.

    Args:
        url: the file's http or https URL (`file_url`).
        ca_file: CA bundle for https; "" = the system's CAs.
        username: user for basic or digest authentication; "" = none.
        password: its password; sent only in answer to a 401 from the first URL's origin.
        etag: sent as If-None-Match when given.
        last_modified: sent as If-Modified-Since when given and `etag` is not.
        timeout_s: the whole fetch, redirects and body included, ends within this.
        max_bytes: a larger file is refused.
        max_redirects: more redirects than this are refused.

    Returns:
        The file (status 200) or "not modified" (status 304, empty body).

    Raises:
        FetchError: (a ProvisioningError) not fetched; `status` holds the HTTP status when
            there was one (404 vs. unreachable).
        ValueError: `timeout_s` not positive, or `max_bytes` or `max_redirects` negative.
    """
    if timeout_s <= 0 or max_bytes < 0 or max_redirects < 0:
        raise ValueError("timeout_s must be > 0, max_bytes and max_redirects >= 0")
    session = _Session(
        deadline=Deadline.after(timeout_s),
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        ca_file=ca_file,
        credentials=_Credentials(username, password) if username else None,
        conditional=_conditional(etag, last_modified),
    )
    current = _checked(url)
    origin, credentials_allowed, redirects = _origin(current), True, 0
    while True:
        answer = session.authorized(current, send_credentials=credentials_allowed)
        if answer.status not in _REDIRECTS:
            return _result(current, answer, session, etag, last_modified)
        if redirects == max_redirects:
            reason = f"more than {max_redirects} redirects"
            raise FetchError(public_url(current), reason, answer.status)
        redirects += 1
        current = _redirect(current, answer)
        # Rule 3: once the chain leaves the first origin, no credentials for the rest of it
        credentials_allowed = credentials_allowed and _origin(current) == origin


@dataclass(frozen=True)
class _Credentials:
    username: str
    password: str = field(repr=False)


@dataclass
class _Session:
    """What every request of one fetch shares."""

    deadline: Deadline
    timeout_s: float
    max_bytes: int
    ca_file: str
    credentials: _Credentials | None
    conditional: dict[str, str]
    tls: ssl.SSLContext | None = field(default=None, repr=False)  # made at the first https

    def authorized(self, url: SplitResult, *, send_credentials: bool) -> Answer:
        """GET `url`; answer a 401 challenge once with the credentials, when allowed."""
        answer = self.get(url, {})
        if answer.status != 401:
            return answer
        shown = public_url(url)
        if self.credentials is None:
            raise FetchError(shown, _status(answer) + ": no credentials configured", 401)
        if not send_credentials:
            reason = "credentials are not sent to another host after a redirect"
            raise FetchError(shown, f"{_status(answer)}: {reason}", 401)
        user = self.credentials.username
        try:
            value = auth.authorization(
                answer.headers.get_all("WWW-Authenticate") or [],
                user,
                self.credentials.password,
                method="GET",
                uri=request_target(url),
            )
        except ValueError as exc:  # its message never holds the password
            raise FetchError(shown, f"{_status(answer)}: {exc}", 401) from None
        answer = self.get(url, {"Authorization": value})
        if answer.status == 401:
            raise FetchError(shown, f'{_status(answer)}: credentials refused (user "{user}")', 401)
        return answer

    def get(self, url: SplitResult, headers: dict[str, str]) -> Answer:
        """One GET of `url`, its failures as `FetchError`."""
        shown = public_url(url)
        try:
            tls = self._context() if url.scheme == "https" else None
        except OSError as exc:
            reason = f"cannot use CA file {self.ca_file} ({_os_reason(exc)})"
            raise FetchError(shown, reason) from exc
        try:
            return get(
                url,
                {**self.conditional, **headers},
                tls=tls,
                deadline=self.deadline,
                max_bytes=self.max_bytes,
            )
        except (OSError, http.client.HTTPException) as exc:  # first: a TLS refusal is both
            reason = _failure(exc, self.timeout_s, url.hostname or "")
            raise FetchError(shown, reason) from exc
        except ValueError:  # http.client's header checks; the value may be a credential
            raise FetchError(shown, "cannot send the request: a header is not valid") from None

    def _context(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = tls_context(self.ca_file)
        return self.tls


def _failure(exc: OSError | http.client.HTTPException, timeout_s: float, host: str) -> str:
    """The reason a GET failed, for a person."""
    reason: str
    match exc:
        case TimeoutError():
            reason = f"timed out after {timeout_s:.1f} s"
        case ssl.SSLCertVerificationError():
            why = exc.verify_message or exc.reason or "no reason given"
            reason = f"certificate not trusted ({why.rstrip('.')})"
        case ssl.SSLError():
            reason = f"TLS failed ({_os_reason(exc)})"
        case http.client.IncompleteRead():
            got, missing = len(exc.partial), exc.expected
            total = f" of {got + missing}" if missing is not None else ""
            reason = f"truncated: the connection closed after {got}{total} bytes"
        case http.client.RemoteDisconnected():
            reason = "the server closed the connection without answering"
        case http.client.HTTPException():
            reason = f"not a valid HTTP answer ({type(exc).__name__})"
        case socket.gaierror():
            reason = f"unreachable (cannot resolve {host}: {exc.strerror})"
        case ConnectionRefusedError():
            reason = "unreachable (connection refused)"
        case ConnectionResetError():
            reason = "connection reset by the server"
        case _:
            reason = f"unreachable ({_os_reason(exc)})"
    return reason


def _os_reason(exc: OSError) -> str:
    """The error's own words, lower case: "connection refused", "wrong version number"."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()  # OpenSSL's WRONG_VERSION_NUMBER
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _status(answer: Answer) -> str:
    """The status and its reason phrase, e.g. "404 Not Found"."""
    reason = answer.reason
    if not reason:
        try:
            reason = HTTPStatus(answer.status).phrase
        except ValueError:
            reason = "(no reason given)"
    return f"{answer.status} {reason}"


def _result(
    url: SplitResult, answer: Answer, session: _Session, etag: str, last_modified: str
) -> FetchResult:
    """The file from a final (non-redirect) answer, or the error it says."""
    shown, max_bytes = public_url(url), session.max_bytes
    new_etag = answer.headers.get("ETag", "")
    new_modified = answer.headers.get("Last-Modified", "")
    if answer.status == 200:
        if answer.problem is not None:
            reason = _failure(answer.problem, session.timeout_s, url.hostname or "")
            raise FetchError(shown, reason, 200)
        if len(answer.body) > max_bytes or (answer.length or 0) > max_bytes:
            raise FetchError(shown, f"larger than {max_bytes} bytes", 200)
        return FetchResult(shown, 200, answer.body, new_etag, new_modified)
    if answer.status == 304 and (etag or last_modified):
        return FetchResult(shown, 304, b"", new_etag or etag, new_modified or last_modified)
    if answer.status == 304:
        raise FetchError(shown, f"{_status(answer)} to a request that was not conditional", 304)
    raise FetchError(shown, _status(answer), answer.status)


def _redirect(url: SplitResult, answer: Answer) -> SplitResult:
    """Where a redirect answer leads, if it may be followed."""
    shown = public_url(url)
    location = answer.headers.get("Location", "").strip()
    if not location:
        raise FetchError(shown, f"{_status(answer)} without a Location", answer.status)
    try:
        target = urlsplit(urljoin(urlunsplit(url), location))
    except ValueError:
        raise FetchError(shown, "redirect to an invalid URL", answer.status) from None
    if target.scheme not in _SCHEMES:
        reason = f"redirect to {public_url(target)} refused (only http and https)"
        raise FetchError(shown, reason, answer.status)
    if url.scheme == "https" and target.scheme == "http":
        reason = f"redirect to {public_url(target)} refused (https to http)"
        raise FetchError(shown, reason, answer.status)
    return _checked(urlunsplit(target))


def _checked(url: str) -> SplitResult:
    """`url` split, once it is an http(s) URL with a host, a valid port and no credentials."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    shown = public_url(parts) if parts is not None else url.rpartition("@")[2]
    if parts is None or not port_ok or not url.isascii() or any(c.isspace() for c in url):
        raise FetchError(shown, "not a valid URL")
    if parts.scheme not in _SCHEMES:
        raise FetchError(shown, f"only http and https URLs are fetched, not {parts.scheme!r}")
    if not parts.hostname:
        raise FetchError(shown, "no host in the URL")
    if "@" in parts.netloc:
        reason = "credentials in the URL are refused: use [provisioning] username and password_file"
        raise FetchError(shown, reason)
    return parts


def public_url(url: SplitResult) -> str:
    """`url` as it may be shown: without user, password or fragment."""
    return urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2], fragment=""))


def _origin(url: SplitResult) -> tuple[str, str, int]:
    default = 443 if url.scheme == "https" else 80
    return url.scheme, (url.hostname or "").lower(), url.port or default


def _conditional(etag: str, last_modified: str) -> dict[str, str]:
    """SPEC §7: If-None-Match with the last ETag, else If-Modified-Since."""
    if etag:
        return {"If-None-Match": etag}
    if last_modified:
        return {"If-Modified-Since": last_modified}
    return {}
