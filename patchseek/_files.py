"""One file-system helper shared by the blob store and the index engine's clean-ups."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path


def remove_older_than(paths: Iterable[Path], older_than_s: float) -> int:
    """Unlink each of ``paths`` last modified at least ``older_than_s`` seconds ago (files that vanish
    meanwhile are skipped); returns how many were removed."""
    now, n = time.time(), 0
    for p in paths:
        try:
            if now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                n += 1
        except FileNotFoundError:
            continue
    return n
