"""Deleting a document or a collection removes its blobs once nothing else references them (issue 12,
finding 8), checked by listing the blob store on disk."""

from __future__ import annotations

from pathlib import Path

from patchseek.api.services import CollectionService, IngestService, ServiceContext
from tests.conftest import make_settings


def _files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_deletes_release_unshared_blobs(tmp_path: Path, samples) -> None:  # type: ignore[no-untyped-def]
    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", None, ocr=False))
    try:
        collections, ingest = CollectionService(ctx), IngestService(ctx)
        pdf, png = samples.pdf.read_bytes(), samples.receipt.read_bytes()
        collections.create("a")
        collections.create("b")
        job_a = ingest.run_job(ingest.submit("a", [("report.pdf", pdf)], status="running").id)
        after_a = _files(ctx.settings.blob_dir)
        ingest.run_job(ingest.submit("b", [("report.pdf", pdf), ("receipt.png", png)], status="running").id)
        with_b = _files(ctx.settings.blob_dir)
        assert after_a < with_b  # the receipt's bytes and images are new; the PDF's are shared
        ingest.delete_document("a", job_a.result["documents"][0]["document_id"])
        assert _files(ctx.settings.blob_dir) == with_b  # still used by collection b
        collections.delete("b")
        assert _files(ctx.settings.blob_dir) == set()  # nothing references anything any more
        assert not (ctx.settings.segment_dir / "2").exists()
    finally:
        ctx.close()
