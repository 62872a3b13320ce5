"""The index engine: immutable packed segments, a manifest, tombstones, merges, a fitted-state lifecycle
and snapshot search. No FastAPI or SQLAlchemy here: the service calls it with explicit arguments.

One ``IndexEngine`` serves one index version folder::

    <root>/manifest.json      commit point (``patchseek.search.manifest``)
    <root>/LOCK               writers' flock
    <root>/seg-<name>.seg     immutable segments (``patchseek.search.segments``)
    <root>/state-<name>/      fitted state: the codec (``Compressor.save``) and/or coarse centroids

A segment holds, for its units: ``doc_ids`` / ``ordinals`` / ``media`` (n_units,), ``offsets``
(n_units + 1,), ``positions`` (N, 2) int16 and ``salience`` (N,) float16, the rerank column chosen by
``keep`` (``vectors`` float16, or ``vectors_i8`` + ``scales``, or nothing), and what the fitted state
derives at write time: ``codes`` (the codec's), ``coarse`` (stage-1 centroid ids) and, for collections
without a codec, ``dense`` (n_units, R, dim) summary rows (patches pooled per coarse centroid, merged by
Ward clustering). Nothing is derived at query time.

Lifecycle of the fitted state (``fit_rule``): until the collection holds enough vectors, segments keep
float16 rows and every search scores them exactly. The first publish that makes the rule hold fits the
codec and coarse centroids on a sample of every vector (up to ``FIT_SAMPLE``) and rewrites every
segment with them, atomically. When the collection has grown ``REFIT_GROWTH``× past what the fit saw,
``needs_refit`` says so: the service refits by rebuilding into a new version (atomic swap).

Searches run on a ``Snapshot`` (segment readers + tombstones + fitted state), immutable; a new manifest
gives a new snapshot that reuses every unchanged segment reader (its memory map, dense rows and FAISS
lists). Writers never block readers.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import CompressionConfig, Compressor, KMeansQuantizer
from patchseek.indexer.compress.base import as_code_tensor
from patchseek.kernels import maxsim
from patchseek.search.base import top_k
from patchseek.search.candidates import (
    EXACT_THRESHOLD,
    STAGE1_CHOICES,
    FaissCandidateGenerator,
    default_n_centroids,
    has_faiss,
    pool_by_centroid,
)
from patchseek.search.dense import (
    DEFAULT_ROWS,
    DENSE_MAX_UNITS,
    DenseCandidateGenerator,
    default_index_workers,
    summarize_units,
)
from patchseek.search.device import DevicePlan, budget_for
from patchseek.search.files import IndexFiles
from patchseek.search.manifest import Manifest, fit_lock
from patchseek.search.segments import SegmentFile, new_segment_name
from patchseek.types import PatchBag

log = logging.getLogger(__name__)

FIT_SAMPLE = 65536  # vectors sampled (uniformly over the collection) to fit a codec
COARSE_SAMPLE = 262_144  # vectors sampled to fit coarse centroids (39 per centroid up to K = 4096)
MIN_FIT_POINTS = 39  # FAISS's rule of thumb: k-means wants >= 39 training points per centroid
DENSE_FIT_UNITS = EXACT_THRESHOLD // 2  # a codec-less collection fits its stage-1 state here
REFIT_GROWTH = 8  # refit once the collection holds this many times the vectors its fit saw
MERGE_FACTOR = 10  # tiered merges: this many segments of one size tier become one
# A merge never writes more rows than this (~4,000 ColPali pages, 1 GiB of float16 vectors), so a merge or
# a fit's rewrite holds at most a few GiB, and a segment of half this size is final (only a vacuum
# rewrites it). Lucene's TieredMergePolicy caps merged segments the same way (5 GB by default).
MAX_SEGMENT_ROWS = 1 << 22
EXACT_CHUNK_ROWS = 1 << 19  # rows scored per exact MaxSim call: bounds a query's memory (~128 MiB fp16)
RESIDENT_COPY_BYTES = 64 << 20  # a part is copied to the device in slices of this size (bounded host copy)
COALESCE_MAX = 32  # concurrent device-path searches answered by one search_many at most
MEDIA_CODES = {"pdf": 0, "image": 1, "video": 2}

UNIT_PARTS = ("doc_ids", "ordinals", "media", "dense")
ROW_PARTS = ("vectors", "vectors_i8", "scales", "positions", "salience", "codes", "coarse")


# ------------------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class UnitBatch:
    """Units to index, packed. ``lengths`` (n_units,) rows per unit; vectors (N, dim) float32/16,
    positions (N, 2) int16, salience (N,) float16; doc_ids / ordinals / media (n_units,)."""

    doc_ids: np.ndarray
    ordinals: np.ndarray
    media: np.ndarray
    lengths: np.ndarray
    vectors: np.ndarray
    positions: np.ndarray
    salience: np.ndarray

    @property
    def n_units(self) -> int:
        return int(self.lengths.size)

    @classmethod
    def from_bags(cls, doc_id: int, media_type: str | None, bags: Sequence[PatchBag], dim: int) -> UnitBatch:
        """One document's units (``bags`` in ordinal order)."""
        lengths = np.array([b.n_patches for b in bags], dtype=np.int64)
        nonempty = [b for b in bags if b.n_patches]
        return cls(
            doc_ids=np.full(len(bags), int(doc_id), dtype=np.int64),
            ordinals=np.arange(len(bags), dtype=np.int32),
            media=np.full(len(bags), MEDIA_CODES.get(media_type or "", -1), dtype=np.int8),
            lengths=lengths,
            vectors=np.concatenate([b.vectors.numpy() for b in nonempty]).astype(np.float16)
            if nonempty
            else np.zeros((0, dim), np.float16),
            positions=np.concatenate([b.positions.numpy() for b in nonempty]).astype(np.int16)
            if nonempty
            else np.zeros((0, 2), np.int16),
            salience=np.concatenate([b.salience.numpy() for b in nonempty]).astype(np.float16)
            if nonempty
            else np.zeros((0,), np.float16),
        )

    @classmethod
    def concat(cls, batches: Sequence[UnitBatch], dim: int) -> UnitBatch:
        if not batches:
            return cls(
                np.zeros(0, np.int64),
                np.zeros(0, np.int32),
                np.zeros(0, np.int8),
                np.zeros(0, np.int64),
                np.zeros((0, dim), np.float16),
                np.zeros((0, 2), np.int16),
                np.zeros(0, np.float16),
            )
        return cls(*(np.concatenate([getattr(b, f) for b in batches]) for f in _BATCH_FIELDS))


_BATCH_FIELDS = ("doc_ids", "ordinals", "media", "lengths", "vectors", "positions", "salience")


# ---------------------------------------------------------------------------------- fitted state
@dataclass(frozen=True)
class FittedState:
    """A version's fitted search state: the codec (None without a quantizer) and coarse centroids
    (K, dim) float32 for stage 1 (None when the k-means codec's own centroids serve, PLAID)."""

    name: str
    compressor: Compressor | None
    coarse: np.ndarray | None
    # The coarse centroids' two-level tree (``FaissCandidateGenerator.fit_tree``): top (k1, dim) and
    # offsets (k1 + 1,). None for a state fitted before the tree (flat k-means, assigned through FAISS).
    coarse_top: np.ndarray | None = None
    coarse_offsets: np.ndarray | None = None

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Coarse centroid of each row of x (n, dim): (n,) int32."""
        assert self.coarse is not None
        if self.coarse_top is not None and self.coarse_offsets is not None:
            return FaissCandidateGenerator.assign_tree(x, self.coarse_top, self.coarse_offsets, self.coarse)
        return FaissCandidateGenerator.assign(x, self.coarse)

    @property
    def centroids(self) -> np.ndarray | None:
        """Centroids the FAISS lists are built over."""
        q = None if self.compressor is None else self.compressor.quantizer
        if isinstance(q, KMeansQuantizer):
            return np.asarray(q.centroids, dtype=np.float32)
        return self.coarse

    @classmethod
    def load(cls, root: Path, name: str) -> FittedState:
        folder = root / name
        compressor = Compressor.load(folder / "codec") if (folder / "codec").is_dir() else None
        coarse = np.load(folder / "coarse.npy") if (folder / "coarse.npy").exists() else None
        top, offsets = None, None
        if (folder / "coarse_tree.npz").exists():
            with np.load(folder / "coarse_tree.npz") as tree:
                top, offsets = tree["top"], tree["offsets"]
        return cls(name, compressor, coarse, top, offsets)


@dataclass(frozen=True)
class _NewState:
    """A state just fitted (``IndexEngine._fit_state``) and the sample sizes it saw."""

    state: FittedState
    sample_rows: int
    coarse_rows: int

    @property
    def name(self) -> str:
        return self.state.name


def fit_rule(config: CompressionConfig, n_vectors: int, n_units: int) -> tuple[bool, str, int]:
    """Whether a collection of ``n_units`` units / ``n_vectors`` vectors may fit its state now.

    Returns (ok, the rule in words, coarse centroids K to fit, 0 for none). k-means codes need
    ``39·K`` vectors, PQ and BEBR ``39·256`` (256-entry codebooks), sign binary ``39·32``; coarse centroids
    (collections without a k-means codec) need ``39·16`` and take ``K = min(default, n/39)``; a
    collection without a codec fits only from ``DENSE_FIT_UNITS`` units (it is scanned exactly below
    ``EXACT_THRESHOLD``).
    """
    q = config.quantizer
    need = {
        "kmeans": MIN_FIT_POINTS * config.kmeans_k,
        "pq": MIN_FIT_POINTS * 256,
        "bebr": MIN_FIT_POINTS * 256,
    }
    need_vectors = need.get(q, MIN_FIT_POINTS * (32 if q == "binary" else 16))
    k_coarse = 0
    if q != "kmeans":
        sampled = min(n_vectors, COARSE_SAMPLE)  # 39 sampled points per centroid, not 39 in the collection
        k_coarse = min(default_n_centroids(n_vectors), _pow2_floor(max(1, sampled // MIN_FIT_POINTS)))
    rule = f">= {need_vectors} vectors"
    ok = n_vectors >= need_vectors
    if q == "none":
        rule += f" and >= {DENSE_FIT_UNITS} units"
        ok = ok and n_units >= DENSE_FIT_UNITS
    if k_coarse and k_coarse < 16:
        ok = False
    return ok, rule, k_coarse


def _pow2_floor(n: int) -> int:
    return 1 << (int(n).bit_length() - 1) if n >= 1 else 0


# ----------------------------------------------------------------------------------- derivation
def derive_parts(
    batch: UnitBatch,
    config: CompressionConfig,
    state: FittedState | None,
    dense_rows: int = DEFAULT_ROWS,
    *,
    workers: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every part of a segment for ``batch`` under ``state``: (parts, meta). ``workers`` processes
    share the dense summaries (``summarize_units``); the parts are the same for any count."""
    n = int(batch.lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(batch.lengths)]).astype(np.int64)  # (n_units + 1,)
    parts: dict[str, np.ndarray] = {
        "doc_ids": batch.doc_ids.astype(np.int64),
        "ordinals": batch.ordinals.astype(np.int32),
        "media": batch.media.astype(np.int8),
        "offsets": offsets,
        "positions": batch.positions.astype(np.int16),
        "salience": batch.salience.astype(np.float16),
    }
    codec = None if state is None else state.compressor
    keep = config.keep if codec is not None else "float16"  # nothing else can score an unfitted index
    x = np.asarray(batch.vectors, dtype=np.float32)  # (N, dim)
    if keep == "float16":
        parts["vectors"] = np.asarray(batch.vectors, dtype=np.float16)
    elif keep == "int8":
        scales = np.abs(x).max(axis=1) / 127.0 if n else np.zeros(0, np.float32)  # (N,)
        safe = np.where(scales > 0, scales, 1.0)[:, None]
        parts["vectors_i8"] = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
        parts["scales"] = scales.astype(np.float32)
    if state is not None:
        if codec is not None:
            parts["codes"] = np.asarray(codec.quantizer.encode(x)) if n else _empty_codes(codec, x.shape[1])
        if state.coarse is not None:
            coarse = state.assign(x) if n else np.zeros(0, np.int32)
            parts["coarse"] = coarse.astype(np.int32)
            if codec is None:  # the dense stage 1 of a codec-less collection
                pooled, _, pooled_lengths = pool_by_centroid(x, coarse, batch.lengths)
                parts["dense"] = summarize_units(
                    pooled.astype(np.float16), pooled_lengths, dense_rows, workers=workers
                )
    meta = {"state": None if state is None else state.name, "dim": int(x.shape[1]), "keep": keep}
    return parts, meta


def _empty_codes(codec: Compressor, dim: int) -> np.ndarray:
    probe = np.asarray(codec.quantizer.encode(np.zeros((1, dim), np.float32)))
    return np.zeros((0, *probe.shape[1:]), dtype=probe.dtype)


def _kmeans_ids(codes: np.ndarray, id_bytes: int) -> np.ndarray:
    """Centroid ids (N,) of k-means codes: (N,) ids, or (N, id_bytes + residual bytes) uint8."""
    if codes.ndim == 1:
        return codes.astype(np.int64) & 0xFFFF
    head = np.ascontiguousarray(codes[:, :id_bytes])  # (N, id_bytes)
    return (head[:, 0] if id_bytes == 1 else head.view("<u2")[:, 0]).astype(np.int64)


# ------------------------------------------------------------------------------ segment readers
class SegmentReader:
    """A committed segment opened for search: its memory map plus lazily built, cached stage-1 data
    (the dense rows in RAM, the FAISS lists). Shared by every snapshot that lists the segment."""

    def __init__(self, file: SegmentFile) -> None:
        self.file = file
        self.name = file.name
        p = file.parts
        self.doc_ids: np.ndarray = p["doc_ids"]
        self.ordinals: np.ndarray = p["ordinals"]
        self.media: np.ndarray = p["media"]
        self.offsets: np.ndarray = p["offsets"]
        self.lengths = np.diff(self.offsets)
        self.vectors = p.get("vectors")
        self.vectors_i8 = p.get("vectors_i8")
        self.scales = p.get("scales")
        self.codes = p.get("codes")
        self.coarse = p.get("coarse")
        self.dense_rows = p.get("dense")
        self.state: str | None = file.meta.get("state")
        self.dim = int(file.meta["dim"])
        self._dense: DenseCandidateGenerator | None = None
        self._faiss: FaissCandidateGenerator | None = None
        self._resident: dict[str, torch.Tensor | None] = {}
        self._dense_offsets: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def n_units(self) -> int:
        return int(self.doc_ids.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def has_rerank(self) -> bool:
        return self.vectors is not None or self.vectors_i8 is not None

    def prefetch(self, units: np.ndarray) -> None:
        """Start reading the rerank rows of ``units`` (k,) from disk (``SegmentFile.prefetch``)."""
        part = "vectors" if self.vectors is not None else "vectors_i8"
        units = np.asarray(units, dtype=np.int64)
        self.file.prefetch(part, self.offsets[units], self.offsets[units + 1])

    def rows_of(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (n_rows,) of ``units`` (k,) and their packed offsets (k + 1,)."""
        return unit_rows(self.offsets, units)

    def exact(self, q: torch.Tensor, units: np.ndarray, plan: DevicePlan | None = None) -> np.ndarray:
        """Exact MaxSim (k,) of query (n_q, dim) on the kept rows of ``units`` (k,), in runs of units of
        at most ``EXACT_CHUNK_ROWS`` rows (a brute-force scan of a large segment never copies it whole).

        On the device path (``plan.resident``) the rows come from the resident float rows (codec-less
        collections) or are gathered from the memory map into a pinned buffer, and the device scores."""
        if self.vectors is None and (self.vectors_i8 is None or self.scales is None):
            raise InvalidInputError(
                "this index keeps no rerank vectors (keep='none'); search with rerank=false"
            )
        units = np.asarray(units, dtype=np.int64)
        ends = np.cumsum(self.lengths[units])  # (k,) rows up to and including each unit
        out = np.empty(units.size, dtype=np.float32)
        start = 0
        while start < units.size:
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + EXACT_CHUNK_ROWS, side="right")))
            out[start:stop] = self._exact_run(q, units[start:stop], plan)
            start = stop
        return out

    def _exact_run(self, q: torch.Tensor, units: np.ndarray, plan: DevicePlan | None) -> np.ndarray:
        rows, sub = self.rows_of(units)
        offsets = torch.from_numpy(sub)
        if plan is not None and plan.resident:
            return self._exact_on_device(q, rows, offsets, plan)
        backend = "auto" if plan is None else plan.backend
        if self.vectors is not None:
            docs = torch.from_numpy(np.ascontiguousarray(self.vectors[rows]))  # (n_rows, dim) float16
            return maxsim(q, docs, offsets, backend=backend).numpy()
        assert self.vectors_i8 is not None and self.scales is not None
        docs = torch.from_numpy(np.ascontiguousarray(self.vectors_i8[rows]))  # (n_rows, dim) int8
        scales = torch.from_numpy(np.ascontiguousarray(self.scales[rows]))  # (n_rows,) float32
        return maxsim(q, docs, offsets, scales=scales, backend=backend).numpy()

    def _exact_on_device(
        self, q: torch.Tensor, rows: np.ndarray, offsets: torch.Tensor, plan: DevicePlan
    ) -> np.ndarray:
        resident = self.resident("vectors", plan) if self.codes is None else None
        scales = None
        if resident is not None:
            docs = resident.index_select(0, torch.from_numpy(rows).to(plan.device))  # (n_rows, dim) fp16
        elif self.vectors is not None:
            docs = _gather_pinned(self.vectors, rows, plan)  # (n_rows, dim) float16
        else:
            assert self.vectors_i8 is not None and self.scales is not None
            docs = _gather_pinned(self.vectors_i8, rows, plan)  # (n_rows, dim) int8
            scales = _gather_pinned(self.scales, rows, plan)  # (n_rows,) float32
        out = maxsim(q.to(docs.device), docs, offsets, scales=scales, backend=plan.backend)
        return out.cpu().numpy()

    def approximate(
        self, q: torch.Tensor, units: np.ndarray, codec: Compressor, plan: DevicePlan | None = None
    ) -> np.ndarray:
        """The codec's stage-2 scores (k,) of ``units`` (k,) from their codes (the device's resident
        codes on the device path)."""
        assert self.codes is not None
        rows, sub = self.rows_of(units)
        backend = "auto" if plan is None else plan.backend
        if plan is not None and plan.resident:
            resident = self.resident("codes", plan)
            if resident is not None:
                codes_t = resident.index_select(0, torch.from_numpy(rows).to(plan.device))  # (n_rows, ...)
                return codec.quantizer.score(q, codes_t, sub, backend=backend).cpu().numpy()
            backend = "auto"  # the codes did not fit the device: the CPU kernels score them
        codes = np.ascontiguousarray(self.codes[rows])  # (n_rows, ...) the candidates' codes only
        return codec.quantizer.score(q, codes, sub, backend=backend).numpy()

    def resident(self, part: str, plan: DevicePlan) -> torch.Tensor | None:
        """Part ``part`` (``"codes"``, ``"dense"`` rows flattened to (n_units·R, dim), or the float
        ``"vectors"``) as a tensor on ``plan.device``, copied once and charged to the device budget;
        None when the segment has no such part or it did not fit (the CPU then serves it)."""
        with self._lock:
            if part in self._resident:
                return self._resident[part]
            src = {"codes": self.codes, "dense": self.dense_rows, "vectors": self.vectors}[part]
            t = None
            if src is not None:
                nbytes = int(src.nbytes)
                budget = budget_for(plan)
                if budget.charge(nbytes, f"segment {self.name}'s {part}", plan.fallback):
                    arr = src.reshape(-1, src.shape[-1]) if part == "dense" else src
                    t = _copy_to(arr, plan.device, codes=part == "codes")
                    weakref.finalize(self, budget.release, nbytes)
            self._resident[part] = t
            return t

    def dense_on_device(
        self, q: torch.Tensor, k: int, mask: np.ndarray, plan: DevicePlan
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 by the dense scan on the device: MaxSim of query (n_q, dim) (or a batch (B, n_q,
        dim) with ``q_mask``) on the resident summary rows; the ``k`` best allowed units and their scores."""
        scores = self.dense_scores(q, plan)
        units = np.flatnonzero(mask)
        if units.size == 0:
            return units, np.zeros(0, np.float32)
        return top_k(scores[units], units, k)

    def dense_scores(
        self, q: torch.Tensor, plan: DevicePlan, q_mask: torch.Tensor | None = None
    ) -> np.ndarray:
        """MaxSim of every unit's summary rows: (n_units,) or, for a batch q (B, n_q, dim), (B, n_units)."""
        rows = self.resident("dense", plan)
        if rows is None:  # did not fit: the CPU scan
            if q.dim() == 3:
                return np.stack(
                    [
                        self.dense_scores(q[b][q_mask[b]] if q_mask is not None else q[b], plan)
                        for b in range(q.shape[0])
                    ]
                )
            return self.dense("cpu").scores(q).numpy()
        assert self.dense_rows is not None
        if self._dense_offsets is None:
            self._dense_offsets = torch.arange(self.n_units + 1, dtype=torch.int64) * self.dense_rows.shape[1]
        out = maxsim(q.to(rows.device), rows, self._dense_offsets, q_mask=q_mask, backend=plan.backend)
        return out.cpu().numpy()

    def exact_all(self, q: torch.Tensor, q_mask: torch.Tensor, plan: DevicePlan) -> np.ndarray | None:
        """Exact MaxSim of a batch of queries (B, n_q, dim) on every unit from the resident float rows in
        one launch: (B, n_units); None when the rows are not resident."""
        rows = self.resident("vectors", plan) if self.codes is None else None
        if rows is None:
            return None
        offsets = torch.from_numpy(np.array(self.offsets, dtype=np.int64))  # (n_units + 1,)
        return maxsim(q.to(rows.device), rows, offsets, q_mask=q_mask, backend=plan.backend).cpu().numpy()

    def dense(self, device: str) -> DenseCandidateGenerator:
        with self._lock:
            if self._dense is None:
                assert self.dense_rows is not None
                rows = torch.from_numpy(np.array(self.dense_rows))  # (n_units, R, dim) copy out of the map
                self._dense = DenseCandidateGenerator(rows, self.lengths > 0, device=device)
            return self._dense

    def faiss(self, state: FittedState, plan: DevicePlan | None = None) -> FaissCandidateGenerator:
        """The segment's inverted lists; on the device path their centroid search runs on the device
        (faiss-gpu where installed, else a torch matmul there)."""
        gen = self._faiss_lists(state)
        if plan is not None and plan.resident and gen.device_centroids is None:
            gen.use_device(plan.device)
        return gen

    def _faiss_lists(self, state: FittedState) -> FaissCandidateGenerator:
        with self._lock:
            if self._faiss is None:
                centroids = state.centroids
                assert centroids is not None
                if self.coarse is not None:
                    ids = np.asarray(self.coarse, dtype=np.int64)
                else:
                    quantizer = state.compressor.quantizer  # type: ignore[union-attr]
                    assert self.codes is not None and isinstance(quantizer, KMeansQuantizer)
                    ids = _kmeans_ids(np.asarray(self.codes), quantizer.id_bytes)
                self._faiss = FaissCandidateGenerator.from_assignments(
                    centroids, [(ids, self.lengths)], device="cpu"
                )
            return self._faiss

    @property
    def ram_bytes(self) -> dict[str, int]:
        out = {}
        if self._dense is not None:
            out["dense"] = self._dense.nbytes
        if self._faiss is not None:
            out["ivf_lists"] = self._faiss.nbytes
        return out

    @property
    def device_bytes(self) -> dict[str, int]:
        """Bytes of each part resident on the device path's device."""
        return {k: int(t.element_size() * t.nelement()) for k, t in self._resident.items() if t is not None}


# ----------------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class EngineHit:
    """A search hit: the unit is ``(doc_id, ordinal)``; ``score`` exact after a rerank."""

    doc_id: int
    ordinal: int
    score: float


@dataclass(frozen=True)
class EngineResult:
    hits: list[EngineHit]
    stage1: str
    n_stage1: int
    n_stage2: int
    timings_ms: dict[str, float]
    n_units: int


@dataclass(frozen=True)
class Shortlist:
    """What one snapshot (or shard of one) hands to the final cut: its best units after stages 1-2,
    re-scored exactly when stage 3 ran, best first (``Snapshot.shortlist``).

    ``keys`` (k,) int64 name each unit as ``segment position in the manifest · 2^32 + unit``, the
    tie-break of every cut; ``approx`` (k,) float32 are the stage-2 scores the units were kept by and
    ``exact`` (k,) float32 the stage-3 scores (None without a rerank); ``doc_ids`` / ``ordinals`` (k,)
    the units. ``keep`` is how many units the cut after stage 2 keeps (``max(candidates, top_k)`` with a
    rerank, else ``top_k``; without a rerank ``approx`` may already be exact MaxSim: a codec-less exact
    scan or FAISS candidates).
    """

    keys: np.ndarray
    approx: np.ndarray
    exact: np.ndarray | None
    doc_ids: np.ndarray
    ordinals: np.ndarray
    keep: int
    stage1: str
    n_stage1: int
    n_units: int
    generation: int
    timings_ms: dict[str, float]

    @property
    def scores(self) -> np.ndarray:
        """The scores the final ranking is by: exact after a rerank, else stage 2's."""
        return self.approx if self.exact is None else self.exact

    def result(self, top_k_hits: int) -> EngineResult:
        """The best ``top_k_hits`` units as an ``EngineResult``."""
        best, best_scores = top_k(self.scores, self.keys, top_k_hits)
        where = {int(k): i for i, k in enumerate(self.keys.tolist())}
        hits = [
            EngineHit(int(self.doc_ids[where[k]]), int(self.ordinals[where[k]]), float(s))
            for k, s in zip(best.tolist(), best_scores.tolist(), strict=True)
        ]
        n2 = int(self.keys.size)  # the units stage 2 kept
        return EngineResult(hits, self.stage1, self.n_stage1, n2, dict(self.timings_ms), self.n_units)


def shard_of(segment: str, count: int) -> int:
    """The shard (0 .. count - 1) that serves segment ``segment``: a stable hash (CRC-32) of its name.

    A segment's shard never changes, so a shard server only ever loads its own segments' stage-1 data;
    a new segment (an ingest, a merge's output, a fit's rewrite) lands where its new name hashes.
    """
    return zlib.crc32(segment.encode()) % count


@dataclass(frozen=True)
class Filter:
    """Which units a search may return: documents in ``visible`` (sorted int64 ids; None: all), in
    ``doc_ids`` (None: any) and of ``media`` codes (None: any). ``key`` names ``visible`` for caching
    its per-segment masks (e.g. the collection's generation)."""

    visible: np.ndarray | None = None
    key: Any = None
    doc_ids: np.ndarray | None = None
    media: np.ndarray | None = None


class Snapshot:
    """An immutable view of one manifest: segment readers, their tombstone masks and the fitted state."""

    def __init__(
        self,
        manifest: Manifest,
        readers: list[SegmentReader],
        state: FittedState | None,
        device: str,
        *,
        positions: Sequence[int] | np.ndarray | None = None,
        whole: Snapshot | None = None,
        plan: DevicePlan | None = None,
    ) -> None:
        self.manifest = manifest
        self.readers = readers
        self.state = state
        self.device = device
        # Each reader's position among the manifest's segments (hit keys, tie-breaks), and the snapshot
        # this one is a shard of (``shard``): stage 1 is chosen on the whole collection.
        self.positions = (
            np.arange(len(readers), dtype=np.int64)
            if positions is None
            else np.asarray(positions, dtype=np.int64)
        )
        self.whole = whole
        self.plan = plan
        self.deleted = [
            np.isin(r.doc_ids, np.asarray(manifest.tombstones.get(r.name, ()), dtype=np.int64))
            for r in readers
        ]
        self._visible_cache: tuple[Any, list[np.ndarray]] | None = None
        self._lock = threading.Lock()
        # device path: searches that arrive while one runs wait, then run together (``_coalesced``)
        self._turn = threading.Condition()
        self._waiting: list[_Pending] = []
        self._leading = False
        self.batch_sizes: list[int] = []  # sizes of the coalesced batches run so far

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def n_units(self) -> int:
        return int(sum(int((~d).sum()) for d in self.deleted))

    @property
    def n_rows(self) -> int:
        return int(sum(int(r.lengths[~d].sum()) for r, d in zip(self.readers, self.deleted, strict=True)))

    def live(self, flt: Filter | None = None) -> list[np.ndarray]:
        """Per segment, (n_units,) bool: units a search under ``flt`` may return."""
        base = self._visible_masks(flt)
        if flt is None:
            return base
        out = []
        for r, m in zip(self.readers, base, strict=True):
            if flt.doc_ids is not None:
                m = m & np.isin(r.doc_ids, flt.doc_ids)
            if flt.media is not None:
                m = m & np.isin(r.media, flt.media)
            out.append(m)
        return out

    def _visible_masks(self, flt: Filter | None) -> list[np.ndarray]:
        if flt is None or flt.visible is None:
            return [~d & (r.lengths > 0) for r, d in zip(self.readers, self.deleted, strict=True)]
        with self._lock:
            if self._visible_cache is not None and flt.key is not None and self._visible_cache[0] == flt.key:
                return self._visible_cache[1]
        masks = [
            ~d & (r.lengths > 0) & np.isin(r.doc_ids, flt.visible)
            for r, d in zip(self.readers, self.deleted, strict=True)
        ]
        with self._lock:
            self._visible_cache = (flt.key, masks)
        return masks

    def shard(self, index: int, count: int) -> Snapshot:
        """This snapshot restricted to the segments of shard ``index`` of ``count`` (``shard_of``).

        Its searches rank like this snapshot's: hits keep their manifest-wide keys (``Shortlist``) and
        stage 1 is resolved on the whole collection, so ``merge_shortlists`` of every shard's
        ``shortlist`` gives this snapshot's own answer.
        """
        if not 0 <= index < count:
            raise InvalidInputError(f"shard {index} of {count}: expected 0 <= shard < count")
        picks = [i for i, r in enumerate(self.readers) if shard_of(r.name, count) == index]
        return Snapshot(
            self.manifest,
            [self.readers[i] for i in picks],
            self.state,
            self.device,
            positions=self.positions[picks],
            whole=self,
            plan=self.plan,
        )

    def stage1_kind(self, requested: str = "auto") -> str:
        """What ``requested`` resolves to on this snapshot (on the whole collection for a shard)."""
        if requested not in STAGE1_CHOICES:
            raise InvalidInputError(f"stage1={requested!r}: expected one of {list(STAGE1_CHOICES)}")
        if self.whole is not None:
            return self.whole.stage1_kind(requested)
        n = self.n_units
        has_dense = bool(self.readers) and all(r.dense_rows is not None for r in self.readers)
        faiss_ok = (
            self.state is not None
            and self.state.centroids is not None
            and has_faiss()
            and all(r.coarse is not None or r.codes is not None for r in self.readers)
        )
        if requested == "dense":
            if not has_dense:
                raise InvalidInputError(
                    "this collection has no dense stage-1 rows (it has a codec, or is not yet large enough "
                    "to fit its stage-1 centroids); use stage1='exact' or 'faiss'"
                )
            return "dense"
        if requested == "faiss":
            if not faiss_ok:
                raise InvalidInputError(
                    "this collection has no FAISS stage-1 lists yet (too few vectors to fit centroids); "
                    "use stage1='exact'"
                )
            return "faiss"
        if requested == "exact" or n < EXACT_THRESHOLD:
            return "exact"
        if has_dense and n <= DENSE_MAX_UNITS:
            return "dense"
        return "faiss" if faiss_ok else "exact"

    def search(
        self,
        query: torch.Tensor,
        *,
        top_k_hits: int = 10,
        candidates: int = 100,
        rerank: bool = True,
        stage1: str = "auto",
        stage1_k: int = 1000,
        nprobe: int | None = None,
        flt: Filter | None = None,
    ) -> EngineResult:
        """The three stages over every segment; per-segment candidates merge by score (stage-1/2 scores
        of one fitted state, and exact MaxSim, are comparable across segments).

        On the device path, searches of this snapshot that arrive while one is running wait for it and
        then run together through ``search_many`` (one launch per whole-segment scan for all of them),
        when their parameters and filters agree (a filter by document ids or media runs alone). A lone
        search never waits.
        """
        params: dict[str, Any] = {
            "top_k_hits": top_k_hits,
            "candidates": candidates,
            "rerank": rerank,
            "stage1": stage1,
            "stage1_k": stage1_k,
            "nprobe": nprobe,
            "flt": flt,
        }
        if self.plan is None or not self.plan.resident:
            return self.shortlist(query, **params).result(top_k_hits)
        return self._coalesced(query, params)

    def _coalesced(self, query: torch.Tensor, params: dict[str, Any]) -> EngineResult:
        item = _Pending(query, params, _batch_key(params))
        with self._turn:
            self._waiting.append(item)
            while self._leading and not item.done:
                self._turn.wait()
            if item.done:
                return item.get()
            group = [item]
            if item.key is not None:
                group += [w for w in self._waiting if w is not item and w.key == item.key][: COALESCE_MAX - 1]
            taken = {id(w) for w in group}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            self._leading = True
        outs: list[EngineResult | BaseException]
        try:
            outs = self._many([w.query for w in group], params)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the batch
            outs = [exc] * len(group)
        with self._turn:
            for w, out in zip(group, outs, strict=True):
                w.out, w.done = out, True
            self.batch_sizes.append(len(group))
            self._leading = False
            self._turn.notify_all()
        return item.get()

    def shortlist(
        self,
        query: torch.Tensor,
        *,
        top_k_hits: int = 10,
        candidates: int = 100,
        rerank: bool = True,
        stage1: str = "auto",
        stage1_k: int = 1000,
        nprobe: int | None = None,
        flt: Filter | None = None,
        _batched: dict[int, np.ndarray] | None = None,
    ) -> Shortlist:
        """``search`` up to its final cut: the ``keep`` best units by stage-2 score (``keep`` =
        ``max(candidates, top_k_hits)`` with a rerank, else ``top_k_hits``), re-scored exactly when
        stage 3 runs. ``search`` is ``shortlist(...).result(top_k_hits)``; a shard's shortlist holds every
        unit of the whole snapshot's shortlist that lives in the shard (see ``merge_shortlists``).
        ``_batched``: this query's rows of batched whole-segment scans (``search_many``).

        Stage 1 (``exact`` scan, ``dense`` summary scan or ``faiss`` lists) picks up to ``stage1_k``
        units per segment; stage 2 scores them with the codec (codec-less: the dense scores, or exact
        MaxSim after an exact scan / FAISS); the best ``candidates`` overall are re-scored exactly
        (stage 3, with ``rerank`` and kept vectors). On the device path (``plan.resident``, see
        ``patchseek.search.device``) every stage scores on the plan's device: the dense scan and the
        codec-less exact stage 2 with ``maxsim`` on resident rows, the codec's stage 2 with its kernel on
        resident codes, the FAISS centroid search there, and the rerank with ``maxsim`` on rows gathered
        through a pinned buffer.
        """
        timings: dict[str, float] = {}
        q = query.detach().to("cpu", torch.float32)  # (n_q, dim)
        masks = self.live(flt)
        n_live = int(sum(int(m.sum()) for m in masks))
        kind = self.stage1_kind(stage1)
        keep = max(candidates, top_k_hits) if rerank else top_k_hits

        def out(keys: np.ndarray, approx: np.ndarray, exact: np.ndarray | None, n1: int) -> Shortlist:
            seg = (keys >> 32).astype(np.int64)
            unit = keys & 0xFFFFFFFF
            local = np.searchsorted(self.positions, seg)  # (k,) reader of each key
            doc_ids = np.array([self.readers[i].doc_ids[u] for i, u in zip(local, unit, strict=True)])
            ordinals = np.array([self.readers[i].ordinals[u] for i, u in zip(local, unit, strict=True)])
            return Shortlist(
                keys.astype(np.int64),
                approx.astype(np.float32),
                exact,
                doc_ids.astype(np.int64),
                ordinals.astype(np.int64),
                keep,
                kind,
                n1,
                n_live,
                self.generation,
                timings,
            )

        nothing = np.zeros(0, np.int64)
        if q.dim() != 2 or q.shape[0] == 0 or n_live == 0:
            return out(nothing, nothing.astype(np.float32), None, 0)
        if self.readers and q.shape[1] != self.readers[0].dim:
            raise InvalidInputError(
                f"query has dim {q.shape[1]}, the index holds {self.readers[0].dim}-d vectors"
            )
        codec = None if self.state is None else self.state.compressor
        can_rerank = all(r.has_rerank for r in self.readers)
        plan = self.plan
        on_device = plan is not None and plan.resident
        seg_ids, unit_parts, score_parts = [], [], []
        final = False
        t1 = t2 = 0.0
        n1 = 0
        for i, (r, m) in enumerate(zip(self.readers, masks, strict=True)):
            if not m.any():
                continue
            t0 = time.perf_counter()
            pre = None if _batched is None else _batched.get(i)  # this query's row of a batched launch
            if kind == "exact":
                units, scores = np.flatnonzero(m), None
            elif kind == "dense" and on_device:
                assert plan is not None
                if pre is not None:
                    allowed = np.flatnonzero(m)
                    units, scores = top_k(pre[allowed], allowed, stage1_k)
                else:
                    units, scores = r.dense_on_device(q, stage1_k, m, plan)
            elif kind == "dense":
                c = r.dense(self.device).candidates(q, stage1_k, unit_mask=m)
                units, scores = c.units, c.scores
            else:
                assert self.state is not None
                c = r.faiss(self.state, plan).search(q, stage1_k, mask=m, nprobe=nprobe)
                units, scores = c.units, None
            t1 += time.perf_counter() - t0
            n1 += int(units.size)
            if units.size == 0:
                continue
            t0 = time.perf_counter()
            if codec is not None and r.codes is not None:
                scores = r.approximate(q, units, codec, plan)
            elif scores is None:  # codec-less exact scan or FAISS candidates: exact MaxSim is stage 2
                scores = pre[units] if pre is not None and kind == "exact" else r.exact(q, units, plan)
                final = True
            t2 += time.perf_counter() - t0
            seg_ids.append(np.full(units.size, int(self.positions[i]), dtype=np.int64))
            unit_parts.append(units.astype(np.int64))
            score_parts.append(np.asarray(scores, dtype=np.float32))
        timings["stage1"] = t1 * 1000
        timings["stage2"] = t2 * 1000
        if not unit_parts:
            return out(nothing, nothing.astype(np.float32), None, n1)
        segs, units, scores = np.concatenate(seg_ids), np.concatenate(unit_parts), np.concatenate(score_parts)
        key = segs * (1 << 32) + units  # one id per (segment, unit) for ``top_k``'s tie-break
        rerank = rerank and can_rerank and not final
        keep = max(candidates, top_k_hits) if rerank else top_k_hits
        best, best_scores = top_k(scores, key, keep)
        if not rerank:
            return out(best, best_scores, None, n1)
        t0 = time.perf_counter()
        exact = np.empty(best.size, dtype=np.float32)
        seg_of, unit_of = best >> 32, best & 0xFFFFFFFF
        groups = [
            (self.readers[int(np.searchsorted(self.positions, p))], np.flatnonzero(seg_of == p))
            for p in np.unique(seg_of).tolist()
        ]
        if plan is None or not plan.resident:  # the candidates' rows of every segment load in parallel
            for r, sel in groups:
                r.prefetch(unit_of[sel])
        for r, sel in groups:
            exact[sel] = r.exact(q, unit_of[sel], plan)
        timings["stage3"] = (time.perf_counter() - t0) * 1000
        return out(best, best_scores, exact, n1)

    def search_many(
        self,
        queries: Sequence[torch.Tensor],
        *,
        top_k_hits: int = 10,
        candidates: int = 100,
        rerank: bool = True,
        stage1: str = "auto",
        stage1_k: int = 1000,
        nprobe: int | None = None,
        flt: Filter | None = None,
    ) -> list[EngineResult]:
        """``search`` for several queries, equal to searching them one by one.

        On the device path the scans that read a whole segment score every query in one kernel launch
        per segment (the queries padded to one (B, n_q, dim) batch with a token mask): the dense stage 1,
        and a codec-less collection's exact scan. The per-query candidates then go through stages 2 and
        3 query by query.
        """
        params: dict[str, Any] = {
            "top_k_hits": top_k_hits,
            "candidates": candidates,
            "rerank": rerank,
            "stage1": stage1,
            "stage1_k": stage1_k,
            "nprobe": nprobe,
            "flt": flt,
        }
        outs = self._many(list(queries), params)
        for out in outs:
            if isinstance(out, BaseException):
                raise out
        return outs  # type: ignore[return-value]

    def _many(
        self, queries: Sequence[torch.Tensor], params: dict[str, Any]
    ) -> list[EngineResult | BaseException]:
        """Each query's result, or the error its search raised (one bad query fails only itself)."""
        stage1, flt = params["stage1"], params["flt"]
        qs = [q.detach().to("cpu", torch.float32) for q in queries]
        batched: list[dict[int, np.ndarray]] = [{} for _ in qs]
        plan = self.plan
        codec = None if self.state is None else self.state.compressor
        valid = [i for i, q in enumerate(qs) if q.dim() == 2 and q.shape[0] > 0]
        if plan is not None and plan.resident and len(valid) > 1 and self.readers:
            dim = self.readers[0].dim
            if all(qs[i].shape[1] == dim for i in valid):
                kind = self.stage1_kind(stage1)
                n_max = max(qs[i].shape[0] for i in valid)
                batch = torch.zeros(len(valid), n_max, dim)  # (B, n_max, dim)
                q_mask = torch.zeros(len(valid), n_max, dtype=torch.bool)  # (B, n_max)
                for b, i in enumerate(valid):
                    batch[b, : qs[i].shape[0]] = qs[i]
                    q_mask[b, : qs[i].shape[0]] = True
                for s, (r, m) in enumerate(zip(self.readers, self.live(flt), strict=True)):
                    if not m.any():
                        continue
                    scores = None
                    if kind == "dense":
                        scores = r.dense_scores(batch, plan, q_mask)
                    elif kind == "exact" and (codec is None or r.codes is None):
                        scores = r.exact_all(batch, q_mask, plan)
                    if scores is not None:
                        for b, i in enumerate(valid):
                            batched[i][s] = scores[b]
        outs: list[EngineResult | BaseException] = []
        for i, q in enumerate(qs):
            try:
                outs.append(
                    self.shortlist(q, **params, _batched=batched[i] or None).result(params["top_k_hits"])
                )
            except Exception as exc:  # noqa: BLE001 - returned to that query's caller
                outs.append(exc)
        return outs

    def find(self, doc_id: int, ordinal: int) -> tuple[SegmentReader, int] | None:
        """The live segment and position of unit ``(doc_id, ordinal)``."""
        for r, d in zip(self.readers, self.deleted, strict=True):
            hit = np.flatnonzero((r.doc_ids == doc_id) & (r.ordinals == ordinal) & ~d)
            if hit.size:
                return r, int(hit[0])
        return None

    def unit_bag(self, doc_id: int, ordinal: int) -> PatchBag | None:
        """A unit's stored rows as a float32 ``PatchBag`` (decoded from its codes under keep='none')."""
        found = self.find(doc_id, ordinal)
        if found is None:
            return None
        r, u = found
        rows, _ = r.rows_of(np.array([u]))
        if r.vectors is not None:
            v = np.asarray(r.vectors[rows], dtype=np.float32)
        elif r.vectors_i8 is not None and r.scales is not None:
            v = np.asarray(r.vectors_i8[rows], np.float32) * np.asarray(r.scales[rows])[:, None]
        elif r.codes is not None and self.state is not None and self.state.compressor is not None:
            v = np.asarray(self.state.compressor.quantizer.decode(np.asarray(r.codes[rows])), np.float32)
        else:
            v = np.zeros((rows.size, r.dim), np.float32)
        return PatchBag(
            torch.from_numpy(v),
            torch.from_numpy(np.asarray(r.file.parts["salience"][rows], np.float32)),
            torch.from_numpy(np.asarray(r.file.parts["positions"][rows], np.int64)),
            (0, 0),
        )

    def doc_ids(self) -> np.ndarray:
        """Sorted ids of the documents with live (not tombstoned) units."""
        parts = [r.doc_ids[~d] for r, d in zip(self.readers, self.deleted, strict=True)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def stats(self) -> dict[str, Any]:
        """Units, rows, segments, and bytes by part on disk (the segment files) and in RAM."""
        disk: dict[str, int] = {}
        ram: dict[str, int] = {}
        device: dict[str, int] = {}
        for r in self.readers:
            for k, b in r.file.part_bytes.items():
                disk[k] = disk.get(k, 0) + b
            for k, b in r.ram_bytes.items():
                ram[k] = ram.get(k, 0) + b
            for k, b in r.device_bytes.items():
                device[k] = device.get(k, 0) + b
        n = max(1, self.n_units)
        return {
            "generation": self.generation,
            "segments": len(self.readers),
            "units": self.n_units,
            "rows": self.n_rows,
            "state": self.state.name if self.state else None,
            "fit": dict(self.manifest.fit),
            "disk_bytes": disk,
            "ram_bytes": ram,
            "device": None if self.plan is None or not self.plan.resident else str(self.plan.device),
            "device_bytes": device,
            "disk_bytes_per_unit": round(sum(r.file.nbytes for r in self.readers) / n, 1),
            "ram_bytes_per_unit": round(sum(ram.values()) / n, 1),
        }


@dataclass(eq=False)  # compared by identity: a query tensor has no truth value
class _Pending:
    """A device-path search waiting for its turn or for the batch that answers it."""

    query: torch.Tensor
    params: dict[str, Any]
    key: tuple[Any, ...] | None
    done: bool = False
    out: EngineResult | BaseException | None = None

    def get(self) -> EngineResult:
        if isinstance(self.out, BaseException):
            raise self.out
        assert self.out is not None
        return self.out


def _batch_key(params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Searches with equal keys may run as one batch: same knobs, and a filter named by its ``key``
    (the visible set) alone; None (never batched) for filters by document ids or media."""
    flt: Filter | None = params["flt"]
    if flt is not None and (
        flt.doc_ids is not None or flt.media is not None or flt.visible is not None and flt.key is None
    ):
        return None
    knobs = tuple(params[k] for k in ("top_k_hits", "candidates", "rerank", "stage1", "stage1_k", "nprobe"))
    return (*knobs, None if flt is None else ("visible", flt.key))


# ------------------------------------------------------------------------------------- the engine
@dataclass
class MergeStats:
    merges: int = 0
    segments_in: int = 0
    rows_dropped: int = 0
    seconds: float = 0.0


class IndexEngine:
    """Writes, publishes, merges, fits and snapshots one index version folder (any process).

    Parameters
    ----------
    root : path
        The version folder.
    dim : int
        Vector dimension.
    compression : CompressionConfig
        The version's compression (quantizer, ``keep``); pruning and merging happen before the engine.
    device : str
        ``"cpu"`` (default), ``"cuda"`` / ``"cuda:N"`` or ``"auto"``: on CUDA the device path keeps each
        segment's stage-1/2 data there and scores every stage there (``patchseek.search.device``).
    kernels : str
        ``"auto"``, ``"torch"`` or ``"triton"`` (the kernels' backend); ``"triton"`` on the CPU runs the
        device path with CPU tensors under ``TRITON_INTERPRET=1``.
    device_memory_bytes, device_fallback
        The device budget of resident parts (None: free CUDA memory less headroom) and what a part that
        does not fit does (``"cpu"``: stays on the CPU; ``"error"``: ``DeviceMemoryError``).
    auto_fit : bool
        Fit the state on the first publish that satisfies ``fit_rule`` (rebuilds turn it off and call
        ``fit`` once at the end).
    merge_factor : int
        Tiered merge policy: ``merge_factor`` segments of one size tier (⌊log_f units⌋) merge into one.
    files : IndexFiles, optional
        The version's files on a storage backend (e.g. an object store every node of a cluster shares,
        ``root`` then being a local scratch folder); default: the local folder ``root``.
    """

    def __init__(
        self,
        root: str | Path,
        dim: int,
        compression: CompressionConfig | None = None,
        *,
        device: str = "cpu",
        auto_fit: bool = True,
        merge_factor: int = MERGE_FACTOR,
        dense_rows: int = DEFAULT_ROWS,
        files: IndexFiles | None = None,
        kernels: str = "auto",
        device_memory_bytes: int | None = None,
        device_fallback: str = "cpu",
        index_workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        # Where the version's files live: ``root`` itself by default, or any storage backend.
        self.files = files if files is not None else IndexFiles.local(self.root)
        self.dim = int(dim)
        self.config = compression or CompressionConfig()
        self.plan = DevicePlan.resolve(
            device, kernels, memory_bytes=device_memory_bytes, fallback=device_fallback
        )
        self.device = str(self.plan.device) if device == "auto" else device
        self.auto_fit = auto_fit
        self.merge_factor = max(2, int(merge_factor))
        self.dense_rows = dense_rows
        # Processes for the index-side work of a write (``derive_parts``); None: the CPUs available.
        self.index_workers = default_index_workers() if index_workers is None else max(1, int(index_workers))
        self._readers: dict[str, SegmentReader] = {}
        self._states: dict[str, FittedState] = {}
        self._snapshot: Snapshot | None = None
        self._stamp: Hashable | None = None
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------------------------- reading
    def snapshot(self) -> Snapshot:
        """The current snapshot; re-read only when the manifest changed (reusing unchanged readers)."""
        for attempt in range(8):
            stamp = self.files.manifest_stamp()
            with self._lock:
                if self._snapshot is not None and stamp == self._stamp:
                    return self._snapshot
            manifest = self.files.read_manifest()
            try:
                snap = self._open(manifest)
            except FileNotFoundError:
                # A merge replaced a segment between our manifest read and its open: read again.
                time.sleep(0.01 * (attempt + 1))
                continue
            with self._lock:
                self._snapshot, self._stamp = snap, stamp
                self._readers = {r.name: r for r in snap.readers}  # drop readers no longer listed
            return snap
        raise InvalidInputError(f"could not open a consistent snapshot of {self.root}")

    def _open(self, manifest: Manifest) -> Snapshot:
        readers = []
        for name in manifest.segments:
            with self._lock:
                reader = self._readers.get(name)
            if reader is None:
                reader = SegmentReader(self.files.open_segment(name))
            readers.append(reader)
        return Snapshot(manifest, readers, self._state(manifest.state), self.device, plan=self.plan)

    def _state(self, name: str | None) -> FittedState | None:
        if name is None:
            return None
        with self._lock:
            if name not in self._states:
                with self.files.state_folder(name) as folder:
                    self._states[name] = FittedState.load(folder.parent, folder.name)
            return self._states[name]

    # -------------------------------------------------------------------------------- writing
    def write(self, batch: UnitBatch) -> str:
        """Write ``batch`` as a new, unpublished segment derived with the current state; its name."""
        if batch.vectors.shape[1:] != (self.dim,):
            raise InvalidInputError(f"vectors must be (n, {self.dim}), got {batch.vectors.shape}")
        state = self._state(self.files.read_manifest().state)
        parts, meta = derive_parts(batch, self.config, state, self.dense_rows, workers=self.index_workers)
        name = new_segment_name()
        self.files.write_segment(name, parts, {**meta, "n_units": batch.n_units})
        return name

    def publish(
        self, added: Sequence[str] = (), deleted_docs: Iterable[int] = (), *, fit: bool | None = None
    ) -> Manifest:
        """Make segments ``added`` live and tombstone the documents ``deleted_docs``, in one manifest swap.

        Upsert: a document of an added segment that already has units in a live segment is tombstoned
        there (a re-run after a crash never indexes a document twice). A segment derived with an older
        state than the manifest's is re-derived first. Then, with ``auto_fit``, the state is fitted if
        the rule now holds (``fit``).
        """
        deleted = {int(d) for d in deleted_docs}
        with self.files.lock():
            m = self.files.read_manifest()
            names, own_docs = [], {}
            for name in added:  # each added segment is opened once
                seg = self.files.open_segment(name)
                if seg.meta.get("state") != m.state:
                    name = self._rederive(seg, self._state(m.state))
                    seg = self.files.open_segment(name)
                names.append(name)
                own_docs[name] = set(np.unique(seg.parts["doc_ids"]).tolist())
            new_docs = set().union(*own_docs.values()) if own_docs else set()
            tomb = {k: set(v) for k, v in m.tombstones.items()}
            snap = self.snapshot() if m.segments else None
            if snap is not None and (deleted or new_docs):
                targets = np.array(sorted(deleted | new_docs), dtype=np.int64)
                for r, d in zip(snap.readers, snap.deleted, strict=True):
                    present = np.unique(r.doc_ids[~d & np.isin(r.doc_ids, targets)])
                    if present.size:
                        tomb.setdefault(r.name, set()).update(present.tolist())
            for name in names:
                if deleted & own_docs[name]:
                    tomb.setdefault(name, set()).update(deleted & own_docs[name])
            m = m.bump(
                segments=(*m.segments, *names),
                tombstones={k: tuple(sorted(v)) for k, v in tomb.items() if v},
            )
            self.files.write_manifest(m)
        if (self.auto_fit if fit is None else fit) and m.state is None and self.fit():
            m = self.files.read_manifest()  # the fit runs after the lock is released: writers go on
        return m

    def delete_documents(self, doc_ids: Iterable[int]) -> Manifest:
        """Tombstone documents: they leave the next snapshot; a merge reclaims their rows."""
        return self.publish((), doc_ids)

    def _rederive(self, seg: SegmentFile, state: FittedState | None, *, keep_old: bool = False) -> str:
        """Rewrite a segment under ``state``; returns the new segment's name (the old file is removed
        unless ``keep_old``: the caller removes it once a manifest no longer lists it)."""
        batch = _batch_of(seg, np.ones(seg.parts["doc_ids"].shape[0], dtype=bool))
        parts, meta = derive_parts(batch, self.config, state, self.dense_rows, workers=self.index_workers)
        name = new_segment_name()
        self.files.write_segment(name, parts, {**meta, "n_units": batch.n_units})
        if not keep_old:
            self.files.delete_segment(seg.name)
        return name

    # ------------------------------------------------------------------------------ lifecycle
    def fit(self, *, force: bool = False) -> bool:
        """Fit the codec / coarse centroids on a sample of every live vector and rewrite every segment
        with them, in one manifest swap. Without ``force`` only when ``fit_rule`` holds and no state
        exists. Returns whether a fit happened.

        Sampling, training (tens of seconds for K = 4096 coarse centroids) and the rewrite run outside
        the writer lock, like a merge, so ingest jobs publish meanwhile: the swap, under the lock,
        re-derives the segments published (or merged) since the fit's snapshot and carries over the
        tombstones added meanwhile. One fit per index runs at a time (``fit_lock``); a second caller
        returns False at once.
        """
        with fit_lock(self.root) as mine:
            if not mine:
                return False
            snap = self.snapshot()
            m = snap.manifest
            n_vectors, n_units = snap.n_rows, snap.n_units
            ok, rule, k_coarse = fit_rule(self.config, n_vectors, n_units)
            if not force and (m.state is not None or not ok):
                return False
            if n_vectors == 0 or (force and not ok and self.config.quantizer != "none" and n_vectors < 256):
                return False
            if not snap.readers or not all(
                r.vectors is not None or r.vectors_i8 is not None for r in snap.readers
            ):
                raise InvalidInputError("fitting needs the stored float vectors; rebuild from the sources")
            started = time.perf_counter()
            fitted = self._fit_state(snap, k_coarse)
            state = fitted.state
            # Rewrite every segment under the new state, one at a time (memory stays one segment's).
            rewritten: dict[str, str] = {}
            for r, d in zip(snap.readers, snap.deleted, strict=True):
                parts, meta = derive_parts(
                    _batch_of(r.file, ~d), self.config, state, self.dense_rows, workers=self.index_workers
                )
                seg = new_segment_name()
                self.files.write_segment(seg, parts, {**meta, "n_units": int((~d).sum())})
                rewritten[r.name] = seg
            fit = {
                "vectors": n_vectors,
                "units": n_units,
                "sample": fitted.sample_rows,
                "coarse_sample": fitted.coarse_rows,
                "rule": rule,
                "coarse_k": int(k_coarse),
                "seconds": round(time.perf_counter() - started, 3),
            }
            with self.files.lock():
                swapped = self._swap_state(
                    snap.manifest, self.files.read_manifest(), state.name, rewritten, fit
                )
            if not swapped:  # another process fitted meanwhile: ours is dropped (gc removes its state)
                for seg in rewritten.values():
                    self.files.delete_segment(seg)
                return False
            log.info("fitted %s on %d of %d vectors (%s)", state.name, fitted.sample_rows, n_vectors, rule)
            return True

    def _fit_state(self, snap: Snapshot, k_coarse: int) -> _NewState:
        """Train the codec and/or coarse centroids on samples of ``snap`` and store them as a state
        folder (built locally, then stored file by file: a crash leaves no half state)."""
        n_vectors = snap.n_rows
        sample = _sample(snap, FIT_SAMPLE, self.config.seed)
        coarse_sample = sample if n_vectors <= FIT_SAMPLE else _sample(snap, COARSE_SAMPLE, self.config.seed)
        name = f"state-{uuid.uuid4().hex[:8]}"
        with self.files.scratch() as tmp:
            if self.config.quantizer != "none":
                compressor = Compressor(self.config)
                compressor.quantizer.fit(sample)
                compressor.save(tmp / "codec")
            if k_coarse:
                coarse, top, offsets = FaissCandidateGenerator.fit_tree(
                    coarse_sample, k_coarse, seed=self.config.seed
                )
                np.save(tmp / "coarse.npy", coarse)
                np.savez(tmp / "coarse_tree.npz", top=top, offsets=offsets)
            self.files.save_state(name, tmp)
        state = self._state(name)
        assert state is not None
        return _NewState(state, int(sample.shape[0]), int(coarse_sample.shape[0]) if k_coarse else 0)

    def _swap_state(
        self, seen: Manifest, now: Manifest, state_name: str, rewritten: dict[str, str], fit: dict[str, Any]
    ) -> bool:
        """Publish a fitted state (under the writer lock): ``rewritten`` maps the segments of manifest
        ``seen`` to their copies under the state; segments published or merged since ``seen`` are
        re-derived here, tombstones added since apply to the copies. False (nothing changed) when
        another fit published a state meanwhile."""
        if now.state != seen.state:
            return False
        state = self._state(state_name)
        segments: list[str] = []
        tombstones: dict[str, tuple[int, ...]] = {}
        replaced: list[str] = []
        for name in now.segments:
            if name in rewritten:  # rows deleted in ``seen`` were left out of the copy
                later = set(now.tombstones.get(name, ())) - set(seen.tombstones.get(name, ()))
                new = rewritten.pop(name)
            else:  # published or merged during the fit: derive it now, tombstones and all
                later = set(now.tombstones.get(name, ()))
                new = self._rederive(self.files.open_segment(name), state, keep_old=True)
            segments.append(new)
            replaced.append(name)
            if later:
                tombstones[new] = tuple(sorted(later))
        for seg in rewritten.values():  # merged away during the fit: its rows live in a merged segment
            self.files.delete_segment(seg)
        self.files.write_manifest(
            now.bump(segments=tuple(segments), tombstones=tombstones, state=state_name, fit=fit)
        )
        for name in replaced:
            self.files.delete_segment(name)
        return True

    def needs_refit(self) -> bool:
        """True when the collection holds ``REFIT_GROWTH``× the vectors its fit saw (refit by a rebuild)."""
        m = self.files.read_manifest()
        if m.state is None:
            return False
        seen = int(m.fit.get("vectors", 0))
        return seen > 0 and self.snapshot().n_rows >= REFIT_GROWTH * seen

    # --------------------------------------------------------------------------------- merges
    def merge_candidates(self, snap: Snapshot) -> list[list[SegmentReader]]:
        """Tiered policy: groups of ``merge_factor`` segments of one size tier (smallest first), cut so
        that a merged segment holds at most ``MAX_SEGMENT_ROWS`` rows (a segment of half that is final);
        a segment with a third of its units tombstoned is rewritten alone (vacuum)."""
        tiers: dict[int, list[tuple[SegmentReader, int]]] = {}
        groups = []
        for r, d in zip(snap.readers, snap.deleted, strict=True):
            live = int((~d).sum())
            if r.n_units and d.sum() * 3 >= r.n_units:
                groups.append([r])
                continue
            rows = int(r.lengths[~d].sum())
            if rows * 2 >= MAX_SEGMENT_ROWS:
                continue
            tier = int(np.log(max(live, 1)) / np.log(self.merge_factor))
            tiers.setdefault(tier, []).append((r, rows))
        for _, members in sorted(tiers.items()):
            members.sort(key=lambda m: m[0].n_units)
            while len(members) >= self.merge_factor:
                group: list[SegmentReader] = []
                total = 0
                for r, rows in members[: self.merge_factor]:
                    if group and total + rows > MAX_SEGMENT_ROWS:
                        break
                    group.append(r)
                    total += rows
                if len(group) < 2:
                    break
                groups.append(group)
                members = members[len(group) :]
        return groups

    def maybe_merge(self, *, max_merges: int = 16) -> MergeStats:
        """Run the merges the policy asks for, one manifest swap each; searches go on meanwhile."""
        stats = MergeStats()
        started = time.perf_counter()
        for _ in range(max_merges):
            snap = self.snapshot()
            groups = self.merge_candidates(snap)
            if not groups:
                break
            done = self.merge([r.name for r in groups[0]])
            if not done:
                break
            stats.merges += 1
            stats.segments_in += len(groups[0])
            stats.rows_dropped += done
        stats.seconds = time.perf_counter() - started
        return stats

    def merge(self, names: Sequence[str]) -> int:
        """Merge the live rows of segments ``names`` into one; returns rows dropped + 1 (0: nothing).

        The merged segment is written outside the writer lock; the swap re-reads the manifest and
        carries over tombstones added meanwhile."""
        snap = self.snapshot()
        by_name = {r.name: (r, d) for r, d in zip(snap.readers, snap.deleted, strict=True)}
        if any(n not in by_name for n in names):
            return 0
        inputs = [by_name[n] for n in names]
        batches = []
        dropped = 0
        for r, d in inputs:
            batches.append(_unit_table(r, ~d))
            dropped += int(r.lengths[d].sum())
        batch = UnitBatch.concat(batches, self.dim)
        parts = _concat_derived(inputs, batch)
        seg = new_segment_name()
        meta = {"state": snap.manifest.state, "dim": self.dim, "keep": inputs[0][0].file.meta.get("keep")}
        self.files.write_segment(seg, parts, {**meta, "n_units": batch.n_units})
        with self.files.lock():
            m = self.files.read_manifest()
            if any(n not in m.segments for n in names) or m.state != snap.manifest.state:
                self.files.delete_segment(seg)
                return 0
            # Tombstones added to the inputs since our snapshot now apply to the merged segment.
            merged_docs = set(np.unique(batch.doc_ids).tolist())
            later: set[int] = set()
            for n in names:
                later |= set(m.tombstones.get(n, ())) - set(snap.manifest.tombstones.get(n, ()))
            tomb = {k: v for k, v in m.tombstones.items() if k not in names}
            if later & merged_docs:
                tomb[seg] = tuple(sorted(later & merged_docs))
            kept = [s for s in m.segments if s not in names]
            # The merged segment takes the place of its oldest input: segment order stays insertion order.
            first = min(m.segments.index(n) for n in names)
            kept.insert(min(first, len(kept)), seg)
            self.files.write_manifest(m.bump(segments=tuple(kept), tombstones=tomb))
        for n in names:
            self.files.delete_segment(n)
        return dropped + 1

    # ---------------------------------------------------------------------------- maintenance
    def gc(self, *, grace_s: float = 3600.0) -> int:
        """Remove segment files no manifest lists (crashed writers') older than ``grace_s``, stale temp
        files and unused state folders. Returns files removed."""
        with self.files.lock():
            return self.files.remove_unlisted(self.files.read_manifest(), grace_s)

    def stats(self) -> dict[str, Any]:
        return self.snapshot().stats()


def _copy_to(arr: np.ndarray, device: torch.device, *, codes: bool = False) -> torch.Tensor:
    """A contiguous copy of ``arr`` (a memory-mapped part) on ``device``, in bounded slices.

    ``codes``: uint16 codes are viewed as int16 (the kernels read them as unsigned)."""
    n = int(arr.shape[0])
    row_bytes = max(1, int(arr.nbytes // max(1, n)))
    step = max(1, RESIDENT_COPY_BYTES // row_bytes)

    def host(a: np.ndarray) -> torch.Tensor:
        return as_code_tensor(np.array(a)) if codes else torch.from_numpy(np.array(a))

    if device.type == "cpu":
        return host(arr)
    first = host(arr[:0])
    out = torch.empty(tuple(arr.shape), dtype=first.dtype, device=device)
    for s in range(0, n, step):
        out[s : s + step].copy_(host(arr[s : s + step]))
    return out


def _gather_pinned(src: np.ndarray, rows: np.ndarray, plan: DevicePlan) -> torch.Tensor:
    """Rows ``rows`` of a memory-mapped part gathered into a (pinned, on CUDA) host buffer, then moved
    to ``plan.device`` (asynchronously from pinned memory)."""
    probe = torch.from_numpy(np.zeros((0, *src.shape[1:]), dtype=src.dtype))
    buf = torch.empty((rows.size, *src.shape[1:]), dtype=probe.dtype, pin_memory=plan.pinned)
    np.take(src, rows, axis=0, out=buf.numpy())
    return buf.to(plan.device, non_blocking=plan.pinned)


def unit_rows(offsets: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (n_rows,) of ``units`` (k,) laid out by ``offsets`` (n_units + 1,), and the packed
    offsets (k + 1,) of those rows."""
    starts, lengths = offsets[units], offsets[units + 1] - offsets[units]
    sub = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.arange(int(sub[-1]), dtype=np.int64) + np.repeat(starts - sub[:-1], lengths)
    return rows, sub


def _batch_of(seg: SegmentFile, keep: np.ndarray) -> UnitBatch:
    """The float rows of a segment's units where ``keep`` (n_units,) is True, as a ``UnitBatch``."""
    p = seg.parts
    units = np.flatnonzero(keep)
    rows, sub = unit_rows(p["offsets"], units)
    ln = np.diff(sub)
    if "vectors" in p:
        vectors = np.asarray(p["vectors"][rows], dtype=np.float16)
    elif "vectors_i8" in p:
        vectors = (
            np.asarray(p["vectors_i8"][rows], np.float32) * np.asarray(p["scales"][rows])[:, None]
        ).astype(np.float16)
    else:
        vectors = np.zeros((rows.size, int(seg.meta["dim"])), np.float16)  # only codes: see _concat_derived
    return UnitBatch(
        np.asarray(p["doc_ids"][units]),
        np.asarray(p["ordinals"][units]),
        np.asarray(p["media"][units]),
        ln.astype(np.int64),
        vectors,
        np.asarray(p["positions"][rows]),
        np.asarray(p["salience"][rows]),
    )


def _unit_table(r: SegmentReader, keep: np.ndarray) -> UnitBatch:
    """The unit-level columns of a segment's kept units (rows are copied by ``_concat_derived``)."""
    units = np.flatnonzero(keep)
    return UnitBatch(
        np.asarray(r.doc_ids[units]),
        np.asarray(r.ordinals[units]),
        np.asarray(r.media[units]),
        r.lengths[units].astype(np.int64),
        np.zeros((0, r.dim), np.float16),
        np.zeros((0, 2), np.int16),
        np.zeros(0, np.float16),
    )


def _concat_derived(
    inputs: list[tuple[SegmentReader, np.ndarray]], batch: UnitBatch
) -> dict[str, np.ndarray]:
    """Parts of a merged segment: the inputs' stored parts concatenated (nothing recomputed)."""
    out: dict[str, list[np.ndarray]] = {}
    for r, d in inputs:
        keep = ~d
        units = np.flatnonzero(keep)
        rows, _ = r.rows_of(units)
        for k, a in r.file.parts.items():
            if k == "offsets":
                continue
            if k in UNIT_PARTS:
                out.setdefault(k, []).append(np.asarray(a[units]))
            elif k in ROW_PARTS:
                out.setdefault(k, []).append(np.asarray(a[rows]))
    parts = {k: np.concatenate(v) for k, v in out.items()}
    parts["offsets"] = np.concatenate([[0], np.cumsum(batch.lengths)]).astype(np.int64)
    return parts


def _sample(snap: Snapshot, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` float32 rows drawn uniformly from every live unit's kept vectors."""
    parts = []
    for r, d in zip(snap.readers, snap.deleted, strict=True):
        rows, _ = r.rows_of(np.flatnonzero(~d))
        parts.append((r, rows))
    total = sum(rows.size for _, rows in parts)
    rng = np.random.default_rng(seed)
    take = min(size, total)
    picks = np.sort(rng.choice(total, size=take, replace=False)) if take < total else np.arange(total)
    out, base = [], 0
    for r, rows in parts:
        local = picks[(picks >= base) & (picks < base + rows.size)] - base
        base += rows.size
        if not local.size:
            continue
        sel = rows[local]
        if r.vectors is not None:
            out.append(np.asarray(r.vectors[sel], np.float32))
        else:
            assert r.vectors_i8 is not None and r.scales is not None
            out.append(np.asarray(r.vectors_i8[sel], np.float32) * np.asarray(r.scales[sel])[:, None])
    return np.concatenate(out) if out else np.zeros((0, snap.readers[0].dim), np.float32)


# ------------------------------------------------------------------------------------ registry
@dataclass
class EngineRegistry:
    """One ``IndexEngine`` per version folder per process (each opened once, shared by all threads)."""

    _engines: dict[str, IndexEngine] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, root: str | Path, dim: int, compression: CompressionConfig, **kwargs: Any) -> IndexEngine:
        key = str(Path(root).resolve())
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = IndexEngine(root, dim, compression, **kwargs)
                self._engines[key] = engine
            return engine

    def drop(self, root: str | Path) -> None:
        with self._lock:
            self._engines.pop(str(Path(root).resolve()), None)

    def drop_under(self, folder: str | Path) -> None:
        prefix = str(Path(folder).resolve())
        with self._lock:
            for k in [k for k in self._engines if k == prefix or k.startswith(prefix + "/")]:
                self._engines.pop(k)


REGISTRY = EngineRegistry()
