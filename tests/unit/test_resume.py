"""The record of the server in use across a restart (issue 12: back on the right server
within one cycle after a watchdog restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoned.core.events import SendProbe, Server, UseServer
from phoned.core.failover import FailoverPolicy
from phoned.core.policy import PolicySettings
from phoned.service.resume import ResumeFile

INTERVAL_S = 15.0


def test_a_recent_record_of_this_boot_is_resumed(tmp_path: Path) -> None:
    ResumeFile(tmp_path / "resume").save(Server.BACKUP, 1000.0)
    assert ResumeFile(tmp_path / "resume").load(1031.5, INTERVAL_S) == (Server.BACKUP, 31.5)


def test_a_stale_record_another_boots_or_a_garbled_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "resume"
    ResumeFile(path).save(Server.BACKUP, 1000.0)
    assert ResumeFile(path).load(1000.0 + 2 * INTERVAL_S + 61, INTERVAL_S) is None  # stale
    assert ResumeFile(path).load(999.0, INTERVAL_S) is None  # from the future: not this run
    path.write_text("backup 1000.000 another-boot-id\n", encoding="ascii")
    assert ResumeFile(path).load(1001.0, INTERVAL_S) is None
    for garbled in ("", "backup\n", "elsewhere 1000 x\n", "backup soon x\n", "\xff\xfe"):
        path.write_text(garbled, encoding="latin-1")
        assert ResumeFile(path).load(1001.0, INTERVAL_S) is None
    assert ResumeFile(tmp_path / "missing").load(1001.0, INTERVAL_S) is None


def test_a_directory_it_cannot_write_is_logged_once_and_nothing_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = ResumeFile(tmp_path / "no-such-dir" / "resume")
    record.save(Server.BACKUP, 1.0)
    record.save(Server.PRIMARY, 5.0)
    assert caplog.text.count("resume: can't record") == 1


def test_the_core_resumed_on_the_backup_starts_there_and_probes_at_once() -> None:
    settings = PolicySettings(backup_enabled=True, interval_s=INTERVAL_S)
    policy = FailoverPolicy(settings, 50.0, 0.0, resume_on=Server.BACKUP)
    assert policy.start(50.0) == [UseServer(Server.BACKUP, "resumed after a restart")]
    assert policy.on_deadline(50.0) == [
        SendProbe(Server.PRIMARY, 0, 1),
        SendProbe(Server.BACKUP, 0, 1),
    ]


def test_the_backup_is_not_resumed_on_once_backup_is_disabled() -> None:
    policy = FailoverPolicy(PolicySettings(), 50.0, 0.0, resume_on=Server.BACKUP)
    assert policy.start(50.0) == [UseServer(Server.PRIMARY, "start")]
