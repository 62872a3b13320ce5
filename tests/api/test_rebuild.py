"""Rebuilds: a new index version built beside the old one and swapped in atomically."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from patchseek.api.db.models import Collection, IndexVersion, Unit
from patchseek.api.services import (
    CollectionService,
    IngestService,
    JobService,
    RebuildService,
    SearchService,
    ServiceContext,
)
from patchseek.errors import ConflictError


@pytest.fixture
def ctx(settings):  # type: ignore[no-untyped-def]
    ctx = ServiceContext.from_settings(settings.model_copy(update={"ocr": False}))
    yield ctx
    ctx.close()


def _one_page_pdf(text: str) -> bytes:
    import io

    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.drawString(72, 720, text)
    pdf.save()
    return buf.getvalue()


def _ingest(ctx, name, files):  # type: ignore[no-untyped-def]
    ingest = IngestService(ctx)
    return ingest.run_job(ingest.submit(name, files, status="running").id)


def test_rebuild_swaps_versions_and_searches_never_stop(ctx, samples, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    _ingest(ctx, "c", [("report.pdf", samples.pdf.read_bytes())])
    search = SearchService(ctx)
    before = [(h.page, h.score) for h in search.search("c", query="glacier retreat").hits]
    rebuild = RebuildService(ctx)
    job = rebuild.submit("c")
    with pytest.raises(ConflictError):
        rebuild.submit("c")  # one rebuild at a time

    seen_during: list[list[int | None]] = []
    original = rebuild._encode

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        # While the new version is being built, search answers from the old one.
        seen_during.append([h.page for h in search.search("c", query="glacier retreat").hits])
        return original(*args, **kwargs)

    monkeypatch.setattr(rebuild, "_encode", spy)
    jobs = JobService(ctx)
    jobs.rebuild = rebuild
    assert jobs.claim() == job.id
    jobs.run(job.id)
    done = jobs.get(job.id)
    assert done.status == "succeeded" and done.result["index_version"] == 2
    assert seen_during == [[3, 1, 2]]
    assert [(h.page, h.score) for h in search.search("c", query="glacier retreat").hits] == before
    with ctx.db.session() as session:
        collection = session.scalar(select(Collection))
        versions = {v.number: v.status for v in session.scalars(select(IndexVersion))}
        assert versions == {1: "retired", 2: "active"}
        unit_versions = set(session.scalars(select(Unit.index_version_id)))
        assert unit_versions == {collection.active_version_id}
    assert not ctx.index_root(collection.id, 1).exists()


def test_document_ingested_during_rebuild_is_kept(ctx, samples, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    _ingest(ctx, "c", [("report.pdf", samples.pdf.read_bytes())])
    rebuild = RebuildService(ctx)
    job = rebuild.submit("c", status="running")
    original = rebuild._encode
    calls = []

    def ingest_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not calls:
            _ingest(ctx, "c", [("late.pdf", _one_page_pdf("espresso and croissant"))])
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(rebuild, "_encode", ingest_meanwhile)
    assert rebuild.run_job(job.id).status == "succeeded"
    assert calls == ["report.pdf", "late.pdf"]  # the late document was picked up before the swap
    hits = SearchService(ctx).search("c", query="espresso croissant", top_k=1).hits
    assert hits and hits[0].document == "late.pdf"
