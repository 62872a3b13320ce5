"""Content-addressed blob store: original uploads, rendered unit images and thumbnails.

A blob's key is the SHA-256 of its bytes; files live at ``<root>/<key[:2]>/<key>``. Writes go to a
temporary file that is fsynced and renamed, so a crash never leaves a partial blob under a real key.
Keys are validated, so no client-supplied string becomes a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from patchseek.errors import InvalidInputError, NotFoundError

_KEY = re.compile(r"^[0-9a-f]{64}$")


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
        """Store ``data`` (once) and return its key."""
        key = sha256_hex(data)
        path = self.path(key)
        if not path.exists():
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
