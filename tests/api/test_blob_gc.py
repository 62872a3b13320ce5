"""Deleting a document or a collection removes its blobs once nothing else references them (issue 12,
finding 8), and the orphan sweep (``patchseek gc``, workers at start) removes blobs nothing ever came to
reference; checked by listing the blob store on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from patchseek.api.db.models import Job, utcnow
from patchseek.api.services import CollectionService, IngestService, ServiceContext
from patchseek.api.services.blobgc import sweep_orphan_blobs
from patchseek.indexer.blobs import BlobStore
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


def _backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _gc(data: Path, *args: str) -> str:
    env = {**os.environ, "PATCHSEEK_DATA_DIR": str(data), "PATCHSEEK_OCR": "false"}
    env.pop("PATCHSEEK_DATABASE_URL", None)
    env.pop("PATCHSEEK_ORPHAN_GRACE_SECONDS", None)
    done = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", "gc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestOrphanSweep:
    """Blobs nothing references (a page rendered for a document that then failed, or by a process
    killed before its rows committed) leave the store once older than the grace period; referenced
    blobs never do, however old."""

    def test_patchseek_gc_removes_only_old_unreferenced_blobs(self, tmp_path: Path, samples) -> None:  # type: ignore[no-untyped-def]
        data = tmp_path / "data"
        ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False))
        try:
            CollectionService(ctx).create("a")
            ingest = IngestService(ctx)
            job = ingest.run_job(
                ingest.submit("a", [("report.pdf", samples.pdf.read_bytes())], status="running").id
            )
            assert job.status == "succeeded"
            referenced = _files(ctx.settings.blob_dir)
            assert len(referenced) == 1 + 2 * 3  # the PDF, then an image and a thumbnail per page
            orphan = ctx.blobs.path(ctx.blobs.put(b"a page image whose document failed"))
            young = ctx.blobs.path(ctx.blobs.put(b"a page image of an ingest still running"))
            temp = orphan.parent / ".tmp-killedwriter"
            temp.write_bytes(b"half a blob")
        finally:
            ctx.close()
        for p in data.joinpath("blobs").rglob("*"):
            if p.is_file() and p != young:
                _backdate(p, 600)  # old, referenced or not

        out = _gc(data)  # the default grace (an hour): nothing is old enough
        assert "0 removed" in out
        assert _files(data / "blobs") == referenced | {orphan.name, young.name, temp.name}

        out = _gc(data, "--grace", "300")
        assert "1 removed" in out and "1 unreferenced kept" in out
        assert _files(data / "blobs") == referenced | {young.name}

        # What is left is what the database references: every page still opens through the API layer.
        ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False))
        try:
            for key in referenced:
                assert ctx.blobs.get(key)
        finally:
            ctx.close()

    def test_blobs_of_a_running_job_survive_past_the_grace(
        self, tmp_path: Path, samples, database_url
    ) -> None:  # type: ignore[no-untyped-def]
        ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", database_url, ocr=False))
        try:
            CollectionService(ctx).create("a")
            ingest = IngestService(ctx)
            done = ingest.submit("a", [("receipt.png", samples.receipt.read_bytes())], status="running")
            assert ingest.run_job(done.id).status == "succeeded"
            job = ingest.submit("a", [("report.pdf", samples.pdf.read_bytes())], status="running")
            # A long job: it started ten minutes ago and wrote this page five minutes ago; its rows have
            # not committed yet. The grace (one minute) is over, but the job is still running.
            with ctx.db.session() as session:
                session.get(Job, job.id).started_at = utcnow() - timedelta(minutes=10)  # type: ignore[union-attr]
            page = ctx.blobs.path(ctx.blobs.put(b"page 1 of a long PDF"))
            for p in ctx.settings.blob_dir.rglob("*"):
                _backdate(p, 300)
            report = sweep_orphan_blobs(ctx.db, ctx.blobs, 60)
            assert (report.stored, report.referenced, report.removed) == (5, 4, 0)
            assert page.exists()
            with ctx.db.session() as session:
                session.get(Job, job.id).status = "failed"  # type: ignore[union-attr]
            report = sweep_orphan_blobs(ctx.db, ctx.blobs, 60)
            assert (report.stored, report.referenced, report.removed) == (5, 4, 1)
            assert not page.exists()
        finally:
            ctx.close()

    def test_put_of_stored_bytes_makes_an_old_orphan_young_again(self, tmp_path: Path) -> None:
        blobs = BlobStore(tmp_path / "blobs")
        old = blobs.path(blobs.put(b"an upload nobody kept"))
        again = blobs.path(blobs.put(b"the same upload, again"))
        _backdate(old, 600)
        _backdate(again, 600)
        blobs.put(b"the same upload, again")  # a new upload of these bytes; its rows not committed yet
        cutoff = time.time() - 300
        assert blobs.remove_if_older(old.name, cutoff) is True
        assert blobs.remove_if_older(again.name, cutoff) is False
        assert not old.exists() and again.exists()
        assert blobs.get(again.name) == b"the same upload, again"
        assert not [p for p in again.parent.iterdir() if p.name.startswith(".")]  # nothing left aside
