"""Search: encode the query, score the collection's packed index, return hits with citations."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select

from patchseek import metrics
from patchseek.api.db.models import Collection, Document, IndexVersion, Unit
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.errors import InvalidInputError, NotFoundError
from patchseek.indexer.compress import CompressionConfig, Compressor, KMeansQuantizer
from patchseek.indexer.sources import read_image
from patchseek.search.candidates import (
    EXACT_THRESHOLD,
    STAGE1_CHOICES,
    FaissCandidateGenerator,
    choose_stage1,
    default_n_centroids,
    pool_by_centroid,
)
from patchseek.search.dense import DEFAULT_ROWS, DenseCandidateGenerator, summarize_units
from patchseek.search.retriever import MultiStageRetriever, SearchParams, UnitRows, UnitVectors
from patchseek.search.store import fsync_dir
from patchseek.types import PatchBag


@dataclass(frozen=True)
class Hit:
    unit_id: int
    document_id: int
    document: str
    media_type: str
    kind: str
    page: int | None
    t_start: float | None
    t_end: float | None
    score: float
    text: str


@dataclass(frozen=True)
class SearchResult:
    query: str | None
    hits: list[Hit]
    took_ms: float
    n_units: int


@dataclass(frozen=True)
class _CachedIndex:
    key: tuple[int, int]  # (generation, version id)
    retriever: MultiStageRetriever
    doc_ids: torch.Tensor  # (n_units,) int64 document of each unit
    media_types: torch.Tensor  # (n_units,) int8 code per unit, see _MEDIA
    doc_meta: dict[int, dict[str, Any]]  # upload metadata of each document (fixed once uploaded)

    @property
    def n_units(self) -> int:
        return self.retriever.n_units


_MEDIA = {"pdf": 0, "image": 1, "video": 2}
STAGE1_K = 1000  # units stage 1 hands to stage 2 (DESIGN.md: ~1000)
DENSE_ROWS = DEFAULT_ROWS  # summary rows per unit of the dense stage 1
EXACT_UNITS = EXACT_THRESHOLD  # collections smaller than this are scanned exactly unless told otherwise
FIT_UNITS = 2000  # units sampled (evenly) to fit a version's codec or coarse centroids


class SearchService:
    """Search over a collection's active index version with the three-stage ``MultiStageRetriever``.

    The retriever is built once per (generation, version) and cached: per-document float16 segment files
    stay memory-mapped (stage 3 reads only the shortlist); the version's codec is fitted once and saved
    beside them; each document's codes (and, for codecs other than k-means, its stage-1 centroid ids)
    are computed once and saved as derived segment parts; FAISS inverted lists are built from them for
    collections of ``EXACT_THRESHOLD`` units or more.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._cache: dict[int, _CachedIndex] = {}
        self._lock = threading.Lock()

    def _index(self, collection: Collection) -> _CachedIndex:
        """The collection's retriever, rebuilt only when its generation or version changed."""
        key = (collection.generation, int(collection.active_version_id or 0))
        with self._lock:
            cached = self._cache.get(collection.id)
            if cached is not None and cached.key == key:
                return cached
            with self.ctx.db.session() as session:
                version = active_version(session, collection)
                session.expunge(version)
                rows = session.execute(
                    select(Unit.id, Unit.document_id, Unit.patch_offset, Unit.n_patches, Document.media_type)
                    .join(Document, Document.id == Unit.document_id)
                    .where(Unit.index_version_id == version.id, Document.status == "ready")
                    .order_by(Unit.id)
                ).all()
            arrays: dict[int, np.ndarray] = {}
            for doc_id in {r.document_id for r in rows}:
                try:
                    arrays[doc_id] = self.ctx.segments.read(collection.id, version.number, doc_id).vectors
                except FileNotFoundError:  # deleted since the query: its rows leave with the next generation
                    continue
            rows = [r for r in rows if r.document_id in arrays]
            units = [UnitRows(r.id, r.document_id, r.patch_offset, r.n_patches) for r in rows]
            vectors = UnitVectors.from_rows(units, arrays, version.dim)
            compressor, codes = self._codes(collection.id, version, units, arrays)
            generator = None
            dense = None
            code_offsets = None
            has_rows = int(vectors.lengths.sum()) > 0
            if has_rows and choose_stage1(len(units), threshold=EXACT_UNITS) == "faiss":
                generator = self._generator(collection.id, version, units, arrays, compressor, codes)
                if compressor is None:  # no codec: stage 2 scores patches pooled per coarse centroid
                    compressor, codes, code_offsets, dense = self._pooled(
                        collection.id, version, units, arrays
                    )
                    generator.use_entry_vectors(codes)  # stage 1 scores the pooled rows it probes
            retriever = MultiStageRetriever(
                vectors,
                compressor=compressor,
                codes=codes,
                code_offsets=code_offsets,
                generator=generator,
                dense=dense,
                unit_ids=np.array([u.unit_id for u in units], dtype=np.int64),
                exact_threshold=EXACT_UNITS,
            )
            media = torch.tensor([_MEDIA.get(r.media_type or "", -1) for r in rows], dtype=torch.int8)
            doc_ids = torch.tensor([u.document_id for u in units], dtype=torch.int64)
            with self.ctx.db.session() as session:
                doc_meta = {
                    int(i): dict(m or {})
                    for i, m in session.execute(
                        select(Document.id, Document.meta).where(Document.collection_id == collection.id)
                    )
                    if int(i) in arrays
                }
            cached = _CachedIndex(key, retriever, doc_ids, media, doc_meta)
            self._cache[collection.id] = cached
            return cached

    def prepare(self, collection_name: str) -> int:
        """Compute and save what searching the collection needs, so that the first query does not: the
        codec's codes and, above ``EXACT_UNITS`` units, stage-1 centroid ids, pooled rows and dense
        summary rows (durable derived parts, read back by any process). Returns the units indexed.

        Workers call it after each ingest or rebuild job; it costs one Ward clustering per new unit
        (~5 ms) on top of the assignment and pooling.
        """
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
        return self._index(collection).n_units

    def _attach_generator(self, collection: Collection, cached: _CachedIndex) -> None:
        """Build FAISS lists for a collection small enough to be scanned, when a request asks for them."""
        with self._lock:
            if cached.retriever.generator is not None:
                return
            retriever = cached.retriever
            with self.ctx.db.session() as session:
                version = active_version(session, collection)
                session.expunge(version)
            units = [
                UnitRows(int(uid), int(did), int(start), int(n))
                for uid, did, start, n in zip(
                    retriever.unit_ids.tolist(),
                    cached.doc_ids.tolist(),
                    retriever.vectors.starts.tolist(),
                    retriever.vectors.lengths.tolist(),
                    strict=True,
                )
            ]
            arrays = {
                doc_id: self.ctx.segments.read(collection.id, version.number, doc_id).vectors
                for doc_id in set(cached.doc_ids.tolist())
            }
            retriever.attach_generator(
                self._generator(collection.id, version, units, arrays, retriever.compressor, retriever.codes)
            )

    def _fit_bags(self, units: list[UnitRows], arrays: dict[int, np.ndarray]) -> list[PatchBag]:
        """Float32 bags of up to ``FIT_UNITS`` units spread evenly over the collection."""
        picks = np.unique(np.linspace(0, len(units) - 1, num=min(len(units), FIT_UNITS)).astype(np.int64))
        bags = []
        for i in picks.tolist():
            u = units[i]
            v = torch.from_numpy(
                np.asarray(arrays[u.document_id][u.offset : u.offset + u.n_patches], np.float32)
            )
            bags.append(
                PatchBag(v, torch.zeros(v.shape[0]), torch.zeros(v.shape[0], 2, dtype=torch.int64), (0, 0))
            )
        return bags

    def _codes(
        self, collection_id: int, version: IndexVersion, units: list[UnitRows], arrays: dict[int, np.ndarray]
    ) -> tuple[Compressor | None, np.ndarray | None]:
        """The version's codec (fitted once and saved beside its segment files) and every unit's codes,
        packed in unit order; each document's codes are encoded once and saved as its ``codes`` part."""
        config = CompressionConfig.from_dict(version.compression or {})
        if config.quantizer == "none" or not units or sum(u.n_patches for u in units) == 0:
            return None, None
        folder = self.ctx.segments.folder(collection_id, version.number) / "codec"
        if (folder / "compression.json").exists():
            compressor = Compressor.load(folder)
        else:
            compressor = Compressor(config)
            compressor.fit(self._fit_bags(units, arrays), compressed=True)
            _publish_folder(folder, compressor.save)
            compressor = Compressor.load(folder)  # whoever published first wins
        per_doc = {
            doc_id: self._derived(
                collection_id, version.number, doc_id, "codes", vectors, compressor.quantizer.encode
            )
            for doc_id, vectors in arrays.items()
        }
        return compressor, _pack(units, per_doc)

    def _generator(
        self,
        collection_id: int,
        version: IndexVersion,
        units: list[UnitRows],
        arrays: dict[int, np.ndarray],
        compressor: Compressor | None,
        codes: np.ndarray | None,
    ) -> FaissCandidateGenerator:
        """FAISS stage-1 lists: from the k-means codes themselves (PLAID), else from coarse centroids
        fitted once per version (saved under ``ivf/``) and each document's saved ``coarse`` ids."""
        lengths = np.array([u.n_patches for u in units], dtype=np.int64)
        quantizer = None if compressor is None else compressor.quantizer
        if isinstance(quantizer, KMeansQuantizer) and codes is not None:
            ids = codes if codes.ndim == 1 else _kmeans_ids(codes, quantizer.id_bytes)
            return FaissCandidateGenerator.from_assignments(quantizer.centroids, [(ids, lengths)])
        folder = self.ctx.segments.folder(collection_id, version.number) / "ivf"
        if not (folder / "centroids.npy").exists():
            sample = np.concatenate([b.vectors.numpy() for b in self._fit_bags(units, arrays)])
            rng = np.random.default_rng(0)
            sample = sample[rng.choice(sample.shape[0], size=min(sample.shape[0], 65536), replace=False)]
            centroids = FaissCandidateGenerator.fit_centroids(sample, default_n_centroids(int(lengths.sum())))
            _publish_folder(folder, lambda tmp: np.save(tmp / "centroids.npy", centroids))
        centroids = np.load(folder / "centroids.npy")
        per_doc = {
            doc_id: self._derived(
                collection_id,
                version.number,
                doc_id,
                "coarse",
                vectors,
                lambda x: FaissCandidateGenerator.assign(x, centroids),
            )
            for doc_id, vectors in arrays.items()
        }
        return FaissCandidateGenerator.from_assignments(centroids, [(_pack(units, per_doc), lengths)])

    def _pooled(
        self, collection_id: int, version: IndexVersion, units: list[UnitRows], arrays: dict[int, np.ndarray]
    ) -> tuple[Compressor, np.ndarray, np.ndarray, DenseCandidateGenerator]:
        """Stage-1 and stage-2 rows of a collection without a codec.

        Each unit's patches pooled per stage-1 centroid (``pool_by_centroid``, float16, ~1/4 of the
        rows), scored by exact MaxSim where stage 2 runs, and those pooled rows merged into
        ``DENSE_ROWS`` summary rows per unit (``summarize_units``) for the dense stage-1 scan. Each
        document's pooled rows are saved as its ``pooled`` part with ``pooled_spans`` (n_units, 3) int64
        ``[row offset, patches, pooled rows]``, its summary rows as ``dense`` (n_units, R, dim).

        Returns a float16 codec, the pooled rows (n_pooled, dim) in unit order, their offsets
        (n_units + 1,) and the dense generator over the same units.
        """
        spans_of: dict[int, list[tuple[int, int]]] = {}
        for u in units:
            spans_of.setdefault(u.document_id, []).append((u.offset, u.n_patches))
        where: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (document, offset) -> rows
        for doc_id, spans in spans_of.items():
            spans = sorted(spans)
            pooled, table, summary = self._pooled_document(
                collection_id, version.number, doc_id, arrays[doc_id], spans
            )
            starts = np.concatenate([[0], np.cumsum(table[:, 2])])  # (n_spans + 1,)
            for i, (offset, _) in enumerate(spans):
                where[(doc_id, offset)] = (pooled[int(starts[i]) : int(starts[i + 1])], summary[i])
        parts = [where[(u.document_id, u.offset)][0] for u in units]
        codes = np.ascontiguousarray(np.concatenate(parts), dtype=np.float16)  # (n_pooled, dim)
        offsets = np.concatenate([[0], np.cumsum([p.shape[0] for p in parts])]).astype(np.int64)
        codec = Compressor(CompressionConfig())  # float16: the pooled rows are scored as stored
        codec.quantizer.fit(np.asarray(codes[:1], dtype=np.float32))
        rows = np.stack([where[(u.document_id, u.offset)][1] for u in units])  # (n_units, R, dim)
        # The summary rows live where the scan is fastest: on the GPU when the service may use one.
        on_gpu = self.ctx.settings.device != "cpu" and torch.cuda.is_available()
        dense = DenseCandidateGenerator(rows, np.diff(offsets) > 0, device="cuda" if on_gpu else "cpu")
        return codec, codes, offsets, dense

    def _pooled_document(
        self, collection_id: int, number: int, doc_id: int, vectors: np.ndarray, spans: list[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A document's saved pooled rows, span table and dense summary rows, recomputed when missing or
        stale."""
        wanted = np.array(spans, dtype=np.int64).reshape(-1, 2)  # (n_spans, 2) offset, patches
        pooled = self.ctx.segments.read_part(collection_id, number, doc_id, "pooled")
        table = self.ctx.segments.read_part(collection_id, number, doc_id, "pooled_spans")
        if pooled is not None and table is not None and np.array_equal(table[:, :2], wanted):
            summary = self.ctx.segments.read_part(collection_id, number, doc_id, "dense")
            if summary is None or summary.shape[:2] != (len(spans), DENSE_ROWS):
                summary = summarize_units(np.asarray(pooled), np.asarray(table)[:, 2], DENSE_ROWS)
                self.ctx.segments.write_part(collection_id, number, doc_id, "dense", summary)
            return pooled, np.asarray(table), summary
        coarse = self.ctx.segments.read_part(collection_id, number, doc_id, "coarse")
        assert coarse is not None, "stage-1 centroid ids are written before the pooled rows"
        rows = np.concatenate([np.arange(o, o + n) for o, n in spans]) if spans else np.zeros(0, np.int64)
        pooled32, _, pooled_lengths = pool_by_centroid(
            np.asarray(vectors, dtype=np.float32)[rows], np.asarray(coarse)[rows], wanted[:, 1]
        )
        pooled = pooled32.astype(np.float16)  # (n_pooled, dim)
        table = np.concatenate([wanted, pooled_lengths[:, None]], axis=1)  # (n_spans, 3)
        summary = summarize_units(pooled, pooled_lengths, DENSE_ROWS)  # (n_spans, R, dim) float16
        # The span table is written last: it is what marks the other two as belonging to these spans.
        self.ctx.segments.write_part(collection_id, number, doc_id, "pooled", pooled)
        self.ctx.segments.write_part(collection_id, number, doc_id, "dense", summary)
        self.ctx.segments.write_part(collection_id, number, doc_id, "pooled_spans", table)
        return pooled, table, summary

    def _derived(
        self, collection_id: int, number: int, doc_id: int, part: str, vectors: np.ndarray, fn: Any
    ) -> np.ndarray:
        """A document's saved derived part, computed from its vectors and saved when missing or stale."""
        stored = self.ctx.segments.read_part(collection_id, number, doc_id, part)
        if stored is not None and stored.shape[0] == vectors.shape[0]:
            return stored
        out = np.asarray(fn(np.asarray(vectors, dtype=np.float32)))  # (n_rows, ...)
        self.ctx.segments.write_part(collection_id, number, doc_id, part, out)
        return out

    def search(
        self,
        collection_name: str,
        *,
        query: str | None = None,
        image: bytes | None = None,
        top_k: int = 10,
        document_ids: Sequence[int] | None = None,
        media_types: Sequence[str] | None = None,
        candidates: int = 100,
        rerank: bool = True,
        stage1: str = "auto",
        stage1_k: int = STAGE1_K,
        nprobe: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SearchResult:
        """Top ``top_k`` units for a text ``query`` or an ``image`` query, optionally filtered.

        Three stages (``MultiStageRetriever``): ``stage1`` (``"auto"``: an exact scan below
        ``EXACT_THRESHOLD`` units; above it, for a collection without a quantizer, a scan of every unit's
        ``DENSE_ROWS`` summary rows, else FAISS inverted lists; ``"exact"`` / ``"dense"`` / ``"faiss"``
        force one) picks ``stage1_k`` units; a quantizer's codes (or the dense scan's own scores) keep
        ``candidates``, which (with ``rerank``) are re-scored exactly on the stored vectors. A small
        collection without a quantizer is scored exactly at once. Filters (``document_ids``,
        ``media_types`` and ``metadata``: every given field of the document's upload metadata equals the
        given string, number or boolean) apply before any scoring.
        """
        start = time.perf_counter()
        if (query is None or not query.strip()) and image is None:
            raise InvalidInputError("give a non-empty text query or an image")
        if not 1 <= top_k <= self.ctx.settings.max_top_k:
            raise InvalidInputError(f"top_k must be between 1 and {self.ctx.settings.max_top_k}")
        for m in media_types or []:
            if m not in _MEDIA:
                raise InvalidInputError(f"unknown media type {m!r}; use pdf, image or video")
        if stage1 not in STAGE1_CHOICES:
            raise InvalidInputError(f"unknown stage1 {stage1!r}; use auto, exact, dense or faiss")
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
        encoder = self.ctx.encoder(collection.encoder)
        if image is not None:
            unit = read_image(image, max_pixels=self.ctx.settings.max_decode_pixels)
            q = encoder.encode_image_queries([unit.image])[0]
        else:
            q = encoder.encode_queries([query or ""])[0]
        cached = self._index(collection)
        mask = None
        if document_ids:
            mask = torch.isin(cached.doc_ids, torch.tensor(list(document_ids), dtype=torch.int64))
        if media_types:
            codes = torch.tensor([_MEDIA[m] for m in media_types], dtype=torch.int8)
            media_mask = torch.isin(cached.media_types, codes)
            mask = media_mask if mask is None else mask & media_mask
        if metadata:
            matching = torch.tensor(
                [d for d, meta in cached.doc_meta.items() if metadata_matches(meta, metadata)],
                dtype=torch.int64,
            )
            meta_mask = torch.isin(cached.doc_ids, matching)
            mask = meta_mask if mask is None else mask & meta_mask
        params = SearchParams(
            top_k=top_k,
            candidates=candidates,
            rerank=rerank,
            stage1=stage1,
            stage1_k=max(stage1_k, candidates),
            nprobe=nprobe,
        )
        if stage1 == "faiss" and cached.retriever.generator is None and cached.n_units:
            self._attach_generator(collection, cached)
        scored = cached.retriever.search(q, params, unit_mask=mask)
        hits = self._hits(scored)
        took = time.perf_counter() - start
        metrics.SEARCH_LATENCY.observe(took)
        return SearchResult(query, hits, took * 1000, cached.n_units)

    def context(
        self, collection_name: str, *, query: str, top_k: int = 5, with_images: bool = True
    ) -> tuple[SearchResult, list[ContextItem]]:
        """Top hits with citations and (optionally) their page / frame images as JPEG bytes."""
        result = self.search(collection_name, query=query, top_k=top_k)
        items = []
        with self.ctx.db.session() as session:
            blobs = {
                u.id: u.image_blob
                for u in session.scalars(select(Unit).where(Unit.id.in_([h.unit_id for h in result.hits])))
            }
        for rank, hit in enumerate(result.hits, 1):
            image = self.ctx.blobs.get(blobs[hit.unit_id]) if with_images and hit.unit_id in blobs else None
            items.append(ContextItem(rank, citation(hit), hit, image))
        return result, items

    def heatmap(self, unit_id: int, query: str) -> bytes:
        """JPEG of the unit's image with the query's patch-level matches highlighted."""
        if not query.strip():
            raise InvalidInputError("give a non-empty query for the heat map")
        with self.ctx.db.session() as session:
            unit = session.get(Unit, unit_id)
            if unit is None:
                raise NotFoundError(f"unit {unit_id} does not exist")
            version = session.get(IndexVersion, unit.index_version_id)
            collection = session.get(Collection, unit.collection_id)
            assert version is not None and collection is not None
            spec, number, collection_id = version.encoder, version.number, collection.id
            doc_id, offset, n, grid = (
                unit.document_id,
                unit.patch_offset,
                unit.n_patches,
                (unit.grid_rows, unit.grid_cols),
            )
            image_key = unit.image_blob
        bag = self.ctx.segments.read_unit(collection_id, number, doc_id, offset, n)
        q = self.ctx.encoder(spec).encode_queries([query])[0]
        image = Image.open(io.BytesIO(self.ctx.blobs.get(image_key)))
        out = io.BytesIO()
        unit_heatmap(image, bag.vectors, bag.positions, grid, q).save(out, format="JPEG", quality=85)
        return out.getvalue()

    def _hits(self, scored: list) -> list[Hit]:  # type: ignore[type-arg]
        if not scored:
            return []
        with self.ctx.db.session() as session:
            rows = {
                u.id: (u, d)
                for u, d in session.execute(
                    select(Unit, Document)
                    .join(Document, Document.id == Unit.document_id)
                    .where(Unit.id.in_([s.unit_id for s in scored]))
                ).all()
            }
        hits = []
        for s in scored:
            if s.unit_id not in rows:  # deleted between scoring and lookup
                continue
            unit, doc = rows[s.unit_id]
            hits.append(
                Hit(
                    unit.id,
                    doc.id,
                    doc.filename,
                    doc.media_type or "",
                    unit.kind,
                    unit.page,
                    unit.t_start,
                    unit.t_end,
                    round(s.score, 6),
                    unit.text,
                )
            )
        return hits


@dataclass(frozen=True)
class ContextItem:
    """One retrieved unit, ready to cite in a chat answer."""

    rank: int
    citation: str
    hit: Hit
    image_jpeg: bytes | None


def citation(hit: Hit) -> str:
    """Human-readable source: ``report.pdf, p. 3`` / ``talk.mp4, 00:12-00:15`` / ``photo.jpg``."""
    if hit.page is not None:
        return f"{hit.document}, p. {hit.page}"
    if hit.t_start is not None and hit.t_end is not None:
        return f"{hit.document}, {_clock(hit.t_start)}-{_clock(hit.t_end)}"
    return hit.document


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def unit_heatmap(
    image: Image.Image,
    vectors: torch.Tensor,
    positions: torch.Tensor,
    grid: tuple[int, int],
    query: torch.Tensor,
) -> Image.Image:
    """Overlay, on the unit's image, how strongly each patch-grid cell answers the query.

    vectors (n, dim), positions (n, 2) (row, col), query (n_q, dim). A cell's heat is the best similarity
    of any query token with any patch in it (the MaxSim contribution), scaled to [0, 1].
    """
    rows, cols = grid
    heat = np.zeros((max(rows, 1), max(cols, 1)), dtype=np.float32)
    if vectors.shape[0] and query.shape[0]:
        per_patch = (query.float() @ vectors.float().T).max(dim=0).values.clamp(min=0).numpy()  # (n,)
        r = positions[:, 0].clamp(0, heat.shape[0] - 1).numpy()
        c = positions[:, 1].clamp(0, heat.shape[1] - 1).numpy()
        np.maximum.at(heat, (r, c), per_patch)
        if heat.max() > 0:
            heat /= heat.max()
    mask = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(
        image.size, Image.Resampling.BILINEAR
    )
    red = Image.new("RGB", image.size, (255, 40, 0))
    alpha = mask.point(lambda v: int(v * 0.6))
    base = image.convert("RGB")
    base.paste(red, mask=alpha)
    return base


def metadata_matches(meta: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when every ``field: value`` of ``wanted`` is in ``meta`` with an equal value of the same JSON
    type (``2026`` matches ``2026`` and ``2026.0``, not ``"2026"``; ``true`` does not match ``1``)."""
    for key, value in wanted.items():
        if not isinstance(value, str | int | float | bool):
            raise InvalidInputError(
                f"metadata filter {key!r}: values must be strings, numbers or booleans, got {value!r}"
            )
        if key not in meta:
            return False
        have = meta[key]
        if isinstance(value, bool) or isinstance(have, bool):
            if not (isinstance(value, bool) and isinstance(have, bool) and have == value):
                return False
        elif isinstance(value, str) or isinstance(have, str):
            if not (isinstance(value, str) and isinstance(have, str) and have == value):
                return False
        elif not (isinstance(have, int | float) and have == value):
            return False
    return True


def _pack(units: list[UnitRows], per_doc: dict[int, np.ndarray]) -> np.ndarray:
    """Rows of every unit, in unit order, from per-document arrays ``{document_id: (n, ...)}``."""
    parts = [per_doc[u.document_id][u.offset : u.offset + u.n_patches] for u in units]
    return np.ascontiguousarray(np.concatenate(parts))  # (N, ...)


def _kmeans_ids(codes: np.ndarray, id_bytes: int) -> np.ndarray:
    """Centroid ids (N,) of residual k-means codes (N, id_bytes + residual bytes) uint8."""
    head = np.ascontiguousarray(codes[:, :id_bytes])  # (N, id_bytes)
    return head[:, 0] if id_bytes == 1 else head.view("<u2")[:, 0]


def _publish_folder(folder: Path, write: Callable[[Path], Any]) -> None:
    """Fill a temp folder with ``write(tmp)``, fsync it, rename it to ``folder`` (first writer wins)."""
    tmp = folder.with_name(f".{folder.name}-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    write(tmp)
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    try:
        tmp.rename(folder)
        fsync_dir(folder.parent)
    except OSError:  # another process published it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
