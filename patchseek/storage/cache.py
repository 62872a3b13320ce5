"""``ReadCache``: local copies of immutable objects, for memory-mapping segments of an object store.

A copy lives at ``<root>/<object name>`` (names are validated, so this is a path inside ``root``); it
is fetched into a temp file beside it and renamed into place, so a half-downloaded copy is never used.
Objects are immutable (a segment is never rewritten, a new one gets a new name), so a copy never goes
stale and needs no validation. The cache is bounded by ``max_bytes``: after each fetch the least
recently used copies that no open reader holds (``acquire`` pins, ``LocalFile.close`` unpins) are
deleted until the total fits. Copies held open are never evicted, so the cache can exceed its bound
while more than ``max_bytes`` of segments are in use; a warning says so.

Several processes on one node may share a cache folder: fetches are atomic renames, and a copy one of
them evicts while another has it memory-mapped stays readable through the mapping (POSIX unlink
semantics); the other process fetches it again when it next opens it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from patchseek._files import remove_older_than
from patchseek.storage.base import TMP_PREFIX, LocalFile, check_name

STALE_TEMP_SECONDS = 24 * 3600

log = logging.getLogger(__name__)


class ReadCache:
    """Bounded read-through cache of immutable objects under ``root``."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        # Downloads and uploads a killed process left half done (a live one's are minutes old at most).
        remove_older_than(self.root.rglob(f"{TMP_PREFIX}*"), STALE_TEMP_SECONDS)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def acquire(self, name: str, fetch: Callable[[Path], None]) -> LocalFile:
        """A pinned local copy of ``name``; ``fetch(tmp)`` writes the object's bytes to ``tmp`` on a miss."""
        path = self.path(name)
        with self._lock:
            self._pins[name] = self._pins.get(name, 0) + 1
        try:
            try:
                os.utime(path)  # a hit: now the most recently used
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
                try:
                    fetch(tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            self.evict()
        except BaseException:
            self._release(name)
            raise
        return LocalFile(path, lambda: self._release(name))

    def adopt(self, name: str, src: Path) -> None:
        """Make the local file ``src`` (just uploaded as ``name``) the cached copy, without a download."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, path)
        self.evict()

    def pinned(self, name: str) -> int:
        with self._lock:
            return self._pins.get(name, 0)

    def _release(self, name: str) -> None:
        with self._lock:
            n = self._pins.get(name, 0) - 1
            if n > 0:
                self._pins[name] = n
            else:
                self._pins.pop(name, None)

    def entries(self) -> list[tuple[str, int, float]]:
        """(name, size, last use) of every cached copy, least recently used first."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.startswith("."):
                    continue
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((p.relative_to(self.root).as_posix(), int(st.st_size), float(st.st_mtime)))
        return sorted(out, key=lambda e: e[2])

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Delete unpinned copies, least recently used first, until the cache fits; how many."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for name, size, _ in entries:
            if total <= self.max_bytes:
                break
            with self._lock:
                if self._pins.get(name):
                    continue
                (self.root / name).unlink(missing_ok=True)
            total -= size
            removed += 1
        if total > self.max_bytes:
            log.warning(
                "storage cache %s holds %d bytes in open segments, over its %d-byte bound "
                "(PATCHSEEK_STORAGE_CACHE_BYTES)",
                self.root,
                total,
                self.max_bytes,
            )
        return removed
