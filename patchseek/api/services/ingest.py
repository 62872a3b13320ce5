"""Ingestion: uploads become documents, documents become units and segment rows, in one commit.

A document is invisible to search until the transaction that inserts its units and bumps the
collection's generation commits; segment files are written before that. A failure (corrupt, encrypted,
unsupported file, or an unexpected error) marks that one document failed with a code and a message;
the rest of the job goes on and nothing of the failed document is visible.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from patchseek import metrics
from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit, utcnow
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PatchseekError,
    PayloadTooLargeError,
)
from patchseek.indexer.compress import CompressionConfig, Compressor
from patchseek.indexer.sources import read_units
from patchseek.types import PatchBag, SourceUnit

log = logging.getLogger(__name__)

DocumentProgress = Callable[[str, int], None]  # (filename, units done)


@dataclass(frozen=True)
class DocumentResult:
    """Outcome of one file of an ingest call."""

    filename: str
    status: str  # ready | failed | duplicate
    document_id: int | None = None
    n_units: int = 0
    media_type: str | None = None
    error: str | None = None
    code: str | None = None
    duplicate_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encode_image(image: Image.Image, *, max_side: int | None = None, quality: int = 90) -> bytes:
    if max_side is not None:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class IngestService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # -- submission -------------------------------------------------------------------------------

    def submit(
        self,
        collection_name: str,
        files: Sequence[tuple[str, bytes]],
        *,
        status: str = "queued",
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        """Store the files' bytes and queue one ingest job for them.

        Files whose bytes are already in the collection (ready or pending) are not ingested again; the
        job's result lists them as duplicates. ``status="running"`` creates a job the caller runs itself
        (the CLI), so no worker claims it. ``metadata`` (flat JSON: string, number or boolean values) is
        stored on every document of the call, for search filters.
        """
        metadata = validate_metadata(metadata or {})
        if not files:
            raise InvalidInputError("no files were given")
        limit = self.ctx.settings.max_upload_bytes
        for filename, data in files:
            if len(data) > limit:
                raise PayloadTooLargeError(
                    f"{filename!r} is {len(data)} bytes, over the upload limit of {limit} bytes"
                )
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            job = Job(
                collection_id=collection.id,
                kind="ingest",
                status=status,
                payload={},
                result={},
                started_at=utcnow() if status == "running" else None,
            )
            session.add(job)
            session.flush()
            duplicates: list[dict[str, Any]] = []
            document_ids: list[int] = []
            seen: dict[str, int] = {}
            for filename, data in files:
                key = self.ctx.blobs.put(data)
                existing = seen.get(key) or session.scalar(
                    select(Document.id).where(
                        Document.collection_id == collection.id,
                        Document.sha256 == key,
                        Document.status == "ready",
                    )
                )
                if existing is not None:
                    duplicates.append(
                        DocumentResult(
                            filename=filename,
                            status="duplicate",
                            duplicate_of=int(existing),
                            error="the same bytes are already in this collection",
                            code="duplicate",
                        ).to_dict()
                    )
                    continue
                doc = Document(
                    collection_id=collection.id,
                    filename=_safe_filename(filename),
                    sha256=key,
                    size_bytes=len(data),
                    status="pending",
                    job_id=job.id,
                    meta=dict(metadata),
                )
                session.add(doc)
                session.flush()
                seen[key] = doc.id
                document_ids.append(doc.id)
            job.payload = {"document_ids": document_ids}
            job.result = {"documents": duplicates}
            job.total = len(document_ids)
            if not document_ids:
                job.status = "succeeded"
                job.finished_at = utcnow()
            return job

    # -- processing -------------------------------------------------------------------------------

    def run_job(self, job_id: int, progress: DocumentProgress | None = None) -> Job:
        """Ingest every pending document of a claimed job, recording per-document results."""
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            document_ids = list(job.payload.get("document_ids", []))
        for document_id in document_ids:
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                if job is None or job.status == "cancelled":
                    break
                doc = session.get(Document, document_id)
                if doc is None or doc.status != "pending":
                    continue
            result = self.ingest_document(document_id, progress=self._with_heartbeat(job_id, progress))
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                if job is None:
                    break
                job.result = {"documents": [*job.result.get("documents", []), result.to_dict()]}
                job.progress = job.progress + 1
                job.heartbeat_at = utcnow()
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} was deleted while it ran")
            if job.status != "cancelled":
                statuses = [d["status"] for d in job.result.get("documents", [])]
                failed = statuses.count("failed")
                ok = len(statuses) - failed
                job.status = "failed" if failed and not ok else "partial" if failed else "succeeded"
            if job.status == "cancelled":
                # Documents that never started are dropped with the job's cancellation.
                for doc in session.scalars(
                    select(Document).where(Document.job_id == job.id, Document.status == "pending")
                ):
                    doc.status, doc.error, doc.error_code = "failed", "the job was cancelled", "cancelled"
            job.finished_at = utcnow()
            return job

    def _with_heartbeat(self, job_id: int, progress: DocumentProgress | None) -> DocumentProgress:
        """Wrap a progress callback so the job's heartbeat is refreshed (at most every 10 s)."""
        last = [time.monotonic()]

        def beat(filename: str, n_units: int) -> None:
            if time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                with self.ctx.db.session() as session:
                    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
            if progress is not None:
                progress(filename, n_units)

        return beat

    def ingest_document(self, document_id: int, progress: DocumentProgress | None = None) -> DocumentResult:
        start = time.perf_counter()
        result = self._ingest_document(document_id, progress)
        metrics.INGEST_SECONDS.inc(time.perf_counter() - start)
        metrics.DOCUMENTS_INGESTED.labels(result.status).inc()
        metrics.UNITS_INGESTED.inc(result.n_units)
        return result

    def _ingest_document(self, document_id: int, progress: DocumentProgress | None = None) -> DocumentResult:
        """Read, encode and publish one pending document; failures are recorded on the document.

        The units are written into the collection's active index version. If a rebuild swapped in a new
        version while this document was being encoded, it is encoded again for the new one, so no
        committed document is ever missing from the searchable version.
        """
        with self.ctx.db.session() as session:
            doc = session.get(Document, document_id)
            if doc is None:
                raise NotFoundError(f"document {document_id} does not exist")
            filename, key, collection_id = doc.filename, doc.sha256, doc.collection_id
        media_type: str | None = None
        try:
            for _attempt in range(3):
                with self.ctx.db.session() as session:
                    collection = session.get(Collection, collection_id)
                    if collection is None:
                        raise NotFoundError("the collection was deleted during ingestion")
                    version = active_version(session, collection)
                    session.expunge(version)
                media_type, rows, bags = self.encode_source(key, version, progress, filename)
                spans = self.ctx.segments.write(collection_id, version.number, document_id, bags)
                with self.ctx.db.session() as session:
                    # Lock the collection row: a rebuild's swap and this publish never interleave.
                    collection = session.scalar(
                        select(Collection).where(Collection.id == collection_id).with_for_update()
                    )
                    doc = session.get(Document, document_id)
                    if collection is None or doc is None:
                        raise NotFoundError(f"document {document_id} was deleted during ingestion")
                    if collection.active_version_id != version.id:
                        continue  # a rebuild swapped versions meanwhile: encode for the new one
                    twin = session.scalar(
                        select(Document.id).where(
                            Document.collection_id == collection_id,
                            Document.sha256 == key,
                            Document.status == "ready",
                            Document.id != document_id,
                        )
                    )
                    if twin is not None:
                        # The same bytes were published meanwhile (a concurrent upload, or a re-run
                        # after a crash): this copy is dropped instead of indexed twice.
                        session.delete(doc)
                    else:
                        add_units(session, collection_id, version.id, document_id, rows, spans)
                        doc.status, doc.n_units, doc.media_type = "ready", len(rows), media_type
                        doc.error = doc.error_code = None
                        collection.generation += 1
                    duplicate_of = None if twin is None else int(twin)
                if duplicate_of is not None:
                    self.ctx.segments.delete_document(collection_id, document_id)
                    return DocumentResult(
                        filename,
                        "duplicate",
                        None,
                        0,
                        media_type,
                        "the same bytes are already in this collection",
                        "duplicate",
                        duplicate_of,
                    )
                return DocumentResult(filename, "ready", document_id, len(rows), media_type)
            raise ConflictError("the index version kept changing during ingestion; upload the file again")
        except PatchseekError as exc:
            return self._fail(document_id, filename, media_type, exc.code, str(exc))
        except Exception as exc:  # one bad file must not stop the batch
            log.exception("unexpected error while ingesting %s", filename)
            return self._fail(
                document_id,
                filename,
                media_type,
                "internal_error",
                f"unexpected error: {type(exc).__name__}: {exc}",
            )

    def encode_source(
        self,
        key: str,
        version: IndexVersion,
        progress: DocumentProgress | None = None,
        filename: str = "",
    ) -> tuple[str, list[dict[str, Any]], list[PatchBag]]:
        """Read a stored file and encode its units with ``version``'s encoder.

        Returns the media type, one row of unit metadata per unit (images stored as blobs) and the bags.
        """
        data = self.ctx.blobs.get(key)
        media_type, units = read_units(data, self.ctx.read_options)
        encoder = self.ctx.encoder(version.encoder)
        if encoder.dim != version.dim:
            raise ConflictError(
                f"the encoder now gives {encoder.dim}-d vectors but the index holds {version.dim}-d ones; "
                "rebuild the collection"
            )
        rows: list[dict[str, Any]] = []
        bags: list[PatchBag] = []
        batch: list[SourceUnit] = []
        # Encode in small batches so a long PDF or video never holds all its images in memory.
        batch_size = max(1, self.ctx.settings.batch_size)
        for unit in units:
            batch.append(unit)
            if len(batch) >= batch_size:
                self._encode_batch(encoder, batch, rows, bags)
                batch = []
                if progress is not None:
                    progress(filename, len(rows))
        if batch:
            self._encode_batch(encoder, batch, rows, bags)
            if progress is not None:
                progress(filename, len(rows))
        if not rows:
            raise InvalidInputError("the file has no pages or frames")
        rows, bags = compress_units(CompressionConfig.from_dict(version.compression), media_type, rows, bags)
        return media_type, rows, bags

    def _encode_batch(
        self, encoder: Any, batch: list[SourceUnit], rows: list[dict[str, Any]], bags: list[PatchBag]
    ) -> None:
        size = self.ctx.settings.thumbnail_size
        for unit, bag in zip(batch, encoder.encode_units(batch), strict=True):
            rows.append(
                {
                    "ordinal": len(rows),
                    "kind": unit.kind,
                    "page": unit.page,
                    "t_start": unit.t_start,
                    "t_end": unit.t_end,
                    "width": unit.image.width,
                    "height": unit.image.height,
                    "grid_rows": bag.grid[0],
                    "grid_cols": bag.grid[1],
                    "image_blob": self.ctx.blobs.put(_encode_image(unit.image)),
                    "thumb_blob": self.ctx.blobs.put(_encode_image(unit.image, max_side=size, quality=80)),
                    "text": bag.text or unit.text,
                }
            )
            bags.append(bag)

    def _fail(
        self, document_id: int, filename: str, media_type: str | None, code: str, message: str
    ) -> DocumentResult:
        with self.ctx.db.session() as session:
            doc = session.get(Document, document_id)
            if doc is not None:
                doc.status, doc.error, doc.error_code, doc.media_type = "failed", message, code, media_type
        return DocumentResult(filename, "failed", document_id, 0, media_type, message, code)

    # -- documents --------------------------------------------------------------------------------

    def delete_document(self, collection_name: str, document_id: int) -> None:
        """Remove a document: its units leave search in the same commit; segment files follow."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            doc = session.get(Document, document_id)
            if doc is None or doc.collection_id != collection.id:
                raise NotFoundError(f"document {document_id} is not in collection {collection_name!r}")
            session.delete(doc)
            collection.generation += 1
            collection_id = collection.id
        self.ctx.segments.delete_document(collection_id, document_id)


def validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Document metadata is a flat object of at most 64 keys with scalar values."""
    if not isinstance(metadata, dict) or len(metadata) > 64:
        raise InvalidInputError("metadata must be a JSON object with at most 64 keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise InvalidInputError("metadata keys are strings of 1-128 characters")
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 1024):
            raise InvalidInputError(
                f"metadata value of {key!r} must be a string (<= 1024 chars), number or boolean"
            )
    return metadata


def compress_units(
    config: CompressionConfig, media_type: str, rows: list[dict[str, Any]], bags: list[PatchBag]
) -> tuple[list[dict[str, Any]], list[PatchBag]]:
    """Apply the collection's pruning and merging to a document's bags before they are stored.

    For video with ``video_segment_frames`` > 1, runs of consecutive frames become one ``segment`` unit
    spanning ``t_start`` of its first frame to ``t_end`` of its last (CenterCLIP-style medoids).
    Quantization is not applied here: the stored float16 rows stay the exact-rerank copy.
    """
    if config.prune == "none" and config.merge == "none" and config.video_segment_frames == 1:
        return rows, bags
    compressor = Compressor(config)
    per = config.video_segment_frames
    if media_type == "video" and per > 1:
        out_rows: list[dict[str, Any]] = []
        out_bags: list[PatchBag] = []
        for start in range(0, len(rows), per):
            chunk_rows, chunk_bags = rows[start : start + per], bags[start : start + per]
            nonempty = [b for b in chunk_bags if b.n_patches]
            texts = list(dict.fromkeys(r["text"] for r in chunk_rows if r["text"]))
            row = {
                **chunk_rows[0],
                "kind": "segment",
                "t_end": chunk_rows[-1]["t_end"],
                "text": " ".join(texts),
            }
            row["ordinal"] = len(out_rows)
            merged = compressor.compress_frames(nonempty)[0] if nonempty else chunk_bags[0]
            out_rows.append(row)
            out_bags.append(replace(merged, grid=chunk_bags[0].grid, text=row["text"]))
        return out_rows, out_bags
    out = [replace(compressor.compress_bag(b), grid=b.grid, text=b.text) if b.n_patches else b for b in bags]
    return rows, out


def add_units(
    session: Session,
    collection_id: int,
    version_id: int,
    document_id: int,
    rows: Sequence[dict[str, Any]],
    spans: Sequence[tuple[int, int]],
) -> None:
    """Insert a document's unit rows for one index version (``spans`` from ``SegmentStore.write``)."""
    for row, (offset, n) in zip(rows, spans, strict=True):
        session.add(
            Unit(
                document_id=document_id,
                collection_id=collection_id,
                index_version_id=version_id,
                patch_offset=offset,
                n_patches=n,
                **row,
            )
        )


# C0 and C1 control characters, for str.translate: PostgreSQL refuses NUL in text, and none of them
# belongs in a file name.
_CONTROL_CHARS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


def _safe_filename(name: str) -> str:
    """Keep only the last path component of a client-supplied name (never used as a path), without
    control characters."""
    base = name.translate(_CONTROL_CHARS).replace("\\", "/").rsplit("/", 1)[-1].strip() or "upload"
    return base[:512]
