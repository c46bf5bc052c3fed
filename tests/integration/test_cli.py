"""The `phoned` command line as an installer meets it: clear messages, exit codes, and
never a traceback for bad input (SPEC §3, §4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = """\
[account]
username = "1001"
password = "s3cret-pw"

[server]
address = "192.0.2.11"

[redundancy]
backup_destination = true
backup_destination_address = "192.0.2.12"
"""


def phoned(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phoned", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(GOOD)

    done = phoned("check-config", str(path))

    assert done.returncode == 0
    assert "ok" in done.stdout
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_bad_config_exits_1_naming_file_line_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(GOOD + "sip_keep_alive_interval = 0\n")

    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        done = phoned(*args)
        assert done.returncode == 1
        assert f"{path}:11: redundancy.sip_keep_alive_interval must be 1..3600, got 0" in (
            done.stderr
        )
        assert "Traceback" not in done.stderr
        assert "s3cret-pw" not in done.stderr


def test_missing_and_unparsable_files_get_a_message_not_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[account\nusername = 1001\n")

    missing = phoned("run", "--config", str(tmp_path / "absent.toml"))
    unparsable = phoned("check-config", str(broken))

    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
    assert unparsable.returncode == 1
    assert f"{broken}:1:" in unparsable.stderr
    assert "Traceback" not in missing.stderr + unparsable.stderr


def test_status_without_a_running_service_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(GOOD + f'\n[service]\ncontrol_socket = "{tmp_path}/control.sock"\n')

    done = phoned("status", "--config", str(path))

    assert done.returncode == 3
    assert "phoned is not running" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2() -> None:
    assert phoned("no-such-command").returncode == 2
