"""Segment files: the patch vectors of each document of an index version, memory-mapped on read.

Layout: ``<root>/<collection_id>/v<version>/doc-<document_id>.<part>.npy`` with parts
``vectors`` (n, dim) float16, ``positions`` (n, 2) int16 and ``salience`` (n,) float16, rows of all the
document's units one after the other (each unit records its row offset and count in the database).
Files are written durably and atomically (temp file, fsync, rename, fsync of the folder) before the
database transaction that makes the document visible, so a crash leaves at worst an orphan file that
nothing points to, never a truncated file under a visible name.

Derived parts (``DERIVED_PARTS``) are written by search, not by ingest: ``codes`` (the version codec's
codes of the document's rows), ``coarse`` (the rows' stage-1 centroid ids) and, for collections without a
codec, ``pooled`` / ``pooled_spans`` (each unit's rows pooled per stage-1 centroid, for stage 2) and
``dense`` (each unit's pooled rows merged into a fixed number of summary rows, the dense stage 1). They are
a cache of a deterministic function of ``vectors`` and the version's fitted state, so search writes them
the first time it needs them; ``write`` removes stale ones before it writes a document's vectors (SQLite
may reuse the id of a deleted document).
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patchseek.indexer.blobs import atomic_write
from patchseek.types import PatchBag

PARTS = ("vectors", "positions", "salience")
DERIVED_PARTS = ("codes", "coarse", "pooled", "pooled_spans", "dense")


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


def durable_save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` at ``path``: temp file, fsync, rename, fsync of the folder."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    atomic_write(path, buf.getvalue())
    fsync_dir(path.parent)


@dataclass(frozen=True)
class DocumentVectors:
    """A document's stored rows. vectors (n, dim) float16, positions (n, 2) int16, salience (n,)."""

    vectors: np.ndarray
    positions: np.ndarray
    salience: np.ndarray


class SegmentStore:
    """Per-document segment files of one collection's index versions."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, collection_id: int, version: int) -> Path:
        return self.root / str(int(collection_id)) / f"v{int(version)}"

    def _path(self, collection_id: int, version: int, document_id: int, part: str) -> Path:
        return self.folder(collection_id, version) / f"doc-{int(document_id)}.{part}.npy"

    def write(
        self, collection_id: int, version: int, document_id: int, bags: list[PatchBag]
    ) -> list[tuple[int, int]]:
        """Write the bags of one document; returns each bag's ``(row_offset, n_rows)``."""
        spans, offset = [], 0
        for bag in bags:
            spans.append((offset, bag.n_patches))
            offset += bag.n_patches
        dim = bags[0].dim if bags else 0
        arrays = {
            "vectors": np.concatenate([b.vectors.numpy() for b in bags]).astype(np.float16)
            if offset
            else np.zeros((0, dim), np.float16),
            "positions": np.concatenate([b.positions.numpy() for b in bags]).astype(np.int16)
            if offset
            else np.zeros((0, 2), np.int16),
            "salience": np.concatenate([b.salience.numpy() for b in bags]).astype(np.float16)
            if offset
            else np.zeros((0,), np.float16),
        }
        for part in DERIVED_PARTS:
            self._path(collection_id, version, document_id, part).unlink(missing_ok=True)
        for part, array in arrays.items():
            durable_save(self._path(collection_id, version, document_id, part), array)
        return spans

    def write_part(
        self, collection_id: int, version: int, document_id: int, part: str, array: np.ndarray
    ) -> None:
        """Durably write one derived part (one of ``DERIVED_PARTS``) of a document."""
        if part not in DERIVED_PARTS:
            raise ValueError(f"unknown derived part {part!r}; expected one of {DERIVED_PARTS}")
        durable_save(self._path(collection_id, version, document_id, part), array)

    def read_part(self, collection_id: int, version: int, document_id: int, part: str) -> np.ndarray | None:
        """Memory-map one part of a document, or None when it has not been written."""
        try:
            return np.load(self._path(collection_id, version, document_id, part), mmap_mode="r")
        except FileNotFoundError:
            return None

    def read(self, collection_id: int, version: int, document_id: int) -> DocumentVectors:
        """Memory-map a document's rows."""
        parts = {
            part: np.load(self._path(collection_id, version, document_id, part), mmap_mode="r")
            for part in PARTS
        }
        return DocumentVectors(**parts)

    def read_unit(self, collection_id: int, version: int, document_id: int, offset: int, n: int) -> PatchBag:
        """One unit's rows as a ``PatchBag`` (float32)."""
        doc = self.read(collection_id, version, document_id)
        vectors = torch.from_numpy(np.asarray(doc.vectors[offset : offset + n], dtype=np.float32))
        return PatchBag(
            vectors=vectors,
            salience=torch.from_numpy(np.asarray(doc.salience[offset : offset + n], dtype=np.float32)),
            positions=torch.from_numpy(np.asarray(doc.positions[offset : offset + n], dtype=np.int64)),
            grid=(0, 0),
        )

    def delete(self, collection_id: int, version: int, document_id: int) -> None:
        for part in PARTS + DERIVED_PARTS:
            self._path(collection_id, version, document_id, part).unlink(missing_ok=True)

    def delete_document(self, collection_id: int, document_id: int) -> None:
        """Remove a document's files from every index version of the collection."""
        for folder in (self.root / str(int(collection_id))).glob("v*"):
            for part in PARTS + DERIVED_PARTS:
                (folder / f"doc-{int(document_id)}.{part}.npy").unlink(missing_ok=True)

    def drop_version(self, collection_id: int, version: int) -> None:
        shutil.rmtree(self.folder(collection_id, version), ignore_errors=True)

    def drop_collection(self, collection_id: int) -> None:
        shutil.rmtree(self.root / str(int(collection_id)), ignore_errors=True)
