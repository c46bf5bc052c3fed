"""`phoned demo` on a phone: the lab (phonelab) is not installed there, and it says so."""

from __future__ import annotations

import sys

import pytest

from phoned.__main__ import main


def test_demo_without_the_lab_says_plainly_that_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "phonelab.demo", None)  # import fails as on the image
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "the lab is not installed here" in err
    assert "Traceback" not in err
