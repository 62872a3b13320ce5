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


def _pdf(doc: int) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, invariant=1)
    for page in range(N_PAGES):
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
