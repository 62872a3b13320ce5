"""What every service needs, built once per process from ``Settings``."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchseek.api.db.session import Database
from patchseek.config import Settings
from patchseek.errors import EncoderNotAllowedError, InvalidInputError, ServiceBusyError
from patchseek.indexer.blobs import BlobStore
from patchseek.indexer.compress import CompressionConfig
from patchseek.indexer.encoders import Encoder, load_encoder
from patchseek.indexer.sources import ReadOptions
from patchseek.search.engine import REGISTRY, IndexEngine
from patchseek.search.files import IndexFiles
from patchseek.storage import Storage, storage_from_settings

if TYPE_CHECKING:
    from patchseek.search.sharded import ShardClient


@dataclass
class ServiceContext:
    """Database, stores and lazily loaded encoders (one per encoder spec, shared by all requests).

    ``storage`` (default: the blob store's) holds ``blobs/`` and ``segments/`` (``PATCHSEEK_STORAGE_URL``:
    the data dir, or an object store that every node of a cluster shares; the database stays the
    source of truth for which index version is published)."""

    settings: Settings
    db: Database
    blobs: BlobStore
    storage: Storage = field(default=None)  # type: ignore[assignment]
    _encoders: dict[str, Encoder] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # PATCHSEEK_MAX_HEAVY_REQUESTS slots for rendering, decoding and encoding (see ``heavy_slot``)
    _heavy: threading.BoundedSemaphore = field(init=False)
    # Set when the process shuts down: jobs stop between documents (``JobInterrupted``) and are re-queued.
    stopping: threading.Event = field(default_factory=threading.Event)
    _shards: ShardClient | None = None

    def __post_init__(self) -> None:
        self._heavy = threading.BoundedSemaphore(self.settings.max_heavy_requests)
        if self.storage is None:
            self.storage = self.blobs.storage

    @classmethod
    def from_settings(cls, settings: Settings, *, upgrade: bool = True) -> ServiceContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = storage_from_settings(settings)
        ctx = cls(
            settings=settings,
            db=Database(settings.resolved_database_url, upgrade=upgrade),
            blobs=BlobStore(storage, "blobs/"),
            storage=storage,
        )
        if upgrade:  # a data dir of patchseek 0.1 (per-document files) is converted once, here
            from patchseek.api.services.migrate import legacy_folders, migrate_legacy

            if legacy_folders(settings.segment_dir):
                migrate_legacy(ctx)
        return ctx

    @property
    def read_options(self) -> ReadOptions:
        s = self.settings
        return ReadOptions(
            pdf_dpi=s.pdf_dpi,
            max_pages=s.max_pages,
            image_max_side=s.image_max_side,
            video_interval=s.video_interval,
            video_max_frames=s.video_max_frames,
            video_sampling=s.video_sampling,
            video_min_shot_seconds=s.video_min_shot_seconds,
            video_scene_threshold=s.video_scene_threshold,
            max_page_pixels=s.max_page_pixels,
            max_decode_pixels=s.max_decode_pixels,
        )

    @staticmethod
    def index_prefix(collection_id: int, version_number: int | None = None) -> str:
        prefix = f"segments/{int(collection_id)}/"
        return prefix if version_number is None else f"{prefix}v{int(version_number)}/"

    def _local_base(self) -> Path:
        """Where index folders are on this machine: the storage folder itself (local backend), or a
        scratch folder per object-store URL (temp work of fits; the registry's key)."""
        local = self.storage.local_root
        if local is not None:
            return local
        digest = hashlib.sha256(self.storage.url.encode()).hexdigest()[:16]
        return self.settings.resolved_storage_cache_dir / "scratch" / digest

    def index_root(self, collection_id: int, version_number: int) -> Path:
        """The local folder of one index version: ``<data dir>/segments/<collection id>/v<number>`` on
        a local backend (an object store: its scratch folder)."""
        return self._local_base() / self.index_prefix(collection_id, version_number)

    def index_files(self, collection_id: int, version_number: int) -> IndexFiles:
        """The files of one index version in ``storage``."""
        s = self.settings
        return IndexFiles(
            self.storage,
            self.index_prefix(collection_id, version_number),
            scratch=self.index_root(collection_id, version_number),
            poll_s=s.storage_poll_seconds,
            lock_seconds=s.storage_lock_seconds,
        )

    def index(
        self, collection_id: int, version_number: int, dim: int, compression: dict | None
    ) -> IndexEngine:
        """The process-wide ``IndexEngine`` of one index version (opened once, shared by all threads)."""
        on_gpu = self.settings.device != "cpu" and _cuda_available()
        return REGISTRY.get(
            self.index_root(collection_id, version_number),
            dim,
            CompressionConfig.from_dict(compression or {}),
            device="cuda" if on_gpu else "cpu",
            files=self.index_files(collection_id, version_number),
            kernels=self.settings.kernels,
            device_memory_bytes=self.settings.device_memory_bytes,
            device_fallback=self.settings.device_fallback,
            index_workers=self.settings.index_workers or None,
        )

    def version_index(self, version: Any) -> IndexEngine:
        """The engine of an ``IndexVersion`` row."""
        return self.index(version.collection_id, version.number, version.dim, version.compression)

    def drop_index(self, collection_id: int, version_number: int | None = None) -> None:
        """Forget and delete an index version's files (or every version of a collection)."""
        prefix = self.index_prefix(collection_id, version_number)
        folder = self._local_base() / prefix
        REGISTRY.drop_under(folder)
        self.storage.delete_prefix(prefix)
        shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def heavy_slot(self, *, wait_forever: bool = False) -> Iterator[None]:
        """Hold one of ``PATCHSEEK_MAX_HEAVY_REQUESTS`` slots while rendering, decoding and encoding.

        Each such piece of work can take hundreds of MB; the slots bound how many run at once in this
        process. A request waits up to ``PATCHSEEK_HEAVY_WAIT_SECONDS`` for a slot, then gets
        ``ServiceBusyError`` (503); a worker (``wait_forever``) waits as long as it takes.
        """
        timeout = None if wait_forever else self.settings.heavy_wait_seconds
        if not self._heavy.acquire(timeout=timeout):
            raise ServiceBusyError(
                f"the server is busy with {self.settings.max_heavy_requests} renders or encodes "
                "(PATCHSEEK_MAX_HEAVY_REQUESTS); retry in a few seconds"
            )
        try:
            yield
        finally:
            self._heavy.release()

    @property
    def allowed_encoders(self) -> frozenset[str]:
        """Encoders a client may name: ``PATCHSEEK_ENCODER`` and the ``PATCHSEEK_ENCODERS`` list."""
        return frozenset((self.settings.encoder, *self.settings.encoders))

    def encoder(self, spec: str | None = None) -> Encoder:
        """The encoder for ``spec`` (a collection's recorded encoder); loaded once per process."""
        spec = spec or self.settings.encoder
        with self._lock:
            if spec not in self._encoders:
                self._encoders[spec] = load_encoder(self.settings.model_copy(update={"encoder": spec}))
            return self._encoders[spec]

    def check_encoder_spec(self, spec: str) -> None:
        """Refuse an encoder that is not on the operator's allow-list, by name alone.

        Nothing is looked up on disk or on the Hub for a refused name, so the answer is the same for a
        path that exists, one that does not and a Hub id: it reveals nothing about the server.
        """
        if not spec or len(spec) > 512:
            raise InvalidInputError("encoder must be 'lexical' or a colpali-engine model id / local path")
        if spec not in self.allowed_encoders:
            raise EncoderNotAllowedError(
                f"encoder {spec!r} is not enabled on this server; leave encoder out to use the server's "
                "default, or ask the operator to add it to PATCHSEEK_ENCODERS"
            )

    @property
    def shards(self) -> ShardClient | None:
        """The fan-out client to the shard servers (``PATCHSEEK_SHARDS`` > 1), made on first use; None
        when collections are searched in-process."""
        if self.settings.shards <= 1:
            return None
        with self._lock:
            if self._shards is None:
                from patchseek.search.sharded import ShardClient

                s = self.settings
                assert s.ray_address is not None  # Settings refuses shards > 1 without an address
                self._shards = ShardClient(
                    s.ray_address,
                    s.shards,
                    namespace=s.ray_namespace,
                    timeout_s=s.shard_timeout_s,
                    mode=s.shard_merge,
                )
            return self._shards

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
        self.db.dispose()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
