"""SearchService on the index engine: FAISS / dense stage 1 from the fitted state, derived parts written
with each segment, immediate deletes."""

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


@pytest.fixture
def small_thresholds(monkeypatch):  # type: ignore[no-untyped-def]
    """Scale the engine's size rules down to a 16-page collection: FAISS / dense stage 1 from 4 units,
    a fitted state once 4 units (and one vector per centroid) are in."""
    import patchseek.search.engine as engine_module

    monkeypatch.setattr(engine_module, "EXACT_THRESHOLD", 4)
    monkeypatch.setattr(engine_module, "DENSE_FIT_UNITS", 4)
    monkeypatch.setattr(engine_module, "MIN_FIT_POINTS", 1)


def _parts(ctx) -> set[str]:  # type: ignore[no-untyped-def]
    snap = ctx.index(1, 1, 128, None).snapshot()
    return {k for r in snap.readers for k in r.file.parts}


@pytest.mark.parametrize(
    "compression", [{"quantizer": "kmeans", "kmeans_k": 16, "keep": "float16"}, {"quantizer": "binary"}, {}]
)
def test_faiss_stage1_answers_like_the_exact_scan(ctx, compression, small_thresholds) -> None:  # type: ignore[no-untyped-def]
    """Above the size threshold the service searches through FAISS lists (from the k-means codes, or
    from coarse centroids of the fitted state for other codecs), or the dense summary rows without a
    codec, and finds what the exact scan finds; every derived part was written with the segment."""
    from patchseek.search.engine import REGISTRY

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
    snap = ctx.index(1, 1, 128, None).snapshot()
    assert snap.state is not None  # fitted at the publish that made the rule hold
    assert snap.stage1_kind() == ("faiss" if compression else "dense")
    for topic in TOPICS:  # the FAISS lists answer too when asked for
        query = " ".join(topic.split()[:2])
        forced = search.search("c", query=query, top_k=3, stage1="faiss")
        assert (
            forced.hits[0].unit_id == search.search("c", query=query, top_k=3, stage1="exact").hits[0].unit_id
        )
    parts = _parts(ctx)
    if compression:
        assert "codes" in parts
    if compression.get("quantizer") == "binary":  # keep='none': the codes are all that is stored
        assert "vectors" not in parts and "coarse" in parts
    if not compression:
        assert {"coarse", "dense", "vectors"} <= parts
    files = {p: p.stat().st_mtime_ns for p in ctx.index_root(1, 1).iterdir()}
    REGISTRY.drop(ctx.index_root(1, 1))  # a fresh process opens the same segments, computes nothing
    again = SearchService(ctx).search("c", query=" ".join(TOPICS[0].split()[:2]), top_k=3).hits
    assert (
        again[0].unit_id == search.search("c", query=" ".join(TOPICS[0].split()[:2]), top_k=3).hits[0].unit_id
    )
    assert {p: p.stat().st_mtime_ns for p in ctx.index_root(1, 1).iterdir()} == files


def test_deleted_document_leaves_results_at_once(ctx, small_thresholds) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c", compression={"quantizer": "kmeans", "kmeans_k": 16, "keep": "float16"})
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
    manifest = ctx.index(1, 1, 128, None).snapshot().manifest
    assert any(doc_a in t for t in manifest.tombstones.values())  # persisted for the merge


def test_small_collections_are_scanned_exactly_and_bad_stage1(ctx) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("c")
    ingest = IngestService(ctx)
    ingest.run_job(ingest.submit("c", [("a.pdf", _pdf(TOPICS))], status="running").id)
    search = SearchService(ctx)
    exact = search.search("c", query="volcanic eruption", top_k=2)
    assert exact.hits[0].page == 4
    with pytest.raises(InvalidInputError):
        search.search("c", query="volcanic eruption", stage1="hnsw")
    with pytest.raises(InvalidInputError, match="no dense stage-1 rows"):  # too small to fit its state
        search.search("c", query="volcanic eruption", stage1="dense")
    with pytest.raises(InvalidInputError, match="no FAISS stage-1 lists"):
        search.search("c", query="volcanic eruption", stage1="faiss")


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


def test_jobs_write_every_search_part_before_the_first_query(ctx, small_thresholds) -> None:  # type: ignore[no-untyped-def]
    """A worker's ingest job writes segments with every derived part (coarse ids, dense rows); the
    first search only reads them: no file of the index changes."""
    CollectionService(ctx).create("c")
    job = IngestService(ctx).submit("c", [("a.pdf", _pdf(TOPICS)), ("b.pdf", _pdf(TOPICS[::-1]))])
    jobs = JobService(ctx)
    assert jobs.claim() == job.id
    jobs.run(job.id)
    assert jobs.get(job.id).status == "succeeded"
    assert {"coarse", "dense"} <= _parts(ctx)
    files = {p: p.stat().st_mtime_ns for p in ctx.index_root(1, 1).iterdir()}
    hits = SearchService(ctx).search("c", query="glacier retreat", top_k=3).hits
    assert hits and hits[0].text and "glacier" in hits[0].text.lower()
    assert {p: p.stat().st_mtime_ns for p in ctx.index_root(1, 1).iterdir()} == files
