"""A fresh lab with its primary and backup Kamailio PBXs, for the long runs (soak, fleet).

Owns: cleaning a previous run's namespaces, then entering the lab, its faults and both
PBXs into the caller's `ExitStack` (so everything closes with it). Must not touch: phones,
captures or what the run does with them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from phonelab.faults import Faults
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PBX2_IP, Lab, cleanup_stale


def enter_lab_with_pbxs(
    stack: contextlib.ExitStack, workdir: Path, *, presence: bool
) -> tuple[Lab, Faults]:
    """The lab and its faults, with "primary" on pbx1 and "backup" on pbx2 started."""
    cleanup_stale()
    lab = stack.enter_context(Lab())
    faults = stack.enter_context(Faults())
    for name, host, netns in (("primary", PBX1_IP, lab.pbx1), ("backup", PBX2_IP, lab.pbx2)):
        stack.enter_context(
            KamailioPbx(name, host, workdir=workdir, netns=netns, presence=presence)
        )
    return lab, faults
