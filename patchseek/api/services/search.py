"""Search: encode the query, search a snapshot of the collection's index engine, return hits with
citations, RAG context and heat maps."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from sqlalchemy import select

from patchseek import metrics
from patchseek.api.db.models import Collection, Document, IndexVersion, Unit
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.errors import InvalidInputError, NotFoundError
from patchseek.indexer.sources import read_image
from patchseek.search.candidates import STAGE1_CHOICES
from patchseek.search.engine import MEDIA_CODES, EngineHit, Filter
from patchseek.search.retriever import SearchParams
from patchseek.storage import StorageSpec


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
    """``partial``: some shards did not answer (``missing_shards``: their numbers and why); the hits
    are the best of the shards that did. Always False for a collection searched in-process."""

    query: str | None
    hits: list[Hit]
    took_ms: float
    n_units: int
    partial: bool = False
    missing_shards: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class _Visible:
    """The documents a collection's searches may show, read once per collection generation."""

    generation: int
    doc_ids: np.ndarray  # (n_ready,) sorted int64
    meta: dict[int, dict[str, Any]] | None  # upload metadata, read when a metadata filter first asks


_MEDIA = MEDIA_CODES
HEAT_RELATIVE = 0.6  # a heat-map patch lights when its best match is >= this share of the page's best
STAGE1_K = 1000  # units stage 1 hands to stage 2 (DESIGN.md: ~1000)


class SearchService:
    """The query path: encode the query, search a snapshot of the collection's index engine
    (``patchseek.search.engine``), turn the hits into citations. Nothing is built at query time: the
    engine's segments hold every derived part; a new segment or delete gives a new snapshot that reuses
    everything already loaded.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._visible: dict[int, _Visible] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------- the index
    def _version(self, collection: Collection, number: int | None = None) -> IndexVersion:
        """The collection's active index version, or its version ``number`` when given (how an
        evaluation queries a shadow version, which is never served otherwise)."""
        with self.ctx.db.session() as session:
            if number is None:
                version = active_version(session, collection)
            else:
                found = session.scalar(
                    select(IndexVersion).where(
                        IndexVersion.collection_id == collection.id, IndexVersion.number == number
                    )
                )
                if found is None or found.status == "retired":
                    raise NotFoundError(f"collection {collection.name!r} has no index version {number}")
                version = found
            session.expunge(version)
            return version

    def _visible_docs(self, collection: Collection, *, with_meta: bool = False) -> _Visible:
        """Ready documents of the collection, cached per generation (bumped by every commit that makes
        documents visible or removes them)."""
        with self._lock:
            cached = self._visible.get(collection.id)
        if (
            cached is not None
            and cached.generation == collection.generation
            and (cached.meta or not with_meta)
        ):
            return cached
        with self.ctx.db.session() as session:
            where = (Document.collection_id == collection.id, Document.status == "ready")
            if with_meta:
                pairs = session.execute(select(Document.id, Document.meta).where(*where)).all()
                meta: dict[int, dict[str, Any]] | None = {int(i): dict(m or {}) for i, m in pairs}
                ids = np.array(sorted(meta or {}), dtype=np.int64)
            else:
                ids = np.array(
                    sorted(session.scalars(select(Document.id).where(*where)).all()), dtype=np.int64
                )
                meta = None
        visible = _Visible(collection.generation, ids, meta)
        with self._lock:
            self._visible[collection.id] = visible
        return visible

    def prepare(self, collection_name: str) -> dict[str, Any]:
        """Index maintenance after a job: tiered merges (dropping tombstoned rows), removal of orphan
        files, and a refit check. Returns what was done; ``refit_due`` is True when the collection has
        outgrown its codec's fit (the caller queues a rebuild)."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
        engine = self.ctx.version_index(self._version(collection))
        merged = engine.maybe_merge()
        removed = engine.gc(grace_s=self.ctx.settings.orphan_grace_seconds)
        return {
            "merges": merged.merges,
            "rows_dropped": merged.rows_dropped,
            "files_removed": removed,
            "refit_due": engine.needs_refit(),
            "units": engine.snapshot().n_units,
        }

    def remove_orphan_files(self, grace_s: float | None = None) -> int:
        """``IndexEngine.gc`` on every active or building index version whose folder exists: segment
        files no manifest lists (written by a killed process), temp files and unused fitted state,
        older than ``grace_s`` (default ``PATCHSEEK_ORPHAN_GRACE_SECONDS``). Returns files removed."""
        grace = self.ctx.settings.orphan_grace_seconds if grace_s is None else grace_s
        with self.ctx.db.session() as session:
            versions = session.scalars(
                select(IndexVersion).where(IndexVersion.status.in_(("active", "building")))
            ).all()
            session.expunge_all()
        n = 0
        for version in versions:
            if self.ctx.index_files(version.collection_id, version.number).exists():
                n += self.ctx.version_index(version).gc(grace_s=grace)
        return n

    def stats(self, collection_name: str) -> dict[str, Any]:
        """Units, segments, fitted state and bytes per unit (on disk and in RAM, by part)."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
        return self.ctx.version_index(self._version(collection)).stats()

    # ---------------------------------------------------------------------------- searching
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
        index_version: int | None = None,
    ) -> SearchResult:
        """Top ``top_k`` units for a text ``query`` or an ``image`` query, optionally filtered.

        Three stages (``Snapshot.search``): ``stage1`` (``"auto"``: an exact scan below
        ``EXACT_THRESHOLD`` units; above it the dense summary scan for a collection without a codec,
        else FAISS inverted lists; ``"exact"`` / ``"dense"`` / ``"faiss"`` force one) picks ``stage1_k``
        units per segment; the codec's scores (or the dense scan's) keep ``candidates``, which (with
        ``rerank`` and kept vectors) are re-scored exactly. Filters (``document_ids``, ``media_types``
        and ``metadata``: every given field of the document's upload metadata equals the given string,
        number or boolean) apply before any scoring. ``index_version`` (a version number; the API never
        sets it) searches that version instead of the active one, with its own encoder.
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
        params = SearchParams(
            top_k=top_k,
            candidates=candidates,
            rerank=rerank,
            stage1=stage1,
            stage1_k=max(stage1_k, candidates),
            nprobe=nprobe,
        )
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            session.expunge(collection)
        version = self._version(collection, index_version)
        encoder = self.ctx.encoder(version.encoder)
        if image is not None:
            unit = read_image(image, max_pixels=self.ctx.settings.max_decode_pixels)
            q = encoder.encode_image_queries([unit.image])[0]
        else:
            q = encoder.encode_queries([query or ""])[0]
        visible = self._visible_docs(collection, with_meta=bool(metadata))
        allowed = None
        if metadata:
            assert visible.meta is not None
            allowed = np.array(
                sorted(d for d, meta in visible.meta.items() if metadata_matches(meta, metadata)),
                dtype=np.int64,
            )
        if document_ids:
            ids = np.array(sorted({int(d) for d in document_ids}), dtype=np.int64)
            allowed = ids if allowed is None else np.intersect1d(allowed, ids)
        flt = Filter(
            visible=visible.doc_ids,
            key=visible.generation,
            doc_ids=allowed,
            media=None if not media_types else np.array([_MEDIA[m] for m in media_types], dtype=np.int8),
        )
        missing: tuple[tuple[int, str], ...] = ()
        shards = self.ctx.shards if index_version is None else None
        if shards is not None:
            # Sharded serving: the shard servers search their segments of this version's folder.
            sharded = shards.search(
                collection.name,
                root=str(self.ctx.index_root(version.collection_id, version.number).resolve()),
                dim=version.dim,
                compression=version.compression,
                query=q,
                top_k=params.top_k,
                candidates=params.candidates,
                rerank=params.rerank,
                stage1=params.stage1,
                stage1_k=params.stage1_k,
                nprobe=params.nprobe,
                flt=flt,
                storage=StorageSpec.from_settings(self.ctx.settings),
                prefix=self.ctx.index_prefix(version.collection_id, version.number),
            )
            result = sharded.result
            missing = tuple((m.shard, m.reason) for m in sharded.missing)
        else:
            result = (
                self.ctx.version_index(version)
                .snapshot()
                .search(
                    q,
                    top_k_hits=params.top_k,
                    candidates=params.candidates,
                    rerank=params.rerank,
                    stage1=params.stage1,
                    stage1_k=params.stage1_k,
                    nprobe=params.nprobe,
                    flt=flt,
                )
            )
        hits = self._hits(version.id, result.hits)
        took = time.perf_counter() - start
        metrics.SEARCH_LATENCY.observe(took)
        return SearchResult(query, hits, took * 1000, result.n_units, bool(missing), missing)

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
            assert version is not None
            session.expunge(version)
            doc_id, ordinal, grid = unit.document_id, unit.ordinal, (unit.grid_rows, unit.grid_cols)
            image_key = unit.image_blob
        bag = self.ctx.version_index(version).snapshot().unit_bag(doc_id, ordinal)
        if bag is None:
            raise NotFoundError(f"unit {unit_id} is not in its collection's index")
        q = self.ctx.encoder(version.encoder).encode_queries([query])[0]
        image = Image.open(io.BytesIO(self.ctx.blobs.get(image_key)))
        out = io.BytesIO()
        unit_heatmap(image, bag.vectors, bag.positions, grid, q).save(out, format="JPEG", quality=85)
        return out.getvalue()

    def _hits(self, version_id: int, scored: list[EngineHit]) -> list[Hit]:
        """Engine hits ``(document, ordinal, score)`` as ``Hit``s; units whose document stopped being
        ready since the snapshot are dropped."""
        if not scored:
            return []
        with self.ctx.db.session() as session:
            rows = {
                (u.document_id, u.ordinal): (u, d)
                for u, d in session.execute(
                    select(Unit, Document)
                    .join(Document, Document.id == Unit.document_id)
                    .where(
                        Unit.index_version_id == version_id,
                        Unit.document_id.in_(sorted({s.doc_id for s in scored})),
                        Document.status == "ready",
                    )
                ).all()
            }
        hits = []
        for s in scored:
            found = rows.get((s.doc_id, s.ordinal))
            if found is None:  # deleted between scoring and lookup
                continue
            unit, doc = found
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
    of any query token with any patch in it (the MaxSim contribution). Only patches within
    ``HEAT_RELATIVE`` of the page's best match light up (scaled to [0, 1] above that threshold), so
    words that merely share n-grams with the query stay dark. The grid is laid evenly over the image,
    as the encoders lay it (pixel row ``y`` is in cell row ``y * rows // height``): each lit cell is
    tinted uniformly, its opacity its heat, and outlined; pixels of dark cells are left as they are.
    """
    rows, cols = max(grid[0], 1), max(grid[1], 1)
    heat = np.zeros((rows, cols), dtype=np.float32)
    if vectors.shape[0] and query.shape[0]:
        per_patch = (query.float() @ vectors.float().T).max(dim=0).values.clamp(min=0).numpy()  # (n,)
        r = positions[:, 0].clamp(0, rows - 1).numpy()
        c = positions[:, 1].clamp(0, cols - 1).numpy()
        np.maximum.at(heat, (r, c), per_patch)
        top = float(heat.max())
        if top > 0:
            floor = HEAT_RELATIVE * top
            heat = np.where(heat >= floor, (heat - floor) / max(top - floor, 1e-9) * 0.8 + 0.2, 0.0)
    width, height = image.size
    row_of = np.arange(height) * rows // height  # (height,) cell row of each pixel row
    col_of = np.arange(width) * cols // width  # (width,)
    opacity = (heat * 0.6 * 255).astype(np.uint8)  # (rows, cols)
    alpha = Image.fromarray(np.ascontiguousarray(opacity[np.ix_(row_of, col_of)]), mode="L")
    base = image.convert("RGB")
    base.paste(Image.new("RGB", image.size, (255, 40, 0)), mask=alpha)
    draw = ImageDraw.Draw(base)
    for r, c in zip(*np.nonzero(heat), strict=True):
        # The cell's pixels: the first and last x (y) whose cell column (row) is c (r).
        x0, x1 = -(-int(c) * width // cols), -(-(int(c) + 1) * width // cols) - 1
        y0, y1 = -(-int(r) * height // rows), -(-(int(r) + 1) * height // rows) - 1
        if x1 >= x0 and y1 >= y0:
            draw.rectangle((x0, y0, x1, y1), outline=(200, 20, 0))
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
