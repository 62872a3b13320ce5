"""Content-addressed blob store: original uploads, rendered unit images and thumbnails.

A blob's key is the SHA-256 of its bytes; it is the object ``<prefix><key[:2]>/<key>`` of a
``patchseek.storage.Storage`` (a local data dir: the file ``<data_dir>/blobs/<key[:2]>/<key>``, as
before; an object store: the same name under its URL). Puts are atomic on every backend, so a crash
never leaves a partial blob under a real key. Keys are validated, so no client-supplied string becomes
a path or an object name.

A blob is written before the database row that references it commits (an upload, a rendered page), so
an unreferenced blob may belong to work still in flight in some process. The orphan sweep
(``patchseek.api.services.blobgc.sweep_orphan_blobs``) therefore removes only blobs whose mtime is older
than a grace period, and ``put`` of bytes already stored refreshes the object's mtime (a local file's
``utime``; on an object store the same bytes are put again): an old orphan that a new upload needs
again counts as new.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from patchseek._files import remove_older_than
from patchseek.errors import InvalidInputError, NotFoundError
from patchseek.storage import LocalStorage, ObjectNotFoundError, Storage

_KEY = re.compile(r"^[0-9a-f]{64}$")
_FOLDER = re.compile(r"^[0-9a-f]{2}$")
# Where ``remove_if_older`` moves a local blob before it decides to delete it (see there).
_DOOMED_PREFIX = ".gc-"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobStore:
    """Content-addressed blobs in ``storage`` under ``prefix``.

    ``BlobStore(folder)`` is a local store with the blobs directly in ``folder`` (the 0.2 form);
    the service builds ``BlobStore(storage, "blobs/")`` from ``PATCHSEEK_STORAGE_URL``.
    """

    def __init__(self, storage: Storage | str | Path, prefix: str = "") -> None:
        if not isinstance(storage, Storage):
            storage = LocalStorage(Path(storage))
        if prefix and not prefix.endswith("/"):
            raise InvalidInputError(f"blob prefix {prefix!r} must end with '/'")
        self.storage = storage
        self.prefix = prefix
        local = storage.local_root
        # The folder holding the blobs on a local backend (None on an object store).
        self.root: Path | None = None if local is None else local / prefix
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def name(self, key: str) -> str:
        """The storage object name of blob ``key``."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInputError(f"invalid blob key {key!r}")
        return f"{self.prefix}{key[:2]}/{key}"

    def path(self, key: str) -> Path:
        """The local file of blob ``key`` (local backends only)."""
        if self.root is None:
            raise InvalidInputError(f"blobs in {self.storage.url} have no local path")
        name = self.name(key)
        return self.root / name[len(self.prefix) :]

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its key.

        Bytes already stored are not written again on a local backend, but their file's mtime is
        refreshed so that the orphan sweep sees them as new until the caller's rows referencing them
        have committed; an object store has no ``utime``, so the same bytes are put again (a put of
        identical bytes under a content address changes nothing a reader sees).
        """
        key = sha256_hex(data)
        if self.root is None:
            self.storage.put(self.name(key), data)
            return key
        path = self.path(key)
        try:
            os.utime(path)
        except FileNotFoundError:  # not stored yet, or removed by a sweep just now
            atomic_write(path, data)
        return key

    def get(self, key: str) -> bytes:
        try:
            return self.storage.get(self.name(key))
        except ObjectNotFoundError:
            raise NotFoundError(f"blob {key} is not in the store") from None

    def exists(self, key: str) -> bool:
        return self.storage.exists(self.name(key))

    def delete(self, key: str) -> None:
        self.storage.delete(self.name(key))

    def keys(self) -> Iterator[str]:
        """Every stored key, in ascending order (the order of Python's ``sorted``)."""
        if self.root is not None:
            if not self.root.is_dir():
                return
            for folder in sorted(p for p in self.root.iterdir() if _FOLDER.match(p.name) and p.is_dir()):
                yield from sorted(p.name for p in folder.iterdir() if _KEY.match(p.name))
            return
        # Names are "<prefix><2 hex>/<64 hex>": ascending names are ascending keys.
        for name in self.storage.list(self.prefix):
            head, _, key = name[len(self.prefix) :].partition("/")
            if _FOLDER.match(head) and _KEY.match(key) and key.startswith(head):
                yield key

    def remove_if_older(self, key: str, cutoff: float) -> bool:
        """Delete the blob if its mtime is before ``cutoff`` (a ``time.time()`` value); True if removed.

        Local backend: the blob is first renamed aside and its mtime read again: a ``put`` of the same
        bytes that refreshed it just before the rename keeps it (it is renamed back), and one just after
        finds it gone and writes it anew. Either way a caller of ``put`` never loses the blob it was
        given.

        Object store: there is no rename, so the mtime is read and the object deleted. Known window: a
        ``put`` of the very same bytes landing between the two is lost; its ingest then fails that
        document with "blob missing" (``blobgc``'s documented race), and the window only opens for
        blobs older than the grace period that nothing referenced when the sweep began.
        """
        if self.root is None:
            name = self.name(key)
            try:
                if self.storage.info(name).mtime >= cutoff:
                    return False
            except ObjectNotFoundError:
                return False
            self.storage.delete(name)
            return True
        path = self.path(key)
        try:
            if path.stat().st_mtime >= cutoff:
                return False
            doomed = path.with_name(f"{_DOOMED_PREFIX}{key}-{secrets.token_hex(4)}")
            os.rename(path, doomed)
        except FileNotFoundError:
            return False
        if doomed.stat().st_mtime >= cutoff:
            os.replace(doomed, path)
            return False
        doomed.unlink()
        return True

    def remove_stale_temp(self, older_than_s: float) -> int:
        """Delete temp files of writes (and sweeps) that a killed process left, older than
        ``older_than_s``; returns how many. (An object store has none: its puts are atomic.)"""
        if self.root is None or not self.root.is_dir():
            return 0
        return remove_older_than(
            (
                p
                for folder in self.root.iterdir()
                if _FOLDER.match(folder.name) and folder.is_dir()
                for p in folder.iterdir()
                if p.name.startswith((".tmp-", _DOOMED_PREFIX))
            ),
            older_than_s,
        )
