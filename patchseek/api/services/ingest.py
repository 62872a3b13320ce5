"""Ingestion: uploads become documents, documents become units in a segment of the index, in one commit.

A document is invisible to search until the transaction that inserts its units, marks it ready, records
its segment and bumps the collection's generation commits; the segment is written and published before
that (searches show ready documents only). A failure (corrupt, encrypted,
unsupported file, or an unexpected error) marks that one document failed with a code and a message;
the rest of the job goes on and nothing of the failed document is visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from patchseek import metrics
from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit, utcnow
from patchseek.api.services.blobgc import blob_keys_of, release_blobs
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.errors import (
    ConflictError,
    InvalidInputError,
    JobInterrupted,
    NotFoundError,
    PatchseekError,
    PayloadTooLargeError,
)
from patchseek.indexer.compress import CompressionConfig
from patchseek.indexer.pipeline import EncodedDocument, encode_document, write_documents
from patchseek.search.engine import IndexEngine

log = logging.getLogger(__name__)

DocumentProgress = Callable[[str, int, int], None]  # (filename, units done, units expected) in one file


@dataclass(frozen=True)
class IngestProgress:
    """Where a running ingest job stands; reported after every encoded page, image or video frame.

    ``units_total`` counts the units of the documents opened so far (a PDF's page count, an image's 1,
    a video's expected frames or shots): it grows as each document is opened, and once the last one
    is done it equals ``units_done``. Documents count the same way as the job's ``progress``/``total``.
    """

    filename: str
    units_done: int
    units_total: int
    documents_done: int
    documents_total: int


IngestProgressFn = Callable[[IngestProgress], None]


@dataclass(frozen=True)
class _Encoded:
    document_id: int
    filename: str
    key: str
    collection_id: int
    version: IndexVersion
    encoded: EncodedDocument


@dataclass(frozen=True)
class _Ready:
    """An encoded document written to ``segment`` (unpublished), its unit rows and patch counts."""

    document_id: int
    filename: str
    key: str
    collection_id: int
    media_type: str
    rows: list[dict[str, Any]]
    n_patches: list[int]
    segment: str


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


class IngestService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # -- submission -------------------------------------------------------------------------------

    def submit(
        self,
        collection_name: str,
        files: Sequence[tuple[str, bytes | None]],
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
        # A file over the upload limit fails alone (``file_too_large`` in the job's results); only a
        # call of nothing but such files is refused whole (413).
        limit = self.ctx.settings.max_upload_bytes
        too_large = [
            DocumentResult(
                _safe_filename(name),
                "failed",
                error=f"the file is over the upload limit of {limit} bytes (PATCHSEEK_MAX_UPLOAD_BYTES)",
                code="file_too_large",
            ).to_dict()
            for name, data in files
            if data is None or len(data) > limit
        ]
        accepted = [(name, data) for name, data in files if data is not None and len(data) <= limit]
        if not accepted:
            raise PayloadTooLargeError(
                f"every file is over the upload limit of {limit} bytes (PATCHSEEK_MAX_UPLOAD_BYTES)"
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
            for filename, data in accepted:
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
            job.result = {"documents": [*too_large, *duplicates]}
            job.total = len(document_ids)
            if not document_ids:
                job.status = "succeeded"
                job.finished_at = utcnow()
            return job

    # -- processing -------------------------------------------------------------------------------

    def run_job(
        self, job_id: int, progress: IngestProgressFn | None = None, *, ray_address: str | None = None
    ) -> Job:
        """Ingest every pending document of a claimed job, recording per-document results.

        Documents are encoded one by one (a failure fails that document alone) and buffered; every
        ``settings.segment_rows`` patch rows, and at the end, the buffer becomes one segment of the
        collection's index, published and then made visible by one database transaction
        (``_publish``). A job of small files therefore writes one segment. After every encoded unit the
        job's ``units_done``/``units_total`` (and heartbeat) are written and ``progress`` is called.

        With ``ray_address`` (or ``PATCHSEEK_RAY_ADDRESS``, unless ``PATCHSEEK_RAY_JOBS=false``) the job
        runs on that Ray cluster instead (``_run_on_cluster``).
        """
        address = ray_address or self.ctx.settings.jobs_ray_address
        if address:
            return self._run_on_cluster(job_id, progress, address)
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            document_ids = list(job.payload.get("document_ids", []))
            # A job re-queued after a crash starts from what its documents reported before; the
            # pages of the one it was encoding when the worker died are counted again.
            counter = _UnitCounter(self, job_id, job.units_done, job.progress, job.total, progress)
        beat = counter.unit
        pending: list[_Encoded] = []
        pending_rows = 0
        queue = list(document_ids)
        retries = 0
        cancelled = interrupted = False
        while queue or pending:
            if queue and self.ctx.stopping.is_set():
                interrupted, queue = True, []  # publish what is encoded; the rest stays pending
            if queue:
                document_id = queue.pop(0)
                with self.ctx.db.session() as session:
                    job = session.get(Job, job_id)
                    if job is None or job.status == "cancelled":
                        cancelled = True
                        queue = []
                        continue
                    doc = session.get(Document, document_id)
                    if doc is None or doc.status != "pending":
                        continue
                item = self._encode(document_id, beat)
                counter.document_done()
                if isinstance(item, DocumentResult):
                    self._record(job_id, [item])
                    continue
                pending.append(item)
                pending_rows += item.encoded.n_rows  # a running count: summing per document is quadratic
                if pending_rows < self.ctx.settings.segment_rows and queue:
                    continue
            if not pending:
                continue
            results, again = self._publish(pending)
            pending, pending_rows = [], 0
            self._record(job_id, results)
            if again:  # a rebuild swapped versions meanwhile: encode those again for the new one
                retries += 1
                if retries > 3:
                    conflict = ConflictError("the index version kept changing during ingestion; upload again")
                    self._record(
                        job_id, [self._fail(d, "", None, conflict.code, str(conflict)) for d in again]
                    )
                else:
                    queue = again + queue
        if interrupted and not cancelled:
            raise JobInterrupted("the process is shutting down")
        return self._finish(job_id, cancelled)

    def _finish(self, job_id: int, cancelled: bool) -> Job:
        """The job's final status from its documents' results (documents never started of a cancelled
        job are failed with ``cancelled``)."""
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} was deleted while it ran")
            if cancelled:
                job.status = "cancelled"
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

    def _run_on_cluster(self, job_id: int, progress: IngestProgressFn | None, address: str) -> Job:
        """The job as one Ray Data job on the cluster at ``address`` (``patchseek.indexer.distributed``):
        its pending documents are rendered, encoded and written as segments there; here, every segment
        is published in one manifest swap and every document made visible in one transaction
        (``_commit``). A cancelled job publishes nothing (its documents are failed ``cancelled``); a
        shutdown publishes nothing and re-queues the job (``JobInterrupted``), whose re-run skips the
        documents already ready. Progress (units and documents) reaches the job row and ``progress``
        every half second.
        """
        from patchseek.indexer.distributed import DocumentTask, encode_job, ray_options, run_distributed

        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            queue = [int(d) for d in job.payload.get("document_ids", [])]
            units_before, documents_before, documents_total = job.units_done, job.progress, job.total
        cancelled = False
        retries = 0
        while queue:
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                if job is None or job.status == "cancelled":
                    cancelled = True
                    break
                docs = session.scalars(
                    select(Document)
                    .where(Document.id.in_(queue), Document.status == "pending")
                    .order_by(Document.id)
                ).all()
                if not docs:
                    break
                tasks = [DocumentTask(d.id, d.filename, d.sha256) for d in docs]
                keys = {d.id: d.sha256 for d in docs}
                collection = session.get(Collection, docs[0].collection_id)
                if collection is None:
                    raise NotFoundError("the collection was deleted during ingestion")
                version = active_version(session, collection)
                session.expunge(version)
            spec = encode_job(
                self.ctx.settings,
                self.ctx.blobs.root,
                self.ctx.index_root(version.collection_id, version.number),
                version,
                self.ctx.read_options,
                index_prefix=self.ctx.index_prefix(version.collection_id, version.number),
            )
            reported = [0]

            def on_progress(
                done: int,
                expected: int,
                documents: int,
                before: int = units_before,
                documents_before: int = documents_before,
                reported: list[int] = reported,
            ) -> None:
                reported[0] = done
                self._write_progress(
                    job_id,
                    units_done=before + done,
                    units_total=before + expected,
                    progress=min(documents_total, documents_before + documents),
                )
                if progress is not None:
                    progress(
                        IngestProgress(
                            "",
                            before + done,
                            before + expected,
                            documents_before + documents,
                            documents_total,
                        )
                    )

            started = time.perf_counter()
            result = run_distributed(
                spec,
                tasks,
                ray_options(self.ctx.settings, address),
                progress=on_progress,
                should_stop=lambda: self.ctx.stopping.is_set() or self._is_cancelled(job_id),
            )
            metrics.INGEST_SECONDS.inc(time.perf_counter() - started)
            if result.cancelled:
                if self._is_cancelled(job_id):
                    cancelled = True
                    break
                raise JobInterrupted("the process is shutting down")
            units_before += reported[0]
            documents_before += len(result.outcomes)
            self._record(
                job_id,
                [
                    self._fail(o.document_id, o.filename, None, o.code or "internal_error", o.error or "")
                    for o in result.outcomes
                    if not o.ok
                ],
            )
            ready = [
                _Ready(
                    o.document_id,
                    o.filename,
                    keys[o.document_id],
                    version.collection_id,
                    o.media_type or "",
                    o.rows,
                    o.n_patches,
                    o.segment or "",
                )
                for o in result.outcomes
                if o.ok
            ]
            queue = []
            if ready:
                results, again = self._commit(version, ready, result.segments)
                self._record(job_id, results)
                if again:  # a rebuild swapped versions meanwhile: encode those again for the new one
                    retries += 1
                    if retries > 3:
                        conflict = ConflictError(
                            "the index version kept changing during ingestion; upload again"
                        )
                        self._record(
                            job_id, [self._fail(d, "", None, conflict.code, str(conflict)) for d in again]
                        )
                    else:
                        queue = again  # still pending: ``_commit`` left them untouched
        return self._finish(job_id, cancelled)

    def _is_cancelled(self, job_id: int) -> bool:
        with self.ctx.db.session() as session:
            return session.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"

    def _record(self, job_id: int, results: list[DocumentResult]) -> None:
        if not results:
            return
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            job.result = {"documents": [*job.result.get("documents", []), *(r.to_dict() for r in results)]}
            job.heartbeat_at = utcnow()
        for r in results:
            metrics.DOCUMENTS_INGESTED.labels(r.status).inc()
            metrics.UNITS_INGESTED.inc(r.n_units)

    def _write_progress(self, job_id: int, **values: int) -> None:
        """One UPDATE of the job's counters; it refreshes the heartbeat too."""
        with self.ctx.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values, heartbeat_at=utcnow()))

    def _encode(self, document_id: int, progress: DocumentProgress | None) -> _Encoded | DocumentResult:
        """Read and encode one pending document for the active index version, or its failure."""
        start = time.perf_counter()
        with self.ctx.db.session() as session:
            doc = session.get(Document, document_id)
            if doc is None:
                raise NotFoundError(f"document {document_id} does not exist")
            filename, key, collection_id = doc.filename, doc.sha256, doc.collection_id
            collection = session.get(Collection, collection_id)
            if collection is None:
                raise NotFoundError("the collection was deleted during ingestion")
            version = active_version(session, collection)
            session.expunge(version)
        try:
            encoded = self.encode_source(key, version, progress, filename)
        except PatchseekError as exc:
            return self._fail(document_id, filename, None, exc.code, str(exc))
        except Exception as exc:  # one bad file must not stop the batch
            log.exception("unexpected error while ingesting %s", filename)
            return self._fail(
                document_id,
                filename,
                None,
                "internal_error",
                f"unexpected error: {type(exc).__name__}: {exc}",
            )
        finally:
            metrics.INGEST_SECONDS.inc(time.perf_counter() - start)
        return _Encoded(document_id, filename, key, collection_id, version, encoded)

    def _publish(self, items: list[_Encoded]) -> tuple[list[DocumentResult], list[int]]:
        """Write ``items`` (one index version) as one segment, publish it, then make the documents
        visible in one transaction that records the segment. Returns the results and the documents to
        encode again (their version was swapped out meanwhile)."""
        version = items[0].version
        assert all(i.version.id == version.id for i in items)
        engine = self.ctx.version_index(version)
        segment = write_documents(engine, [(i.document_id, i.encoded) for i in items])
        ready = [
            _Ready(
                i.document_id,
                i.filename,
                i.key,
                i.collection_id,
                i.encoded.media_type,
                i.encoded.rows,
                [b.n_patches for b in i.encoded.bags],
                segment,
            )
            for i in items
        ]
        return self._commit(version, ready, [segment])

    def _commit(
        self, version: IndexVersion, items: list[_Ready], segments: list[str]
    ) -> tuple[list[DocumentResult], list[int]]:
        """Publish ``segments`` (holding ``items``, all of ``version``) in one manifest swap, then make
        the documents visible in one transaction that records their segments. Returns the results and
        the documents to encode again (their version was swapped out meanwhile)."""
        engine = self.ctx.version_index(version)
        # Published before the commit: until it, the documents are pending and no search shows them;
        # a crash in between leaves rows that the re-run replaces (publish is an upsert per document).
        # The first fit of the collection's state waits until the documents are visible (below).
        engine.publish(segments, fit=False)
        results: list[DocumentResult] = []
        again: list[int] = []
        dropped: list[int] = []
        with self.ctx.db.session() as session:
            # Lock the collection row: a rebuild's swap and this publish never interleave.
            collection = session.scalar(
                select(Collection).where(Collection.id == version.collection_id).with_for_update()
            )
            for item in items:
                doc = session.get(Document, item.document_id)
                if collection is None or doc is None:
                    dropped.append(item.document_id)
                    continue
                if collection.active_version_id != version.id:
                    again.append(item.document_id)
                    continue
                twin = session.scalar(
                    select(Document.id).where(
                        Document.collection_id == item.collection_id,
                        Document.sha256 == item.key,
                        Document.status == "ready",
                        Document.id != item.document_id,
                    )
                )
                if twin is not None:
                    # The same bytes were published meanwhile (a concurrent upload, or a re-run after a
                    # crash): this copy is dropped instead of indexed twice.
                    session.delete(doc)
                    dropped.append(item.document_id)
                    results.append(
                        DocumentResult(
                            item.filename,
                            "duplicate",
                            None,
                            0,
                            item.media_type,
                            "the same bytes are already in this collection",
                            "duplicate",
                            int(twin),
                        )
                    )
                    continue
                add_units(
                    session, item.collection_id, version.id, item.document_id, item.rows, item.n_patches
                )
                doc.status, doc.n_units, doc.media_type = "ready", len(item.rows), item.media_type
                doc.error = doc.error_code = None
                doc.segment = item.segment
                results.append(
                    DocumentResult(item.filename, "ready", item.document_id, len(item.rows), item.media_type)
                )
            if collection is not None and any(r.status == "ready" for r in results):
                collection.generation += 1
        if dropped or again:
            engine.delete_documents(dropped + again)
        if engine.auto_fit:
            _fit_if_due(engine)
        return results, again

    def encode_source(
        self,
        key: str,
        version: IndexVersion,
        progress: DocumentProgress | None = None,
        filename: str = "",
    ) -> EncodedDocument:
        """Read a stored file and encode its units with ``version``'s encoder (the pipeline's first
        stages); unit images are stored as blobs."""
        encoder = self.ctx.encoder(version.encoder)
        if encoder.dim != version.dim:
            raise ConflictError(
                f"the encoder now gives {encoder.dim}-d vectors but the index holds {version.dim}-d ones; "
                "rebuild the collection"
            )
        return encode_document(
            self.ctx.blobs.get(key),
            encoder=encoder,
            read_options=self.ctx.read_options,
            compression=CompressionConfig.from_dict(version.compression),
            blobs=self.ctx.blobs,
            batch_size=self.ctx.settings.batch_size or getattr(encoder, "batch_size", 4),
            thumbnail_size=self.ctx.settings.thumbnail_size,
            progress=None if progress is None else (lambda n, expected: progress(filename, n, expected)),
        )

    def _fail(
        self, document_id: int, filename: str, media_type: str | None, code: str, message: str
    ) -> DocumentResult:
        with self.ctx.db.session() as session:
            doc = session.get(Document, document_id)
            if doc is not None:
                doc.status, doc.error, doc.error_code, doc.media_type = "failed", message, code, media_type
                filename = filename or doc.filename
        return DocumentResult(filename, "failed", document_id, 0, media_type, message, code)

    # -- documents --------------------------------------------------------------------------------

    def delete_document(self, collection_name: str, document_id: int) -> None:
        """Remove a document: its units leave search in the same commit; segment files follow."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            doc = session.get(Document, document_id)
            if doc is None or doc.collection_id != collection.id:
                raise NotFoundError(f"document {document_id} is not in collection {collection_name!r}")
            version = active_version(session, collection)
            session.expunge(version)
            keys = blob_keys_of(session, [document_id])
            session.execute(delete(Unit).where(Unit.document_id == document_id))
            session.delete(doc)
            collection.generation += 1
        # Invisible from the commit on (searches show ready documents only); the tombstone lets a merge
        # drop its rows; its bytes and page images go once nothing else references them.
        self.ctx.version_index(version).delete_documents([document_id])
        with self.ctx.db.session() as session:
            release_blobs(session, self.ctx.blobs, keys)


class _UnitCounter:
    """A job's unit and document counters: the pipeline's per-document reports become job totals,
    written to the job row (``units_done``, ``units_total``, ``progress``) and passed on."""

    def __init__(
        self,
        service: IngestService,
        job_id: int,
        units_before: int,
        documents_before: int,
        documents_total: int,
        callback: IngestProgressFn | None,
    ) -> None:
        self.service, self.job_id, self.callback = service, job_id, callback
        self.finished = units_before  # units of the documents done with
        self.documents_done, self.documents_total = documents_before, documents_total
        self.done = self.expected = 0  # of the document being encoded
        self.filename = ""

    def unit(self, filename: str, done: int, expected: int) -> None:
        """The pipeline's report for the document being encoded: ``done`` of ``expected`` units."""
        self.filename, self.done, self.expected = filename, done, max(done, expected)
        self.service._write_progress(
            self.job_id, units_done=self.finished + done, units_total=self.finished + self.expected
        )
        self._report()

    def document_done(self) -> None:
        """The document is encoded (or failed): its units are final, whatever it was expected to have."""
        self.finished += self.done
        self.done = self.expected = 0
        self.documents_done += 1
        self.service._write_progress(
            self.job_id, progress=self.documents_done, units_done=self.finished, units_total=self.finished
        )
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            self.callback(
                IngestProgress(
                    self.filename,
                    self.finished + self.done,
                    self.finished + self.expected,
                    self.documents_done,
                    self.documents_total,
                )
            )


def _fit_if_due(engine: IndexEngine) -> None:
    """Fit the index's state when ``fit_rule`` now holds (after the documents went visible: they are
    scored exactly meanwhile). A failed fit loses nothing: it is logged and the next publish tries again."""
    try:
        engine.fit()
    except Exception:
        log.exception("fitting the index state of %s failed; it stays unfitted (exact scoring)", engine.root)


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


def add_units(
    session: Session,
    collection_id: int,
    version_id: int,
    document_id: int,
    rows: Sequence[dict[str, Any]],
    n_patches: Sequence[int],
) -> None:
    """Insert a document's unit rows for one index version (their vectors live in its segments, found
    by ``(document_id, ordinal)``); ``n_patches`` is each unit's patch count."""
    for row, n in zip(rows, n_patches, strict=True):
        session.add(
            Unit(
                document_id=document_id,
                collection_id=collection_id,
                index_version_id=version_id,
                patch_offset=0,
                n_patches=int(n),
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
