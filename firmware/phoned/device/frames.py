"""The emulated panel's PNG frames on disk (SPEC §5; §10 "Local faults").

Owns: the folder `<state_dir>/frames/`: writing each frame whole (a `.part` file renamed),
keeping only the newest frames, removing a previous run's frames and `.part` leftovers, and
saying once when the folder cannot be written. Must not touch: anything outside that
folder, the picture (it is handed one), the terminal.

Rule 1: frames are `frame-000001.png`, `frame-000002.png`... numbered from 1 by picture in
each run: the newest frame has the highest number; only the newest `keep` stay on disk.
Rule 2: a write that fails (read-only or full file system, folder gone) raises nothing and
leaves no `.part` file; it is logged once for a whole run of failures ("frames off"), and
the first write that works again says so. Each new picture tries again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from pathlib import Path

from PIL import Image

log = logging.getLogger("phoned.device")

#: How many frames stay on disk (SPEC §10: they must not pile up for the whole run).
KEEP_FRAMES = 100
#: The names of frames (and their unfinished `.part` files) this store writes and removes.
_PATTERNS = ("frame-*.png", "frame-*.png.part")


class FrameStore:
    """The newest frames of the emulated panel, as PNG files in one folder."""

    def __init__(self, folder: Path, keep: int = KEEP_FRAMES) -> None:
        """Make the folder and remove a previous run's frames (Rule 2 if it cannot).

        Args:
            folder: where the frames go (`<state_dir>/frames`).
            keep: how many of the newest frames stay on disk; 0 writes none at all.
        """
        if keep < 0:
            raise ValueError(f"display: keep must be >= 0 frames, got {keep}")
        self.folder = folder
        self._keep = keep
        self._kept: deque[Path] = deque()
        self._number = 0  #: the last picture's number (Rule 1)
        self._ready = False  #: the folder exists and a previous run's frames are gone
        self._failing = False  #: the last write failed and that was logged
        self._trim_failed = False  #: an old frame could not be removed (logged)
        if keep:
            try:
                self._prepare()
            except OSError as exc:
                self._failed(exc)

    @property
    def frames(self) -> list[Path]:
        """The frames on disk, oldest first."""
        return list(self._kept)

    @property
    def latest(self) -> Path | None:
        """The newest picture's frame; None when it could not be written."""
        return None if self._failing or not self._kept else self._kept[-1]

    @property
    def writing(self) -> bool:
        """Whether frames are being written (False after a failure until one works again)."""
        return self._keep > 0 and not self._failing

    def save(self, image: Image.Image) -> Path | None:
        """Write `image` as the next frame; returns its path, None if it was not written."""
        self._number += 1
        if not self._keep:
            return None
        path = self.folder / f"frame-{self._number:06d}.png"
        partial = path.with_name(path.name + ".part")
        try:
            self._prepare()
            image.save(partial, format="PNG")
            os.replace(partial, path)  # readers never see half a frame
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)  # a full disk left half a PNG behind
            self._failed(exc)
            return None
        if self._failing:
            self._failing = False
            log.info("display: frames written to %s again", self.folder)
        self._kept.append(path)
        self._trim()
        return path

    def _prepare(self) -> None:
        """Make the folder and remove what a previous run left there (once)."""
        if self._ready:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for pattern in _PATTERNS:
            for stale in self.folder.glob(pattern):
                stale.unlink(missing_ok=True)
        self._ready = True

    def _trim(self) -> None:
        """Rule 1: remove the oldest frames beyond `keep`."""
        while len(self._kept) > self._keep:
            oldest = self._kept.popleft()
            try:
                oldest.unlink(missing_ok=True)
            except OSError as exc:  # writable but not removable: said once, left there
                if not self._trim_failed:
                    self._trim_failed = True
                    log.warning("display: can't remove old frame %s: %s", oldest, exc)

    def _failed(self, exc: OSError) -> None:
        """Rule 2: one line for a whole run of failures."""
        if self._failing:
            return
        self._failing = True
        reason = exc.strerror or str(exc) or type(exc).__name__
        log.warning("display: can't write frames to %s: %s; frames off", self.folder, reason)
