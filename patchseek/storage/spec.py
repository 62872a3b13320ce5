"""``StorageSpec``: a store as every node of a cluster opens it, small and picklable.

The driver (a CLI job, the API) builds one from its ``Settings`` and sends it with the work; each Ray
task or actor opens its own client (``open``), with a read-through cache in a folder of its node's
temp dir (``node_folder``), shared by the processes of that node (``ReadCache`` allows it).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchseek.config import Settings
    from patchseek.storage.base import Storage

NODE_CACHE_BYTES = 1 << 30  # a node's read-through cache, at most


@dataclass(frozen=True)
class StorageSpec:
    """``url`` and fsspec ``options`` of an object store (``PATCHSEEK_STORAGE_URL``).

    ``options`` are what the driver's settings resolve to: endpoint, region, and the key and secret
    only where the driver has them set; leave ``PATCHSEEK_STORAGE_KEY`` / ``_SECRET`` unset for nodes
    that take credentials from their own chain (an instance role, the AWS environment variables).
    """

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    cache_bytes: int = NODE_CACHE_BYTES
    lock_seconds: float = 600.0
    poll_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageSpec | None:
        """The spec of ``PATCHSEEK_STORAGE_URL``, or None for a data dir on a local disk."""
        if not settings.storage_url:
            return None
        return cls(
            url=str(settings.storage_url),
            options=dict(settings.resolved_storage_options),
            cache_bytes=int(min(settings.storage_cache_bytes, NODE_CACHE_BYTES)),
            lock_seconds=float(settings.storage_lock_seconds),
            poll_s=float(settings.storage_poll_seconds),
        )

    def node_folder(self) -> Path:
        """This node's folder for the store (its cache and scratch space)."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "patchseek-nodes" / digest

    def open(self) -> Storage:
        """A client of the store on this node."""
        from patchseek.storage import open_storage

        return open_storage(
            self.url, self.options, cache_dir=self.node_folder() / "cache", cache_bytes=self.cache_bytes
        )
