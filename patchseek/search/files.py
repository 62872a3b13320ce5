"""``IndexFiles``: one index version's files (manifest, segments, fitted state) on a ``Storage``.

The engine (``patchseek.search.engine``) reads and writes its version folder only through this class,
so the same engine runs on a local data dir and on an object store that every node of a cluster shares.
Segment and state bytes go through the storage interface on both backends (staged in a local temp
file, then renamed into place or uploaded; opened for memory-mapping through ``Storage.local_path``,
which on an object store is a bounded read-through cache). What differs is the commit protocol,
because that is exactly where the backends differ:

**Local folder** (today's layout, data dirs of 0.2 open unchanged): ``manifest.json`` replaced by
rename, writers serialised by ``flock`` on ``LOCK`` (``patchseek.search.manifest``).

**Object store** (no rename, no flock): every publish is a new object ``manifests/<generation>.json``
written with a *create-only* put (S3's ``If-None-Match: *``; fsspec ``mode="create"``), and the
commit point is the highest generation listed. The store arbitrates: of two writers that read
generation N and try to publish N + 1, exactly one succeeds, the other gets ``ConflictError`` and
nothing of its write is published, so no update is ever lost. That create-only put is the safety
guarantee. For liveness (writers should queue rather than fail), writers also take a lease: the object
``LOCK``, created with the same create-only put and holding its expiry, renewed every third of
``lock_seconds`` while held; a holder that died frees it at most ``lock_seconds`` later
(``PATCHSEEK_STORAGE_LOCK_SECONDS``, wall clocks of the nodes assumed in sync to well within it); a
waiter waits as long as the holder renews, as a local writer waits on ``flock``. A writer stalled past
its lease (a paused VM) cannot corrupt anything: its manifest put then conflicts.
The database stays the source of truth for *which* version is published (``IndexVersion``); this is
the commit point *within* a version, as ``manifest.json`` is locally. The last ``KEEP_MANIFESTS``
generations are kept, so a reader that listed one just before a publish can still read it.

Readers on an object store look the manifest up at most every ``poll_s`` seconds (a LIST request); what
other nodes publish becomes visible within that, what this process publishes at once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from patchseek.errors import ConflictError
from patchseek.search.manifest import (
    MANIFEST,
    Manifest,
    index_lock,
    manifest_stamp,
    read_manifest,
    write_manifest,
)
from patchseek.search.segments import PREFIX, SUFFIX, SegmentFile, remove_stale_temp, write_segment_file
from patchseek.storage import LocalStorage, ObjectNotFoundError, Storage, StorageSpec

log = logging.getLogger(__name__)

KEEP_MANIFESTS = 8
MANIFESTS = "manifests/"
LOCK = "LOCK"


class IndexFiles:
    """The files of one index version: objects named ``<prefix>...`` in ``storage``.

    Parameters
    ----------
    storage : Storage
        Where the files live.
    prefix : str
        The version's folder in it, ending in ``/`` (``segments/<collection>/v<n>/``), or ``""``.
    scratch : path, optional
        Local folder for temp work (building a fitted state); default: the version folder itself on
        a local backend, required on an object store.
    poll_s : float
        Object store: how long a looked-up manifest generation is trusted before listing again.
    lock_seconds : float
        Object store: the writer lease.
    """

    def __init__(
        self,
        storage: Storage,
        prefix: str = "",
        *,
        scratch: str | Path | None = None,
        poll_s: float = 1.0,
        lock_seconds: float = 600.0,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"index prefix {prefix!r} must end with '/'")
        self.storage = storage
        self.prefix = prefix
        local = storage.local_root
        self.folder: Path | None = None if local is None else local / prefix
        if scratch is None:
            if self.folder is None:
                raise ValueError("an object-store index needs a local scratch folder")
            scratch = self.folder
        self.root = Path(scratch)
        self.poll_s = float(poll_s)
        self.lock_seconds = float(lock_seconds)
        self._stamp: tuple[float, Hashable | None] | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    @classmethod
    def local(cls, root: str | Path) -> IndexFiles:
        """The files of a local version folder ``root`` (the engine's default)."""
        root = Path(root)
        return cls(LocalStorage(root), "", scratch=root)

    @classmethod
    def on_node(cls, spec: StorageSpec, prefix: str) -> IndexFiles:
        """The files of the version at ``prefix`` of the store ``spec``, as a cluster node opens them
        (its own client; scratch space in the node's folder for the store)."""
        return cls(
            spec.open(),
            prefix,
            scratch=spec.node_folder() / "scratch" / prefix,
            poll_s=spec.poll_s,
            lock_seconds=spec.lock_seconds,
        )

    @property
    def url(self) -> str:
        return f"{self.storage.url.rstrip('/')}/{self.prefix}"

    def _seg(self, name: str) -> str:
        return f"{self.prefix}{PREFIX}{name}{SUFFIX}"

    def exists(self) -> bool:
        if self.folder is not None:
            return self.folder.is_dir()
        return next(iter(self.storage.list(self.prefix)), None) is not None

    # ----------------------------------------------------------------------------- manifest
    def read_manifest(self) -> Manifest:
        """The published manifest (an empty one before the first publish)."""
        if self.folder is not None:
            return read_manifest(self.folder)
        for attempt in range(8):
            latest = self._latest()
            if latest is None:
                return Manifest()
            try:
                return Manifest.from_json(self.storage.get(latest).decode())
            except ObjectNotFoundError:  # pruned between the listing and the read: list again
                time.sleep(0.01 * (attempt + 1))
        raise ConflictError(f"could not read a stable manifest of {self.url}")

    def _latest(self) -> str | None:
        names = [n for n in self.storage.list(self.prefix + MANIFESTS) if n.endswith(".json")]
        latest = max(names, default=None)
        self._stamp = (time.monotonic(), latest)
        return latest

    def manifest_stamp(self) -> Hashable | None:
        """Changes with every publish; None before the first."""
        if self.folder is not None:
            return manifest_stamp(self.folder)
        cached = self._stamp
        if cached is not None and time.monotonic() - cached[0] < self.poll_s:
            return cached[1]
        return self._latest()

    def write_manifest(self, manifest: Manifest) -> None:
        """Publish ``manifest`` (under ``lock``). Object store: ``ConflictError`` if its generation was
        published by another writer meanwhile (nothing of this one is then visible)."""
        if self.folder is not None:
            write_manifest(self.folder, manifest)
            return
        name = f"{self.prefix}{MANIFESTS}{manifest.generation:020d}.json"
        try:
            self.storage.put(name, manifest.to_json().encode(), exclusive=True)
        except FileExistsError:
            self._stamp = None
            raise ConflictError(
                f"index {self.url}: generation {manifest.generation} was published by another writer "
                "meanwhile (a writer lease outlived, see PATCHSEEK_STORAGE_LOCK_SECONDS); nothing of this "
                "write was published, retry it"
            ) from None
        self._stamp = (time.monotonic(), name)
        names = sorted(n for n in self.storage.list(self.prefix + MANIFESTS) if n.endswith(".json"))
        for old in names[:-KEEP_MANIFESTS]:
            self.storage.delete(old)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock of this version across threads, processes and (object store) nodes;
        re-entrant per thread."""
        if self.folder is not None:
            with index_lock(self.folder):
                yield
            return
        # One thread lock per client (this object; the engine registry holds one per version per
        # process): two clients, in one process or on two nodes, are ordered by the lease alone.
        key = f"{self.url}#{self._owner}"
        with _guard:
            thread_lock = _thread_locks.setdefault(key, threading.RLock())
        with thread_lock:
            depth = getattr(_held, key, 0)
            setattr(_held, key, depth + 1)
            try:
                if depth:
                    yield
                    return
                self._acquire_lease()
                stop = threading.Event()
                renewer = threading.Thread(target=self._renew_lease, args=(stop,), daemon=True)
                renewer.start()
                try:
                    yield
                finally:
                    stop.set()
                    renewer.join()
                    self._release_lease()
            finally:
                setattr(_held, key, depth)

    def _acquire_lease(self) -> None:
        """Wait for the lease as a local writer waits on ``flock``: as long as a live holder keeps
        renewing it; a dead holder's lease is taken over once it has expired."""
        name = self.prefix + LOCK
        wait = 0.02
        while True:
            body = json.dumps({"owner": self._owner, "expires": time.time() + self.lock_seconds})
            try:
                self.storage.put(name, body.encode(), exclusive=True)
                return
            except FileExistsError:
                pass
            try:
                held = json.loads(self.storage.get(name))
                if float(held.get("expires", 0)) < time.time():  # its holder died: take it over
                    self.storage.delete(name)
                    continue
            except ObjectNotFoundError:
                continue  # released meanwhile
            except (ValueError, TypeError):
                self.storage.delete(name)  # not a lease we wrote (a torn manual edit): clear it
                continue
            time.sleep(wait)
            wait = min(wait * 2, 0.5)

    def _renew_lease(self, stop: threading.Event) -> None:
        """While the lock is held, push the lease's expiry out every third of its length, so a long
        holder (a fit over a large collection) keeps it; a holder that died stops renewing."""
        name = self.prefix + LOCK
        while not stop.wait(self.lock_seconds / 3):
            try:
                held = json.loads(self.storage.get(name))
                if held.get("owner") != self._owner:
                    return  # taken over (we stalled past the lease): the manifest fence decides
                body = {"owner": self._owner, "expires": time.time() + self.lock_seconds}
                self.storage.put(name, json.dumps(body).encode())
            except Exception:  # noqa: BLE001 (a renewal that fails leaves the lease to expire)
                log.warning("could not renew the writer lease of %s", self.url, exc_info=True)

    def _release_lease(self) -> None:
        name = self.prefix + LOCK
        try:
            held = json.loads(self.storage.get(name))
        except (ObjectNotFoundError, ValueError):
            return
        if held.get("owner") == self._owner:
            self.storage.delete(name)

    # ----------------------------------------------------------------------------- segments
    def write_segment(self, name: str, parts: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Write a new, unpublished segment (create-only: an existing name is never overwritten)."""
        with self.storage.staged(self._seg(name), exclusive=True) as tmp:
            write_segment_file(tmp, parts, meta)

    def open_segment(self, name: str) -> SegmentFile:
        """The segment memory-mapped from a local file (an object store's cached copy stays pinned in
        the cache for as long as the returned ``SegmentFile`` lives)."""
        handle = self.storage.local_path(self._seg(name))
        try:
            seg = SegmentFile.open(handle.path)
        except BaseException:
            handle.close()
            raise
        weakref.finalize(seg, handle.close)
        return seg

    def delete_segment(self, name: str) -> None:
        self.storage.delete(self._seg(name))

    def segment_names(self) -> list[str]:
        """Committed segment names (published or not) in this version."""
        head = self.prefix + PREFIX
        return sorted(
            n[len(head) : -len(SUFFIX)]
            for n in self.storage.list(head)
            if n.endswith(SUFFIX) and "/" not in n[len(self.prefix) :]
        )

    # -------------------------------------------------------------------------- fitted state
    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A local temp folder, removed afterwards."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".scratch-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_state(self, name: str, folder: Path) -> None:
        """Store the files of the local folder ``folder`` as the fitted state ``name``."""
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(folder).as_posix()
            with self.storage.staged(f"{self.prefix}{name}/{rel}") as tmp:
                shutil.copyfile(f, tmp)

    @contextmanager
    def state_folder(self, name: str) -> Iterator[Path]:
        """A local folder holding the fitted state ``name`` (for ``FittedState.load``)."""
        names = list(self.storage.list(f"{self.prefix}{name}/"))
        if not names:
            raise ObjectNotFoundError(f"fitted state {name} is not in {self.url}")
        handles = []
        try:
            for n in names:
                handles.append(self.storage.local_path(n))
            # Every local copy sits at <base>/<object name>: the state's folder is <base>/<prefix><name>.
            first = str(handles[0].path)
            base = Path(first[: len(first) - len(names[0])])
            yield base / f"{self.prefix}{name}"
        finally:
            for h in handles:
                h.close()

    # ---------------------------------------------------------------------------- clean-ups
    def remove_unlisted(self, manifest: Manifest, grace_s: float) -> int:
        """Remove segments ``manifest`` does not list, stale temp files and fitted states other than
        its own, all older than ``grace_s``; how many."""
        now = time.time()
        n = 0
        for s in self.segment_names():
            if s in manifest.segments:
                continue
            try:
                if now - self.storage.info(self._seg(s)).mtime >= grace_s:
                    self.delete_segment(s)
                    n += 1
            except ObjectNotFoundError:
                continue
        if self.folder is not None:
            n += remove_stale_temp(self.folder, grace_s)
        states: dict[str, float] = {}
        for obj in self.storage.list(self.prefix + "state-"):
            state, sep, _ = obj[len(self.prefix) :].partition("/")
            if not sep:
                continue
            try:
                mtime = self.storage.info(obj).mtime
            except ObjectNotFoundError:
                continue
            states[state] = max(states.get(state, 0.0), mtime)
        for state, mtime in states.items():
            if state != manifest.state and now - mtime >= grace_s:
                self.storage.delete_prefix(f"{self.prefix}{state}/")
                n += 1
        return n

    def drop(self) -> None:
        """Delete every file of this version (and its local scratch)."""
        self.storage.delete_prefix(self.prefix)
        if self.folder is None:
            shutil.rmtree(self.root, ignore_errors=True)


_thread_locks: dict[str, threading.RLock] = {}
_guard = threading.Lock()
_held = threading.local()

__all__ = ["KEEP_MANIFESTS", "MANIFEST", "IndexFiles"]
