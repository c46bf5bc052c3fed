"""Fetching the provisioning file (SPEC §7) against an in-process HTTP(S) server."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from httpfixtures import (
    DigestGate,
    Handler,
    ProvServer,
    basic_route,
    file_route,
    raw_route,
    redirect_route,
    reply,
    serving,
    slow_route,
    trickle_route,
)
from phoned.errors import PhonedError, ProvisioningError
from phoned.provision.auth import Challenge, authorization, digest, parse_challenges
from phoned.provision.fetch import MAX_FILE_BYTES, FetchError, FetchResult, fetch, file_url
from phonelab.tls import CertAuthority, TlsFiles, self_signed

BODY = b'[account]\nuser = "201"\n'
ETAG = '"v1"'
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"
USER = "phone-201"
PASSWORD = "Sup3r-s3cret!pw"  # noqa: S105 - a test credential, never in a message
FILE = "/b827eb12ab34.toml"


@pytest.fixture
def server() -> Iterator[ProvServer]:
    with serving() as running:
        running.route(FILE, file_route(BODY, ETAG, LAST_MODIFIED))
        yield running


def failure(url: str, **kwargs: Any) -> FetchError:
    """The FetchError `fetch(url, **kwargs)` raises; it never holds the password."""
    with pytest.raises(FetchError) as caught:
        fetch(url, password=PASSWORD, **kwargs)
    exc = caught.value
    for text in (str(exc), repr(exc), exc.url, exc.reason, repr(exc.args)):
        assert PASSWORD not in text
    assert "\n" not in str(exc)
    return exc


# ------------------------------------------------------------------ the file's URL


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://192.0.2.40", "http://192.0.2.40/b827eb12ab34.toml"),
        ("http://192.0.2.40/", "http://192.0.2.40/b827eb12ab34.toml"),
        ("https://prov.example:8443/phones/", "https://prov.example:8443/phones/b827eb12ab34.toml"),
        ("https://prov.example/phones", "https://prov.example/phones/b827eb12ab34.toml"),
    ],
)
def test_file_url_is_base_slash_mac_toml(base: str, url: str) -> None:
    assert file_url(base, "b827eb12ab34") == url


# ------------------------------------------------------------ plain and conditional


def test_a_file_is_fetched_with_its_etag_and_last_modified(server: ProvServer) -> None:
    result = fetch(server.url(FILE))

    assert result == FetchResult(server.url(FILE), 200, BODY, ETAG, LAST_MODIFIED)
    assert "if-none-match" not in server.seen[0].headers
    assert "if-modified-since" not in server.seen[0].headers
    assert "authorization" not in server.seen[0].headers
    assert BODY.decode() not in repr(result)  # the body may hold passwords


def test_a_matching_etag_gets_304_and_an_empty_body(server: ProvServer) -> None:
    result = fetch(server.url(FILE), etag=ETAG, last_modified=LAST_MODIFIED)

    assert result == FetchResult(server.url(FILE), 304, b"", ETAG, LAST_MODIFIED)
    assert server.seen[0].headers["if-none-match"] == ETAG
    assert "if-modified-since" not in server.seen[0].headers  # SPEC §7: ETag, else date


def test_a_changed_etag_gets_the_new_file(server: ProvServer) -> None:
    result = fetch(server.url(FILE), etag='"v0"')

    assert (result.status, result.body, result.etag) == (200, BODY, ETAG)


def test_without_etag_if_modified_since_is_sent(server: ProvServer) -> None:
    result = fetch(server.url(FILE), last_modified=LAST_MODIFIED)

    assert (result.status, result.body) == (304, b"")
    assert server.seen[0].headers["if-modified-since"] == LAST_MODIFIED


def test_a_304_to_an_unconditional_get_is_an_error(server: ProvServer) -> None:
    server.route("/always-304", lambda handler: reply(handler, 304))

    exc = failure(server.url("/always-304"))

    assert exc.status == 304
    assert "not conditional" in str(exc)


# ------------------------------------------------------------------------ failures


def test_404_names_the_url_and_the_status(server: ProvServer) -> None:
    exc = failure(server.url("/missing.toml"))

    assert str(exc) == f"provisioning: {server.url('/missing.toml')}: 404 Not Found"
    assert (exc.status, exc.url) == (404, server.url("/missing.toml"))
    assert isinstance(exc, ProvisioningError)
    assert isinstance(exc, PhonedError)
    assert isinstance(exc, OSError)


def test_a_refused_connection_is_unreachable_without_a_status() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/x.toml"

        exc = failure(url)

    assert str(exc) == f"provisioning: {url}: unreachable (connection refused)"
    assert exc.status is None


def test_a_server_that_closes_without_answering(server: ProvServer) -> None:
    server.route("/hangup", raw_route(b"", b""))

    exc = failure(server.url("/hangup"))

    assert exc.reason == "the server closed the connection without answering"


@pytest.mark.parametrize(
    "url",
    ["ftp://192.0.2.40/x.toml", "file:///etc/passwd", "http:///x.toml", "http://h:99999/x"],
)
def test_only_http_and_https_urls_with_a_host_are_fetched(url: str) -> None:
    exc = failure(url)

    assert exc.status is None
    assert str(exc).startswith(f"provisioning: {url}: ")


def test_credentials_written_in_the_url_are_refused_and_not_shown() -> None:
    exc = failure(f"http://{USER}:{PASSWORD}@192.0.2.40/x.toml")

    assert exc.url == "http://192.0.2.40/x.toml"
    assert "use [provisioning] username and password_file" in str(exc)


# -------------------------------------------------------------------------- limits


def test_a_file_of_exactly_max_bytes_is_accepted(server: ProvServer) -> None:
    server.route("/100", lambda handler: reply(handler, 200, b"x" * 100))

    assert fetch(server.url("/100"), max_bytes=100).body == b"x" * 100


def test_a_file_larger_than_max_file_bytes_is_refused(server: ProvServer) -> None:
    server.route("/big", lambda handler: reply(handler, 200, b"#" * (MAX_FILE_BYTES + 1)))

    exc = failure(server.url("/big"))

    assert str(exc) == f"provisioning: {server.url('/big')}: larger than 262144 bytes"
    assert exc.status == 200


def test_a_large_body_without_content_length_is_cut_and_refused(server: ProvServer) -> None:
    server.route("/stream", raw_route(b"HTTP/1.1 200 OK\r\n\r\n", b"#" * 101))

    exc = failure(server.url("/stream"), max_bytes=100)

    assert exc.reason == "larger than 100 bytes"


def test_a_truncated_body_is_an_error_not_a_short_file(server: ProvServer) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    server.route("/cut", raw_route(head, BODY))

    exc = failure(server.url("/cut"))

    assert exc.reason == f"truncated: the connection closed after {len(BODY)} of 1000 bytes"
    assert exc.status == 200


@pytest.mark.parametrize(
    ("chunks", "outcome"),
    [
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        (b"5\r\nhello\r\n6\r\n wo", "truncated: the connection closed after 5 bytes"),
    ],
)
def test_a_chunked_body_is_read_whole_or_refused_when_cut(
    server: ProvServer, chunks: bytes, outcome: str
) -> None:
    server.route(
        "/chunked", raw_route(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunks)
    )

    if outcome.startswith("truncated"):
        assert failure(server.url("/chunked")).reason == outcome
    else:
        assert fetch(server.url("/chunked")).body == outcome.encode()


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", b"#" * 40),  # the body trickles
        (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),  # so does the head
    ],
    ids=["body", "head"],
)
def test_a_trickling_server_is_cut_at_the_deadline(
    server: ProvServer, head: bytes, body: bytes
) -> None:
    # one byte every 0.1 s: a per-read timeout of 0.5 s would never fire (4 s or more)
    server.route("/slow", trickle_route(server.stopping, head, body, period_s=0.1))
    started = time.monotonic()

    exc = failure(server.url("/slow"), timeout_s=0.5)

    assert time.monotonic() - started < 1.5
    assert str(exc) == f"provisioning: {server.url('/slow')}: timed out after 0.5 s"
    assert exc.status == (200 if head else None)  # 200: the status line had arrived


def test_the_deadline_covers_the_whole_redirect_chain(server: ProvServer) -> None:
    for hop in range(1, 5):  # each hop answers after 0.2 s: 0.8 s in all
        target = f"/chain/{hop - 1}" if hop > 1 else FILE
        server.route(f"/chain/{hop}", slow_route(server.stopping, 0.2, redirect_route(target)))

    exc = failure(server.url("/chain/4"), timeout_s=0.5, max_redirects=5)

    assert exc.reason == "timed out after 0.5 s"
    assert len(server.seen) < 4


# ----------------------------------------------------------------------- redirects


def _chain(server: ProvServer, hops: int) -> str:
    for hop in range(1, hops + 1):
        server.route(f"/hop/{hop}", redirect_route(f"/hop/{hop - 1}" if hop > 1 else FILE))
    return server.url(f"/hop/{hops}")


def test_three_redirects_are_followed_to_the_final_url(server: ProvServer) -> None:
    result = fetch(_chain(server, 3))

    assert (result.url, result.body) == (server.url(FILE), BODY)
    assert [seen.path for seen in server.seen] == ["/hop/3", "/hop/2", "/hop/1", FILE]


def test_a_fourth_redirect_is_refused(server: ProvServer) -> None:
    exc = failure(_chain(server, 4))

    assert str(exc) == f"provisioning: {server.url('/hop/1')}: more than 3 redirects"
    assert exc.status == 302
    assert FILE not in [seen.path for seen in server.seen]


def test_a_redirect_to_another_scheme_is_refused(server: ProvServer) -> None:
    server.route("/ftp", redirect_route("ftp://192.0.2.40/x.toml", 301))

    exc = failure(server.url("/ftp"))

    assert exc.reason == "redirect to ftp://192.0.2.40/x.toml refused (only http and https)"


# ------------------------------------------------------------------ authentication


def test_basic_auth_answers_the_challenge(server: ProvServer) -> None:
    server.route("/basic", basic_route(USER, PASSWORD, file_route(BODY, ETAG, "")))

    result = fetch(server.url("/basic"), username=USER, password=PASSWORD)

    assert result.body == BODY
    first, second = server.seen
    assert "authorization" not in first.headers  # only in answer to the 401
    assert second.headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_auth_answers_the_challenge(server: ProvServer, algorithm: str) -> None:
    gate = DigestGate(USER, PASSWORD, file_route(BODY, ETAG, ""), offered=(algorithm,))
    server.route("/digest", gate)

    result = fetch(server.url("/digest"), username=USER, password=PASSWORD)

    assert result.body == BODY
    assert gate.accepted == [algorithm]
    assert PASSWORD not in server.seen[1].headers["authorization"]


def test_digest_prefers_sha256_when_both_are_offered(server: ProvServer) -> None:
    gate = DigestGate(USER, PASSWORD, file_route(BODY, ETAG, ""), offered=("MD5", "SHA-256"))
    server.route("/digest", gate)

    fetch(server.url("/digest"), username=USER, password=PASSWORD)

    assert gate.accepted == ["SHA-256"]


@pytest.mark.parametrize("scheme", ["basic", "digest"])
def test_a_wrong_password_is_refused_once_not_looped(server: ProvServer, scheme: str) -> None:
    inner = file_route(BODY, ETAG, "")
    gate = basic_route(USER, "other", inner) if scheme == "basic" else DigestGate(USER, "o", inner)
    server.route("/secret", gate)

    exc = failure(server.url("/secret"), username=USER)

    assert exc.reason == f'401 Unauthorized: credentials refused (user "{USER}")'
    assert exc.status == 401
    assert len(server.seen) == 2


def test_a_challenge_without_credentials_configured(server: ProvServer) -> None:
    server.route("/secret", DigestGate(USER, PASSWORD, file_route(BODY, ETAG, "")))

    with pytest.raises(FetchError) as caught:
        fetch(server.url("/secret"))

    assert caught.value.reason == "401 Unauthorized: no credentials configured"


def test_credentials_are_not_sent_after_a_redirect_to_another_host(server: ProvServer) -> None:
    with serving() as other:
        other.route(FILE, basic_route(USER, PASSWORD, file_route(BODY, ETAG, "")))
        gate = DigestGate(USER, PASSWORD, redirect_route(other.url(FILE)))
        server.route("/moved", gate)

        exc = failure(server.url("/moved"), username=USER)

        assert gate.accepted == ["SHA-256"]  # the first origin got its answer
        assert [seen.headers.get("authorization") for seen in other.seen] == [None]
    assert exc.url == other.url(FILE)
    assert "credentials are not sent to another host after a redirect" in exc.reason


def test_credentials_follow_a_redirect_on_the_same_origin(server: ProvServer) -> None:
    gate = DigestGate(USER, PASSWORD, file_route(BODY, ETAG, ""))
    server.route("/secret.toml", gate)
    server.route("/moved", redirect_route("/secret.toml", 307))

    result = fetch(server.url("/moved"), username=USER, password=PASSWORD)

    assert (result.url, result.body) == (server.url("/secret.toml"), BODY)


def test_an_unsupported_scheme_is_named(server: ProvServer) -> None:
    def negotiate(handler: Handler) -> None:
        reply(handler, 401, b"", {"WWW-Authenticate": "Negotiate"})

    server.route("/kerberos", negotiate)

    exc = failure(server.url("/kerberos"), username=USER)

    assert exc.reason == "401 Unauthorized: no supported authentication scheme offered (Negotiate)"


def test_rfc7616_digest_examples() -> None:
    # RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256
    params = {
        "realm": "http-auth@example.org",
        "qop": "auth, auth-int",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    expected = {
        "MD5": "8ca523f5e9506fed4657c9700eebdbec",
        "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
    }
    for algorithm, response in expected.items():
        challenge = Challenge("digest", {**params, "algorithm": algorithm})
        value = digest(
            challenge,
            "Mufasa",
            "Circle of Life",
            method="GET",
            uri="/dir/index.html",
            cnonce=cnonce,
        )
        assert f'response="{response}"' in value
        assert 'uri="/dir/index.html"' in value
        assert "nc=00000001" in value
        assert "qop=auth," in value


def test_several_challenges_in_one_header_are_parsed() -> None:
    header = 'Basic realm="a b", Digest realm="r", qop="auth,auth-int", nonce="n\\"1", stale=FALSE'

    assert parse_challenges([header]) == [
        Challenge("basic", {"realm": "a b"}),
        Challenge(
            "digest", {"realm": "r", "qop": "auth,auth-int", "nonce": 'n"1', "stale": "FALSE"}
        ),
    ]
    assert authorization([header], "u", "p", method="GET", uri="/").startswith("Digest ")


# -------------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority.create(tmp_path_factory.mktemp("ca"))


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    return context


@pytest.fixture
def https(lab_ca: CertAuthority) -> Iterator[ProvServer]:
    with serving(_server_context(lab_ca.issue("prov", ["127.0.0.1"]))) as running:
        running.route(FILE, file_route(BODY, ETAG, LAST_MODIFIED))
        yield running


def test_https_with_the_right_ca_is_fetched(https: ProvServer, lab_ca: CertAuthority) -> None:
    result = fetch(https.url(FILE), ca_file=str(lab_ca.cert))

    assert (result.status, result.body, result.url) == (200, BODY, https.url(FILE))


def test_https_with_a_wrong_ca_is_refused(https: ProvServer, tmp_path: Path) -> None:
    rogue = self_signed(tmp_path, "rogue", ["127.0.0.1"])

    exc = failure(https.url(FILE), ca_file=str(rogue.ca))

    assert exc.reason.startswith("certificate not trusted (")
    assert exc.status is None
    assert https.seen == []


def test_https_without_ca_file_uses_the_system_cas_and_refuses_the_lab(
    https: ProvServer,
) -> None:
    exc = failure(https.url(FILE))

    assert exc.reason.startswith("certificate not trusted (")


def test_https_checks_the_name_in_the_certificate(lab_ca: CertAuthority) -> None:
    other_name = _server_context(lab_ca.issue("elsewhere", ["192.0.2.99"]))
    with serving(other_name) as running:
        exc = failure(running.url(FILE), ca_file=str(lab_ca.cert))

    assert exc.reason.startswith("certificate not trusted (")
    assert "127.0.0.1" in exc.reason


def test_a_missing_ca_file_is_named(https: ProvServer, tmp_path: Path) -> None:
    exc = failure(https.url(FILE), ca_file=str(tmp_path / "none.pem"))

    assert exc.reason == f"cannot use CA file {tmp_path / 'none.pem'} (no such file or directory)"


def test_https_to_a_plain_http_server_fails_in_tls(server: ProvServer) -> None:
    exc = failure(server.url(FILE).replace("http://", "https://"))

    assert exc.reason == "TLS failed (wrong version number)"


def test_an_https_to_http_redirect_is_refused(
    https: ProvServer, server: ProvServer, lab_ca: CertAuthority
) -> None:
    https.route("/down", redirect_route(server.url(FILE)))

    exc = failure(https.url("/down"), ca_file=str(lab_ca.cert))

    assert exc.reason == f"redirect to {server.url(FILE)} refused (https to http)"
    assert server.seen == []


def test_a_trickling_https_server_is_cut_at_the_deadline(
    https: ProvServer, lab_ca: CertAuthority
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
    https.route("/slow", trickle_route(https.stopping, head, b"#" * 40, period_s=0.1))
    started = time.monotonic()

    exc = failure(https.url("/slow"), ca_file=str(lab_ca.cert), timeout_s=0.5)

    assert time.monotonic() - started < 1.5
    assert (exc.reason, exc.status) == ("timed out after 0.5 s", 200)


def test_a_header_value_http_cannot_carry_is_an_error_not_a_traceback(server: ProvServer) -> None:
    exc = failure(server.url(FILE), etag='"v1"\r\nX-Injected: 1')

    assert exc.reason == "cannot send the request: a header is not valid"
    assert server.seen == []
