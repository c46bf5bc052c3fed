"""The VPN private key file as the tunnel reads it (SPEC §6, §10): the loader's checks
again at start, so a file swapped in between is refused too; never its content in a
message."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from phoned.errors import VpnError
from phoned.net.vpn_inputs import read_private_key

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "wg.key"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


def test_a_0600_key_owned_by_the_user_running_phoned_is_read(tmp_path: Path) -> None:
    assert str(read_private_key(str(key_file(tmp_path)))) == KEY


def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)  # tests run as root (CI)
    with pytest.raises(VpnError, match="is not owned by root") as refused:
        read_private_key(str(path))
    assert KEY not in str(refused.value)


def test_a_key_readable_by_others_or_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VpnError, match="mode 0640"):
        read_private_key(str(key_file(tmp_path, 0o640)))
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "wg.key")
    with pytest.raises(VpnError, match="cannot open"):
        read_private_key(str(link))
