"""Packed segments: many units' rerank vectors, codes and offsets in append-only, memory-mapped files.

A segment is a folder ``<root>/seg-<name>/`` holding

- ``vectors.bin``  (N, dim) float16 rerank copy of every patch, raw little-endian rows;
- ``codes.bin``    (N, *code_shape) codes of the collection's codec (optional);
- ``offsets.npy``  (n_units + 1,) int64 row offsets; ``unit_ids.npy`` (n_units,) int64 caller ids;
- ``segment.json`` dtypes and shapes.

``SegmentWriter`` appends into a hidden ``.tmp-seg-<name>-<random>`` folder, and ``commit`` fsyncs every
file, writes ``segment.json`` last, fsyncs, then renames the folder to its visible name and fsyncs the
root. A crash at any point before the rename leaves only a hidden temp folder, which readers never list
(``list_segments``) and ``remove_stale_temp`` deletes; a visible segment is always complete. Segments are
never modified after ``commit``: deleting units is the caller's tombstone (a mask), compacted by writing
a fresh set of segments (a rebuild).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchseek.errors import InvalidInputError
from patchseek.search.store import fsync_dir

SEGMENT_JSON = "segment.json"
PREFIX = "seg-"
TMP_PREFIX = ".tmp-seg-"


@dataclass(frozen=True)
class Segment:
    """A committed segment, memory-mapped.

    vectors  (N, dim) float16 memmap
    codes    (N, ...) memmap or None
    offsets  (n_units + 1,) int64
    unit_ids (n_units,) int64
    """

    path: Path
    vectors: np.ndarray
    codes: np.ndarray | None
    offsets: np.ndarray
    unit_ids: np.ndarray

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def open(cls, path: str | Path) -> Segment:
        """Memory-map a committed segment folder."""
        folder = Path(path)
        try:
            meta = json.loads((folder / SEGMENT_JSON).read_text())
        except FileNotFoundError as exc:
            raise InvalidInputError(f"{folder} is not a committed segment (no {SEGMENT_JSON})") from exc
        n, dim = int(meta["n_rows"]), int(meta["dim"])
        vectors = _map(folder / "vectors.bin", np.float16, (n, dim))
        codes = None
        if meta.get("code_dtype") is not None:
            codes = _map(folder / "codes.bin", np.dtype(meta["code_dtype"]), (n, *meta["code_shape"]))
        offsets = np.load(folder / "offsets.npy")
        unit_ids = np.load(folder / "unit_ids.npy")
        if offsets.shape != (unit_ids.shape[0] + 1,) or int(offsets[-1]) != n:
            raise InvalidInputError(f"{folder}: offsets do not match the {n} stored rows")
        return cls(folder, vectors, codes, offsets, unit_ids)


def _map(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:  # mmap cannot map an empty file
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


class SegmentWriter:
    """Append units to a new segment; nothing is visible before ``commit``.

    Parameters
    ----------
    root : path
        Folder of the index version's segments.
    name : str
        Segment name (the folder becomes ``seg-<name>``); must not exist yet.
    dim : int
        Vector dimension.
    code_dtype, code_shape :
        dtype and per-row trailing shape of the codes, or None for a segment without codes.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        dim: int,
        *,
        code_dtype: Any = None,
        code_shape: tuple[int, ...] = (),
    ) -> None:
        self.root = Path(root)
        self.final = self.root / f"{PREFIX}{name}"
        if self.final.exists():
            raise InvalidInputError(f"segment {self.final} already exists; segments are append-only")
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.dim = int(dim)
        self.code_dtype = None if code_dtype is None else np.dtype(code_dtype)
        self.code_shape = tuple(int(s) for s in code_shape)
        self._vectors = open(self.tmp / "vectors.bin", "wb")  # noqa: SIM115 - closed in commit/abort
        self._codes = open(self.tmp / "codes.bin", "wb") if self.code_dtype is not None else None  # noqa: SIM115
        self._lengths: list[np.ndarray] = []
        self._unit_ids: list[np.ndarray] = []
        self.n_rows = 0
        self.n_units = 0

    def append(
        self,
        vectors: np.ndarray,
        lengths: np.ndarray,
        *,
        codes: np.ndarray | None = None,
        unit_ids: np.ndarray | None = None,
    ) -> None:
        """Append consecutive units.

        Parameters
        ----------
        vectors : np.ndarray
            (n_rows, dim) their patch vectors (stored as float16).
        lengths : np.ndarray
            (n_new_units,) patches per unit, summing to ``n_rows``.
        codes : np.ndarray, optional
            (n_rows, *code_shape) codes; required when the segment has codes.
        unit_ids : np.ndarray, optional
            (n_new_units,) ids; default: their running position in the segment.
        """
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        n = int(lengths.sum())
        if vectors.shape != (n, self.dim):
            raise InvalidInputError(f"vectors must be ({n}, {self.dim}), got {vectors.shape}")
        if (codes is None) != (self._codes is None):
            raise InvalidInputError("give codes exactly when the segment was opened with a code dtype")
        if codes is not None:
            if codes.shape != (n, *self.code_shape):
                raise InvalidInputError(f"codes must be ({n}, *{self.code_shape}), got {codes.shape}")
            self._codes.write(np.ascontiguousarray(codes, dtype=self.code_dtype).tobytes())  # type: ignore[union-attr]
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
        if unit_ids is None:
            unit_ids = np.arange(self.n_units, self.n_units + lengths.size, dtype=np.int64)
        self._lengths.append(lengths)
        self._unit_ids.append(np.asarray(unit_ids, dtype=np.int64).reshape(-1))
        self.n_rows += n
        self.n_units += int(lengths.size)

    def commit(self) -> Segment:
        """Flush everything to disk, then make the segment visible with one rename."""
        for f in (self._vectors, self._codes):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n_units + 1,)
        unit_ids = np.concatenate(self._unit_ids) if self._unit_ids else np.zeros(0, dtype=np.int64)
        for name, array in (("offsets.npy", offsets), ("unit_ids.npy", unit_ids)):
            with open(self.tmp / name, "wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())
        meta = {
            "format": 1,
            "n_rows": self.n_rows,
            "n_units": self.n_units,
            "dim": self.dim,
            "code_dtype": None if self.code_dtype is None else self.code_dtype.str,
            "code_shape": list(self.code_shape),
        }
        with open(self.tmp / SEGMENT_JSON, "w") as meta_file:  # written last: marks completeness
            meta_file.write(json.dumps(meta))
            meta_file.flush()
            os.fsync(meta_file.fileno())
        fsync_dir(self.tmp)
        os.rename(self.tmp, self.final)
        fsync_dir(self.root)
        return Segment.open(self.final)

    def abort(self) -> None:
        """Drop the uncommitted segment."""
        for f in (self._vectors, self._codes):
            if f is not None and not f.closed:
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def list_segments(root: str | Path) -> list[Segment]:
    """The committed segments under ``root``, by name; temp folders of unfinished writes are ignored."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    return [Segment.open(p) for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith(PREFIX)]


def remove_stale_temp(root: str | Path) -> int:
    """Delete the temp folders that crashed writers left under ``root``; returns how many."""
    folder = Path(root)
    stale = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)] if folder.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)
