"""Tests of phoned.service.configsource: SPEC §7's boot order, refresh and last good, with a
fake fetch (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoned.config.loader import SettingsError
from phoned.errors import ProvisioningError
from phoned.provision.fetch import FetchResult
from phoned.provision.lastgood import load_last_good
from phoned.service.configsource import FETCH_TIMEOUT_S, ConfigSource

MAC = "b827eb12ab34"
BASE_URL = "http://192.0.2.40/prov"
FILE_URL = f"{BASE_URL}/{MAC}.toml"
GOOD = b"[redundancy]\nsip_keep_alive_interval = 4\n"
BAD = b"[redundancy]\nsip_keep_alive_interval = 0\n"


class FakeFetch:
    """Answers each fetch with the next of `answers` (a result or an error); records calls."""

    def __init__(self, *answers: FetchResult | ProvisioningError) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, object]] = []

    def __call__(self, url: str, **kwargs: object) -> FetchResult:
        self.calls.append({"url": url, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, ProvisioningError):
            raise answer
        return answer


def ok(body: bytes, etag: str = '"e1"') -> FetchResult:
    return FetchResult(url=FILE_URL, status=200, body=body, etag=etag, last_modified="")


def down() -> ProvisioningError:
    return ProvisioningError(f"provisioning: {FILE_URL}: unreachable (connection refused)")


def local_file(tmp_path: Path, *, url: str = BASE_URL, interval: int = 2) -> Path:
    path = tmp_path / "phoned.toml"
    path.write_text(
        '[account]\nusername = "1001"\npassword = "pw"\n'
        '[server]\naddress = "192.0.2.11"\n'
        f"[redundancy]\nsip_keep_alive_interval = {interval}\n"
        f'[provisioning]\nurl = "{url}"\n'
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        f'control_socket = "{tmp_path / "control.sock"}"\n'
    )
    return path


def source(path: Path, fetch: FakeFetch) -> ConfigSource:
    return ConfigSource(str(path), fetcher=fetch, mac_of=lambda _name: MAC, wall=lambda: 1.0e9)


def test_boot_without_a_url_is_the_local_file_and_fetches_nothing(tmp_path: Path) -> None:
    fetch = FakeFetch()
    settings = source(local_file(tmp_path, url=""), fetch).boot()
    assert settings.redundancy.sip_keep_alive_interval == 2
    assert fetch.calls == []


def test_boot_fetches_lays_over_keeps_last_good(tmp_path: Path) -> None:
    fetch = FakeFetch(ok(GOOD))
    src = source(local_file(tmp_path), fetch)
    settings = src.boot()
    assert settings.redundancy.sip_keep_alive_interval == 4
    assert fetch.calls[0]["url"] == FILE_URL
    assert fetch.calls[0]["timeout_s"] == FETCH_TIMEOUT_S
    kept = load_last_good(str(tmp_path / "state"))
    assert kept is not None
    assert kept.body == GOOD
    assert kept.etag == '"e1"'
    assert src.report.source == "local + provisioned"
    assert src.report.etag == '"e1"'


@pytest.mark.parametrize(
    "answer",
    [down(), ok(BAD), ProvisioningError(f"provisioning: {FILE_URL}: 404 Not Found")],
    ids=["down", "bad file", "404"],
)
def test_boot_falls_back_on_last_good(tmp_path: Path, answer: object) -> None:
    path = local_file(tmp_path)
    source(path, FakeFetch(ok(GOOD))).boot()  # an earlier boot kept GOOD
    src = source(path, FakeFetch(answer))  # type: ignore[arg-type]
    settings = src.boot()
    assert settings.redundancy.sip_keep_alive_interval == 4
    assert src.report.source == "local + last good"
    assert load_last_good(str(tmp_path / "state")).body == GOOD  # type: ignore[union-attr]


def test_boot_with_nothing_kept_and_the_server_down_runs_on_the_local_file(
    tmp_path: Path,
) -> None:
    src = source(local_file(tmp_path), FakeFetch(down()))
    assert src.boot().redundancy.sip_keep_alive_interval == 2
    assert src.report.source == "local"
    assert "unreachable" in src.report.detail


def test_a_bad_local_file_stops_the_boot(tmp_path: Path) -> None:
    path = local_file(tmp_path, interval=0)
    with pytest.raises(SettingsError, match=r"sip_keep_alive_interval must be 1\.\.3600"):
        source(path, FakeFetch()).boot()


def test_refresh_sends_the_etag_and_304_keeps_the_file(tmp_path: Path) -> None:
    fetch = FakeFetch(ok(GOOD), FetchResult(FILE_URL, 304, b"", '"e1"', ""))
    src = source(local_file(tmp_path), fetch)
    src.boot()
    built = src.refresh()
    assert fetch.calls[1]["etag"] == '"e1"'
    assert built.fetched is None
    assert built.note == "not modified"
    assert built.settings.redundancy.sip_keep_alive_interval == 4


def test_refresh_rejects_a_bad_file_and_keeps_the_last_good(tmp_path: Path) -> None:
    src = source(local_file(tmp_path), FakeFetch(ok(GOOD), ok(BAD, etag='"e2"')))
    src.boot()
    with pytest.raises(SettingsError) as info:
        src.refresh()
    assert info.value.errors == [
        f"{FILE_URL}:2: redundancy.sip_keep_alive_interval must be 1..3600, got 0"
    ]
    assert load_last_good(str(tmp_path / "state")).etag == '"e1"'  # type: ignore[union-attr]
    assert src.report.last_result == "rejected"


def test_a_new_file_is_kept_only_when_the_caller_says_it_applied(tmp_path: Path) -> None:
    new = b"[redundancy]\nsip_keep_alive_interval = 6\n"
    src = source(local_file(tmp_path), FakeFetch(ok(GOOD), ok(new, etag='"e2"')))
    src.boot()
    built = src.refresh()
    assert built.settings.redundancy.sip_keep_alive_interval == 6
    assert load_last_good(str(tmp_path / "state")).etag == '"e1"'  # type: ignore[union-attr]
    src.keep(built)
    assert load_last_good(str(tmp_path / "state")).body == new  # type: ignore[union-attr]
    assert src.report.etag == '"e2"'


def test_refresh_with_the_server_down_keeps_what_is_in_force(tmp_path: Path) -> None:
    src = source(local_file(tmp_path), FakeFetch(ok(GOOD), down()))
    src.boot()
    built = src.refresh()
    assert built.fetched is None
    assert built.settings.redundancy.sip_keep_alive_interval == 4
    assert src.report.last_result == "unreachable"
