"""Index rebuilds: a new index version built beside the active one, then swapped in atomically.

Searches keep using the old version until the swap, a single transaction that moves
``Collection.active_version_id``; the old version's units and files are dropped afterwards. When the
encoder is unchanged the stored vectors are copied (no re-encoding); otherwise every document is read
again from its original bytes in the blob store and encoded with the new encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, exists, func, select

from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit, utcnow
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.api.services.ingest import DocumentResult, IngestService, add_units
from patchseek.errors import ConflictError, JobInterrupted, NotFoundError, PatchseekError
from patchseek.indexer.compress import CompressionConfig
from patchseek.indexer.pipeline import EncodedDocument, write_documents
from patchseek.types import PatchBag

UNIT_COLUMNS = (
    "ordinal",
    "kind",
    "page",
    "t_start",
    "t_end",
    "width",
    "height",
    "grid_rows",
    "grid_cols",
    "image_blob",
    "thumb_blob",
    "text",
)

log = logging.getLogger(__name__)


class RebuildService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ingest = IngestService(ctx)

    def submit(
        self,
        collection_name: str,
        *,
        encoder: str | None = None,
        compression: dict[str, Any] | None = None,
        status: str = "queued",
        reencode: bool = False,
    ) -> Job:
        """Queue a rebuild; ``encoder`` / ``compression`` default to the collection's current ones.

        A rebuild with the same encoder copies the stored vectors; ``reencode`` encodes every document
        again from its original bytes (as a rebuild on a Ray cluster always does).
        """
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            busy = session.scalar(
                select(func.count(Job.id)).where(
                    Job.collection_id == collection.id,
                    Job.kind == "rebuild",
                    Job.status.in_(("queued", "running")),
                )
            )
            if busy:
                raise ConflictError(f"collection {collection_name!r} already has a rebuild queued or running")
            if encoder is not None:
                self.ctx.check_encoder_spec(encoder)
            if compression is not None:
                compression = CompressionConfig.from_dict(compression).to_dict()
            job = Job(
                collection_id=collection.id,
                kind="rebuild",
                status=status,
                payload={"encoder": encoder, "compression": compression, "reencode": reencode},
                result={},
                started_at=utcnow() if status == "running" else None,
            )
            session.add(job)
            session.flush()
            return job

    def run_job(self, job_id: int, *, ray_address: str | None = None) -> Job:
        """Build the new version, swap it in, drop the old one.

        With ``ray_address`` (or ``PATCHSEEK_RAY_ADDRESS``, unless ``PATCHSEEK_RAY_JOBS=false``) every
        document is encoded again on that Ray cluster (``_fill_on_cluster``): a copy of the stored vectors
        needs no cluster.
        """
        address = ray_address or self.ctx.settings.jobs_ray_address
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            collection = session.get(Collection, job.collection_id)
            if collection is None:
                raise NotFoundError("the collection was deleted")
            old = active_version(session, collection)
            spec = job.payload.get("encoder") or collection.encoder
            compression = job.payload.get("compression")
            compression = collection.compression if compression is None else compression
            reencode = bool(job.payload.get("reencode")) or bool(address)
            collection_id = collection.id
            old_id, old_number = old.id, old.number
            session.expunge(old)
        new, source = self._new_version(old, spec, compression, status="building")
        if reencode:
            source = None
        results: list[dict[str, Any]] = []
        engine = self.ctx.version_index(new)

        def check(done: int, total: int) -> None:
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status == "cancelled":
                    raise ConflictError("the rebuild was cancelled")
                job.total, job.progress, job.heartbeat_at = total, done, utcnow()
            if self.ctx.stopping.is_set():
                raise JobInterrupted("the process is shutting down")

        try:
            while True:
                if address:
                    self._fill_on_cluster(engine, new, results, check, job_id, address)
                else:
                    self._fill(engine, new, old_number, source, results, check)
                # Fit the codec and stage-1 centroids once, on a sample of the whole new version.
                engine.fit()
                if self._swap(collection_id, new, old_id):
                    break
        except Exception as exc:
            # The old version stays active; the half-built one is dropped.
            self._drop_version(collection_id, new.id, new.number)
            if isinstance(exc, JobInterrupted):
                raise  # re-queued by the job service; the next worker starts the rebuild again
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status != "cancelled":
                    job.status = "failed"
                job.error = str(exc) if isinstance(exc, PatchseekError) else f"{type(exc).__name__}: {exc}"
                job.result = {"documents": results}
                job.finished_at = utcnow()
                if not isinstance(exc, PatchseekError):
                    log.exception("rebuild %s failed", job_id)
                return job
        self._drop_version(collection_id, old_id, old_number)
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            failed = sum(r["status"] == "failed" for r in results)
            job.status = "partial" if failed else "succeeded"
            job.result = {"documents": results, "index_version": new.number}
            job.finished_at = utcnow()
            return job

    # ------------------------------------------------------------------------ shadow versions
    def build_shadow(
        self,
        collection_name: str,
        *,
        encoder: str | None = None,
        compression: dict[str, Any] | None = None,
        check: Callable[[int, int], None] | None = None,
    ) -> IndexVersion:
        """A version that search never serves unless asked for it (status ``"shadow"``), built like a
        rebuild's new version beside the active one, which keeps serving untouched.

        ``encoder`` / ``compression`` default to the active version's. Stored vectors are copied when the
        encoder and the ingest-side compression (pruning, merging, video segments) are the active
        version's; otherwise every document is encoded again from its original bytes. A version with a
        quantizer is fitted even below the fit rule (``fit(force=True)``), so that its codec is what
        gets measured; a codec-less one keeps the rule (a forced fit would add the dense stage-1 rows
        that only large collections get). ``check(done, total)`` is called after each document (it may
        raise to stop). Drop the version with ``drop_shadow`` or make it active with ``promote``.
        """
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            old = active_version(session, collection)
            session.expunge(old)
        if encoder is not None:
            self.ctx.check_encoder_spec(encoder)
        config = CompressionConfig.from_dict(old.compression if compression is None else compression)
        new, source = self._new_version(old, encoder or old.encoder, config.to_dict(), status="shadow")
        try:
            engine = self.ctx.version_index(new)
            self._fill(engine, new, old.number, source, [], check or (lambda done, total: None))
            if not engine.fit() and config.quantizer != "none":
                engine.fit(force=True)  # a codec is measured even where the collection is below its rule
        except BaseException:
            self.drop_shadow(new)
            raise
        return new

    def promote(self, shadow: IndexVersion) -> int:
        """Make a shadow version active by the rebuild's atomic swap (documents ingested since it was
        built are added first); the previous version is dropped. Returns the new active number."""
        with self.ctx.db.session() as session:
            collection = session.get(Collection, shadow.collection_id)
            if collection is None:
                raise NotFoundError("the collection was deleted")
            busy = session.scalar(
                select(func.count(Job.id)).where(
                    Job.collection_id == collection.id, Job.kind == "rebuild", Job.status == "running"
                )
            )
            if busy:
                raise ConflictError("a rebuild of the collection is running; promote after it ends")
            old = active_version(session, collection)
            session.expunge(old)
        source = self._source(old, shadow)
        engine = self.ctx.version_index(shadow)
        while True:
            self._fill(engine, shadow, old.number, source, [], lambda done, total: None)
            engine.fit()
            if self._swap(shadow.collection_id, shadow, old.id):
                break
        self._drop_version(old.collection_id, old.id, old.number)
        return shadow.number

    def drop_shadow(self, shadow: IndexVersion) -> None:
        """Delete a shadow version: its units, its row and its files (an active version is kept)."""
        with self.ctx.db.session() as session:
            version = session.get(IndexVersion, shadow.id)
            if version is not None and version.status != "shadow":
                return
            session.execute(delete(Unit).where(Unit.index_version_id == shadow.id))
            if version is not None:
                session.delete(version)
        self.ctx.drop_index(shadow.collection_id, shadow.number)

    # --------------------------------------------------------------------------- building
    def _new_version(
        self, old: IndexVersion, spec: str, compression: dict[str, Any], *, status: str
    ) -> tuple[IndexVersion, Any]:
        """A new version row with ``status`` and the engine to copy its stored vectors from (None:
        encode from the sources, see ``_source``)."""
        encoder = self.ctx.encoder(spec)
        with self.ctx.db.session() as session:
            number = session.scalar(
                select(func.max(IndexVersion.number)).where(IndexVersion.collection_id == old.collection_id)
            )
            new = IndexVersion(
                collection_id=old.collection_id,
                number=(number or 0) + 1,
                encoder=spec,
                encoder_revision=encoder.revision,
                dim=encoder.dim,
                compression=compression,
                status=status,
            )
            session.add(new)
            session.flush()
            session.expunge(new)
        # A rebuild copies the stored vectors whatever its pruning says (as it always has); a shadow,
        # built to measure that pruning, encodes again when it differs.
        return new, self._source(old, new, same_ingest=status != "shadow")

    def _source(self, old: IndexVersion, new: IndexVersion, *, same_ingest: bool = False) -> Any:
        """The old version's engine when ``new`` can copy its stored vectors: same encoder and revision,
        float rows kept, and (unless ``same_ingest``) the same pruning, merging and video segments."""
        if new.encoder != old.encoder or new.encoder_revision != old.encoder_revision:
            return None
        if not same_ingest and _ingest_side(new.compression) != _ingest_side(old.compression):
            return None
        source = self.ctx.version_index(old)
        if not all(r.has_rerank for r in source.snapshot().readers):
            return None  # keep='none': the stored codes are lossy, re-encode from the sources
        return source

    def _fill(
        self,
        engine: Any,
        new: IndexVersion,
        old_number: int,
        source: Any,
        results: list[dict[str, Any]],
        check: Callable[[int, int], None],
    ) -> None:
        """Write every ready document that has no units in ``new`` yet, until none is left (documents
        ingested meanwhile included); segments are published unfitted. ``check(done, total)`` runs
        after each document. A rebuild marks a document it cannot read failed (it would vanish at the
        swap); a shadow leaves the live document alone and only skips it."""
        shadow = new.status == "shadow"
        skipped: set[int] = set()
        while missing := [m for m in self._missing(new.collection_id, new.id) if m[0] not in skipped]:
            check(len(results), len(results) + len(missing))
            batch: list[tuple[int, str, EncodedDocument]] = []
            rows = 0  # patch rows in ``batch`` (a running count: summing per document is quadratic)
            for n, (document_id, filename, key) in enumerate(missing):
                item = self._encode(
                    document_id, filename, key, new, old_number, source, mark_failed=not shadow
                )
                if isinstance(item, dict):
                    results.append(item)
                    skipped.add(document_id)
                else:
                    batch.append((document_id, filename, item))
                    rows += item.n_rows
                if batch and (rows >= self.ctx.settings.segment_rows or n == len(missing) - 1):
                    results.extend(self._write(engine, new, batch))
                    batch, rows = [], 0
                check(len(results), len(results) + len(missing) - n - 1)

    def _fill_on_cluster(
        self,
        engine: Any,
        new: IndexVersion,
        results: list[dict[str, Any]],
        check: Callable[[int, int], None],
        job_id: int,
        address: str,
    ) -> None:
        """``_fill`` as Ray Data jobs (``patchseek.indexer.distributed``): every document missing from
        ``new`` is encoded from its original bytes on the cluster; each job's segments are published
        (unfitted) in one manifest swap and its unit rows added in one transaction. The job row gets the
        documents and units done every half second. ``check`` raises when the job is cancelled or the
        process stops (the caller drops the new version)."""
        from patchseek.indexer.distributed import DocumentTask, encode_job, ray_options, run_distributed

        skipped: set[int] = set()
        while missing := [m for m in self._missing(new.collection_id, new.id) if m[0] not in skipped]:
            check(len(results), len(results) + len(missing))
            before, total = len(results), len(results) + len(missing)

            def on_progress(
                done: int, expected: int, documents: int, before: int = before, total: int = total
            ) -> None:
                with self.ctx.db.session() as session:
                    job = session.get(Job, job_id)
                    if job is not None:
                        job.progress, job.total = min(total, before + documents), total
                        job.units_done, job.units_total, job.heartbeat_at = done, expected, utcnow()

            def should_stop() -> bool:
                with self.ctx.db.session() as session:
                    status = session.scalar(select(Job.status).where(Job.id == job_id))
                return self.ctx.stopping.is_set() or status == "cancelled"

            result = run_distributed(
                encode_job(
                    self.ctx.settings,
                    self.ctx.blobs.root,
                    self.ctx.index_root(new.collection_id, new.number),
                    new,
                    self.ctx.read_options,
                    index_prefix=self.ctx.index_prefix(new.collection_id, new.number),
                ),
                [DocumentTask(d, f, k) for d, f, k in missing],
                ray_options(self.ctx.settings, address),
                progress=on_progress,
                should_stop=should_stop,
            )
            if result.cancelled:
                check(before, total)  # raises: cancelled, or the process is stopping
                raise ConflictError("the rebuild was stopped")
            for o in result.outcomes:
                if o.ok:
                    continue
                # As ``_encode``: after the swap the document is marked failed, not silently gone.
                with self.ctx.db.session() as session:
                    doc = session.get(Document, o.document_id)
                    if doc is not None:
                        doc.status, doc.error, doc.error_code = "failed", f"rebuild: {o.error}", o.code
                results.append(
                    DocumentResult(o.filename, "failed", o.document_id, error=o.error, code=o.code).to_dict()
                )
                skipped.add(o.document_id)
            if not result.segments:
                continue
            engine.publish(result.segments, fit=False)
            gone = []
            with self.ctx.db.session() as session:
                for o in result.outcomes:
                    if not o.ok:
                        continue
                    if session.get(Document, o.document_id) is None:  # deleted meanwhile
                        gone.append(o.document_id)
                        continue
                    add_units(session, new.collection_id, new.id, o.document_id, o.rows, o.n_patches)
                    results.append(DocumentResult(o.filename, "ready", o.document_id, len(o.rows)).to_dict())
            if gone:
                engine.delete_documents(gone)
            check(len(results), total)

    def _missing(self, collection_id: int, version_id: int) -> list[tuple[int, str, str]]:
        """Ready documents that have no units in the new version yet."""
        with self.ctx.db.session() as session:
            has_units = exists().where(Unit.document_id == Document.id, Unit.index_version_id == version_id)
            rows = session.execute(
                select(Document.id, Document.filename, Document.sha256)
                .where(Document.collection_id == collection_id, Document.status == "ready", ~has_units)
                .order_by(Document.id)
            ).all()
            return [(r.id, r.filename, r.sha256) for r in rows]

    def _encode(
        self,
        document_id: int,
        filename: str,
        key: str,
        new: IndexVersion,
        old_number: int,
        source: Any,
        *,
        mark_failed: bool = True,
    ) -> EncodedDocument | dict[str, Any]:
        """A document's units for the new version: its stored vectors (``source``, the old version's
        engine) or a fresh encoding of its original bytes; a failure's result dict otherwise."""
        try:
            if source is not None:
                return self._stored(document_id, old_number, source)
            return self.ingest.encode_source(key, new, filename=filename)
        except PatchseekError as exc:
            # The document stays searchable in the old version until the swap; after it, it is marked
            # failed so that it does not silently disappear.
            if mark_failed:
                with self.ctx.db.session() as session:
                    doc = session.get(Document, document_id)
                    if doc is not None:
                        doc.status, doc.error, doc.error_code = "failed", f"rebuild: {exc}", exc.code
            return DocumentResult(filename, "failed", document_id, error=str(exc), code=exc.code).to_dict()

    def _write(
        self, engine: Any, new: IndexVersion, batch: list[tuple[int, str, EncodedDocument]]
    ) -> list[dict[str, Any]]:
        """One segment for ``batch`` in the new version, published (not fitted yet), and its unit rows."""
        segment = write_documents(engine, [(d, e) for d, _, e in batch])
        engine.publish([segment], fit=False)
        out, gone = [], []
        with self.ctx.db.session() as session:
            for document_id, filename, encoded in batch:
                if session.get(Document, document_id) is None:  # deleted meanwhile
                    gone.append(document_id)
                    continue
                add_units(
                    session,
                    new.collection_id,
                    new.id,
                    document_id,
                    encoded.rows,
                    [b.n_patches for b in encoded.bags],
                )
                out.append(DocumentResult(filename, "ready", document_id, len(encoded.rows)).to_dict())
        if gone:
            engine.delete_documents(gone)
        return out

    def _stored(self, document_id: int, old_number: int, source: Any) -> EncodedDocument:
        """The document's units and vectors as stored in the old version."""
        with self.ctx.db.session() as session:
            units = session.scalars(
                select(Unit)
                .join(IndexVersion, IndexVersion.id == Unit.index_version_id)
                .where(Unit.document_id == document_id, IndexVersion.number == old_number)
                .order_by(Unit.ordinal)
            ).all()
            media = session.scalar(select(Document.media_type).where(Document.id == document_id))
        snapshot = source.snapshot()
        rows, bags = [], []
        for u in units:
            bag = snapshot.unit_bag(document_id, u.ordinal)
            if bag is None:
                raise ConflictError(
                    f"document {document_id}'s units are missing from the index; re-upload it"
                )
            bags.append(
                PatchBag(bag.vectors, bag.salience, bag.positions, (u.grid_rows, u.grid_cols), u.text)
            )
            rows.append({c: getattr(u, c) for c in UNIT_COLUMNS})
        return EncodedDocument(media or "", rows, bags)

    def _swap(self, collection_id: int, new: IndexVersion, old_id: int) -> bool:
        """Make ``new`` active if no ready document is missing from it (checked under the row lock)."""
        with self.ctx.db.session() as session:
            collection = session.scalar(
                select(Collection).where(Collection.id == collection_id).with_for_update()
            )
            if collection is None:
                raise NotFoundError("the collection was deleted during the rebuild")
            has_units = exists().where(Unit.document_id == Document.id, Unit.index_version_id == new.id)
            late = session.scalar(
                select(func.count(Document.id)).where(
                    Document.collection_id == collection_id, Document.status == "ready", ~has_units
                )
            )
            if late:
                return False
            collection.active_version_id = new.id
            collection.encoder = new.encoder
            collection.compression = new.compression
            collection.generation += 1
            version = session.get(IndexVersion, new.id)
            old = session.get(IndexVersion, old_id)
            assert version is not None
            version.status = "active"
            if old is not None:
                old.status = "retired"
            return True

    def _drop_version(self, collection_id: int, version_id: int, number: int) -> None:
        with self.ctx.db.session() as session:
            session.execute(delete(Unit).where(Unit.index_version_id == version_id))
            version = session.get(IndexVersion, version_id)
            if version is not None and version.status != "active":
                version.status = "retired"
        self.ctx.drop_index(collection_id, number)


# Compression fields applied before the index engine (``compress_units``): changing one changes the
# stored vectors themselves.
_INGEST_FIELDS = (
    "prune",
    "prune_ratio",
    "prune_k",
    "prune_min",
    "merge",
    "pool_factor",
    "video_segment_frames",
)


def _ingest_side(compression: dict[str, Any] | None) -> tuple[Any, ...]:
    config = CompressionConfig.from_dict(compression or {}).to_dict()
    return tuple(config.get(f) for f in _INGEST_FIELDS)
