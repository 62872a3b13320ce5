"""Search: encode the query, score the collection's packed index, return hits with citations."""

from __future__ import annotations

import io
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select

from patchseek import metrics
from patchseek.api.db.models import Collection, Document, IndexVersion, Unit
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.errors import InvalidInputError, NotFoundError
from patchseek.indexer.compress import CompressedBatch, CompressionConfig, Compressor
from patchseek.indexer.sources import read_image
from patchseek.search.retriever import PackedIndex, UnitRows, search, search_compressed
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
    index: PackedIndex
    media_types: torch.Tensor  # (n_units,) int8 code per unit, see _MEDIA
    compressor: Compressor | None = None  # the version's fitted codec, when it has one
    codes: CompressedBatch | None = None  # every unit's codes, in index order


_MEDIA = {"pdf": 0, "image": 1, "video": 2}


class SearchService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._cache: dict[int, _CachedIndex] = {}
        self._lock = threading.Lock()

    def _index(self, collection: Collection) -> _CachedIndex:
        """The collection's packed index, rebuilt only when its generation or version changed."""
        key = (collection.generation, int(collection.active_version_id or 0))
        with self._lock:
            cached = self._cache.get(collection.id)
            if cached is not None and cached.key == key:
                return cached
            with self.ctx.db.session() as session:
                version = active_version(session, collection)
                rows = session.execute(
                    select(Unit.id, Unit.document_id, Unit.patch_offset, Unit.n_patches, Document.media_type)
                    .join(Document, Document.id == Unit.document_id)
                    .where(Unit.index_version_id == version.id, Document.status == "ready")
                    .order_by(Unit.id)
                ).all()
            arrays = {
                doc_id: self.ctx.segments.read(collection.id, version.number, doc_id).vectors
                for doc_id in {r.document_id for r in rows}
            }
            index = PackedIndex.build(
                [UnitRows(r.id, r.document_id, r.patch_offset, r.n_patches) for r in rows],
                arrays,
                version.dim,
            )
            media = torch.tensor([_MEDIA.get(r.media_type or "", -1) for r in rows], dtype=torch.int8)
            compressor, codes = self._codes(collection.id, version, index)
            cached = _CachedIndex(key, index, media, compressor, codes)
            self._cache[collection.id] = cached
            return cached

    def _codes(
        self, collection_id: int, version: IndexVersion, index: PackedIndex
    ) -> tuple[Compressor | None, CompressedBatch | None]:
        """Quantize the index with the version's codec: fitted once on the version's vectors and saved
        beside its segment files, reused after that (a rebuild fits a new one)."""
        config = CompressionConfig.from_dict(version.compression or {})
        if config.quantizer == "none" or index.n_units == 0 or int(index.offsets[-1]) == 0:
            return None, None
        bags = [
            PatchBag(
                index.vectors[int(a) : int(b)],
                torch.zeros(int(b) - int(a)),
                torch.zeros(int(b) - int(a), 2, dtype=torch.int64),
                (0, 0),
            )
            for a, b in zip(index.offsets[:-1].tolist(), index.offsets[1:].tolist(), strict=True)
        ]
        folder = self.ctx.segments.folder(collection_id, version.number) / "codec"
        if (folder / "compression.json").exists():
            compressor = Compressor.load(folder)
        else:
            compressor = Compressor(config)
            compressor.fit(bags, compressed=True)
            tmp = folder.with_name(f".codec-{uuid.uuid4().hex}")
            compressor.save(tmp)
            try:
                tmp.rename(folder)
            except OSError:  # another process saved one first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
                compressor = Compressor.load(folder)
        return compressor, compressor.encode(bags, compressed=True)

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
    ) -> SearchResult:
        """Top ``top_k`` units for a text ``query`` or an ``image`` query, optionally filtered.

        Collections with a quantizer are searched in stages: approximate scores on the codes pick
        ``candidates`` units, which (with ``rerank``) are re-scored exactly on the stored vectors.
        """
        start = time.perf_counter()
        if (query is None or not query.strip()) and image is None:
            raise InvalidInputError("give a non-empty text query or an image")
        if not 1 <= top_k <= self.ctx.settings.max_top_k:
            raise InvalidInputError(f"top_k must be between 1 and {self.ctx.settings.max_top_k}")
        for m in media_types or []:
            if m not in _MEDIA:
                raise InvalidInputError(f"unknown media type {m!r}; use pdf, image or video")
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
        encoder = self.ctx.encoder(collection.encoder)
        if image is not None:
            q = encoder.encode_image_queries([read_image(image).image])[0]
        else:
            q = encoder.encode_queries([query or ""])[0]
        cached = self._index(collection)
        index = cached.index
        mask = None
        if document_ids:
            mask = torch.isin(index.doc_ids, torch.tensor(list(document_ids), dtype=torch.int64))
        if media_types:
            codes = torch.tensor([_MEDIA[m] for m in media_types], dtype=torch.int8)
            media_mask = torch.isin(cached.media_types, codes)
            mask = media_mask if mask is None else mask & media_mask
        if cached.compressor is not None and cached.codes is not None and q.shape[0]:
            approx = cached.compressor.score(q, cached.codes)  # (n_units,)
            scored = search_compressed(
                index, approx, q, top_k, candidates=candidates, exact_rerank=rerank, unit_mask=mask
            )
        else:
            scored = search(index, q, top_k, unit_mask=mask)
        hits = self._hits(scored)
        took = time.perf_counter() - start
        metrics.SEARCH_LATENCY.observe(took)
        return SearchResult(query, hits, took * 1000, index.n_units)

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
