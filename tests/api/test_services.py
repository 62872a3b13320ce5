"""Services against SQLite and PostgreSQL: migrations, duplicates, job claiming, deletes, visibility."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, select

from patchseek.api.db.models import Document, Job, Unit
from patchseek.api.services import CollectionService, IngestService, JobService, SearchService, ServiceContext
from patchseek.errors import ConflictError, InvalidInputError, NotFoundError


@pytest.fixture
def ctx(settings):  # type: ignore[no-untyped-def]
    ctx = ServiceContext.from_settings(settings.model_copy(update={"ocr": False}))
    yield ctx
    ctx.close()


def test_migrations_create_every_table(ctx) -> None:  # type: ignore[no-untyped-def]
    tables = set(inspect(ctx.db.engine).get_table_names())
    assert {"collections", "documents", "units", "jobs", "index_versions", "alembic_version"} <= tables
    # Running the upgrade again is a no-op.
    ServiceContext.from_settings(ctx.settings).close()


def test_collections(ctx) -> None:  # type: ignore[no-untyped-def]
    service = CollectionService(ctx)
    service.create("a", description="first")
    with pytest.raises(ConflictError):
        service.create("a")
    assert service.create("a", exist_ok=True).name == "a"
    with pytest.raises(InvalidInputError):
        service.create("../x")
    with pytest.raises(NotFoundError):
        service.get("b")
    collection, n_docs, n_units = service.get("a")
    assert (collection.description, n_docs, n_units) == ("first", 0, 0)
    service.delete("a")
    assert service.list() == []


def test_duplicates_and_visibility(ctx, samples) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    ingest, search = IngestService(ctx), SearchService(ctx)
    pdf = samples.pdf.read_bytes()
    job = ingest.submit("c", [("report.pdf", pdf), ("copy.pdf", pdf)])
    # The second copy in the same call is already a duplicate; nothing is searchable before the job runs.
    assert job.total == 1 and job.result["documents"][0]["status"] == "duplicate"
    assert search.search("c", query="glacier").hits == []
    job = ingest.run_job(job.id)
    assert job.status == "succeeded"
    hits = search.search("c", query="glacier retreat").hits
    assert hits[0].page == 3
    again = ingest.submit("c", [("again.pdf", pdf)])
    assert again.status == "succeeded" and again.result["documents"][0]["duplicate_of"] == hits[0].document_id
    # Delete: gone from search and from the database, units included.
    ingest.delete_document("c", hits[0].document_id)
    assert search.search("c", query="glacier retreat").hits == []
    with ctx.db.session() as session:
        assert session.scalars(select(Unit)).all() == []


def test_failed_document_leaves_nothing_visible(ctx, samples) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    ingest = IngestService(ctx)
    job = ingest.submit("c", [("bad.pdf", b"%PDF-1.7 garbage"), ("report.pdf", samples.pdf.read_bytes())])
    job = ingest.run_job(job.id)
    assert job.status == "partial"
    with ctx.db.session() as session:
        docs = {d.filename: d for d in session.scalars(select(Document))}
        assert docs["bad.pdf"].status == "failed" and docs["bad.pdf"].error_code == "unreadable_document"
        units = session.scalars(select(Unit)).all()
        assert {u.document_id for u in units} == {docs["report.pdf"].id}


def test_each_job_is_claimed_once(ctx, samples) -> None:  # type: ignore[no-untyped-def]
    """Several workers polling at once never run the same job (SKIP LOCKED on PostgreSQL)."""
    CollectionService(ctx).create("c")
    ingest = IngestService(ctx)
    ids = {
        ingest.submit("c", [(f"f{i}.png", samples.receipt.read_bytes() + bytes([i]))]).id for i in range(8)
    }
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        service = JobService(ctx)
        while (job_id := service.claim()) is not None:
            with lock:
                claimed.append(job_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    with ctx.db.session() as session:
        assert {j.status for j in session.scalars(select(Job))} == {"running"}


def test_cancel_and_requeue(ctx, samples) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    ingest, jobs = IngestService(ctx), JobService(ctx)
    job = ingest.submit("c", [("r.png", samples.receipt.read_bytes())])
    assert jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(ConflictError):
        jobs.cancel(job.id)
    assert jobs.claim() is None
    with ctx.db.session() as session:
        assert session.scalars(select(Document.status)).all() == ["failed"]
    # The cancelled file can be uploaded again.
    assert ingest.submit("c", [("r.png", samples.receipt.read_bytes())]).total == 1
    assert jobs.cancel(jobs.claim() or -1).status == "cancelled"
    job2 = ingest.submit("c", [("w.jpg", samples.whiteboard.read_bytes())])
    assert jobs.claim() == job2.id
    # A worker died: once its heartbeat is old, its running job goes back to the queue.
    assert jobs.requeue_stale() == 0
    assert jobs.requeue_stale(max_age_seconds=0) == 1
    assert jobs.run_pending() == 1
    assert jobs.get(job2.id).status == "succeeded"


def test_crashed_job_is_recovered_and_duplicates_collapse(ctx, samples) -> None:  # type: ignore[no-untyped-def]
    """A job left 'running' by a dead process: its pending document does not block a re-upload, the
    stale job is re-queued by heartbeat age, and the copy that finishes second is dropped."""
    CollectionService(ctx).create("c")
    ingest, jobs = IngestService(ctx), JobService(ctx)
    pdf = samples.pdf.read_bytes()
    dead = ingest.submit("c", [("report.pdf", pdf)])
    assert jobs.claim() == dead.id  # ...and the process that claimed it died here
    assert jobs.requeue_stale() == 0  # its heartbeat is fresh: maybe it is still alive
    retry = ingest.run_job(ingest.submit("c", [("report.pdf", pdf)], status="running").id)
    assert retry.result["documents"][0]["status"] == "ready"
    assert jobs.requeue_stale(max_age_seconds=0) == 1
    assert jobs.run_pending() == 1
    recovered = jobs.get(dead.id)
    assert recovered.status == "succeeded"
    assert recovered.result["documents"][0]["status"] == "duplicate"
    with ctx.db.session() as session:
        assert session.scalars(select(Document.status)).all() == ["ready"]
    assert len(SearchService(ctx).search("c", query="glacier", top_k=10).hits) == 3
