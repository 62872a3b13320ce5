"""``LocalStorage``: objects are files under a folder (a data dir, today's layout), written by temp file,
fsync and rename (or ``link`` for a create-only put), so readers never see a partial file."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from patchseek.storage.base import (
    TMP_PREFIX,
    LocalFile,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    check_name,
)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Objects as files under ``root``: object ``a/b`` is the file ``<root>/a/b``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    @property
    def local_root(self) -> Path:
        return self.root

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        with self.staged(name, exclusive=exclusive) as tmp:
            tmp.write_bytes(data)

    @contextmanager
    def staged(self, name: str, *, exclusive: bool = False) -> Iterator[Path]:
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        if exclusive and final.exists():
            raise FileExistsError(f"{name} already exists in {self.url}")
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}")
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if exclusive:  # link fails if the name exists: an atomic create-only publish
                os.link(tmp, final)
                tmp.unlink()
            else:
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def get(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"{name} is not in {self.url}") from None

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self.path(name), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"{name} is not in {self.url}") from None

    def info(self, name: str) -> ObjectInfo:
        try:
            st = self.path(name).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"{name} is not in {self.url}") from None
        return ObjectInfo(name, int(st.st_size), float(st.st_mtime))

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass

    def list(self, prefix: str = "") -> Iterator[str]:
        head = prefix.rpartition("/")[0]
        folder = self.path(head) if head else self.root
        if not folder.is_dir():
            return iter(())
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in filenames:
                name = f if rel == "." else f"{rel}/{f}"
                if not f.startswith(".") and name.startswith(prefix):
                    found.append(name)
        return iter(sorted(found))

    def local_path(self, name: str) -> LocalFile:
        path = self.path(name)
        if not path.is_file():
            raise ObjectNotFoundError(f"{name} is not in {self.url}")
        return LocalFile(path)

    def delete_prefix(self, prefix: str) -> int:
        n = super().delete_prefix(prefix)
        if prefix.endswith("/"):  # a whole folder: its temp files and empty sub-folders go too
            shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)
        return n

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
