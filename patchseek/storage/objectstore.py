"""``FsspecStorage``: objects in any fsspec filesystem (``s3://`` through s3fs, ``gs://``, ``memory://``…).

Every call goes through fsspec; nothing here speaks S3 itself. Writes are single-object puts
(``pipe_file`` / ``put_file``), which S3-compatible stores make visible atomically when the upload
completes (a multipart upload included); ``exclusive=True`` is fsspec's ``mode="create"`` (S3's
``If-None-Match: *`` conditional put), which the store itself arbitrates between nodes. Listing
caches are off, so a node sees objects other nodes wrote as soon as the store lists them.

Reads that need a local file (memory-mapped segments) go through a ``ReadCache`` keyed by object name.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from patchseek.storage.base import (
    TMP_PREFIX,
    LocalFile,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    check_name,
)
from patchseek.storage.cache import ReadCache


class FsspecStorage(Storage):
    """Objects under the fsspec URL ``url``; ``options`` go to the filesystem (s3fs: ``key``,
    ``secret``, ``endpoint_url``, ``client_kwargs``…); local copies for ``local_path`` are cached in
    ``cache_dir`` (bounded by ``cache_bytes``)."""

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, *, cache_dir: str | Path, cache_bytes: int
    ) -> None:
        import fsspec

        self.url = url.rstrip("/")
        opts = {"use_listings_cache": False, "skip_instance_cache": True, **(options or {})}
        try:
            self.fs, base = fsspec.core.url_to_fs(self.url, **opts)
        except ImportError as exc:
            from patchseek.errors import MissingDependencyError

            raise MissingDependencyError(
                f"storage URL {self.url!r} needs an fsspec backend that is not installed ({exc}); "
                "for s3:// install patchseek[s3]"
            ) from exc
        except (ValueError, TypeError) as exc:
            from patchseek.errors import InvalidInputError

            raise InvalidInputError(f"storage URL {self.url!r} or its options are invalid: {exc}") from exc
        self.base = str(base).rstrip("/")
        # One cache folder per store URL: two stores never share copies of equally named objects.
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.cache = ReadCache(Path(cache_dir) / digest, cache_bytes)

    def _p(self, name: str) -> str:
        return f"{self.base}/{check_name(name)}"

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, ObjectNotFoundError):
            raise ObjectNotFoundError(f"{name} is not in {self.url}") from None
        except (FileExistsError, PermissionError, IsADirectoryError):
            raise
        except OSError as exc:
            raise StorageUnavailableError(f"storage {self.url}: {name}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp"):
                raise StorageUnavailableError(f"storage {self.url} is not reachable: {exc}") from exc
            raise

    def put(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        with self._errors(name):
            self.fs.pipe_file(self._p(name), data, mode="create" if exclusive else "overwrite")

    @contextmanager
    def staged(self, name: str, *, exclusive: bool = False) -> Iterator[Path]:
        check_name(name)
        self.cache.root.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.root / f"{TMP_PREFIX}upload-{secrets.token_hex(8)}"
        try:
            yield tmp
            with self._errors(name):
                self.fs.put_file(str(tmp), self._p(name), mode="create" if exclusive else "overwrite")
            self.cache.adopt(name, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, name: str) -> bytes:
        with self._errors(name):
            return bytes(self.fs.cat_file(self._p(name)))

    def open(self, name: str) -> IO[bytes]:
        with self._errors(name):
            return self.fs.open(self._p(name), "rb")  # type: ignore[no-any-return]

    def read_range(self, name: str, start: int, end: int) -> bytes:
        with self._errors(name):
            return bytes(self.fs.cat_file(self._p(name), start=start, end=end))

    def info(self, name: str) -> ObjectInfo:
        with self._errors(name):
            raw = self.fs.info(self._p(name))
            if raw.get("type") == "directory":
                raise FileNotFoundError(name)
            return ObjectInfo(name, int(raw.get("size") or 0), _mtime(self.fs, self._p(name), raw))

    def exists(self, name: str) -> bool:
        with self._errors(name):
            return bool(self.fs.isfile(self._p(name)))

    def delete(self, name: str) -> None:
        try:
            with self._errors(name):
                self.fs.rm_file(self._p(name))
        except ObjectNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[str]:
        head = prefix.rpartition("/")[0]
        root = f"{self.base}/{head}" if head else self.base
        with self._errors(prefix or "/"):
            try:
                found = self.fs.find(root)
            except FileNotFoundError:
                found = []
        base = self.base.strip("/") + "/"
        names = []
        for p in found:
            name = str(p).strip("/")
            if not name.startswith(base):
                continue
            name = name[len(base) :]
            if name.startswith(prefix) and not name.rpartition("/")[2].startswith("."):
                names.append(name)
        return iter(sorted(names))

    def local_path(self, name: str) -> LocalFile:
        def fetch(tmp: Path) -> None:
            with self._errors(name):
                self.fs.get_file(self._p(name), str(tmp))

        return self.cache.acquire(name, fetch)


def _mtime(fs: Any, path: str, raw: dict[str, Any]) -> float:
    for key in ("LastModified", "mtime", "created", "last_modified", "updated"):
        value = raw.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return float(fs.modified(path).timestamp())
