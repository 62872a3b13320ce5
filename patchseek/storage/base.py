"""The storage interface: named immutable objects that every process (and every node) reads and writes.

Names are relative, ``/``-separated (``blobs/ab/ab12…``, ``segments/3/v1/seg-….seg``) and validated, so
no client-supplied string becomes a path or a key outside the store. Every backend gives the same
guarantees:

- ``put`` / ``staged`` are atomic: a reader sees the whole object or no object, never a partial one;
  ``exclusive=True`` is a create-only put (``FileExistsError`` if the name exists), the primitive the
  index manifest's commit protocol is built on (``patchseek.search.files``);
- ``get`` / ``info`` / ``open`` of a missing name raise ``ObjectNotFoundError`` (a ``NotFoundError``
  and a ``FileNotFoundError``);
- ``local_path`` gives a local file to memory-map: the file itself on a local backend, a read-through
  cached copy on an object store (objects are immutable, so a cached copy never goes stale).

A backend that cannot be reached raises ``StorageUnavailableError`` (503, ``storage_unavailable``) with
the URL in the message, never a bare transport error.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from patchseek.errors import InvalidInputError, NotFoundError, PatchseekError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
TMP_PREFIX = ".tmp-"


class ObjectNotFoundError(NotFoundError, FileNotFoundError):
    """No object of that name in the store."""


class StorageUnavailableError(PatchseekError):
    """The store could not be reached or refused the request (network, credentials, bucket)."""

    code, status_code = "storage_unavailable", 503


def check_name(name: str) -> str:
    """``name`` if it is a valid object name (relative, no ``..``, no hidden components), else raise."""
    if not isinstance(name, str) or len(name) > 1024 or not _NAME.match(name) or ".." in name.split("/"):
        raise InvalidInputError(f"invalid storage object name {name!r}")
    return name


@dataclass(frozen=True)
class ObjectInfo:
    """An object's ``name``, ``size`` in bytes and ``mtime`` (seconds since the epoch)."""

    name: str
    size: int
    mtime: float


class LocalFile(AbstractContextManager["LocalFile"]):
    """A local path to an object's bytes, valid until ``close`` (which lets a cache evict the copy)."""

    def __init__(self, path: Path, release: Callable[[], None] | None = None) -> None:
        self.path = path
        self._release = release

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Storage(ABC):
    """Named objects under one root (a folder, or an fsspec URL such as ``s3://bucket/prefix``)."""

    url: str

    @property
    def local_root(self) -> Path | None:
        """The folder the objects are files in (a local backend), or None (an object store)."""
        return None

    @abstractmethod
    def put(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` as ``name`` atomically (``exclusive``: ``FileExistsError`` if it exists)."""

    @abstractmethod
    def staged(self, name: str, *, exclusive: bool = False) -> AbstractContextManager[Path]:
        """A local temp file to write; on a clean exit it becomes object ``name`` atomically (a local
        backend renames it into place; an object store uploads it and keeps it as the cached copy)."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """The object's bytes."""

    @abstractmethod
    def open(self, name: str) -> IO[bytes]:
        """The object opened for (seekable, ranged) reading."""

    @abstractmethod
    def info(self, name: str) -> ObjectInfo:
        """Size and mtime."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object (a missing one is not an error)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Names starting with ``prefix``, ascending (temp files of unfinished writes left out)."""

    @abstractmethod
    def local_path(self, name: str) -> LocalFile:
        """A local file with the object's bytes, for memory-mapping; close it when done."""

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object."""
        with self.open(name) as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose name starts with ``prefix``; how many."""
        names = list(self.list(prefix))
        for n in names:
            self.delete(n)
        return len(names)

    def check(self) -> None:
        """Raise ``StorageUnavailableError`` unless the store answers (used at startup and by /readyz)."""
        try:
            next(iter(self.list("readyz-probe/")), None)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (any transport error means "not reachable")
            raise StorageUnavailableError(f"storage {self.url} is not reachable: {exc}") from exc
