"""Where the settings in force come from (SPEC §7): the local file, the fetched one, last good.

Owns: the boot order of SPEC §7 (fetch for at most 5 s, then local + fetched; server down,
404 or a bad file: local + the last good fetched file; none yet: the local file alone), one
fetch-and-build for a resync or a check-sync (the local file re-read, the provisioning file
fetched conditionally and laid over it, the whole validated), keeping every accepted file
as last good, and `ConfigReport`, what `phoned status` says of the configuration.
Must not touch: the running phone (the caller applies what `refresh()` returns), threads,
pjsua2. Blocks for up to the fetch's 5 s: never call it on the pjsua2 thread.

Rule 1: nothing changes until the merged settings are valid as a whole; a rejected file
never replaces the last good one.
Rule 2: a fetch that fails (unreachable, 404, timed out) is not a rejection: the phone goes
on with the local file and the last good fetched one, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from phoned.config.loader import SettingsError, load_settings
from phoned.config.overlay import load_layered
from phoned.config.settings import Settings
from phoned.errors import ProvisioningError
from phoned.logfmt import log_event
from phoned.provision.fetch import FetchResult, fetch, file_url
from phoned.provision.lastgood import LastGood, load_last_good, save_last_good
from phoned.provision.mac import interface_mac

log = logging.getLogger("phoned")

#: SPEC §7: the phone never waits longer than this for the provisioning server.
FETCH_TIMEOUT_S = 5.0


class Fetcher(Protocol):
    """`phoned.provision.fetch.fetch`'s shape (tests hand in a fake)."""

    def __call__(
        self,
        url: str,
        *,
        ca_file: str = "",
        username: str = "",
        password: str = "",
        etag: str = "",
        last_modified: str = "",
        timeout_s: float = FETCH_TIMEOUT_S,
    ) -> FetchResult: ...


@dataclass(frozen=True)
class ConfigReport:
    """What `phoned status --json` shows as `config` (SPEC §7 "Reported")."""

    source: str  #: "local", "local + provisioned", "local + last good"
    url: str = ""  #: the provisioning file's URL, "" without provisioning
    fetched_at: float | None = None  #: unix time the file in force was fetched
    etag: str = ""  #: its ETag
    last_result: str = "local"  #: applied | rejected | not modified | unreachable | local
    detail: str = ""  #: what changed, or why it was rejected or not fetched
    at: float = 0.0  #: unix time of the last result

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


@dataclass(frozen=True)
class Built:
    """The settings a refresh built, and whether they came from a newly fetched file."""

    settings: Settings
    fetched: LastGood | None  #: the new file (kept once applied), None: nothing new
    note: str  #: "fetched", "not modified", or why the fetch failed


class ConfigSource:
    """The local settings file and, when `[provisioning] url` is set, the fetched one.

    Args:
        local_path: the local settings file (`phoned run --config`).
        fetcher: the HTTP fetch (`phoned.provision.fetch.fetch`).
        mac_of: the MAC (12 hex digits) of an interface ("" = the first one).
        wall: unix time, for `fetched_at`.
    """

    def __init__(
        self,
        local_path: str,
        *,
        fetcher: Fetcher = fetch,
        mac_of: Callable[[str], str] = interface_mac,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.local_path = local_path
        self._fetch = fetcher
        self._mac_of = mac_of
        self._wall = wall
        self._kept: LastGood | None = None  #: the last good file, as loaded or saved
        self.report = ConfigReport("local")

    # -- boot --------------------------------------------------------------------------
    def boot(self, timeout_s: float = FETCH_TIMEOUT_S) -> Settings:
        """The settings to start with (SPEC §7 "Boot"), the fetch given `timeout_s`.

        Raises:
            SettingsError: the local file itself is invalid: the phone cannot start.
        """
        local = load_settings(self.local_path)
        if not local.provisioning.url:
            return local
        self._kept = self._load_kept(local)
        try:
            built = self.refresh(timeout_s)
        except SettingsError as exc:
            log_event(log, "config", f"config: provisioning file rejected at boot: {exc}",
                      level=logging.WARNING, result="rejected", reason=str(exc))  # fmt: skip
            return self._fallback(local, "rejected", str(exc))
        if built.fetched is not None:
            self.keep(built)
            self.noted("applied", "at boot")
            log_event(log, "config", f"config: {built.fetched.url} (boot) applied over "
                      f"{self.local_path}", result="applied", at="boot")  # fmt: skip
        elif built.note == "not modified" and self._kept is not None:  # 304: the kept file
            self._set_report("local + provisioned", self._kept, "not modified", "at boot")
        return built.settings

    def _fallback(self, local: Settings, result: str, why: str) -> Settings:
        """Local + the last good file, else the local file alone."""
        kept = self._kept
        if kept is not None:
            try:
                settings = self._layer(kept)
            except SettingsError as exc:  # e.g. the local file changed under it
                log.warning("config: last good provisioning file no longer fits: %s", exc)
            else:
                self._set_report("local + last good", kept, result, why)
                return settings
        self.report = ConfigReport("local", last_result=result, detail=why, at=self._wall())
        return local

    def _load_kept(self, local: Settings) -> LastGood | None:
        try:
            return load_last_good(local.service.state_dir)
        except ProvisioningError as exc:
            log.warning("config: %s -> ignored", exc)
            return None

    # -- refresh -----------------------------------------------------------------------
    def refresh(self, timeout_s: float = FETCH_TIMEOUT_S) -> Built:
        """The local file re-read and the provisioning file fetched (conditionally) and
        laid over it, validated as a whole (Rule 1). A failed fetch falls back on the
        last good file (Rule 2).

        Raises:
            SettingsError: the local or the fetched file is invalid; nothing changed.
        """
        local = load_settings(self.local_path)
        prov = local.provisioning
        if not prov.url:
            self.report = ConfigReport("local", at=self._wall())
            return Built(local, None, "local")
        url = file_url(prov.url, self._mac_of(prov.mac_interface))
        try:
            result = self._get(local, url, timeout_s)
        except ProvisioningError as exc:
            log_event(log, "config", f"config: {exc} -> keeping what is in force",
                      level=logging.WARNING, result="unreachable", reason=str(exc))  # fmt: skip
            return Built(self._fallback(local, "unreachable", str(exc)), None, str(exc))
        if result.status == 304 and self._kept is not None:
            return Built(self._layer(self._kept), None, "not modified")
        # the URL asked for (not the one redirected to): what the next fetch compares
        fetched = LastGood(result.body, url, result.etag, result.last_modified, self._wall())
        try:
            return Built(self._layer(fetched), fetched, "fetched")
        except SettingsError as exc:
            self.report = replace(self.report, last_result="rejected", detail=str(exc),
                                  at=self._wall())  # fmt: skip
            raise

    def _get(self, local: Settings, url: str, timeout_s: float) -> FetchResult:
        prov = local.provisioning
        kept = self._kept if self._kept is not None and self._kept.url == url else None
        return self._fetch(
            url,
            ca_file=prov.tls_ca_file,
            username=prov.username,
            password=prov.password,
            etag=kept.etag if kept else "",
            last_modified=kept.last_modified if kept and not kept.etag else "",
            timeout_s=timeout_s,
        )

    def _layer(self, kept: LastGood) -> Settings:
        try:
            text = kept.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = kept.body[: exc.start].count(b"\n") + 1
            raise SettingsError([f"{kept.url}:{line}: invalid TOML: not UTF-8 text"]) from exc
        return load_layered(self.local_path, text, kept.url)

    def keep(self, built: Built) -> None:
        """`built`'s fetched file was accepted: keep it as last good (written atomically)."""
        fetched = built.fetched
        if fetched is None:
            return
        self._kept = fetched
        try:
            save_last_good(built.settings.service.state_dir, fetched)
        except ProvisioningError as exc:  # SPEC §10: logged, the phone goes on
            log.error("config: %s -> the file is in force but not kept", exc)
        self.report = replace(self.report, source="local + provisioned", url=fetched.url,
                              fetched_at=fetched.fetched_at, etag=fetched.etag)  # fmt: skip

    def _set_report(self, source: str, kept: LastGood, result: str, detail: str) -> None:
        self.report = ConfigReport(
            source, kept.url, kept.fetched_at, kept.etag, result, detail, self._wall()
        )

    def noted(self, result: str, detail: str) -> None:
        """Record the outcome of an apply (`applied`, `not modified`, `rejected`...)."""
        self.report = replace(self.report, last_result=result, detail=detail, at=self._wall())
