"""``kill -9`` during ``patchseek ingest`` and ``patchseek rebuild``: what was committed stays searchable and
complete, nothing half-written becomes visible, and running the command again finishes the work once."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from reportlab.pdfgen import canvas

from patchseek.api.services import SearchService, ServiceContext
from tests.conftest import make_settings

N_DOCS = 24
WORDS = (
    "glacier basalt quarterly espresso backlog chlorophyll harbour volcanic onboarding hyperbolic "
    "meltwater crater revenue croissant sprint leaves badge triangle mentor lava summer release metric"
).split()


def _pdf(doc: int) -> bytes:
    """Three pages whose words are unique to this document and page (``d7p2`` etc.)."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in range(3):
        words = [f"d{doc}p{page}", *WORDS[(doc + page) % len(WORDS) :][:8]]
        for i, word in enumerate(words):
            pdf.drawString(72 + 80 * (i % 4), 720 - 40 * (i // 4), word)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _env(data: Path) -> dict[str, str]:
    env = {**os.environ, "PATCHSEEK_DATA_DIR": str(data), "PATCHSEEK_OCR": "false", "PATCHSEEK_PDF_DPI": "72"}
    env.pop("PATCHSEEK_DATABASE_URL", None)
    return env


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patchseek.cli", *args],
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _query(data: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    db = data / "patchseek.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet / locked
        return []
    finally:
        conn.close()


def _kill_when(data: Path, args: list[str], ready: callable, timeout: float = 300) -> None:  # type: ignore[valid-type]
    """Start ``patchseek *args`` and ``kill -9`` it as soon as ``ready()`` holds (polling the database).

    Every document becomes its own segment (``PATCHSEEK_SEGMENT_ROWS=1``): the command then commits
    document by document, so there is a wide window between the first commits and the end of the work.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchseek.cli", *args],
        env={**_env(data), "PATCHSEEK_SEGMENT_ROWS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"patchseek {args[0]} finished before it could be killed; give it more work")
            time.sleep(0.02)
        else:
            pytest.fail(f"patchseek {args[0]} never reached the point to kill it")
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _check_visible_state(ctx: ServiceContext) -> dict[str, int]:
    """Every ready document is complete and findable; nothing of another document is visible.

    Returns ``{filename: document_id}`` of the ready documents.
    """
    search = SearchService(ctx)
    with ctx.db.session() as session:
        from sqlalchemy import select

        from patchseek.api.db.models import Collection, Document, IndexVersion, Unit

        collection = session.scalar(select(Collection).where(Collection.name == "c"))
        assert collection is not None
        version = session.get(IndexVersion, collection.active_version_id)
        assert version is not None
        docs = session.scalars(select(Document).where(Document.collection_id == collection.id)).all()
        ready = {d.filename: d.id for d in docs if d.status == "ready"}
        units = session.scalars(select(Unit).where(Unit.index_version_id == version.id)).all()
        by_doc: dict[int, list[Unit]] = {}
        for u in units:
            by_doc.setdefault(u.document_id, []).append(u)
        number = version.number
    assert set(by_doc) >= set(ready.values())
    snap = ctx.index(collection.id, number, version.dim, version.compression).snapshot()
    for doc_id in ready.values():
        assert sorted(u.page for u in by_doc[doc_id]) == [1, 2, 3]  # complete: every page
        for u in by_doc[doc_id]:  # readable, the right length, exactly once in the live segments
            bag = snap.unit_bag(doc_id, u.ordinal)
            assert bag is not None and bag.vectors.shape[0] == u.n_patches
            assert np.isfinite(bag.vectors.numpy()).all()
    live: dict[tuple[int, int], int] = {}
    for r, deleted in zip(snap.readers, snap.deleted, strict=True):
        for d, o in zip(r.doc_ids[~deleted].tolist(), r.ordinals[~deleted].tolist(), strict=True):
            live[(d, o)] = live.get((d, o), 0) + 1
    assert all(n == 1 for n in live.values())  # a re-run after a crash never indexes a unit twice
    for path in snap.readers:
        assert path.file.path.exists()
    for filename, doc_id in ready.items():
        doc = int(filename.split("-")[1].split(".")[0])
        hits = search.search("c", query=f"d{doc}p1", top_k=1).hits
        assert hits and hits[0].document_id == doc_id and hits[0].page == 2
    return ready


def test_kill_during_ingest_and_rebuild(tmp_path: Path) -> None:
    data, folder = tmp_path / "data", tmp_path / "pdfs"
    folder.mkdir()
    for i in range(N_DOCS):
        (folder / f"doc-{i:02d}.pdf").write_bytes(_pdf(i))
    assert _cli(data, "init").returncode == 0

    # 1. kill -9 once a few documents are ready, then check what is visible.
    def some_ready() -> bool:
        rows = _query(data, "select count(*) from documents where status = 'ready'")
        return bool(rows) and rows[0][0] >= 3

    _kill_when(data, ["ingest", str(folder), "--collection", "c"], some_ready)
    ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False, pdf_dpi=72))
    try:
        ready = _check_visible_state(ctx)
        assert 3 <= len(ready) < N_DOCS
    finally:
        ctx.close()

    # 2. Ingest again: the rest is ingested, nothing twice.
    again = _cli(data, "ingest", str(folder), "--collection", "c")
    assert again.returncode == 0, again.stderr
    ready_rows = _query(
        data, "select filename, count(*) from documents where status = 'ready' group by filename"
    )
    assert sorted(ready_rows) == [(f"doc-{i:02d}.pdf", 1) for i in range(N_DOCS)]
    units = _query(
        data,
        "select count(*) from units u join documents d on d.id = u.document_id "
        "join collections c on c.active_version_id = u.index_version_id where d.status = 'ready'",
    )
    assert units[0][0] == 3 * N_DOCS

    # 3. kill -9 in the middle of a rebuild: the old version keeps serving every document.
    def rebuild_half_done() -> bool:
        rows = _query(
            data,
            "select count(*) from units u join index_versions v on v.id = u.index_version_id "
            "where v.status = 'building'",
        )
        return bool(rows) and rows[0][0] >= 3 * 2

    _kill_when(data, ["rebuild", "-c", "c"], rebuild_half_done)
    ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False, pdf_dpi=72))
    try:
        assert len(_check_visible_state(ctx)) == N_DOCS
        active = _query(
            data, "select v.number from collections c join index_versions v on v.id = c.active_version_id"
        )
        assert active == [(1,)]
    finally:
        ctx.close()

    # 4. A new rebuild succeeds (once the killed one is recognised as dead) and serves everything.
    rebuilt = _cli(data, "rebuild", "-c", "c")
    if rebuilt.returncode != 0 and "already has a rebuild" in rebuilt.stderr:
        # The killed rebuild's job still reads 'running' until its heartbeat goes stale; a worker
        # re-queues and finishes it.
        ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False, job_stale_seconds=0.001))
        try:
            from patchseek.api.services import JobService

            assert JobService(ctx).requeue_stale() >= 1  # the killed ingest job is re-queued too
        finally:
            ctx.close()
        assert _cli(data, "worker", "--once").returncode == 0
        rebuilt = _cli(data, "rebuild", "-c", "c")
    assert rebuilt.returncode == 0, rebuilt.stderr
    ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False, pdf_dpi=72))
    try:
        assert len(_check_visible_state(ctx)) == N_DOCS
    finally:
        ctx.close()
