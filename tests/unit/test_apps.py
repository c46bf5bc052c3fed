"""Phone App URLs on the server in use (SPEC §2 step 3) and the fetch behind `phoned app`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from phoned.config.live import LiveSettings
from phoned.config.loader import parse_settings
from phoned.config.settings import AppLink
from phoned.core.events import Server
from phoned.net.apps import AppError, PhoneApps, app_urls, fetch, shown_url

APPS = (
    AppLink("contacts", "http://203.0.113.10/apps/contacts"),
    AppLink("vm", "https://203.0.113.10:8443/apps/vm?x=1", backup_url="https://pbx2/vm"),
    AppLink("weather", "http://apps.example.com/weather"),
    AppLink("admin", "http://user:pw@203.0.113.10/admin"),
)


def test_on_the_primary_every_app_keeps_its_url() -> None:
    urls = app_urls(APPS, Server.PRIMARY, "203.0.113.10", "203.0.113.20")

    assert urls == {app.name: app.url for app in APPS}


def test_on_the_backup_the_primary_host_becomes_the_backups_and_backup_url_wins() -> None:
    urls = app_urls(APPS, Server.BACKUP, "203.0.113.10", "203.0.113.20")

    assert urls == {
        "contacts": "http://203.0.113.20/apps/contacts",
        "vm": "https://pbx2/vm",
        "weather": "http://apps.example.com/weather",  # not on the primary: unchanged
        "admin": "http://user:pw@203.0.113.20/admin",
    }


def test_port_path_and_query_survive_and_ipv6_hosts_are_bracketed() -> None:
    apps = (AppLink("a", "http://[2001:db8::10]:8080/p/q?r=1#s"),)

    urls = app_urls(apps, Server.BACKUP, "2001:db8::10", "2001:db8::20")

    assert urls == {"a": "http://[2001:db8::20]:8080/p/q?r=1#s"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_error(404)
            return
        body = f"served {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_returns_the_page(server: str) -> None:
    page = fetch("contacts", f"{server}/apps/contacts")

    assert (page.status, page.content_type, page.content) == (
        200,
        "text/plain",
        b"served /apps/contacts",
    )


def test_an_error_status_or_no_server_is_an_app_error_without_the_password(server: str) -> None:
    with pytest.raises(AppError, match="answered 404"):
        fetch("x", f"{server}/missing")
    closed = server.rsplit(":", 1)[0] + ":1"
    with pytest.raises(AppError, match="cannot fetch") as caught:
        fetch("x", closed.replace("http://", "http://u:secret@") + "/")
    assert "secret" not in str(caught.value)
    with pytest.raises(AppError, match="not an http"):
        fetch("x", "file:///etc/passwd")


def test_urls_shown_hide_a_password_written_into_them_and_the_fetch_keeps_it() -> None:
    """Issue 12: credentials in an app URL were shown verbatim in `phoned status`."""
    settings = parse_settings(
        '[account]\nusername = "1001"\npassword = "pw"\n[server]\naddress = "203.0.113.10"\n'
        '[apps]\nadmin = "http://alice:s3cret@203.0.113.10/admin"\n'
        'contacts = "http://203.0.113.10/apps/contacts"\n',
        "phoned.toml",
    )
    apps = PhoneApps(LiveSettings(settings))

    shown = apps.point_to(Server.PRIMARY)

    assert shown == {
        "admin": "http://alice:***@203.0.113.10/admin",
        "contacts": "http://203.0.113.10/apps/contacts",
    }
    assert apps.url("admin") == "http://alice:s3cret@203.0.113.10/admin"  # what is fetched
    assert shown_url("https://bob@pbx/x") == "https://bob@pbx/x"  # no password: as it is
