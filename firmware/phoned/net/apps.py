"""Phone Apps (SPEC §2 step 3, §4): which URL each app has on the server in use, and fetching it.

Owns: the rewrite of app URLs to the active server (an app whose URL names the primary's
host is served from the backup with the same path; an explicit `backup_url` wins) and the
HTTP fetch behind `phoned app NAME`. Must not touch: routes or the VPN (app traffic follows
the kernel's routes, which the VPN adapter points at the active server's tunnel).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from phoned.config.settings import AppLink, Settings
from phoned.core.events import Server
from phoned.errors import PhonedError

#: An app answer larger than this is cut off: a phone screen shows a page, not a download.
MAX_APP_BYTES = 1 << 20


class LiveSettingsView(Protocol):
    """Where the settings in force are read (`config.live.LiveSettings`)."""

    def get(self) -> Settings:
        """The settings in force now."""
        ...


class AppError(PhonedError, LookupError):
    """An app is unknown, or could not be fetched."""


@dataclass(frozen=True, slots=True)
class AppPage:
    """What `phoned app NAME` prints: where the content came from, and the content."""

    name: str
    url: str
    status: int
    content_type: str
    content: bytes


def app_urls(
    apps: Sequence[AppLink], active: Server, primary_host: str, backup_host: str
) -> dict[str, str]:
    """Each app's URL on the `active` server (SPEC §2 step 3).

    On the primary every app keeps its URL. On the backup, `backup_url` when given; else a
    URL whose host is the primary's gets the backup's host (same scheme, port and path);
    any other URL (an app hosted elsewhere) stays as it is.
    """
    if active is Server.PRIMARY:
        return {app.name: app.url for app in apps}
    return {app.name: _on_backup(app, primary_host, backup_host) for app in apps}


def _on_backup(app: AppLink, primary_host: str, backup_host: str) -> str:
    if app.backup_url:
        return app.backup_url
    parts = urlsplit(app.url)
    if (parts.hostname or "").lower() != primary_host.lower().strip("[]"):
        return app.url
    host = f"[{backup_host}]" if ":" in backup_host else backup_host
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username:  # keep credentials written in the URL
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def fetch(name: str, url: str, timeout_s: float = 5.0) -> AppPage:
    """GET `url` (http or https) and return the page.

    Raises:
        AppError: the server could not be reached, or answered with an error status.
    """
    if urlsplit(url).scheme not in {"http", "https"}:
        raise AppError(f"app {name}: {shown_url(url)} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "phoned-apps"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
            return AppPage(
                name,
                shown_url(url),
                answer.status,
                answer.headers.get_content_type(),
                answer.read(MAX_APP_BYTES),
            )
    except urllib.error.HTTPError as exc:
        raise AppError(f"app {name}: {shown_url(url)} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AppError(f"app {name}: cannot fetch {shown_url(url)}: {reason}") from exc


def shown_url(url: str) -> str:
    """The URL without a password written into it (nothing secret in messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


class PhoneApps:
    """The app URLs in force: owned here, pointed at a server by the §2 switch.

    Args:
        settings: where `[apps]` and the two servers' addresses are read at each switch
            (a `config.live.LiveSettings`): no copy is kept, so new settings apply at the
            next `point_to`.
    """

    def __init__(self, settings: LiveSettingsView) -> None:
        self._settings = settings
        self._urls: dict[str, str] = {}

    def point_to(self, server: Server) -> dict[str, str]:
        """Each app's URL on `server`, now in force (SPEC §2 step 3); as shown to people
        (`phoned status`): a password written into a URL is `***` (SPEC §10)."""
        current = self._settings.get()
        self._urls = app_urls(
            current.apps,
            server,
            current.server.address,
            current.redundancy.backup_destination_address,
        )
        return {name: shown_url(url) for name, url in self._urls.items()}

    def url(self, name: str) -> str | None:
        """The URL of app `name` on the server in use, if configured (any thread)."""
        return self._urls.get(name)

    def names(self) -> list[str]:
        """The configured apps' names."""
        return list(self._urls)
