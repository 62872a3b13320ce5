"""Collections created with compression settings ingest, store and search through the codecs."""

from __future__ import annotations

import io

import pytest
from reportlab.pdfgen import canvas
from sqlalchemy import func, select

from patchseek.api.db.models import Unit
from patchseek.api.services import CollectionService, IngestService, SearchService, ServiceContext
from patchseek.errors import InvalidInputError

TOPICS = [
    "glacier retreat meltwater alpine summer",
    "quarterly revenue solar panel installations",
    "employee onboarding laptop badge mentor",
    "volcanic eruption lava basalt crater",
    "photosynthesis chlorophyll green leaves",
    "harbour coffee espresso croissant receipt",
    "sprint planning backlog release checklist",
    "hyperbolic geometry metric triangle",
]


def _pdf(pages: list[str]) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for text in pages:
        for i, word in enumerate(text.split()):
            pdf.drawString(72 + 60 * (i % 5), 720 - 40 * (i // 5), word)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


@pytest.fixture
def ctx(tmp_path):  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", None, ocr=False))
    yield ctx
    ctx.close()


@pytest.mark.parametrize(
    "compression",
    [
        {"quantizer": "binary"},
        {"quantizer": "kmeans", "kmeans_k": 16},
        {"quantizer": "pq", "pq_m": 8, "kmeans_k": 16},
        {"quantizer": "bebr"},
        {"prune": "topp", "prune_ratio": 0.5, "prune_min": 2},
        {"merge": "hierarchical", "pool_factor": 2, "prune_min": 2, "quantizer": "binary"},
    ],
)
def test_compressed_collection_answers_like_exact(ctx, compression) -> None:  # type: ignore[no-untyped-def]
    CollectionService(ctx).create("exact")
    CollectionService(ctx).create("small", compression=compression)
    data = _pdf(TOPICS)
    ingest = IngestService(ctx)
    for name in ("exact", "small"):
        ingest.run_job(ingest.submit(name, [("topics.pdf", data)], status="running").id)
    search = SearchService(ctx)
    for page, topic in enumerate(TOPICS, 1):
        query = " ".join(topic.split()[:2])
        exact = search.search("exact", query=query, top_k=3).hits
        small = search.search("small", query=query, top_k=3).hits
        assert exact[0].page == page
        assert small[0].page == page, (compression, query)
    if compression.get("prune") == "topp":
        with ctx.db.session() as session:
            stored = dict(
                session.execute(
                    select(Unit.collection_id, func.sum(Unit.n_patches)).group_by(Unit.collection_id)
                ).all()
            )
        assert stored[2] < stored[1]  # pruning stores fewer patches


def test_unknown_compression_settings_are_refused(ctx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError):
        CollectionService(ctx).create("bad", compression={"quantizer": "zip"})
    with pytest.raises(InvalidInputError):
        CollectionService(ctx).create("bad", compression={"nonsense": 1})


def test_video_segments_merge_consecutive_frames(tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", None, video_interval=1.0))
    try:
        CollectionService(ctx).create("v", compression={"video_segment_frames": 3, "prune_min": 2})
        ingest = IngestService(ctx)
        job = ingest.run_job(
            ingest.submit("v", [("lecture.mp4", samples.video.read_bytes())], status="running").id
        )
        assert job.result["documents"][0]["n_units"] == 2  # 6 one-second frames -> 2 segments of 3
        hits = SearchService(ctx).search("v", query="volcanic lava", top_k=2).hits
        assert (hits[0].kind, hits[0].t_start, hits[0].t_end) == ("segment", 3.0, 6.0)
        assert hits[0].text == "Volcanic eruptions and lava flows"
    finally:
        ctx.close()
