"""The manifest: the commit point of one index version (Lucene's ``segments_N``, Lance's manifest).

``manifest.json`` in the version folder lists the live segments, the tombstones (deleted document ids
per segment) and the fitted state (codec and coarse centroids) that every listed segment was derived
with. Publishing is writing a new manifest to a temp file, fsyncing it and renaming it over the old
one: readers see the old manifest or the new one, never a mix. Writers (ingest, delete, merge, fit; in
any process) serialise read-modify-write cycles with ``IndexLock``, an ``flock`` on ``LOCK``.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from patchseek.search.segments import fsync_dir

MANIFEST = "manifest.json"
LOCK = "LOCK"
FIT_LOCK = "FIT.LOCK"  # held by the one fit running (``fit_lock``)


@dataclass(frozen=True)
class Manifest:
    """One published state of an index version.

    Attributes
    ----------
    generation : int
        Bumped by every publish.
    segments : tuple of str
        Live segment names, oldest first.
    tombstones : dict
        ``{segment: sorted deleted document ids}``; a deleted document's rows stay in its segment until
        a merge drops them.
    state : str or None
        Folder of the fitted state (codec, coarse centroids) the segments were derived with; None until
        the collection holds enough vectors to fit it (scored exactly until then).
    fit : dict
        What the fit saw: ``{"vectors": n in the collection, "sample": n sampled, "rule": text}``.
    """

    generation: int = 0
    segments: tuple[str, ...] = ()
    tombstones: dict[str, tuple[int, ...]] = field(default_factory=dict)
    state: str | None = None
    fit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": 1,
                "generation": self.generation,
                "segments": list(self.segments),
                "tombstones": {k: list(v) for k, v in self.tombstones.items() if v},
                "state": self.state,
                "fit": self.fit,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls(
            generation=int(raw["generation"]),
            segments=tuple(raw["segments"]),
            tombstones={k: tuple(int(d) for d in v) for k, v in raw.get("tombstones", {}).items()},
            state=raw.get("state"),
            fit=dict(raw.get("fit") or {}),
        )

    def bump(self, **changes: Any) -> Manifest:
        return replace(self, generation=self.generation + 1, **changes)


def read_manifest(root: str | Path) -> Manifest:
    """The published manifest of the version folder ``root`` (an empty one if none was published)."""
    try:
        return Manifest.from_json((Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        return Manifest()


def manifest_stamp(root: str | Path) -> tuple[int, int] | None:
    """(inode, mtime ns) of the manifest file: changes with every publish; None before the first."""
    try:
        st = os.stat(Path(root) / MANIFEST)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def write_manifest(root: str | Path, manifest: Manifest) -> None:
    """Publish ``manifest``: temp file, fsync, rename over ``manifest.json``, fsync of the folder."""
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-manifest-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, folder / MANIFEST)
    fsync_dir(folder)


_thread_locks: dict[str, threading.RLock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def index_lock(root: str | Path) -> Iterator[None]:
    """Exclusive writer lock of one index version, across threads and processes (re-entrant per thread).

    A thread lock per folder orders the threads of this process; ``flock`` on ``LOCK`` orders processes
    and is released by the kernel if the holder dies, so a crashed writer never wedges the index.
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.RLock())
    with lock:
        depth = getattr(_held, key, 0)
        if depth:
            setattr(_held, key, depth + 1)
            try:
                yield
            finally:
                setattr(_held, key, depth)
            return
        with open(folder / LOCK, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            setattr(_held, key, 1)
            try:
                yield
            finally:
                setattr(_held, key, 0)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_held = threading.local()
_fitting: set[str] = set()


@contextmanager
def fit_lock(root: str | Path) -> Iterator[bool]:
    """Try to become the one fitter of an index version (across threads and processes): yields True
    when this caller holds the lock, False at once when another fit is running. Unlike ``index_lock``
    it never waits: a second fit of the same collection would only repeat the work."""
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    with _thread_locks_guard:
        if key in _fitting:
            mine = False
        else:
            _fitting.add(key)
            mine = True
    if not mine:
        yield False
        return
    try:
        with open(folder / FIT_LOCK, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        with _thread_locks_guard:
            _fitting.discard(key)
