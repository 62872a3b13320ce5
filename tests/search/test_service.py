"""SearchService on the three-stage retriever: FAISS stage 1, saved derived parts, immediate deletes."""

from __future__ import annotations

import pytest

from patchseek.api.services import CollectionService, IngestService, JobService, SearchService, ServiceContext
from patchseek.errors import InvalidInputError
from tests.api.test_compressed_collections import TOPICS, _pdf

pytest.importorskip("faiss")


@pytest.fixture
def ctx(tmp_path):  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", None, ocr=False))
    yield ctx
    ctx.close()


@pytest.mark.parametrize(
    "compression", [{"quantizer": "kmeans", "kmeans_k": 16}, {"quantizer": "binary"}, {}]
)
def test_faiss_stage1_answers_like_the_exact_scan(ctx, compression, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Above the size threshold the service searches through FAISS lists (from the k-means codes, or
    from coarse centroids of its own for other codecs) and finds what the exact scan finds."""
    import patchseek.api.services.search as search_module

    monkeypatch.setattr(search_module, "EXACT_UNITS", 4)  # 16 pages: FAISS by default
    CollectionService(ctx).create("c", compression=compression)
    ingest = IngestService(ctx)
    first, second = _pdf(TOPICS), _pdf([t.upper() for t in TOPICS])
    ingest.run_job(ingest.submit("c", [("a.pdf", first), ("b.pdf", second)], status="running").id)
    search = SearchService(ctx)
    for topic in TOPICS:
        query = " ".join(topic.split()[:2])
        auto = search.search("c", query=query, top_k=3)
        exact = search.search("c", query=query, top_k=3, stage1="exact")
        assert [h.unit_id for h in auto.hits][:1] == [h.unit_id for h in exact.hits][:1]
    cached = search._cache[1]
    # Without a codec, auto scans each unit's dense summary rows; with one, it probes the FAISS lists.
    assert cached.retriever.generator is not None
    assert cached.retriever.stage1_kind() == ("faiss" if compression else "dense")
    for topic in TOPICS:  # the FAISS lists answer too when asked for
        query = " ".join(topic.split()[:2])
        forced = search.search("c", query=query, top_k=3, stage1="faiss")
        assert (
            forced.hits[0].unit_id == search.search("c", query=query, top_k=3, stage1="exact").hits[0].unit_id
        )
    version_dir = ctx.segments.folder(1, 1)
    parts = {p.name.split(".")[1] for p in version_dir.glob("doc-*.npy")}
    if compression:
        assert "codes" in parts  # saved once, reused by the next process
    if compression.get("quantizer") != "kmeans":
        assert "coarse" in parts and (version_dir / "ivf" / "centroids.npy").exists()
    if not compression:  # no codec: stage 2 scores each unit's patches pooled per coarse centroid
        assert {"pooled", "pooled_spans", "dense"} <= parts
        assert cached.retriever.dense is not None and cached.retriever.dense.n_units == cached.n_units
        retriever = cached.retriever
        assert retriever.compressor is not None and retriever.compressor.quantizer.kind == "none"
        assert 0 < int(retriever.offsets[-1]) < int(retriever.vectors.lengths.sum())
        saved = {p: p.stat().st_mtime_ns for p in version_dir.glob("doc-*.*.npy") if "vectors" not in p.name}
        again = SearchService(ctx)  # a fresh process reads the saved rows instead of pooling again
        hits = again.search("c", query=" ".join(TOPICS[0].split()[:2]), top_k=3).hits
        assert (
            hits[0].unit_id
            == search.search("c", query=" ".join(TOPICS[0].split()[:2]), top_k=3).hits[0].unit_id
        )
        assert {
            p: p.stat().st_mtime_ns for p in version_dir.glob("doc-*.*.npy") if "vectors" not in p.name
        } == saved


def test_deleted_document_leaves_results_at_once(ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import patchseek.api.services.search as search_module

    monkeypatch.setattr(search_module, "EXACT_UNITS", 4)
    CollectionService(ctx).create("c", compression={"quantizer": "kmeans", "kmeans_k": 16})
    ingest = IngestService(ctx)
    job = ingest.run_job(ingest.submit("c", [("a.pdf", _pdf(TOPICS)), ("b.pdf", _pdf(TOPICS[::-1]))]).id)
    doc_a = next(d["document_id"] for d in job.result["documents"] if d["filename"] == "a.pdf")
    search = SearchService(ctx)
    hits = search.search("c", query="glacier retreat", top_k=5).hits
    assert {h.document_id for h in hits[:2]} == {doc_a, doc_a + 1}
    ingest.delete_document("c", doc_a)
    after = search.search("c", query="glacier retreat", top_k=5).hits
    assert after and doc_a not in {h.document_id for h in after}
    only_a = search.search("c", query="glacier retreat", top_k=5, document_ids=[doc_a]).hits
    assert only_a == []


def test_forced_faiss_on_a_small_collection_and_bad_stage1(ctx) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    ingest = IngestService(ctx)
    ingest.run_job(ingest.submit("c", [("a.pdf", _pdf(TOPICS))], status="running").id)
    search = SearchService(ctx)
    exact = search.search("c", query="volcanic eruption", top_k=2)
    forced = search.search("c", query="volcanic eruption", top_k=2, stage1="faiss")
    assert forced.hits[0].unit_id == exact.hits[0].unit_id and forced.hits[0].page == 4
    with pytest.raises(InvalidInputError):
        search.search("c", query="volcanic eruption", stage1="hnsw")
    with pytest.raises(InvalidInputError, match="no dense stage-1 rows"):  # small: scanned exactly
        search.search("c", query="volcanic eruption", stage1="dense")


def test_metadata_filters_match_values_of_the_same_json_type() -> None:
    from patchseek.api.services.search import metadata_matches

    meta = {"team": "design", "year": 2026, "draft": False, "score": 0.5}
    assert metadata_matches(meta, {"team": "design", "year": 2026})
    assert metadata_matches(meta, {"year": 2026.0, "draft": False, "score": 0.5})
    assert not metadata_matches(meta, {"year": "2026"})  # a string never equals a number
    assert not metadata_matches(meta, {"draft": 0})  # nor a boolean a number
    assert not metadata_matches(meta, {"team": "Design"})
    assert not metadata_matches(meta, {"owner": "design"})  # a missing field never matches
    with pytest.raises(InvalidInputError):
        metadata_matches(meta, {"team": ["design"]})


def test_jobs_save_the_search_parts_before_the_first_query(ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A worker that finishes an ingest job computes the derived parts (coarse ids, pooled and dense
    rows); the first search then only reads them."""
    import patchseek.api.services.search as search_module

    monkeypatch.setattr(search_module, "EXACT_UNITS", 4)
    CollectionService(ctx).create("c")
    job = IngestService(ctx).submit("c", [("a.pdf", _pdf(TOPICS)), ("b.pdf", _pdf(TOPICS[::-1]))])
    jobs = JobService(ctx)
    assert jobs.claim() == job.id
    jobs.run(job.id)
    assert jobs.get(job.id).status == "succeeded"
    version_dir = ctx.segments.folder(1, 1)
    saved = {p: p.stat().st_mtime_ns for p in version_dir.glob("doc-*.*.npy") if "vectors" not in p.name}
    assert {p.name.split(".")[1] for p in saved} >= {"coarse", "pooled", "pooled_spans", "dense"}
    hits = SearchService(ctx).search("c", query="glacier retreat", top_k=3).hits
    assert hits and hits[0].text and "glacier" in hits[0].text.lower()
    assert {
        p: p.stat().st_mtime_ns for p in version_dir.glob("doc-*.*.npy") if "vectors" not in p.name
    } == saved
