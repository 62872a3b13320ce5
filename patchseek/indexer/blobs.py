"""Content-addressed blob store: original uploads, rendered unit images and thumbnails.

A blob's key is the SHA-256 of its bytes; files live at ``<root>/<key[:2]>/<key>``. Writes go to a
temporary file that is fsynced and renamed, so a crash never leaves a partial blob under a real key.
Keys are validated, so no client-supplied string becomes a path.

A blob is written before the database row that references it commits (an upload, a rendered page), so
an unreferenced blob may belong to work still in flight in some process. The orphan sweep
(``patchseek.api.services.blobgc.sweep_orphan_blobs``) therefore removes only blobs whose mtime is older
than a grace period, and ``put`` of bytes already stored refreshes the file's mtime: an old orphan that
a new upload needs again counts as new.
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

_KEY = re.compile(r"^[0-9a-f]{64}$")
_FOLDER = re.compile(r"^[0-9a-f]{2}$")
# Where ``remove_if_older`` moves a blob before it decides to delete it (see there).
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
    """Content-addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise InvalidInputError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its key.

        Bytes already stored are not written again, but their file's mtime is refreshed so that the
        orphan sweep sees them as new until the caller's rows referencing them have committed.
        """
        key = sha256_hex(data)
        path = self.path(key)
        try:
            os.utime(path)
        except FileNotFoundError:  # not stored yet, or removed by a sweep just now
            atomic_write(path, data)
        return key

    def get(self, key: str) -> bytes:
        path = self.path(key)
        if not path.exists():
            raise NotFoundError(f"blob {key} is not in the store")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        """Every stored key, in ascending order (the order of Python's ``sorted``)."""
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.iterdir() if _FOLDER.match(p.name) and p.is_dir()):
            yield from sorted(p.name for p in folder.iterdir() if _KEY.match(p.name))

    def remove_if_older(self, key: str, cutoff: float) -> bool:
        """Delete the blob if its mtime is before ``cutoff`` (a ``time.time()`` value); True if removed.

        The blob is first renamed aside and its mtime read again: a ``put`` of the same bytes that
        refreshed it just before the rename keeps it (it is renamed back), and one just after finds it
        gone and writes it anew. Either way a caller of ``put`` never loses the blob it was given.
        """
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
        ``older_than_s``; returns how many."""
        if not self.root.is_dir():
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
