"""Where data lives: one storage interface for blobs and index files, a local-folder backend (a data
dir, today's layout) and an fsspec backend (``s3://`` and any other fsspec URL) so that every node of a
cluster reads the same segments. ``open_storage`` builds the one ``Settings`` asks for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchseek.storage.base import (
    LocalFile,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    check_name,
)
from patchseek.storage.cache import ReadCache
from patchseek.storage.local import LocalStorage
from patchseek.storage.spec import StorageSpec

if TYPE_CHECKING:
    from patchseek.config import Settings

__all__ = [
    "FsspecStorage",
    "LocalFile",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ReadCache",
    "Storage",
    "StorageSpec",
    "StorageUnavailableError",
    "check_name",
    "open_storage",
    "storage_from_settings",
]


def open_storage(
    url: str | Path,
    options: dict[str, Any] | None = None,
    *,
    cache_dir: str | Path | None = None,
    cache_bytes: int = 10 << 30,
) -> Storage:
    """A ``LocalStorage`` for a folder (a plain path or a ``file://`` URL), else an ``FsspecStorage``."""
    text = str(url)
    if "://" not in text:
        return LocalStorage(Path(text))
    if text.startswith("file://"):
        return LocalStorage(Path(text[len("file://") :]))
    from patchseek.storage.objectstore import FsspecStorage

    if cache_dir is None:
        raise ValueError("an object-store backend needs a cache_dir for its local copies")
    return FsspecStorage(text, options, cache_dir=cache_dir, cache_bytes=cache_bytes)


def storage_from_settings(settings: Settings) -> Storage:
    """The storage ``PATCHSEEK_STORAGE_URL`` (default: the data dir) and its options name."""
    return open_storage(
        settings.storage_url or settings.data_dir,
        settings.resolved_storage_options,
        cache_dir=settings.resolved_storage_cache_dir,
        cache_bytes=settings.storage_cache_bytes,
    )


def __getattr__(name: str) -> Any:
    if name == "FsspecStorage":  # imports fsspec only when an object store is used
        from patchseek.storage.objectstore import FsspecStorage

        return FsspecStorage
    raise AttributeError(name)
