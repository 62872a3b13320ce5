"""``kill -9`` of a server mid-job, then a restart: the job's dead worker is recognised within seconds
(worker identity + heartbeat), the job resumes and finishes with every document exactly once."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
from pathlib import Path

from reportlab.pdfgen import canvas

from tests.api.subprocess_server import server_process, start_server

N_DOCS, N_PAGES = 5, 30


def _pdf(doc: int, pages: int = N_PAGES) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, invariant=1)
    for page in range(pages):
        for line in range(30):
            pdf.drawString(50, 780 - 22 * line, f"doc{doc} page{page} line{line} quarterly glacier report")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def test_killed_server_job_resumes_within_30_s_without_duplicates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PATCHSEEK_PDF_DPI": "100"}
    proc, client = start_server(data, **env)
    try:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        files = [("files", (f"doc-{i}.pdf", _pdf(i))) for i in range(N_DOCS)]
        job_id = client.post("/v1/collections/c/documents", files=files).json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"] < 1:
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(30)
    finally:
        client.close()
    assert job["status"] == "running" and job["progress"] < N_DOCS, "the job finished before the kill"
    killed_progress = job["progress"]

    with server_process(data, **env) as (_, client):
        restarted_at = time.monotonic()
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running") or job["progress"] > killed_progress:
                break
            assert time.monotonic() - restarted_at < 30, f"the job did not resume within 30 s: {job}"
            time.sleep(0.1)
        resumed_at = time.monotonic()
        print(
            f"job resumed {resumed_at - restarted_at:.1f} s after the restart "
            f"({resumed_at - killed_at:.1f} s after the kill)"
        )
        deadline = time.monotonic() + 300
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        docs = client.get("/v1/collections/c/documents").json()

    assert sorted(d["filename"] for d in docs) == [f"doc-{i}.pdf" for i in range(N_DOCS)]
    assert {d["status"] for d in docs} == {"ready"}
    conn = sqlite3.connect(data / "patchseek.db")
    try:
        pages = conn.execute(
            "select u.document_id, count(*), count(distinct u.page) from units u "
            "join collections c on c.active_version_id = u.index_version_id group by u.document_id"
        ).fetchall()
        attempts = conn.execute("select attempts from jobs where id = ?", (job_id,)).fetchone()[0]
    finally:
        conn.close()
    assert len(pages) == N_DOCS and all(n == distinct == N_PAGES for _, n, distinct in pages)
    assert attempts == 2  # claimed by the killed server, then once more after the restart


def test_sigterm_mid_job_requeues_it_and_a_restart_finishes_it(tmp_path: Path) -> None:
    """A graceful shutdown (SIGTERM) stops the running ingest between documents: what was encoded is
    published, the job goes back to the queue without using an attempt, and the next server finishes
    the rest, every document exactly once."""
    data, n_docs = tmp_path / "data", 12
    env = {"PATCHSEEK_PDF_DPI": "72"}
    proc, client = start_server(data, **env)
    try:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        files = [("files", (f"doc-{i}.pdf", _pdf(i, 8))) for i in range(n_docs)]
        job_id = client.post("/v1/collections/c/documents", files=files).json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"] < 1:
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.02)
        proc.terminate()
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
    finally:
        client.close()
    db = sqlite3.connect(data / "patchseek.db")
    try:
        status, attempts, worker = db.execute(
            "select status, attempts, worker from jobs where id = ?", (job_id,)
        ).fetchone()
        docs = dict(db.execute("select status, count(*) from documents group by status").fetchall())
    finally:
        db.close()
    assert (status, attempts, worker) == ("queued", 0, None), "the job was not handed back to the queue"
    assert docs.get("pending", 0) >= 1 and docs.get("ready", 0) >= 1, docs

    with server_process(data, **env) as (_, client):
        deadline = time.monotonic() + 300
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        names = sorted(d["filename"] for d in client.get("/v1/collections/c/documents").json())
        assert names == sorted(f"doc-{i}.pdf" for i in range(n_docs))
        for i in range(n_docs):
            hits = client.post(
                "/v1/collections/c/search", json={"query": f"doc{i} page7 line3", "top_k": 1}
            ).json()["hits"]
            assert hits[0]["document"] == f"doc-{i}.pdf" and hits[0]["page"] == 8
