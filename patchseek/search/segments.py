"""Packed segments: many units' vectors, codes and stage-1 data in one immutable, memory-mapped file.

A segment is one file ``seg-<name>.seg``:

- 8 bytes magic ``PSEG0002``, 8 bytes little-endian header length ``h``;
- ``h`` bytes of JSON: ``{"meta": {...}, "parts": {part: {"offset", "dtype", "shape"}}}``;
- the parts' raw little-endian arrays, each starting at a 64-byte aligned offset.

One file and one memory map per segment (not one per part or per document): a process serving a
collection holds O(segments) file descriptors and maps, whatever the number of documents.

``write_segment`` writes a hidden temp file beside the target, fsyncs it, renames it into place and
fsyncs the folder (the engine does the same through ``patchseek.search.files``: a rename on a local
backend, an upload on an object store); a crash leaves at worst a ``.tmp-`` file that no reader opens and
``remove_stale_temp`` deletes. A visible segment is always complete and is never modified: deletes are
tombstones in the manifest (``patchseek.search.manifest``), compaction writes a new segment.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchseek._files import remove_older_than
from patchseek.errors import InvalidInputError
from patchseek.storage.local import fsync_dir

MAGIC = b"PSEG0002"
SUFFIX = ".seg"
PREFIX = "seg-"
TMP_PREFIX = ".tmp-"
ALIGN = 64


def segment_path(root: str | Path, name: str) -> Path:
    return Path(root) / f"{PREFIX}{name}{SUFFIX}"


def new_segment_name() -> str:
    """A unique segment name (time-ordered prefix, random suffix): safe across processes."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def write_segment(root: str | Path, name: str, parts: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Durably write a segment file holding ``parts`` (name -> array) and ``meta`` (JSON-able) into the
    folder ``root``. Returns the visible path. Raises ``InvalidInputError`` if the segment already exists.

    (The index engine writes through ``patchseek.search.files.IndexFiles``, which stages the same bytes
    with ``write_segment_file`` and publishes them through its storage backend.)
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    final = segment_path(folder, name)
    if final.exists():
        raise InvalidInputError(f"segment {final} already exists; segments are immutable")
    tmp = folder / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    try:
        write_segment_file(tmp, parts, meta)
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return final


def write_segment_file(path: str | Path, parts: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write the segment bytes of ``parts`` and ``meta`` to the (temp) file ``path`` and fsync it; its
    size. The caller makes it visible (a rename, or an upload)."""
    layout: dict[str, dict[str, Any]] = {}
    arrays = {k: np.ascontiguousarray(v) for k, v in parts.items()}
    # The header's size depends on the offsets, which depend on the header's size: lay the parts out
    # after a generous fixed header budget (the JSON is padded with spaces to it).
    budget = 4096 + 160 * len(arrays) + len(json.dumps(meta))
    offset = _align(16 + budget)
    for k, a in arrays.items():
        layout[k] = {"offset": offset, "dtype": a.dtype.str, "shape": list(a.shape)}
        offset = _align(offset + a.nbytes)
    header = json.dumps({"meta": meta, "parts": layout}).encode()
    if len(header) > budget:
        raise AssertionError("segment header budget too small")
    header = header + b" " * (budget - len(header))
    size = max(offset, 16 + budget)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", budget) + header)
        for k, a in arrays.items():
            f.seek(layout[k]["offset"])
            f.write(a.tobytes(order="C"))
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
    return size


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class SegmentFile:
    """A committed segment, memory-mapped once; ``parts`` are read-only array views into the map."""

    path: Path
    name: str
    meta: dict[str, Any]
    parts: dict[str, np.ndarray]
    nbytes: int
    part_bytes: dict[str, int]
    mapped: mmap.mmap | None = None
    part_offsets: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> SegmentFile:
        path = Path(path)
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) != 16 or head[:8] != MAGIC:
                raise InvalidInputError(f"{path} is not a patchseek segment")
            (size,) = struct.unpack("<Q", head[8:])
            header = json.loads(f.read(size))
            total = os.fstat(f.fileno()).st_size
            # The mapping keeps its own reference to the file: one descriptor per segment, and a
            # merged-away segment stays readable by the snapshots that still use it after its unlink.
            mapped = mmap.mmap(f.fileno(), total, access=mmap.ACCESS_READ) if total else None
        parts: dict[str, np.ndarray] = {}
        part_bytes: dict[str, int] = {}
        part_offsets: dict[str, int] = {}
        for k, spec in header["parts"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            if count == 0 or mapped is None:
                parts[k] = np.zeros(shape, dtype=dtype)
            else:
                parts[k] = np.frombuffer(
                    mapped, dtype=dtype, count=count, offset=int(spec["offset"])
                ).reshape(shape)
            part_bytes[k] = count * dtype.itemsize
            part_offsets[k] = int(spec["offset"])
        name = path.name[len(PREFIX) : -len(SUFFIX)]
        return cls(path, name, dict(header["meta"]), parts, total, part_bytes, mapped, part_offsets)

    def get(self, part: str) -> np.ndarray | None:
        return self.parts.get(part)

    def prefetch(self, part: str, starts: np.ndarray, stops: np.ndarray) -> None:
        """Ask the kernel to read rows ``starts[i]:stops[i]`` of ``part`` into the page cache now
        (``MADV_WILLNEED``, asynchronous): the reads of many scattered runs then overlap instead of
        faulting in one page after another when the rows are gathered. A no-op where unsupported."""
        arr = self.parts.get(part)
        if self.mapped is None or arr is None or arr.ndim == 0 or not hasattr(mmap, "MADV_WILLNEED"):
            return
        row = int(arr.strides[0])
        base = self.part_offsets[part]
        page = mmap.PAGESIZE
        for a, b in zip(np.asarray(starts).tolist(), np.asarray(stops).tolist(), strict=True):
            if b <= a:
                continue
            lo = (base + a * row) // page * page
            hi = min(self.nbytes, base + b * row)
            try:
                self.mapped.madvise(mmap.MADV_WILLNEED, lo, hi - lo)
            except (OSError, ValueError):  # a hint only
                return


def list_segment_names(root: str | Path) -> list[str]:
    """Names of the committed segment files under ``root`` (temp files of unfinished writes ignored)."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    return sorted(
        p.name[len(PREFIX) : -len(SUFFIX)]
        for p in folder.iterdir()
        if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)
    )


def remove_stale_temp(root: str | Path, older_than_s: float = 0.0) -> int:
    """Delete temp files that crashed writers left under ``root`` (older than ``older_than_s``)."""
    folder = Path(root)
    if not folder.is_dir():
        return 0
    return remove_older_than((p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)), older_than_s)
